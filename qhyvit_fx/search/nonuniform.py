"""Non-uniform input quantizers of the PTQ4ViT / RepQ-ViT / FQ-ViT baselines (FX-free).

* :func:`twin_candidates`: PTQ4ViT's twin-uniform candidates for post-softmax and post-GELU
  (here also post-SiLU / Hardswish, the smooth activations of the hybrids) inputs;
* :func:`log_params`: the fixed log2 (FQ-ViT) and log-sqrt2 (RepQ-ViT) quantizers of softmax outputs;
* :func:`refine_input`: scores candidates for one input of a layer problem with the Hessian-guided
  objective ``sum g^2 (O_q - O_fp)^2`` of the search, the other operands kept at their decisions.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch

from ..quantizer import QParams, QSpec, fake_quant, quant_dequant
from .objective import weighted_error
from .problem import ActStats, MatmulProblem, WeightedLayerProblem

SOFTMAX = "softmax"
SMOOTH_ACTS = ("gelu", "silu", "hardswish", "mish")
MAX_POW2 = 12                       # twin_pos: R1 scales s2 / 2^j for j = 0..MAX_POW2


def input_role(producer: Optional[str]) -> Optional[str]:
    """'softmax' / 'smooth_act' for inputs that come straight from such an op, else None."""
    if producer is None or producer.endswith("via layout"):
        return None
    if producer == SOFTMAX:
        return "softmax"
    return "smooth_act" if producer in SMOOTH_ACTS else None


def twin_candidates(role: str, bits: int, stats: ActStats, fractions: torch.Tensor) -> List[QParams]:
    """Twin-uniform candidates (PTQ4ViT; each range has bits-1 bits, m = 2^(bits-1) levels).

    softmax:    R2 = [0, 1] fixed (s2 = 1/m), R1 scale s1 = s2 / 2^j, j = 0..MAX_POW2 searched.
    smooth_act: positive range s2 = f * max / (m-1) for the search fractions f; the negative range
                R1 takes the finest power-of-two fraction s1 = s2 / 2^j that still covers the
                observed minimum (PTQ4ViT keeps the scale ratio a power of two)."""
    m = 2 ** (bits - 1)
    zero = torch.zeros((), dtype=torch.int32)
    out = []
    if role == "softmax":
        spec = QSpec(bits=bits, symmetric=False, quantizer="twin_pos")
        s2 = torch.tensor(1.0 / m)
        for j in range(MAX_POW2 + 1):
            out.append(QParams(spec, s2 / 2 ** j, zero, 0, s2))
        return out
    spec = QSpec(bits=bits, symmetric=True, quantizer="twin_signed")
    lo = float(-min(float(stats.lo), 0.0))
    hi = max(float(stats.hi), 1e-8)
    for f in fractions.tolist():
        s2 = f * hi / max(1, m - 1)
        j = 0 if lo <= 0 else max(0, min(MAX_POW2, int(math.floor(math.log2((m - 1) * s2 / lo)))))
        out.append(QParams(spec, torch.tensor(s2 / 2 ** j), zero, 0, torch.tensor(s2)))
    return out


def log_params(quantizer: str, bits: int, stats: ActStats) -> QParams:
    """FQ-ViT log2 (top level 1, the softmax maximum) or RepQ-ViT log-sqrt2 (top level the
    observed maximum) quantizer of a softmax output."""
    top = 1.0 if quantizer == "log2" else max(float(stats.hi), 1e-8)
    return QParams(QSpec(bits=bits, symmetric=False, quantizer=quantizer), torch.tensor(top),
                   torch.zeros((), dtype=torch.int32))


def _weighted_out(p: WeightedLayerProblem, xq: torch.Tensor, weight: Optional[QParams]) -> torch.Tensor:
    wq = p.weight if weight is None else fake_quant(p.weight, weight.scale, weight.zero_point, weight.spec.qmin,
                                                    weight.spec.qmax, 0 if weight.spec.per_channel else None)
    o = p.layer_forward(xq, wq)
    return p.tail(o, None) if p.tail is not None else o


def objective(p: Union[WeightedLayerProblem, MatmulProblem], inputs: List[QParams],
              weight: Optional[QParams] = None) -> float:
    """``sum g^2 (O_q - O_fp)^2`` on the problem's rows for the given decisions."""
    if isinstance(p, MatmulProblem):
        o = quant_dequant(p.a, inputs[0]) @ quant_dequant(p.b, inputs[1])
    else:
        qp = inputs[0]
        x = p.patches
        if qp.spec.per_channel:
            xq = fake_quant(x, qp.scale[p.col_channel], qp.zero_point[p.col_channel], qp.spec.qmin, qp.spec.qmax, -1)
        else:
            xq = quant_dequant(x, qp)
        o = _weighted_out(p, xq, weight)
    return float(weighted_error(o, p.out_fp, p.grad2))


def refine_input(p: Union[WeightedLayerProblem, MatmulProblem], which: int, inputs: List[QParams],
                 weight: Optional[QParams], candidates: List[QParams]) -> Tuple[QParams, float]:
    """The candidate for input ``which`` with the lowest objective (ties: the first), and that objective."""
    best, best_e = None, float("inf")
    for c in candidates:
        trial = list(inputs)
        trial[which] = c
        e = objective(p, trial, weight)
        if e < best_e:
            best, best_e = c, e
    return best, best_e

"""Per-layer reconstruction problems (plain tensors, no FX).

Every problem is restricted to a fixed set of sampled output *rows* (output
positions of a conv, tokens of a linear, rows of a matmul): the objective

    E = sum_rows sum_channels  g^2 * (O_q - O_fp)^2          (paper eq. 6)

is a sum over those rows, so any row subset gives an unbiased estimate and
the full set gives the exact value.  ``g`` is dL/dO at the objective output
(the layer output, or the bridge-block output for bridge members).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from ..quantizer import QSpec
from .objective import weighted_error


@dataclass
class ActStats:
    """Range statistics of one activation operand over *all* calibration data."""

    lo: torch.Tensor                       # scalar min
    hi: torch.Tensor                       # scalar max
    ch_lo: Optional[torch.Tensor] = None   # [C] per-channel min (None: per-tensor only)
    ch_hi: Optional[torch.Tensor] = None
    folds: Optional[list] = None           # per cross-validation fold: stats of the *other* folds' images

    def range(self, per_channel: bool):
        if per_channel:
            return self.ch_lo, self.ch_hi
        return self.lo, self.hi


@dataclass
class WeightedLayerProblem:
    """conv2d (as patches) or linear, on sampled rows.

    patches: [S, K] FP input rows (conv: unfolded receptive fields, columns
             ordered channel-major), K = groups * Kg
    weight:  [C, Kg] FP weight (conv weight flattened), C = groups * Cg
    out_fp:  [S, C] FP layer output (bias included)
    grad2:   [S, C] squared dL/dO (or at the bridge output, through ``tail``)
    tail:    optional callable ``(rows [n, r, C], idx) -> [n, r, C']`` mapping candidate
             layer-output rows (rows ``idx`` of the problem, or the first r when None) to
             objective rows (the rest of a bridge block, pointwise); then ``out_fp`` and
             ``grad2`` are the bridge output's, [S, C']
    """

    name: str
    patches: torch.Tensor
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    out_fp: torch.Tensor
    grad2: torch.Tensor
    groups: int
    col_channel: torch.Tensor              # [K] input channel of every patch column
    act_stats: ActStats
    w_spec: QSpec                          # initial / default weight spec
    a_spec: QSpec                          # initial / default input spec
    act_per_channel_ok: bool = True
    act_migrate: bool = False                     # per-channel input only as migrated codes (weights W * m)
    tail: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    layer_out_fp: Optional[torch.Tensor] = None   # [S, C] layer output when a tail is used
    row_fold: Optional[torch.Tensor] = None       # [S] cross-validation fold of each row's image
    o_spec: Optional[QSpec] = None                # output quantizer (deployment graphs), searched last
    o_stats: Optional[ActStats] = None            # range statistics of the layer output
    input_kinds: Optional[List[str]] = None       # producer of each input ("softmax", "gelu", ...)
    o_act: Optional[Callable] = None              # pointwise activation reading the output quantizer alone
    o_act_grad2: Optional[torch.Tensor] = None    # [S, C] squared gradients at that activation's output

    @property
    def rows(self) -> int:
        return self.patches.shape[0]

    def output_error(self, oq: torch.Tensor, rows, ref: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        """sum g^2 d^2 over rows and channels for quantized layer outputs oq [n, r, C] (``rows``: which
        problem rows; ``ref`` / ``g2``: the layer-output reference and weights of those rows).  With an
        activation behind the output quantizer both sides go through it and its output's gradients
        weigh the difference."""
        if self.o_act is not None:
            oq, ref, g2 = self.o_act(oq), self.o_act(ref), self.o_act_grad2[rows]
        return weighted_error(oq, ref, g2, (-1, -2))

    def layer_forward(self, xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
        """Layer output rows for (possibly candidate-batched) inputs/weights.

        xq: [..., S, K]; wq: [..., C, Kg] -> [..., S, C] (bias added)."""
        g = self.groups
        if g == 1:
            out = xq @ wq.transpose(-1, -2)
        else:
            S, K = xq.shape[-2:]
            C, Kg = wq.shape[-2:]
            xg = xq.reshape(xq.shape[:-1] + (g, Kg))
            wg = wq.reshape(wq.shape[:-2] + (g, C // g, Kg))
            if C // g == 1:   # depthwise: one output channel per group
                out = (xg * wg.squeeze(-2).unsqueeze(-3)).sum(-1)
            else:
                out = torch.einsum("...sgk,...gck->...sgc", xg, wg)
                out = out.reshape(out.shape[:-2] + (C,))       # leading dims: broadcast of x's and w's
        if self.bias is not None:
            out = out + self.bias
        return out


@dataclass
class MatmulProblem:
    """A @ B on a subset of the (flattened) batch matrices.

    a: [Bs, M, K], b: [Bs, K, N], out_fp / grad2: [Bs, M, N].
    """

    name: str
    a: torch.Tensor
    b: torch.Tensor
    out_fp: torch.Tensor
    grad2: torch.Tensor
    stats: List[ActStats]
    specs: List[QSpec]
    input_kinds: Optional[List[str]] = None       # producer of each operand ("softmax", ...)

    @property
    def rows(self) -> int:
        return self.a.shape[0] * self.a.shape[1]


@dataclass
class SearchOptions:
    rounds: int = 3
    round_tol: float = 1e-2                          # stop when a round improves the objective less than this
    fractions: Optional[torch.Tensor] = None        # candidate fractions of the MinMax scale
    channel_fractions: Optional[torch.Tensor] = None  # extra fractions for per-channel activation ranges
    search_scale: bool = True
    search_granularity: bool = True
    search_scheme: bool = True
    weight_asym_ok: bool = True
    act_scheme_search: bool = True                   # False: activations keep their annotated scheme
    act_migrate: bool = True                         # migrated per-channel inputs allowed where annotated
    coarse_rows: int = 256                           # rows for ranking all candidates
    topk: int = 4                                    # candidates re-scored on every row
    exhaustive: bool = False                         # every candidate on every row (reference)
    act_cv: bool = True                              # activation candidates scored by K-fold validation
    bias_correction: bool = False                    # correct the mean output shift of every conv/linear
    shared_output_objective: bool = True             # a shared output quantizer is scored at its layer too
    weight_rounding: str = "nearest"                 # "gptq": codes error-compensated on the objective
    chunk_elems: int = 1 << 22                       # bound on [candidates x rows x channels] per step
    quadratic_max_elems: int = 1 << 26               # bound on the per-channel Gram matrices C*Kg*Kg

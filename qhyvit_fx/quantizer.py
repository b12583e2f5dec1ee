"""Uniform affine quantization maths (pure torch, no FX).

    q = clamp(round(x / s) + z, qmin, qmax),   x_hat = (q - z) * s        (paper eq. 1)

* bits 2..8; per-tensor or per-channel along any axis; symmetric (z = 0,
  signed integers) or asymmetric (unsigned integers, z chosen so that the
  real range [lo, hi] maps onto [qmin, qmax]).
* Rounding and the order of operations follow ``torch.fake_quantize_*``
  exactly (``x * (1/s)``, round half to even, float32), so a search done with
  :func:`fake_quant` picks what the exported graph will compute.
* Zero-point overflow (paper, challenge C2): when a range does not contain 0
  the ideal zero point falls outside [qmin, qmax].  It is clamped, and the
  number of clamped channels is reported in :attr:`QParams.zp_overflow`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch

__all__ = ["QSpec", "QParams", "qrange", "fake_quant", "params_from_range", "params_from_stats",
           "candidate_fractions", "reduce_dims", "channel_minmax", "QUANTIZERS", "twin_uniform_quant",
           "log_quant", "quant_dequant", "ptf_params", "per_tensor_equivalent"]

MIN_SCALE = 1e-8

# Quantizer forms beside the uniform affine one (the baselines' non-uniform quantizers):
#   twin_pos     PTQ4ViT twin-uniform for post-softmax values in [0, 1]: two unsigned (bits-1)-bit
#                ranges, R1 = [0, m*s1) with the fine scale s1 and R2 = [0, (m-1)*s2] with the coarse
#                scale s2 = 2^j * s1 (m = 2^(bits-1)); a value uses R1 when R1 rounds it unclipped
#   twin_signed  PTQ4ViT twin-uniform for post-GELU/SiLU values: negatives on the signed (bits-1)-bit
#                grid of s1 (codes -(m-1)..0), positives on the unsigned grid of s2 (codes 0..m-1)
#   log2         FQ-ViT log-int-softmax: x_hat = s * 2^-q, q = round(-log2(x/s)) in 0..2^bits-1
#   logsqrt2     RepQ-ViT log-sqrt2: x_hat = s * 2^(-q/2), q = round(-2 log2(x/s)) in 0..2^bits-1
# Both log quantizers send values below their smallest level (q >= 2^bits) to 0.
QUANTIZERS = ("uniform", "twin_pos", "twin_signed", "log2", "logsqrt2")


def qrange(bits: int, signed: bool, narrow: bool = False) -> Tuple[int, int]:
    """Integer range of a ``bits``-wide code.  ``narrow`` drops the most
    negative signed value (symmetric weights: -127..127)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    if signed:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return (lo + 1 if narrow else lo), hi
    return 0, 2 ** bits - 1


@dataclass(frozen=True)
class QSpec:
    """How one tensor is quantized (not the numbers: see :class:`QParams`)."""

    bits: int = 8
    symmetric: bool = True
    per_channel: bool = False
    axis: int = 0                    # channel axis when per_channel
    narrow: bool = False             # symmetric only: -(2^(b-1)-1)..2^(b-1)-1
    signed: Optional[bool] = None    # code signedness; default: symmetric -> signed, asymmetric -> unsigned
    quantizer: str = "uniform"       # one of QUANTIZERS

    def __post_init__(self):
        qrange(self.bits, True)      # validates bits
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer '{self.quantizer}' is not one of {', '.join(QUANTIZERS)}")
        if self.quantizer != "uniform" and self.per_channel:
            raise ValueError(f"a {self.quantizer} quantizer is per-tensor")
        if self.signed is None:
            object.__setattr__(self, "signed", bool(self.symmetric))
        if self.symmetric and not self.signed:
            raise ValueError("a symmetric quantizer needs signed codes")

    @property
    def qmin(self) -> int:
        return qrange(self.bits, bool(self.signed), self.narrow and self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, bool(self.signed), self.narrow and self.symmetric)[1]

    @property
    def granularity(self) -> str:
        return "channel" if self.per_channel else "tensor"

    @property
    def scheme(self) -> str:
        return "symmetric" if self.symmetric else "asymmetric"

    def with_(self, **kw) -> "QSpec":
        return replace(self, **kw)

    @property
    def uniform(self) -> bool:
        return self.quantizer == "uniform"

    def to_dict(self) -> dict:
        d = {"bits": self.bits, "granularity": self.granularity, "scheme": self.scheme,
             "axis": self.axis if self.per_channel else None, "signed": bool(self.signed),
             "qmin": self.qmin, "qmax": self.qmax}
        if not self.uniform:
            d["quantizer"] = self.quantizer
        return d


@dataclass
class QParams:
    """Scale and zero point of one quantizer (shape [] or [C])."""

    spec: QSpec
    scale: torch.Tensor
    zero_point: torch.Tensor         # int32, within [qmin, qmax]
    zp_overflow: int = 0             # channels whose ideal zero point was clamped
    scale2: Optional[torch.Tensor] = None   # twin-uniform only: the coarse scale of range R2

    def __post_init__(self):
        self.scale = self.scale.detach().to(torch.float32)
        self.zero_point = self.zero_point.detach().to(torch.int32)
        if self.scale2 is not None:
            self.scale2 = torch.as_tensor(self.scale2).detach().to(torch.float32)
        if self.spec.quantizer.startswith("twin") and self.scale2 is None:
            raise ValueError("a twin-uniform quantizer needs scale2 (the scale of its second range)")

    def to_dict(self) -> dict:
        d = self.spec.to_dict()
        d["scale"] = [float(v) for v in self.scale.reshape(-1)]
        d["zero_point"] = [int(v) for v in self.zero_point.reshape(-1)]
        d["zp_overflow"] = int(self.zp_overflow)
        if self.scale2 is not None:
            d["scale2"] = float(self.scale2)
        return d

    def same_as(self, other: "QParams") -> bool:
        """The same quantizer: equal spec, scales, zero points (and second scale)."""
        return (self.spec == other.spec and self.scale.shape == other.scale.shape
                and torch.equal(self.scale, other.scale) and torch.equal(self.zero_point, other.zero_point)
                and (self.scale2 is None) == (other.scale2 is None)
                and (self.scale2 is None or torch.equal(self.scale2, other.scale2)))

    def apply(self, x: torch.Tensor, axis: Optional[int] = None) -> torch.Tensor:
        """Quantize-dequantize ``x`` with these params (channels on ``axis`` when per-channel)."""
        return quant_dequant(x, self, axis)

    @staticmethod
    def from_dict(d: dict) -> "QParams":
        per_channel = d["granularity"] == "channel"
        if d.get("scheme") not in ("symmetric", "asymmetric") or d.get("granularity") not in ("tensor", "channel"):
            raise ValueError("scheme must be symmetric|asymmetric and granularity tensor|channel")
        sym = d["scheme"] == "symmetric"
        bits = int(d["bits"])
        spec = QSpec(bits=bits, symmetric=sym, per_channel=per_channel,
                     axis=int(d["axis"]) if per_channel else 0,
                     narrow=sym and "qmin" in d and int(d["qmin"]) == -(2 ** (bits - 1)) + 1,
                     signed=bool(d.get("signed", sym)), quantizer=str(d.get("quantizer", "uniform")))
        scale2 = None
        if spec.quantizer.startswith("twin"):
            if "scale2" not in d:
                raise ValueError(f"a {spec.quantizer} quantizer needs \"scale2\"")
            scale2 = torch.tensor(float(d["scale2"]), dtype=torch.float32)
            if not (scale2 > 0 and torch.isfinite(scale2)):
                raise ValueError("scale2 must be positive and finite")
        scale = torch.tensor(d["scale"], dtype=torch.float32)
        zp = torch.tensor(d["zero_point"], dtype=torch.int32)
        if not per_channel:
            scale, zp = scale.reshape(()), zp.reshape(())
        if (scale <= 0).any() or not torch.isfinite(scale).all():
            raise ValueError("scales must be positive and finite")
        over = int(((zp < spec.qmin) | (zp > spec.qmax)).sum())
        zp = zp.clamp(spec.qmin, spec.qmax)
        return QParams(spec, scale, zp, over, scale2)


def weight_column_ratios(r: torch.Tensor, groups: int, out_channels: int) -> torch.Tensor:
    """Input-column ratios ``r`` [groups * Kg] laid out on a (grouped) weight [out_channels, Kg]:
    output channel o of group g reads the columns of g.  Ungrouped: [1, Kg], broadcast over rows."""
    if groups == 1:
        return r[None, :]
    return r.reshape(groups, -1).repeat_interleave(out_channels // groups, dim=0)


def per_tensor_equivalent(pc: QParams, scale: torch.Tensor) -> Tuple[QParams, torch.Tensor, torch.Tensor]:
    """Per-channel params (s_c, z_c) as one per-tensor quantizer (``scale``, round(mean z_c)) plus the
    per-channel rescale r = s_c / scale and shift t = s_c (z_c - z) that make it produce the same codes
    for the input (x + t) / r (RepQ-ViT's reparameterisation; Q-HyViT's norm-folded inputs).
    Returns (per-tensor QParams, r, t)."""
    spec = pc.spec
    z = torch.round(pc.zero_point.float().mean()).clamp(spec.qmin, spec.qmax)
    r = pc.scale / scale
    t = pc.scale * (pc.zero_point.float() - z)
    return QParams(spec.with_(per_channel=False, axis=0), scale, z.to(torch.int32)), r, t


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
               axis: Optional[int] = None) -> torch.Tensor:
    """Quantize-dequantize ``x`` exactly as ``torch.fake_quantize_*`` does.

    Per-tensor (``axis`` None): ``scale`` is [] or [K].  Per-channel: ``scale``
    is [C] or [K, C], channels along ``axis`` of x.  A leading K dimension
    holds candidates: the result is then [K, *x.shape], which is how the
    search evaluates many candidates in one call.
    """
    s = scale.to(torch.float32)
    z = zero_point.to(torch.float32)
    if axis is None:
        tail = (1,) * x.dim()
        s_b, z_b = s.reshape(tuple(s.shape) + tail), z.reshape(tuple(z.shape) + tail)
    else:
        ax = axis % x.dim()
        shape = [1] * x.dim()
        shape[ax] = s.shape[-1]
        s_b = s.reshape(tuple(s.shape[:-1]) + tuple(shape))
        z_b = z.reshape(tuple(z.shape[:-1]) + tuple(shape))
    # clamp(round(x/s) + z, qmin, qmax) - z == clamp(round(x/s), qmin - z, qmax - z) for integer z,
    # exactly in float32 (small integers): 4 passes, one allocation
    q = x * (1.0 / s_b)
    q.round_()
    if z_b.dim() == 0 or z_b.numel() == 1:
        zi = float(z_b.reshape(-1)[0]) if z_b.numel() else 0.0
        q.clamp_(qmin - zi, qmax - zi)
    else:
        q = torch.clamp(q, qmin - z_b, qmax - z_b) if q.shape != torch.broadcast_shapes(q.shape, z_b.shape) \
            else q.clamp_(qmin - z_b, qmax - z_b)
    return q.mul_(s_b)


def reduce_dims(x: torch.Tensor, axis: Optional[int]) -> Tuple[int, ...]:
    if axis is None:
        return tuple(range(x.dim()))
    axis = axis % x.dim()
    return tuple(d for d in range(x.dim()) if d != axis)


def channel_minmax(x: torch.Tensor, axis: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(min, max) per channel along ``axis`` (or over the whole tensor)."""
    if axis is None:
        return x.min(), x.max()
    axis = axis % x.dim()
    xt = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return xt.min(dim=1).values, xt.max(dim=1).values


def params_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QSpec,
                      fraction: Optional[torch.Tensor] = None) -> QParams:
    """Quantizer params covering ``[lo, hi]`` (shrunk by ``fraction``).

    symmetric:  s = f * max(|lo|, |hi|) / qmax,  z = 0
    asymmetric: the range is widened to contain 0 (so zero padding stays
                exact), s = f * (hi - lo) / (qmax - qmin),
                z = qmin - round(lo / (hi - lo) * (qmax - qmin))
    The zero point of the asymmetric case does not depend on f: shrinking
    the clipping range about 0 keeps 0 on the grid.
    """
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    f = torch.ones(()) if fraction is None else torch.as_tensor(fraction, dtype=torch.float32)
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = (f * amax / qmax).clamp_min(MIN_SCALE)
        zp = torch.zeros_like(scale, dtype=torch.int32)
        over = 0
    else:
        lo0 = torch.minimum(lo, torch.zeros_like(lo))
        hi0 = torch.maximum(hi, torch.zeros_like(hi))
        span = (hi0 - lo0).clamp_min(MIN_SCALE)
        scale = (f * span / (qmax - qmin)).clamp_min(MIN_SCALE)
        ideal = qmin - torch.round(lo0 / span * (qmax - qmin))
        ideal = ideal.expand_as(scale) if ideal.dim() < scale.dim() else ideal
        over = int(((ideal < qmin) | (ideal > qmax)).sum())
        zp = ideal.clamp(qmin, qmax).to(torch.int32)
    return QParams(spec, scale, zp, over)


def params_from_stats(lo: torch.Tensor, hi: torch.Tensor, spec: QSpec, zero_point_from_range: bool = False
                      ) -> QParams:
    """Like :func:`params_from_range`, but with ``zero_point_from_range`` the
    asymmetric zero point is derived from the raw [lo, hi] without widening to
    0 -- the behaviour that causes zero-point overflow in the paper (used by
    the baseline methods that reproduce it, and by tests)."""
    if spec.symmetric or not zero_point_from_range:
        return params_from_range(lo, hi, spec)
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    qmin, qmax = spec.qmin, spec.qmax
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(MIN_SCALE)
    ideal = qmin - torch.round(lo / scale)
    over = int(((ideal < qmin) | (ideal > qmax)).sum())
    return QParams(spec, scale, ideal.clamp(qmin, qmax).to(torch.int32), over)


def candidate_fractions(n: int = 100, alpha: float = 0.01, beta: float = 1.2) -> torch.Tensor:
    """The search grid of the released Q-HyViT code: alpha + i*(beta-alpha)/n, i = 0..n."""
    i = torch.arange(n + 1, dtype=torch.float64)
    return (alpha + i * (beta - alpha) / n).to(torch.float32)


# ---- the baselines' non-uniform quantizers ------------------------------------------------

def twin_uniform_quant(x: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, bits: int, signed_low: bool
                       ) -> torch.Tensor:
    """PTQ4ViT twin-uniform quantize-dequantize (see QUANTIZERS).  ``s1``/``s2`` are scalars or
    [K] candidates (result [K, *x.shape]).  ``signed_low``: R1 holds the negative values (post-GELU);
    else R1 is the fine range [0, m*s1) of small positive values (post-softmax)."""
    m = 2 ** (bits - 1)
    tail = (1,) * x.dim()
    s1 = torch.as_tensor(s1, dtype=torch.float32)
    s2 = torch.as_tensor(s2, dtype=torch.float32)
    s1, s2 = s1.reshape(tuple(s1.shape) + tail), s2.reshape(tuple(s2.shape) + tail)
    hi = torch.clamp(torch.round(x / s2), 0, m - 1) * s2
    if signed_low:
        lo = torch.clamp(torch.round(x / s1), -(m - 1), 0) * s1
        return torch.where(x < 0, lo, hi)
    lo = torch.clamp(torch.round(x / s1), 0, m - 1) * s1
    # R1 takes the values its grid rounds without clipping (PTQ4ViT's cut at m*s1 would clip the
    # last half step of R1 to (m-1)*s1)
    return torch.where(x < (m - 0.5) * s1, lo, hi)


def log_quant(x: torch.Tensor, scale: torch.Tensor, bits: int, step: float) -> torch.Tensor:
    """Logarithmic quantize-dequantize of non-negative ``x``: levels ``scale * 2^(-q*step)``,
    q = round(-log2(x/scale) / step) in 0..2^bits-1; values below the last level become 0.
    step 1: log2 (FQ-ViT); step 0.5: log-sqrt2 (RepQ-ViT).  ``scale`` scalar or [K] candidates."""
    s = torch.as_tensor(scale, dtype=torch.float32)
    s = s.reshape(tuple(s.shape) + (1,) * x.dim())
    levels = 2 ** bits
    r = torch.round(-torch.log2(x.clamp_min(1e-30) / s) / step)
    q = r.clamp(0, levels - 1)
    y = s * torch.pow(2.0, -q * step)           # (not exp2: the ONNX exporter has no symbolic for it)
    return torch.where((r >= levels) | (x <= 0), torch.zeros((), dtype=y.dtype), y)


def quant_dequant(x: torch.Tensor, qp: "QParams", axis: Optional[int] = None) -> torch.Tensor:
    """Quantize-dequantize ``x`` with any quantizer (uniform: exactly :func:`fake_quant`)."""
    k = qp.spec.quantizer
    if k == "uniform":
        return fake_quant(x, qp.scale, qp.zero_point, qp.spec.qmin, qp.spec.qmax,
                          axis if qp.spec.per_channel else None)
    if k in ("twin_pos", "twin_signed"):
        return twin_uniform_quant(x, qp.scale, qp.scale2, qp.spec.bits, signed_low=k == "twin_signed")
    return log_quant(x, qp.scale, qp.spec.bits, 1.0 if k == "log2" else 0.5)


def ptf_params(lo: torch.Tensor, hi: torch.Tensor, ch_lo: torch.Tensor, ch_hi: torch.Tensor, bits: int,
               factors: int = 3) -> QParams:
    """FQ-ViT Power-of-Two Factor: per-channel scales ``s * 2^a_c`` (a_c in 0..factors) sharing one
    zero point, from the layer-wide range [lo, hi] and the channel ranges.  The layer-wide
    asymmetric scale is ``2^factors * s``; each channel takes the smallest factor whose grid still
    covers its own range, so narrow channels get finer steps and no channel clips more than the
    layer-wide quantizer would."""
    spec = QSpec(bits=bits, symmetric=False, per_channel=True, axis=0)
    top = params_from_range(torch.as_tensor(lo), torch.as_tensor(hi), spec.with_(per_channel=False))
    z = top.zero_point.float()
    base = top.scale / 2 ** factors
    ch_lo = torch.minimum(ch_lo.float(), torch.zeros(()))
    ch_hi = torch.maximum(ch_hi.float(), torch.zeros(()))
    alpha = torch.full_like(ch_lo, float(factors))
    for a in range(factors - 1, -1, -1):
        s = base * 2 ** a
        fits = (ch_lo >= (spec.qmin - z) * s) & (ch_hi <= (spec.qmax - z) * s)
        alpha = torch.where(fits, torch.full_like(alpha, float(a)), alpha)
    scale = (base * torch.exp2(alpha)).clamp_min(MIN_SCALE)
    return QParams(spec, scale, torch.full_like(scale, float(z)).to(torch.int32), top.zp_overflow)

"""Candidate quantizers shared by the layer searches (Q-HyViT's hybrid search, EasyQuant): the
fraction grid, (granularity, scheme) combinations, candidate parameter sets and fake-quantized
operands for every candidate at once.  Tensors in, tensors out."""
from __future__ import annotations

from typing import List

import torch

from ..quantizer import QParams, QSpec, candidate_fractions, fake_quant, params_from_range
from .problem import ActStats, SearchOptions, WeightedLayerProblem


def fractions_for(opts: SearchOptions, widen: bool = False) -> torch.Tensor:
    """The candidate fractions; ``widen`` (per-channel activation ranges) appends the ones past beta."""
    if not opts.search_scale:
        return torch.ones(1)
    f = opts.fractions if opts.fractions is not None else candidate_fractions()
    f = f.to(torch.get_default_device())      # the search runs under `with torch.device(...)`
    if not bool((f == 1.0).any()):
        f = torch.cat([f, torch.ones(1)])      # MinMax itself is always a candidate
    if widen and opts.channel_fractions is not None:
        f = torch.cat([f, opts.channel_fractions.to(f.device)])
    return f


def _shared_zero_spans(lo: torch.Tensor, hi: torch.Tensor, z: int, levels: int) -> torch.Tensor:
    """Span of each channel's range [-z s_c, (levels - z) s_c] (s_c = span / levels) that contains
    [lo_c, hi_c]: the side that needs more sets it (inf where one zero point z cannot hold a side)."""
    rho = z / levels
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    need_hi = hi / (1 - rho) if rho < 1 else torch.where(hi > 0, torch.inf, 0.0)
    need_lo = -lo / rho if rho > 0 else torch.where(lo < 0, torch.inf, 0.0)
    return torch.maximum(need_hi, need_lo)


def aligned_ranges(lo: torch.Tensor, hi: torch.Tensor, z: int, levels: int):
    """Per-channel ranges with the one zero point z that contain [lo_c, hi_c].  A dead channel keeps
    a tiny span, so it still gets z."""
    span = _shared_zero_spans(lo, hi, z, levels)
    span = span.clamp_min(float(span.max()) * 1e-6 + 1e-12)
    rho = z / levels
    return -rho * span, (1 - rho) * span


def shared_zero_point(lo: torch.Tensor, hi: torch.Tensor, levels: int) -> int:
    """The one zero point that gives per-channel ranges [lo_c, hi_c] the least quantization noise
    (sum of squared channel spans, so of squared scales) when every channel must use it."""
    noise = [float((_shared_zero_spans(lo, hi, z, levels) ** 2).sum()) for z in range(levels + 1)]
    return min(range(levels + 1), key=lambda z: noise[z])


def shared_zero_point_stats(st: ActStats, spec: QSpec) -> ActStats:
    """``st`` with per-channel ranges widened so that :func:`params_from_range` gives every channel one
    zero point: channel c covers [-z s_c, (levels - z) s_c].  A conv that reads padding can take
    per-channel input codes only so: the kernel pads with the zero point it reads, which must mean 0
    in every channel.  Fold statistics get the same z.  Symmetric codes already share z = 0."""
    if spec.symmetric or st.ch_lo is None:
        return st
    levels = spec.qmax - spec.qmin
    z = shared_zero_point(st.ch_lo, st.ch_hi, levels)

    def restat(s: ActStats) -> ActStats:
        return ActStats(s.lo, s.hi, *aligned_ranges(s.ch_lo, s.ch_hi, z, levels)) if s.ch_lo is not None else s

    out = restat(st)
    out.folds = None if st.folds is None else [restat(f) for f in st.folds]
    return out


def spec_combos(base: QSpec, opts: SearchOptions, per_channel_ok: bool, asym_ok: bool, asym_signed: bool
            ) -> List[QSpec]:
    """(granularity, scheme) pairs to try.  Asymmetric codes are signed for
    weights (int8 storage) and unsigned for activations."""
    grans = [False, True] if (opts.search_granularity and per_channel_ok) else [base.per_channel and per_channel_ok]
    schemes = [True, False] if (opts.search_scheme and asym_ok) else [base.symmetric or not asym_ok]
    return [base.with_(per_channel=pc, symmetric=sym, signed=True if sym else asym_signed)
            for pc in grans for sym in schemes]


def candidate_params(lo, hi, spec: QSpec, f: torch.Tensor) -> QParams:
    """Scales [n] (per-tensor) or [n, C] (per-channel, one fraction for all channels)."""
    frac = f[:, None] if spec.per_channel else f
    return params_from_range(lo, hi, spec, fraction=frac)


def take(qp: QParams, idx) -> QParams:
    """Pick candidate ``idx`` (int, or per-channel LongTensor [C]) out of
    candidate params (scale and zero point [n] or [n, C])."""
    if isinstance(idx, int):
        return QParams(qp.spec, qp.scale[idx], qp.zero_point[idx], qp.zp_overflow)
    c = torch.arange(qp.scale.shape[1])
    return QParams(qp.spec, qp.scale[idx, c], qp.zero_point[idx, c], qp.zp_overflow)


def one(qp: QParams) -> QParams:
    """A single choice as a one-candidate set."""
    return QParams(qp.spec, qp.scale[None], qp.zero_point[None])


def weight_candidates(w: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Fake-quantized weights for every candidate: [n, C, Kg]."""
    return fake_quant(w, qp.scale, qp.zero_point, qp.spec.qmin, qp.spec.qmax,
                      axis=0 if qp.spec.per_channel else None)


def quant_patches(p: WeightedLayerProblem, x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Quantize patch rows [S, K] with candidate params -> [n, S, K] (or [S, K] for one)."""
    if qp.spec.per_channel:
        return fake_quant(x, qp.scale[..., p.col_channel], qp.zero_point[..., p.col_channel], qp.spec.qmin,
                          qp.spec.qmax, axis=-1)
    return fake_quant(x, qp.scale, qp.zero_point, qp.spec.qmin, qp.spec.qmax)


def chunks(n: int, per_item: int, opts: SearchOptions):
    step = max(1, opts.chunk_elems // max(1, per_item))
    for a in range(0, n, step):
        yield a, min(n, a + step)


def slice_candidates(qp: QParams, a: int, b: int) -> QParams:
    return QParams(qp.spec, qp.scale[a:b], qp.zero_point[a:b])


def quant_operand(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    return fake_quant(x, qp.scale, qp.zero_point, qp.spec.qmin, qp.spec.qmax)

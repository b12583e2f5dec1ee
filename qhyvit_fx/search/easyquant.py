"""EasyQuant scale search (Wu et al., 2020), FX-free.

For one layer, alternately for the input activations and for the weight, for a few rounds, choose
the scale among ``f * minmax_scale`` candidates that maximises the cosine similarity between the
layer's float output and its output with quantized operands.  Granularity and scheme are not
searched: they stay as annotated (per-channel symmetric weights, per-tensor activations by
default).  Per-channel weights take one fraction for all channels, scored on the whole output:
a per-channel cosine is blind to each channel's magnitude (it rewards clipping a channel's scale
far down), and the shared fraction makes every step a coordinate ascent on the layer's cosine
similarity, which therefore never falls below MinMax's (MinMax is a candidate).

Problems are the same sampled-row problems the Q-HyViT search uses (``search.problem``); the
squared-gradient weights are ignored.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from ..quantizer import QParams, channel_minmax, params_from_range
from .hybrid import (LayerResult, _candidate_params, _chunks, _fractions, _quant_operand, _quant_patches, _slice,
                     _take, _weight_cands)
from .problem import MatmulProblem, SearchOptions, WeightedLayerProblem


def cosine(a: torch.Tensor, b: torch.Tensor, dims) -> torch.Tensor:
    """Cosine similarity of ``a`` (possibly candidate-batched) and ``b`` over ``dims``."""
    num = (a * b).sum(dims)
    den = (a * a).sum(dims).sqrt() * (b * b).sum(dims).sqrt()
    return num / den.clamp_min(1e-30)


def _target(p: WeightedLayerProblem) -> torch.Tensor:
    return p.layer_out_fp if p.layer_out_fp is not None else p.out_fp


def easyquant_weighted(p: WeightedLayerProblem, opts: SearchOptions) -> LayerResult:
    f = _fractions(opts)
    target = _target(p)
    S, C = target.shape
    a_lo, a_hi = p.act_stats.range(p.a_spec.per_channel)
    a_qp = params_from_range(a_lo, a_hi, p.a_spec)
    w_lo, w_hi = channel_minmax(p.weight, 0 if p.w_spec.per_channel else None)
    w_qp = params_from_range(w_lo, w_hi, p.w_spec)

    def cos_now() -> float:
        out = p.layer_forward(_quant_patches(p, p.patches, a_qp), _weight_cands(p.weight, w_qp))
        return float(cosine(out, target, (-1, -2)))

    before = cos_now()
    rounds = 0
    for rounds in range(1, opts.rounds + 1):
        prev = (a_qp.scale.clone(), w_qp.scale.clone())
        # activation scale, weight fixed
        wq = _weight_cands(p.weight, w_qp)
        cands = _candidate_params(a_lo, a_hi, p.a_spec, f)
        sims = []
        for a, b in _chunks(len(f), S * (C + p.patches.shape[1]), opts):
            xq = _quant_patches(p, p.patches, _slice(cands, a, b))
            sims.append(cosine(p.layer_forward(xq, wq), target, (-1, -2)))
        a_qp = _take(cands, int(torch.cat(sims).argmax()))
        # weight scale(s), activation fixed
        xq = _quant_patches(p, p.patches, a_qp)
        cands = _candidate_params(w_lo, w_hi, p.w_spec, f)
        sims = []
        for a, b in _chunks(len(f), S * C + p.weight.numel(), opts):
            out = p.layer_forward(xq, _weight_cands(p.weight, _slice(cands, a, b)))
            sims.append(cosine(out, target, (-1, -2)))
        w_qp = _take(cands, int(torch.cat(sims).argmax()))
        if torch.equal(prev[0], a_qp.scale) and torch.equal(prev[1], w_qp.scale):
            break
    after = cos_now()
    return LayerResult(p.name, w_qp, [a_qp], 1.0 - before, 1.0 - after, rounds,
                       info={"objective": "1 - cosine similarity"})


def easyquant_matmul(prob: MatmulProblem, opts: SearchOptions) -> LayerResult:
    f = _fractions(opts)
    ops = [prob.a, prob.b]
    qps: List[QParams] = [params_from_range(*st.range(False), sp.with_(per_channel=False))
                          for st, sp in zip(prob.stats, prob.specs)]

    def out_of(xa, xb):
        return xa @ xb

    def cos_now() -> float:
        return float(cosine(out_of(_quant_operand(prob.a, qps[0]), _quant_operand(prob.b, qps[1])),
                            prob.out_fp, (-1, -2, -3)))

    before = cos_now()
    rounds = 0
    for rounds in range(1, opts.rounds + 1):
        prev = [q.scale.clone() for q in qps]
        for which in (0, 1):
            other = _quant_operand(ops[1 - which], qps[1 - which])
            lo, hi = prob.stats[which].range(False)
            cands = _candidate_params(lo, hi, qps[which].spec, f)
            sims = []
            for a, b in _chunks(len(f), prob.out_fp.numel() + ops[which].numel(), opts):
                xq = _quant_operand(ops[which], _slice(cands, a, b))
                out = out_of(xq, other) if which == 0 else out_of(other, xq)
                sims.append(cosine(out, prob.out_fp, (-1, -2, -3)))
            qps[which] = _take(cands, int(torch.cat(sims).argmax()))
        if all(torch.equal(p_, q.scale) for p_, q in zip(prev, qps)):
            break
    after = cos_now()
    return LayerResult(prob.name, None, qps, 1.0 - before, 1.0 - after, rounds,
                       info={"objective": "1 - cosine similarity"})


def easyquant(p, opts: Optional[SearchOptions] = None) -> LayerResult:
    opts = opts or SearchOptions()
    return easyquant_matmul(p, opts) if isinstance(p, MatmulProblem) else easyquant_weighted(p, opts)

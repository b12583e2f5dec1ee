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
from .candidates import (candidate_params, chunks, fractions_for, quant_operand, quant_patches, slice_candidates,
                         take, weight_candidates)
from .hybrid import LayerResult
from .problem import MatmulProblem, SearchOptions, WeightedLayerProblem
from .rounds import alternate


def cosine(a: torch.Tensor, b: torch.Tensor, dims) -> torch.Tensor:
    """Cosine similarity of ``a`` (possibly candidate-batched) and ``b`` over ``dims``."""
    num = (a * b).sum(dims)
    den = (a * a).sum(dims).sqrt() * (b * b).sum(dims).sqrt()
    return num / den.clamp_min(1e-30)


def _same_scales(old, new) -> bool:
    return all(torch.equal(a.scale, b.scale) for a, b in zip(old, new))


def _target(p: WeightedLayerProblem) -> torch.Tensor:
    return p.layer_out_fp if p.layer_out_fp is not None else p.out_fp


def easyquant_weighted(p: WeightedLayerProblem, opts: SearchOptions) -> LayerResult:
    f = fractions_for(opts)
    target = _target(p)
    S, C = target.shape
    a_lo, a_hi = p.act_stats.range(p.a_spec.per_channel)
    a_qp = params_from_range(a_lo, a_hi, p.a_spec)
    w_lo, w_hi = channel_minmax(p.weight, 0 if p.w_spec.per_channel else None)
    w_qp = params_from_range(w_lo, w_hi, p.w_spec)

    def cos_now() -> float:
        out = p.layer_forward(quant_patches(p, p.patches, a_qp), weight_candidates(p.weight, w_qp))
        return float(cosine(out, target, (-1, -2)))

    before = cos_now()

    def input_step(s):
        a_qp, w_qp = s
        wq = weight_candidates(p.weight, w_qp)
        cands = candidate_params(a_lo, a_hi, p.a_spec, f)
        sims = []
        for a, b in chunks(len(f), S * (C + p.patches.shape[1]), opts):
            xq = quant_patches(p, p.patches, slice_candidates(cands, a, b))
            sims.append(cosine(p.layer_forward(xq, wq), target, (-1, -2)))
        return take(cands, int(torch.cat(sims).argmax())), w_qp

    def weight_step(s):
        a_qp, w_qp = s
        xq = quant_patches(p, p.patches, a_qp)
        cands = candidate_params(w_lo, w_hi, p.w_spec, f)
        sims = []
        for a, b in chunks(len(f), S * C + p.weight.numel(), opts):
            out = p.layer_forward(xq, weight_candidates(p.weight, slice_candidates(cands, a, b)))
            sims.append(cosine(out, target, (-1, -2)))
        return a_qp, take(cands, int(torch.cat(sims).argmax()))

    (a_qp, w_qp), rounds = alternate((a_qp, w_qp), (input_step, weight_step), _same_scales, opts)
    after = cos_now()
    return LayerResult(p.name, w_qp, [a_qp], 1.0 - before, 1.0 - after, rounds,
                       info={"objective": "1 - cosine similarity"})


def easyquant_matmul(prob: MatmulProblem, opts: SearchOptions) -> LayerResult:
    f = fractions_for(opts)
    ops = [prob.a, prob.b]
    qps: List[QParams] = [params_from_range(*st.range(False), sp.with_(per_channel=False))
                          for st, sp in zip(prob.stats, prob.specs)]

    def out_of(xa, xb):
        return xa @ xb

    def cos_now() -> float:
        return float(cosine(out_of(quant_operand(prob.a, qps[0]), quant_operand(prob.b, qps[1])),
                            prob.out_fp, (-1, -2, -3)))

    before = cos_now()

    def operand_step(which):
        def step(qps):
            other = quant_operand(ops[1 - which], qps[1 - which])
            lo, hi = prob.stats[which].range(False)
            cands = candidate_params(lo, hi, qps[which].spec, f)
            sims = []
            for a, b in chunks(len(f), prob.out_fp.numel() + ops[which].numel(), opts):
                xq = quant_operand(ops[which], slice_candidates(cands, a, b))
                out = out_of(xq, other) if which == 0 else out_of(other, xq)
                sims.append(cosine(out, prob.out_fp, (-1, -2, -3)))
            new = list(qps)
            new[which] = take(cands, int(torch.cat(sims).argmax()))
            return new
        return step
    qps, rounds = alternate(qps, (operand_step(0), operand_step(1)), _same_scales, opts)
    after = cos_now()
    return LayerResult(prob.name, None, qps, 1.0 - before, 1.0 - after, rounds,
                       info={"objective": "1 - cosine similarity"})


def easyquant(p, opts: Optional[SearchOptions] = None) -> LayerResult:
    opts = opts or SearchOptions()
    return easyquant_matmul(p, opts) if isinstance(p, MatmulProblem) else easyquant_weighted(p, opts)

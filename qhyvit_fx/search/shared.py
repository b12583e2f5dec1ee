"""One decision for a quantizer that several layers share (``passes/group_quantizers``), FX-free.

A group's quantizer is every member's: the input quantizer of each layer that reads the tensor and,
where the tensor is a layer's output, that layer's output quantizer.  Each candidate scale is scored
with the sum of the members' objectives (paper eq. 6 at each member's objective output, with that
layer's other quantizers as its own search chose them), so the group is searched for what it feeds,
not for one reader and then overwritten.  Readers that are convs or linears then refit their weight
quantizer to the shared input (one weight step).  Tensors in, decision out.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import torch

from ..quantizer import QParams, QSpec, fake_quant
from .candidates import candidate_params, chunks, fractions_for, quant_operand, quant_patches, take
from .hybrid import (Choice, LayerResult, _act_errors, _effective_weight, _fold_parts, _mm_err, _search_weight,
                     _w_err_direct, result_weight, rounded_codes)
from .objective import weighted_error
from .problem import ActStats, MatmulProblem, SearchOptions, WeightedLayerProblem


@dataclass
class SharedPoint:
    problem: object                 # WeightedLayerProblem or MatmulProblem of the member layer
    result: LayerResult             # that layer's own search result
    slot: str                       # 'in0', 'in1', ... or 'out'


def _stats(pt: SharedPoint) -> Optional[ActStats]:
    p = pt.problem
    if pt.slot == "out":
        return getattr(p, "o_stats", None)
    if isinstance(p, MatmulProblem):
        return p.stats[int(pt.slot[2:])]
    return p.act_stats


def _output_errors(p: WeightedLayerProblem, res: LayerResult, spec: QSpec, f: torch.Tensor,
                   opts: SearchOptions) -> Optional[torch.Tensor]:
    """Errors [n] of output-quantizer candidates on the layer's (or its bridge's) objective."""
    if p.o_stats is None:
        return None
    o = p.layer_forward(quant_patches(p, p.patches, res.inputs[0]), result_weight(p, res))
    if res.bias_delta is not None:
        o = o + res.bias_delta
    total = torch.zeros(len(f))
    for st, idx in _fold_parts(p, p.rows, opts, p.o_stats):
        if idx is not None and idx.numel() == 0:
            continue
        rows = o if idx is None else o[idx]
        ref, g2 = (p.out_fp, p.grad2) if idx is None else (p.out_fp[idx], p.grad2[idx])
        qp = candidate_params(st.lo, st.hi, spec, f)
        for a, b in chunks(len(f), rows.numel(), opts):
            oq = fake_quant(rows, qp.scale[a:b], qp.zero_point[a:b], spec.qmin, spec.qmax)
            if p.tail is not None:
                total[a:b] += weighted_error(p.tail(oq, idx), ref, g2, (-1, -2))
            else:
                total[a:b] += p.output_error(oq, slice(None) if idx is None else idx, ref, g2)
    return total


def point_errors(pt: SharedPoint, spec: QSpec, f: torch.Tensor, opts: SearchOptions) -> Optional[torch.Tensor]:
    """Errors [n] of the candidate fractions ``f`` for one member (None: it has no objective there)."""
    p, res = pt.problem, pt.result
    if isinstance(p, MatmulProblem):
        i = int(pt.slot[2:])
        other = quant_operand(p.b if i == 0 else p.a, res.inputs[1 - i])
        lines = p.a.shape[1] if i == 0 else p.b.shape[2]
        return _mm_err(p, i, candidate_params(*p.stats[i].range(False), spec, f), other, lines, opts)
    if pt.slot == "out":
        return _output_errors(p, res, spec, f, opts) if opts.shared_output_objective else None
    if res.migration is not None:           # (a group's readers never migrate; kept for edited annotations)
        return None
    return _act_errors(p, spec, f, result_weight(p, res), p.rows, opts)


def decide_shared(points: List[SharedPoint], spec: QSpec, opts: SearchOptions,
                  max_value: Optional[float] = None) -> Optional[Tuple[QParams, float, List[LayerResult]]]:
    """(the group's params, its summed objective, the members' results refitted to it), or None when
    no member has an objective for it (it then keeps its MinMax range).  ``max_value``: no candidate's
    range may reach past it (the ReLU6 in front of the quantizer, which the runtime drops only then)."""
    stats = next((s for s in map(_stats, points) if s is not None), None)
    if stats is None:
        return None
    with torch.no_grad():
        f = fractions_for(opts)
        if max_value is not None:
            qp = candidate_params(stats.lo, stats.hi, spec, f)
            inside = (spec.qmax - qp.zero_point.float()) * qp.scale <= max_value * (1 + 1e-6)
            # (none inside: the observed range itself passes the clip; take the fraction that ends there)
            f = f[inside] if bool(inside.any()) else torch.full((1,), max_value / float(stats.hi.clamp_min(1e-12)))
        total, used = torch.zeros(len(f)), 0
        for pt in points:
            e = point_errors(pt, spec, f, opts)
            if e is not None:
                total += e
                used += 1
        if not used:
            return None
        j = int(total.argmin())
        qp = take(candidate_params(stats.lo, stats.hi, spec, f[j:j + 1]), 0)
        return qp, float(total[j]), [_refit(pt, qp, opts) for pt in points]


def _refit(pt: SharedPoint, qp: QParams, opts: SearchOptions) -> LayerResult:
    """The member's result with the shared quantizer in its slot; a reader's weight searched again
    for it (kept unless strictly better), and its objective recomputed."""
    p, res = pt.problem, pt.result
    if pt.slot == "out":
        return replace(res, output=qp)
    i = int(pt.slot[2:])
    inputs = list(res.inputs)
    inputs[i] = qp
    if isinstance(p, MatmulProblem):
        qa, qb = quant_operand(p.a, inputs[0]), quant_operand(p.b, inputs[1])
        return replace(res, inputs=inputs,
                       error_after=float(weighted_error(qa @ qb, p.out_fp, p.grad2)))
    if res.migration is not None:
        return replace(res, inputs=inputs)
    xq = quant_patches(p, p.patches, qp)
    weight = _search_weight(p, xq, Choice(res.weight, ("own",)), opts, {}).qp
    codes = rounded_codes(p, weight, qp, None, opts)
    after = float(_w_err_direct(p, xq, _effective_weight(p, weight, None, codes)[None], p.rows, opts).sum())
    return replace(res, weight=weight, inputs=inputs, error_after=after, weight_codes=codes)

"""Q-HyViT hybrid reconstruction search (paper Algorithm 1), FX-free.

For one layer, alternately for the weight and for each input activation,
for ``rounds`` rounds: choose granularity (per-tensor / per-channel), scheme
(symmetric / asymmetric) and scale (candidates ``f * minmax_scale`` for the
fractions f of the released code) minimising the Hessian-guided output error
sum g^2 (O_q - O_fp)^2.

Exact speed-ups (same decisions as the exhaustive search):
* the error of a weight quantizer decomposes over output channels when the
  objective is the layer's own output; per-channel scales are then chosen
  independently per channel, and the error is a quadratic form in the
  weight perturbation: E_c(d) = d' H_c d + 2 d' b_c + r_c with
  H_c = sum_s g^2_sc x_s x_s'.  Building H_c once makes each candidate cost
  Kg^2 instead of rows * Kg (used when that is cheaper);
* a round in which no decision changes ends the search (the next would
  repeat it).
Approximate speed-up (checked against the exhaustive search in the tests):
* coarse-to-fine: every candidate is ranked on ``coarse_rows`` rows, and the
  ``topk`` best (per channel where the error decomposes) are re-scored on all
  rows, together with the current choice, so a round never increases the
  error on the sampled rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Tuple

import torch

from ..quantizer import QParams, QSpec, channel_minmax, fake_quant, params_from_range, weight_column_ratios
from .candidates import (candidate_params, chunks, fractions_for, one, quant_operand, quant_patches,  # noqa: F401
                         slice_candidates, spec_combos, take, weight_candidates)
from .objective import weighted_error
from .problem import ActStats, MatmulProblem, SearchOptions, WeightedLayerProblem
from .rounding import dequantize, round_weight
from .rounds import alternate


@dataclass
class Choice:
    qp: QParams
    key: tuple                         # identifies the choice, for change detection
    frac: float = 1.0                  # candidate fraction of the MinMax range

    @property
    def spec(self) -> QSpec:
        return self.qp.spec


@dataclass
class LayerResult:
    name: str
    weight: Optional[QParams]
    inputs: List[QParams]
    error_before: float
    error_after: float
    rounds: int
    evaluations: int = 0
    info: dict = field(default_factory=dict)
    bias_delta: Optional[torch.Tensor] = None     # added to the layer bias (bias correction)
    output: Optional[QParams] = None              # searched output quantizer
    migration: Optional[torch.Tensor] = None      # [K] input-channel ratios moved into the weight
    weight_codes: Optional[torch.Tensor] = None   # [C, Kg] int8 codes other than round-to-nearest (rounding.py)


# ---- errors of weighted layers -------------------------------------------------------------

def _rows(n: int, coarse: int, opts: SearchOptions) -> int:
    return n if opts.exhaustive else min(n, max(1, coarse))


def _halving(err_of, n: int, total: int, opts: SearchOptions) -> Tuple[int, float]:
    """Successive halving over candidates 0..n-1: score every candidate on the
    first ``coarse_rows`` rows, keep a quarter (at least ``topk``) on 4x the
    rows, ... and pick the best of the last ``topk`` scored on every row.
    ``err_of(idx, rows)`` returns the errors of candidates ``idx`` on the first
    ``rows`` rows.  Returns (candidate, its error on every row)."""
    cands = torch.arange(n)
    rows = _rows(total, opts.coarse_rows, opts)
    while rows < total and len(cands) > opts.topk:
        e = err_of(cands, rows)
        keep = max(opts.topk, len(cands) // 4)
        cands = cands[torch.topk(e, min(keep, len(cands)), largest=False).indices.sort().values]
        rows = min(total, rows * 4)
    e = err_of(cands, total)
    j = int(e.argmin())
    return int(cands[j]), float(e[j])


def _w_err_direct(p: WeightedLayerProblem, xq: torch.Tensor, wq: torch.Tensor, rows: int, opts: SearchOptions
                  ) -> torch.Tensor:
    """Errors of candidate weights wq [n, C, Kg] on the first ``rows`` rows:
    [n, C] without a tail (per output channel), [n] with one."""
    x, out, g2 = xq[:rows], p.out_fp[:rows], p.grad2[:rows]
    res = []
    for a, b in chunks(wq.shape[0], rows * max(wq.shape[1], out.shape[1]), opts):
        o = p.layer_forward(x, wq[a:b])
        if p.tail is not None:
            o = p.tail(o, None)
        e = weighted_error(o, out, g2, -2)
        res.append(e.sum(-1) if p.tail is not None else e)
    return torch.cat(res)


class _Gram:
    """Per-output-channel quadratic form of the weight error (no tail)."""

    def __init__(self, p: WeightedLayerProblem, xq: torch.Tensor, opts: SearchOptions):
        S, K = xq.shape
        C, Kg = p.weight.shape
        g = p.groups
        Cg = C // g
        xg = xq.reshape(S, g, Kg)
        o = p.layer_forward(xq, p.weight)
        r = o - p.out_fp                                                 # [S, C]
        gr = p.grad2 * r
        self.const = weighted_error(o, p.out_fp, p.grad2, 0)             # [C]
        self.H = torch.empty(C, Kg, Kg)
        self.b = torch.empty(C, Kg)
        grp = torch.arange(C) // Cg
        step = max(1, opts.chunk_elems // max(1, S * Kg))
        for c0 in range(0, C, step):
            c1 = min(C, c0 + step)
            xc = xg[:, grp[c0:c1], :].permute(1, 0, 2)                   # [c, S, Kg]
            wx = xc * p.grad2[:, c0:c1].t().unsqueeze(-1)
            self.H[c0:c1] = wx.transpose(1, 2) @ xc
            self.b[c0:c1] = (xc * gr[:, c0:c1].t().unsqueeze(-1)).sum(1)

    def errors(self, delta: torch.Tensor) -> torch.Tensor:
        """delta [n, C, Kg] -> [n, C]."""
        hd = torch.einsum("nck,ckl->ncl", delta, self.H)
        return (hd * delta).sum(-1) + 2 * (delta * self.b).sum(-1) + self.const


def _use_gram(p: WeightedLayerProblem, n_combos: int, n_fracs: int, opts: SearchOptions) -> bool:
    if p.tail is not None or opts.exhaustive:
        return False
    C, Kg = p.weight.shape
    if C * Kg * Kg > opts.quadratic_max_elems:
        return False
    # multiply-adds: build H once + every candidate as a quadratic form, vs. every candidate
    # on the coarse rows + the top-k of each combo on all rows
    rows, n = p.rows, n_combos * n_fracs
    gram = C * Kg * Kg * (rows + n)
    direct = n * _rows(rows, opts.coarse_rows, opts) * C * Kg + n_combos * opts.topk * rows * C * Kg
    return gram < direct


def _search_weight(p: WeightedLayerProblem, xq: torch.Tensor, cur: Optional[Choice], opts: SearchOptions,
                   stats: dict) -> Choice:
    f = fractions_for(opts)
    combos = spec_combos(p.w_spec, opts, per_channel_ok=True, asym_ok=opts.weight_asym_ok, asym_signed=True)
    gram = _Gram(p, xq, opts) if _use_gram(p, len(combos), len(f), opts) else None
    decomposable = p.tail is None
    best: Optional[Tuple[float, Choice]] = None
    for spec in combos:
        lo, hi = channel_minmax(p.weight, 0 if spec.per_channel else None)
        qp = candidate_params(lo, hi, spec, f)
        wq = weight_candidates(p.weight, qp)                                 # [n, C, Kg]
        stats["evals"] = stats.get("evals", 0) + len(f)
        if gram is not None:
            e = gram.errors(wq - p.weight)                               # exact, all rows
            choice, err = _pick_weight(qp, e, spec, per_channel_decomp=True)
        else:
            rows = _rows(p.rows, opts.coarse_rows, opts)
            e = _w_err_direct(p, xq, wq, rows, opts)
            if rows < p.rows:                                            # re-score the top-k on every row
                if decomposable and spec.per_channel:
                    k = min(opts.topk, len(f))
                    top = torch.topk(e, k, dim=0, largest=False).indices          # [k, C]
                    c = torch.arange(wq.shape[1])
                    mixed = wq[top, c]                                            # [k, C, Kg]
                    ef = _w_err_direct(p, xq, mixed, p.rows, opts)                # [k, C]
                    j = ef.argmin(0)
                    idx = top[j, c]
                    choice = Choice(take(qp, idx), (spec.per_channel, spec.symmetric, tuple(idx.tolist())))
                    err = float(ef[j, c].sum())
                else:
                    def err_of(idx, r, wq=wq):
                        ev = _w_err_direct(p, xq, wq[idx], r, opts)
                        return ev.sum(-1) if ev.dim() == 2 else ev
                    j, err = _halving(err_of, len(f), p.rows, opts)
                    choice = Choice(take(qp, j), (spec.per_channel, spec.symmetric, j), float(f[j]))
            else:
                choice, err = _pick_weight(qp, e, spec, per_channel_decomp=decomposable)
        if best is None or err < best[0]:
            best = (err, choice)
    return _keep_better(best, cur, lambda ch: _weight_error(p, xq, ch, gram, opts))


def _pick_weight(qp: QParams, e: torch.Tensor, spec: QSpec, per_channel_decomp: bool) -> Tuple[Choice, float]:
    if e.dim() == 2 and spec.per_channel and per_channel_decomp:
        idx = e.argmin(0)
        err = float(e.gather(0, idx[None]).sum())
        return Choice(take(qp, idx), (spec.per_channel, spec.symmetric, tuple(idx.tolist()))), err
    tot = e.sum(-1) if e.dim() == 2 else e
    j = int(tot.argmin())
    return Choice(take(qp, j), (spec.per_channel, spec.symmetric, j)), float(tot[j])


def _weight_error(p: WeightedLayerProblem, xq: torch.Tensor, ch: Choice, gram, opts) -> float:
    wq = weight_candidates(p.weight, one(ch.qp))
    if gram is not None:
        return float(gram.errors(wq - p.weight).sum())
    e = _w_err_direct(p, xq, wq, p.rows, opts)
    return float(e.sum())


def _keep_better(best, cur: Optional[Choice], err_of) -> Choice:
    """Keep the current choice unless the new one is strictly better on all rows."""
    if cur is None or best is None:
        return best[1] if best else cur
    if best[1].key == cur.key:
        return best[1]
    cur_err = err_of(cur)
    return best[1] if best[0] < cur_err else cur


# ---- activation search of weighted layers --------------------------------------------------

def _fold_parts(p: WeightedLayerProblem, rows: int, opts: SearchOptions, stats: Optional[ActStats] = None):
    """[(stats used to quantize, row indices or None for all)] covering the first ``rows`` rows, for
    the layer input (``stats`` None) or another tensor's statistics (the output's).
    With K-fold validation, the rows of each fold are quantized with the ranges
    of the other folds' images, so a candidate is scored by how well its ranges
    generalise to unseen images (challenge C1: per-channel ranges from few
    images clip values that new images produce)."""
    stats = p.act_stats if stats is None else stats
    if opts.act_cv and stats.folds is not None and p.row_fold is not None:
        fold = p.row_fold[:rows]
        return [(st, (fold == k).nonzero().squeeze(1)) for k, st in enumerate(stats.folds)]
    return [(stats, None)]


def _act_errors(p: WeightedLayerProblem, spec: QSpec, f: torch.Tensor, wq: torch.Tensor, rows: int,
                opts: SearchOptions) -> torch.Tensor:
    """Errors [n] of input quantizers (``spec``, fractions ``f``) on the first ``rows`` rows."""
    total = torch.zeros(len(f))
    for st, idx in _fold_parts(p, rows, opts):
        if idx is None:
            x, out, g2 = p.patches[:rows], p.out_fp[:rows], p.grad2[:rows]
        elif idx.numel() == 0:
            continue
        else:
            x, out, g2 = p.patches[idx], p.out_fp[idx], p.grad2[idx]
        qp = candidate_params(*st.range(spec.per_channel), spec, f)
        r = x.shape[0]
        for a, b in chunks(len(f), r * max(x.shape[1], out.shape[1]), opts):
            o = p.layer_forward(quant_patches(p, x, slice_candidates(qp, a, b)), wq)
            if p.tail is not None:
                o = p.tail(o, idx)
            total[a:b] += weighted_error(o, out, g2, (-1, -2))
    return total


def _search_act(p: WeightedLayerProblem, wq_for, cur: Optional[Choice], opts: SearchOptions,
                stats: dict) -> Choice:
    """``wq_for(spec)``: the layer's effective quantized weight [C, Kg] under input spec ``spec``
    (with a migrated per-channel input the weight holds W * m and so depends on it)."""
    per_channel_ok = p.act_per_channel_ok and p.act_stats.ch_lo is not None and (opts.act_migrate or
                                                                                  not p.act_migrate)
    combos = spec_combos(p.a_spec, opts if opts.act_scheme_search else replace(opts, search_scheme=False),
                     per_channel_ok=per_channel_ok,
                     asym_ok=not p.a_spec.symmetric or opts.act_scheme_search, asym_signed=False)
    best = None
    for spec in combos:
        f = fractions_for(opts, widen=spec.per_channel)     # per-channel ranges may also widen past beta
        stats["evals"] = stats.get("evals", 0) + len(f)
        wq = wq_for(spec)
        j, err = _halving(lambda idx, r: _act_errors(p, spec, f[idx], wq, r, opts), len(f), p.rows, opts)
        qp = candidate_params(*p.act_stats.range(spec.per_channel), spec, f[j:j + 1])
        best = best if best is not None and best[0] <= err else (err, Choice(take(qp, 0), (
            spec.per_channel, spec.symmetric, j), float(f[j])))

    def err_of(ch: Choice) -> float:
        return float(_act_errors(p, ch.spec, torch.tensor([ch.frac]), wq_for(ch.spec), p.rows, opts)[0])
    return _keep_better(best, cur, err_of)


# ---- migrated per-channel inputs -----------------------------------------------------------
# Integer kernels read one input scale.  Per-channel codes q_c = round(x_c / s_c) + z_c read with the
# one scale s_r = max s_c are x_c / m_c (m_c = s_c / s_r, up to a zero-point constant that the bias
# absorbs); a weight W * m (columns) quantized per output channel undoes it.  So the layer computes
# x_hat @ (Q(W * m) / m)^T: the weight quantizer acts on W * m, and the search scores exactly that.
# A padded or grouped conv reads its padding as the one zero point, so there the channels share it
# (candidates.shared_zero_point_stats aligns their ranges) and no constant is left to absorb.

def _migration(p: WeightedLayerProblem, spec: QSpec, qp: Optional[QParams] = None) -> Optional[torch.Tensor]:
    """Input-channel ratios m [K] of a migrated per-channel input (None when the input is not one)."""
    if not (p.act_migrate and spec.per_channel):
        return None
    if qp is None:
        qp = params_from_range(*p.act_stats.range(True), spec)
    return qp.scale / qp.scale.max()


def _column_ratios(p: WeightedLayerProblem, m: torch.Tensor) -> torch.Tensor:
    """m per weight column: [1, K] for an ungrouped layer, [C, Kg] for a grouped conv."""
    return weight_column_ratios(m[p.col_channel], p.groups, p.weight.shape[0])


def _weight_in(p: WeightedLayerProblem, m: Optional[torch.Tensor]) -> torch.Tensor:
    return p.weight if m is None else p.weight * _column_ratios(p, m)


def _moved(qp: QParams, w_from: torch.Tensor, w_to: torch.Tensor) -> QParams:
    """Weight params for ``w_to`` with the same clipping, relative to the MinMax range, as ``qp``
    has for ``w_from`` (the weight choice carried across a change of the input's migration)."""
    axis = 0 if qp.spec.per_channel else None
    a = params_from_range(*channel_minmax(w_from, axis), qp.spec)
    b = params_from_range(*channel_minmax(w_to, axis), qp.spec)
    return QParams(qp.spec, (qp.scale / a.scale * b.scale).clamp_min(1e-8), b.zero_point, b.zp_overflow)


def _effective_weight(p: WeightedLayerProblem, wqp: QParams, m: Optional[torch.Tensor],
                      codes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The quantized weight [C, Kg] as the layer applies it to x_hat (Q(W * m) / m); ``codes``: the
    integer codes when they are not round-to-nearest."""
    wq = weight_candidates(_weight_in(p, m), one(wqp))[0] if codes is None else dequantize(codes, wqp)
    return wq if m is None else wq / _column_ratios(p, m)


def result_weight(p: WeightedLayerProblem, res: "LayerResult") -> torch.Tensor:
    """The effective quantized weight [C, Kg] of a weighted layer's search result."""
    return _effective_weight(p, res.weight, res.migration, res.weight_codes)


def rounded_codes(p: WeightedLayerProblem, wqp: QParams, in_qp: QParams, m: Optional[torch.Tensor],
                  opts: SearchOptions) -> Optional[torch.Tensor]:
    """Weight codes from the rounding that ``opts.weight_rounding`` names (None: round-to-nearest is
    kept, by choice or because it scored better on the layer objective)."""
    if opts.weight_rounding == "nearest":
        return None
    xq = quant_patches(p, p.patches, in_qp)
    x_dom = xq if m is None else xq / m[p.col_channel][None, :]

    def err_of(wq_dom):
        wq = wq_dom if m is None else wq_dom / _column_ratios(p, m)
        return float(_w_err_direct(p, xq, wq[None], p.rows, opts).sum())
    codes, _, _ = round_weight(x_dom, _weight_in(p, m), wqp, p.grad2.mean(-1), p.groups, err_of)
    return codes


# ---- matmul --------------------------------------------------------------------------------

def _mm_err(prob: MatmulProblem, which: int, qp: QParams, other_q: torch.Tensor, r: int, opts: SearchOptions
            ) -> torch.Tensor:
    """Errors [n] of candidates ``qp`` for operand ``which`` on ``r`` of its
    rows (A) or columns (B), the same random subset in every matrix."""
    g = torch.Generator().manual_seed(which)
    if which == 0:
        idx = torch.randperm(prob.a.shape[1], generator=g, device="cpu")[:r]
        x, out, g2 = prob.a[:, idx], prob.out_fp[:, idx], prob.grad2[:, idx]
    else:
        idx = torch.randperm(prob.b.shape[2], generator=g, device="cpu")[:r]
        x, out, g2 = prob.b[:, :, idx], prob.out_fp[:, :, idx], prob.grad2[:, :, idx]
    res = []
    for a, b in chunks(qp.scale.shape[0], out.numel() + x.numel(), opts):
        xq = quant_operand(x, slice_candidates(qp, a, b))
        res.append(weighted_error(xq @ other_q if which == 0 else other_q @ xq, out, g2, (-1, -2, -3)))
    return torch.cat(res)


def _search_mm(prob: MatmulProblem, which: int, other_q: torch.Tensor, cur: Optional[Choice], opts: SearchOptions,
               stats: dict) -> Choice:
    f = fractions_for(opts)
    combos = spec_combos(prob.specs[which], opts if opts.act_scheme_search else replace(opts, search_scheme=False),
                     per_channel_ok=False, asym_ok=not prob.specs[which].symmetric or opts.act_scheme_search,
                     asym_signed=False)
    lines = prob.a.shape[1] if which == 0 else prob.b.shape[2]          # rows of A / columns of B
    per_line = prob.a.shape[0] * (prob.b.shape[2] if which == 0 else prob.a.shape[1])
    line_opts = _mats_opts(opts, per_line)
    best = None
    for spec in combos:
        lo, hi = prob.stats[which].range(False)
        qp = candidate_params(lo, hi, spec, f)
        stats["evals"] = stats.get("evals", 0) + len(f)

        def err_of(idx, r, qp=qp):
            return _mm_err(prob, which, QParams(qp.spec, qp.scale[idx], qp.zero_point[idx]), other_q, r, opts)
        j, err = _halving(err_of, len(f), lines, line_opts)
        ch = Choice(take(qp, j), (False, spec.symmetric, j), float(f[j]))
        if best is None or err < best[0]:
            best = (err, ch)

    def err_of_choice(ch: Choice) -> float:
        return float(_mm_err(prob, which, one(ch.qp), other_q, lines, opts)[0])
    return _keep_better(best, cur, err_of_choice)


def _mats_opts(opts: SearchOptions, outputs_per_line: int) -> SearchOptions:
    """Successive halving over rows of A / columns of B: the coarse budget
    (in output rows of ~a layer's width) converted to lines of the operand."""
    from dataclasses import replace
    return replace(opts, coarse_rows=max(1, opts.coarse_rows * 64 // max(1, outputs_per_line)))


# ---- drivers -------------------------------------------------------------------------------

def _minmax_choice(lo, hi, spec: QSpec) -> Choice:
    return Choice(params_from_range(lo, hi, spec), (spec.per_channel, spec.symmetric, "minmax"))


def search_weighted(p: WeightedLayerProblem, opts: SearchOptions) -> LayerResult:
    """Alternate weight / input search for a conv or linear layer.  The weight choice lives on
    W * m where the input is a migrated per-channel one (m: its channel ratios), else on W."""
    with torch.no_grad():
        w_lo, w_hi = channel_minmax(p.weight, 0 if p.w_spec.per_channel else None)
        wch = _minmax_choice(w_lo, w_hi, p.w_spec)
        a_pc = p.a_spec.per_channel and p.act_per_channel_ok and p.act_stats.ch_lo is not None
        a_spec = p.a_spec.with_(per_channel=a_pc)
        ach = _minmax_choice(*p.act_stats.range(a_pc), a_spec)
        m = _migration(p, ach.spec, ach.qp)
        if m is not None:
            wch = _minmax_choice(*channel_minmax(_weight_in(p, m), 0 if p.w_spec.per_channel else None), p.w_spec)
        before = _total_weighted(p, wch, ach, m, opts)
        stats: dict = {}

        def weight_step(s):
            wch, ach, m = s
            xq = quant_patches(p, p.patches, ach.qp)
            if m is None:
                return _search_weight(p, xq, wch, opts, stats), ach, m
            # the weight quantizer acts on W * m, fed x_hat / m
            return _search_weight(replace(p, weight=_weight_in(p, m)), xq / m[p.col_channel][None, :], wch, opts,
                                  stats), ach, m

        def input_step(s):
            new_w, ach, m = s
            w_dom = _weight_in(p, m)

            def wq_for(spec):
                m2 = _migration(p, spec)
                return _effective_weight(p, _moved(new_w.qp, w_dom, _weight_in(p, m2)), m2)
            new_a = _search_act(p, wq_for, ach, opts, stats)
            m_new = _migration(p, new_a.spec, new_a.qp)
            if m_new is not None or m is not None:
                new_w = Choice(_moved(new_w.qp, w_dom, _weight_in(p, m_new)), new_w.key + (new_a.key,), new_w.frac)
            return new_w, new_a, m_new

        (wch, ach, m), rounds = alternate(
            (wch, ach, m), (weight_step, input_step), lambda s, t: s[0].key == t[0].key and s[1].key == t[1].key,
            opts, objective=lambda s: _total_weighted(p, *s, opts), start=before)
        codes = rounded_codes(p, wch.qp, ach.qp, m, opts)
        wq = _effective_weight(p, wch.qp, m, codes)
        after = float(_w_err_direct(p, quant_patches(p, p.patches, ach.qp), wq[None], p.rows, opts).sum())
        delta = None
        if opts.bias_correction and p.tail is None:
            # empirical bias correction: remove the mean output shift the quantizers cause
            xq = quant_patches(p, p.patches, ach.qp)
            delta = -(p.layer_forward(xq, wq) - p.out_fp).mean(0)
        out_qp = _search_output(p, wq, ach, opts) if p.o_spec is not None and p.tail is None else None
    return LayerResult(p.name, wch.qp, [ach.qp], before, after, rounds, stats.get("evals", 0), bias_delta=delta,
                       output=out_qp, migration=None if m is None else m.clone(), weight_codes=codes)


# the output quantizer's lower end may shrink on its own: a conv output read by SiLU / GELU has a long
# negative tail that the activation flattens (its gradient there is ~0), so clipping it is free while
# the finer step helps the positive side.  Fractions of the observed minimum, 1 = MinMax's.
OUTPUT_LO_FRACTIONS = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08, 0.05)


def output_candidates(lo, hi, spec: QSpec, f: torch.Tensor) -> QParams:
    """Candidates [len(lo fractions) * len(f)] for an output quantizer: every lower-end fraction of
    OUTPUT_LO_FRACTIONS (asymmetric only) with every scale fraction f."""
    lows = OUTPUT_LO_FRACTIONS if not spec.symmetric else (1.0,)
    qps = [params_from_range(lo * a, hi, spec, fraction=f) for a in lows]
    return QParams(spec, torch.cat([q.scale for q in qps]), torch.cat([q.zero_point for q in qps]))


def _search_output(p: WeightedLayerProblem, wq: torch.Tensor, ach: Choice, opts: SearchOptions) -> QParams:
    """Range of the output quantizer (per-tensor, its annotated scheme) for the chosen (effective)
    weight and input quantizer: both ends (``output_candidates``), same objective, K-fold validation
    and successive halving."""
    f = fractions_for(opts)
    o = p.layer_forward(quant_patches(p, p.patches, ach.qp), wq)
    spec = p.o_spec

    def err_of(idx, rows):
        total = torch.zeros(len(idx))
        for st, ridx in _fold_parts(p, rows, opts, p.o_stats):
            if ridx is None:
                ridx = slice(0, rows)
            elif ridx.numel() == 0:
                continue
            qp = output_candidates(st.lo, st.hi, spec, f)
            x, ref, g2 = o[ridx], p.out_fp[ridx], p.grad2[ridx]
            for a, b in chunks(len(idx), x.numel(), opts):
                oq = fake_quant(x, qp.scale[idx[a:b]], qp.zero_point[idx[a:b]], spec.qmin, spec.qmax)
                total[a:b] += p.output_error(oq, ridx, ref, g2)
        return total
    cands = output_candidates(p.o_stats.lo, p.o_stats.hi, spec, f)
    j, _ = _halving(err_of, cands.scale.numel(), p.rows, opts)
    return take(cands, j)


def _total_weighted(p: WeightedLayerProblem, wch: Choice, ach: Choice, m, opts: SearchOptions) -> float:
    xq = quant_patches(p, p.patches, ach.qp)
    wq = _effective_weight(p, wch.qp, m)[None]
    return float(_w_err_direct(p, xq, wq, p.rows, opts).sum())


def search_matmul(prob: MatmulProblem, opts: SearchOptions) -> LayerResult:
    """Alternate the two operands' quantizers of a matmul."""
    with torch.no_grad():
        chs = [_minmax_choice(*prob.stats[i].range(False), prob.specs[i].with_(per_channel=False)) for i in (0, 1)]
        ops = [prob.a, prob.b]

        def total(c):
            qa, qb = quant_operand(prob.a, c[0].qp), quant_operand(prob.b, c[1].qp)
            return float(weighted_error(qa @ qb, prob.out_fp, prob.grad2))
        before = total(chs)
        stats: dict = {}

        def operand_step(i):
            def step(chs):
                other = quant_operand(ops[1 - i], chs[1 - i].qp)
                new = list(chs)
                new[i] = _search_mm(prob, i, other, chs[i], opts, stats)
                return new
            return step
        chs, rounds = alternate(chs, (operand_step(0), operand_step(1)),
                                lambda s, t: all(a.key == b.key for a, b in zip(s, t)), opts,
                                objective=total, start=before)
        after = total(chs)
    return LayerResult(prob.name, None, [c.qp for c in chs], before, after, rounds, stats.get("evals", 0))


def hybrid_step(p, opts: SearchOptions) -> LayerResult:
    """Q-HyViT's step for one layer problem (weighted layer or activation matmul)."""
    return search_matmul(p, opts) if isinstance(p, MatmulProblem) else search_weighted(p, opts)

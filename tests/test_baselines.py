"""Baseline methods: their defining behaviour on small synthetic problems, and end to end."""
import torch

import qhyvit_fx as q
from qhyvit_fx.quantizer import QSpec, channel_minmax, params_from_range
from qhyvit_fx.search import easyquant as EQ
from qhyvit_fx.search import hybrid as H
from qhyvit_fx.search.problem import ActStats, MatmulProblem, SearchOptions, WeightedLayerProblem


def _linear_problem(seed=0, S=300, K=24, C=12):
    g = torch.Generator().manual_seed(seed)
    # heavy-tailed inputs (Student t, 3 degrees of freedom), like transformer activations: their
    # MinMax range wastes most 4-bit codes on a few outliers
    x = torch.randn(S, K, generator=g) / (torch.randn(3, S, K, generator=g).pow(2).sum(0) / 3).sqrt()
    w = torch.randn(C, K, generator=g) * 0.1
    b = torch.randn(C, generator=g) * 0.01
    out = x @ w.T + b
    return WeightedLayerProblem(
        name="fc", patches=x, weight=w, bias=b, out_fp=out, grad2=torch.ones_like(out), groups=1,
        col_channel=torch.arange(K), act_stats=ActStats(x.min(), x.max(), x.min(0).values, x.max(0).values),
        w_spec=QSpec(bits=4, symmetric=True, per_channel=True), a_spec=QSpec(bits=4, symmetric=False, signed=False))


def test_easyquant_improves_cosine_similarity_and_keeps_the_scheme():
    p = _linear_problem()
    opts = SearchOptions(rounds=3)
    res = EQ.easyquant(p, opts)
    assert res.error_after < 0.6 * res.error_before          # 1 - cos falls by at least 40 %
    assert res.weight.spec == p.w_spec and res.inputs[0].spec == p.a_spec
    assert res.weight.scale.shape == (12,) and res.inputs[0].scale.dim() == 0
    # recompute the final cosine similarity independently
    xq = H._quant_patches(p, p.patches, res.inputs[0])
    wq = H._weight_cands(p.weight, res.weight)
    cos = torch.nn.functional.cosine_similarity((xq @ wq.T + p.bias).flatten(), p.out_fp.flatten(), dim=0)
    assert abs((1 - float(cos)) - res.error_after) < 1e-5


def test_easyquant_activation_step_is_the_argmax_over_candidates():
    p = _linear_problem(seed=1)
    opts = SearchOptions(rounds=1)
    res = EQ.easyquant(p, opts)
    # with the weight at MinMax, brute force over every activation candidate
    lo, hi = channel_minmax(p.weight, 0)
    wq = H._weight_cands(p.weight, params_from_range(lo, hi, p.w_spec))
    f = H._fractions(opts)
    best, best_f = -2.0, None
    for fi in f:
        qp = params_from_range(p.act_stats.lo, p.act_stats.hi, p.a_spec, fraction=fi)
        c = float(EQ.cosine(H._quant_patches(p, p.patches, qp) @ wq.T + p.bias, p.out_fp, (-1, -2)))
        if c > best:
            best, best_f = c, fi
    want = params_from_range(p.act_stats.lo, p.act_stats.hi, p.a_spec, fraction=best_f)
    assert torch.allclose(res.inputs[0].scale, want.scale)


def test_easyquant_matmul_improves_cosine_similarity():
    g = torch.Generator().manual_seed(3)
    a = torch.softmax(torch.randn(4, 16, 16, generator=g) * 3, -1)
    b = torch.randn(4, 16, 8, generator=g)
    b[0, 0, 0] = 25.0
    out = a @ b
    st = [ActStats(t.min(), t.max()) for t in (a, b)]
    spec = QSpec(bits=4, symmetric=False, signed=False)
    prob = MatmulProblem("mm", a, b, out, torch.ones_like(out), st, [spec, spec])
    res = EQ.easyquant(prob, SearchOptions(rounds=2))
    assert res.weight is None and len(res.inputs) == 2
    assert res.error_after < 0.7 * res.error_before


def test_easyquant_end_to_end(tiny, tiny_images):
    cfg = q.QConfig(w_bits=4, a_bits=8, method="easyquant", progress=False)
    pm = q.prepare(tiny, tiny_images[:1], cfg)
    q.calibrate(pm, tiny_images)
    qm = q.convert(pm)
    dec = pm.meta["qhyvit_decisions"]
    assert dec.meta["method"] == "easyquant"
    errs = [(d.error["before"], d.error["after"]) for d in dec.layers.values()]
    assert len(errs) == len(dec.layers) > 0
    assert all(a <= b + 1e-6 for b, a in errs)               # never worse than MinMax
    assert sum(a for _, a in errs) < 0.8 * sum(b for b, _ in errs)
    with torch.no_grad():
        ref, out = tiny(tiny_images), qm(tiny_images)
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.9

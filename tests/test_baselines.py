"""Baseline methods: their defining behaviour on small synthetic problems, and end to end."""
import math

import torch

import qhyvit_fx as q
from qhyvit_fx.quantizer import QSpec, channel_minmax, params_from_range
from qhyvit_fx.search import easyquant as EQ
from qhyvit_fx.search import hybrid as H
from qhyvit_fx.search.problem import ActStats, MatmulProblem, SearchOptions, WeightedLayerProblem
from qhyvit_fx.state import quant_state


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
    xq = H.quant_patches(p, p.patches, res.inputs[0])
    wq = H.weight_candidates(p.weight, res.weight)
    cos = torch.nn.functional.cosine_similarity((xq @ wq.T + p.bias).flatten(), p.out_fp.flatten(), dim=0)
    assert abs((1 - float(cos)) - res.error_after) < 1e-5


def test_easyquant_activation_step_is_the_argmax_over_candidates():
    p = _linear_problem(seed=1)
    opts = SearchOptions(rounds=1)
    res = EQ.easyquant(p, opts)
    # with the weight at MinMax, brute force over every activation candidate
    lo, hi = channel_minmax(p.weight, 0)
    wq = H.weight_candidates(p.weight, params_from_range(lo, hi, p.w_spec))
    f = H.fractions_for(opts)
    best, best_f = -2.0, None
    for fi in f:
        qp = params_from_range(p.act_stats.lo, p.act_stats.hi, p.a_spec, fraction=fi)
        c = float(EQ.cosine(H.quant_patches(p, p.patches, qp) @ wq.T + p.bias, p.out_fp, (-1, -2)))
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
    dec = quant_state(pm).decisions
    assert dec.meta["method"] == "easyquant"
    errs = [(d.error["before"], d.error["after"]) for d in dec.layers.values()]
    assert len(errs) == len(dec.layers) > 0
    assert all(a <= b + 1e-6 for b, a in errs)               # never worse than MinMax
    assert sum(a for _, a in errs) < 0.8 * sum(b for b, _ in errs)
    with torch.no_grad():
        ref, out = tiny(tiny_images), qm(tiny_images)
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.9


# ---- PTQ4ViT / RepQ-ViT / FQ-ViT quantizers --------------------------------------------------

from qhyvit_fx.quantizer import log_quant, ptf_params, quant_dequant, twin_uniform_quant  # noqa: E402
from qhyvit_fx.search import nonuniform as NU  # noqa: E402


def test_twin_uniform_softmax_uses_the_fine_range_below_its_end():
    bits, m = 6, 32
    s2 = 1.0 / m
    s1 = s2 / 16
    x = torch.linspace(0, 1, 2001)
    y = twin_uniform_quant(x, torch.tensor(s1), torch.tensor(s2), bits, signed_low=False)
    small = x < (m - 0.5) * s1
    # small values sit on the fine grid, large ones on the coarse grid
    assert torch.allclose(y[small], torch.round(x[small] / s1).clamp(0, m - 1) * s1)
    assert torch.allclose(y[~small], torch.round(x[~small] / s2).clamp(0, m - 1) * s2)
    assert (y[small] - x[small]).abs().max() <= s1 / 2 + 1e-7
    assert len(torch.unique(y)) <= 2 * m                       # two (bits-1)-bit ranges
    # on softmax-like values (mostly tiny) it beats a uniform quantizer with the same bits
    p = torch.softmax(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) * 2, -1)
    uni = torch.round(p * (2 ** bits - 1)).clamp(0, 2 ** bits - 1) / (2 ** bits - 1)
    tw = twin_uniform_quant(p, torch.tensor(s1), torch.tensor(s2), bits, signed_low=False)
    assert ((tw - p) ** 2).sum() < 0.5 * ((uni - p) ** 2).sum()


def test_twin_uniform_signed_has_two_ranges_with_power_of_two_ratio():
    x = torch.nn.functional.gelu(torch.linspace(-6, 6, 4001))
    st = ActStats(x.min(), x.max())
    cands = NU.twin_candidates("smooth_act", 8, st, torch.tensor([0.5, 1.0]))
    for qp in cands:
        assert qp.spec.quantizer == "twin_signed"
        ratio = float(qp.scale2 / qp.scale)
        assert ratio >= 1 and abs(ratio - 2 ** round(math.log2(ratio))) < 1e-6
        assert float(qp.scale) * 127 >= float(-x.min()) - 1e-6            # R1 covers the negatives
        y = quant_dequant(x, qp)
        neg = x < 0
        assert torch.allclose(y[neg], torch.round(x[neg] / qp.scale).clamp(-127, 0) * qp.scale)
        assert torch.allclose(y[~neg], torch.round(x[~neg] / qp.scale2).clamp(0, 127) * qp.scale2)
    # the finest R1 that covers GELU's minimum (-0.17): (127 s1) / 0.17 lies in [1, 2)
    s1 = float(cands[1].scale)
    assert 1 <= 127 * s1 / float(-x.min()) < 2


def test_log_quantizers_output_powers_of_two_and_sqrt2():
    x = torch.softmax(torch.randn(32, 50, generator=torch.Generator().manual_seed(1)) * 3, -1)
    for quantizer, step in (("log2", 1.0), ("logsqrt2", 0.5)):
        qp = NU.log_params(quantizer, 4, ActStats(x.min(), x.max()))
        y = quant_dequant(x, qp)
        nz = y[y > 0]
        e = -torch.log2(nz / qp.scale) / step                  # exponents in units of the step
        assert torch.allclose(e, torch.round(e), atol=1e-4)
        assert int(torch.round(e).max()) <= 15 and int(torch.round(e).min()) >= 0
        assert len(torch.unique(y)) <= 16 + 1                  # 2^4 levels and zero
        assert torch.equal(y[x < qp.scale * 2 ** (-16 * step)], torch.zeros_like(y[x < qp.scale * 2 ** (-16 * step)]))
    assert float(NU.log_params("log2", 4, ActStats(x.min(), x.max())).scale) == 1.0
    # log-sqrt2 has twice the resolution of log2 per octave
    a = quant_dequant(x, NU.log_params("log2", 8, ActStats(x.min(), torch.tensor(1.0))))
    b = quant_dequant(x, NU.log_params("logsqrt2", 8, ActStats(x.min(), torch.tensor(1.0))))
    assert ((b - x) ** 2).sum() < ((a - x) ** 2).sum()
    assert torch.equal(log_quant(torch.zeros(3), torch.tensor(1.0), 4, 1.0), torch.zeros(3))


def test_ptf_factors_are_powers_of_two_and_cover_each_channel():
    g = torch.Generator().manual_seed(2)
    spread = torch.tensor([0.1, 0.3, 1.0, 4.0, 8.0, 0.05])
    x = torch.randn(500, 6, generator=g) * spread + 0.2
    lo, hi = x.min(0).values, x.max(0).values
    qp = ptf_params(x.min(), x.max(), lo, hi, bits=8, factors=3)
    ratio = qp.scale / qp.scale.min()
    assert torch.allclose(ratio, torch.exp2(torch.round(torch.log2(ratio))))
    assert set(torch.round(torch.log2(qp.scale / (qp.scale.max() / 8))).tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert len(set(qp.zero_point.tolist())) == 1                # one shared zero point
    z = float(qp.zero_point[0])
    top = params_from_range(x.min(), x.max(), QSpec(bits=8, symmetric=False, signed=False))
    fine = qp.scale < qp.scale.max()
    # channels on a finer factor are covered by their grid; the others use the layer-wide quantizer
    assert ((lo >= (0 - z) * qp.scale - 1e-6) & (hi <= (255 - z) * qp.scale + 1e-6))[fine].all()
    assert torch.allclose(qp.scale[~fine], top.scale) and z == float(top.zero_point)
    # ranges 0.5, 1.8, 7, 25, 53, 0.3 against the layer-wide 53: factors 2^0, 2^0, 2^1, 2^2, 2^3, 2^0
    assert torch.round(torch.log2(qp.scale / qp.scale.min())).tolist() == [0, 0, 1, 2, 3, 0]
    # finer steps on narrow channels: lower error than the layer-wide quantizer
    y = quant_dequant(x, qp, axis=1)
    yt = quant_dequant(x, top)
    assert ((y - x) ** 2)[:, :3].sum() < 0.2 * ((yt - x) ** 2)[:, :3].sum()


def test_repq_reparameterisation_is_per_channel_quantization_exactly():
    from qhyvit_fx.methods.repq_vit import reparam_params
    g = torch.Generator().manual_seed(4)
    y = torch.randn(200, 8, generator=g) * torch.tensor([0.1, 0.5, 1, 2, 4, 8, 0.2, 3]) + torch.linspace(-1, 2, 8)
    spec = QSpec(bits=6, symmetric=False, signed=False)
    qp, r, t = reparam_params(y.min(0).values, y.max(0).values, spec)
    pc = params_from_range(y.min(0).values, y.max(0).values, spec.with_(per_channel=True, axis=0))
    per_channel = quant_dequant(y, pc, axis=1)
    y2 = (y + t) / r                                          # the reparameterised norm output
    back = quant_dequant(y2, qp) * r - t                      # the next layer undoes the rescaling
    assert qp.scale.dim() == 0 and not qp.spec.per_channel
    assert torch.allclose(back, per_channel, atol=1e-5)
    assert not torch.allclose(quant_dequant(y, params_from_range(y.min(), y.max(), spec)), per_channel, atol=1e-3)


def test_refine_input_is_the_argmin_over_candidates():
    g = torch.Generator().manual_seed(5)
    a = torch.softmax(torch.randn(3, 32, 32, generator=g) * 2, -1)
    b = torch.randn(3, 32, 5, generator=g)
    out = a @ b
    grad2 = torch.rand(out.shape, generator=g)
    st = [ActStats(a.min(), a.max()), ActStats(b.min(), b.max())]
    spec = QSpec(bits=6, symmetric=False, signed=False)
    prob = MatmulProblem("mm", a, b, out, grad2, st, [spec, spec], input_kinds=["softmax", "linear"])
    inputs = [params_from_range(s.lo, s.hi, spec) for s in st]
    cands = NU.twin_candidates("softmax", 6, st[0], torch.ones(1))
    assert len(cands) == NU.MAX_POW2 + 1
    best, e = NU.refine_input(prob, 0, inputs, None, cands)
    brute = []
    for c in cands:
        o = quant_dequant(a, c) @ quant_dequant(b, inputs[1])
        brute.append(float((grad2 * (o - out) ** 2).sum()))
    assert abs(e - min(brute)) < 1e-6 and best is cands[brute.index(min(brute))]
    # on these mostly-small attention weights twin-uniform halves the 6-bit uniform error
    assert e < 0.6 * NU.objective(prob, inputs)


def _run(tiny, images, **kw):
    cfg = q.QConfig(**{"target": "fakequant", **kw})      # the study target unless a test names one
    pm = q.prepare(tiny, images[:1], cfg)
    q.calibrate(pm, images)
    return pm, q.convert(pm)


def test_full_mode_annotates_norms_softmax_activations_and_adds(tiny, tiny_images):
    from collections import Counter
    from qhyvit_fx.passes.annotate import ANNOTATION, quantized_layers
    part, _ = _run(tiny, tiny_images, mode="partial")
    full, qm = _run(tiny, tiny_images, mode="full")
    kinds = lambda pm: Counter(n.meta[ANNOTATION].kind for n in quantized_layers(pm))
    kp, kf = kinds(part), kinds(full)
    assert set(kp) == {"conv", "linear", "matmul"}
    # TinyHybrid: 3 LayerNorms (2 in the transformer block, 1 after it), one softmax, SiLU inputs
    # (stem, dw, the MobileViT block's conv_kxk, its MLP and conv_fusion) and 3 residual adds
    # (the dw shortcut and the transformer block's two); conv/linear/matmul as in partial mode
    assert {k: kf[k] for k in kp} == dict(kp)
    assert kf["norm"] == 3 and kf["softmax"] == 1 and kf["add"] == 3
    silu = sum(isinstance(m, torch.nn.SiLU) for m in tiny.modules())
    assert kf["activation"] == silu
    dec = quant_state(full).decisions
    assert sum(len(d.inputs) for d in dec.layers.values() if d.kind == "add") == 6
    # one quantizer per input: the fake-quant target shares none (no output quantizers, readers of one
    # tensor may quantize it differently; passes/group_quantizers)
    fqs = [m for m in qm.modules() if isinstance(m, q.modules.FakeQuantize)]
    assert len(fqs) == sum(len(d.inputs) for d in dec.layers.values()) and not dec.groups
    with torch.no_grad():
        ref, out = tiny(tiny_images), qm(tiny_images)
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.98


def test_qhyvit_full_mode_searches_layers_and_keeps_minmax_elsewhere(tiny, tiny_images):
    from qhyvit_fx.passes.annotate import FULL_KINDS
    mm, _ = _run(tiny, tiny_images, mode="full", method="minmax", w_bits=6, a_bits=6)
    qh, _ = _run(tiny, tiny_images, mode="full", method="qhyvit", w_bits=6, a_bits=6)
    dm, dq = quant_state(mm).decisions, quant_state(qh).decisions
    assert list(dq.layers) == list(dm.layers)
    for name, d in dq.layers.items():
        if d.kind in FULL_KINDS:
            assert not d.error and d.weight is None
            for i, qp in d.inputs.items():           # exactly the MinMax ranges
                ref = dm.layers[name].inputs[i]
                assert qp.spec == ref.spec and qp.spec.bits == 6 and not qp.spec.per_channel
                assert torch.equal(qp.scale, ref.scale) and torch.equal(qp.zero_point, ref.zero_point)
        else:
            assert "before" in d.error


def test_ptq4vit_puts_twin_uniform_on_softmax_and_silu_inputs(tiny, tiny_images):
    pm, qm = _run(tiny, tiny_images, method="ptq4vit", w_bits=6, a_bits=6)
    dec = quant_state(pm).decisions
    twins = {(d.layer, i): qp.spec.quantizer for d in dec.layers.values() for i, qp in d.inputs.items()
             if not qp.spec.uniform}
    from qhyvit_fx.passes.annotate import ANNOTATION, searched_layers
    want = {}
    for n in searched_layers(pm):
        ann = n.meta[ANNOTATION]
        for i, (prod, _) in ann.producers.items():
            if prod == "softmax":
                want[(ann.layer, i)] = "twin_pos"
            elif prod == "silu":
                want[(ann.layer, i)] = "twin_signed"
    assert twins == want and "twin_pos" in twins.values() and "twin_signed" in twins.values()
    for d in dec.layers.values():                   # scale only: the annotated granularity / scheme
        assert d.weight is None or (d.weight.spec.per_channel and d.weight.spec.symmetric)
        assert all(not qp.spec.per_channel for qp in d.inputs.values())
    mods = [m for m in qm.modules() if isinstance(m, q.modules.NonUniformQuantize)]
    assert len(mods) == len(twins)


def test_repq_vit_reparameterises_post_norm_layers_without_changing_the_float_function(tiny, tiny_images):
    from qhyvit_fx.decisions import Decisions
    pm, qm = _run(tiny, tiny_images, method="repq-vit", w_bits=6, a_bits=6)
    dec = quant_state(pm).decisions
    rep = {d.layer: d.reparam["norm"] for d in dec.layers.values() if d.reparam is not None}
    assert rep == {"vit.transformer.0.attn.qkv": "vit.transformer.0.norm1",
                   "vit.transformer.0.mlp.fc1": "vit.transformer.0.norm2"}
    logs = [qp.spec.quantizer for d in dec.layers.values() for qp in d.inputs.values() if not qp.spec.uniform]
    assert logs == ["logsqrt2"]
    # the JSON keeps everything: converting the saved decisions gives the same graph output
    again = q.convert(pm, Decisions.from_dict(dec.to_dict()))
    with torch.no_grad():
        assert torch.equal(again(tiny_images), qm(tiny_images))
    # reparameterisation alone (every quantizer removed) leaves the float function unchanged
    plain = Decisions.from_dict(dec.to_dict())
    for d in plain.layers.values():
        d.weight, d.inputs = None, {i: None for i in d.inputs}
    fm = q.convert(pm, plain)
    with torch.no_grad():
        assert torch.allclose(fm(tiny_images), tiny(tiny_images), atol=1e-4)


def test_fq_vit_full_mode_uses_ptf_on_norm_inputs_and_log2_after_softmax(tiny, tiny_images):
    pm, qm = _run(tiny, tiny_images, method="fq-vit", mode="full", a_bits=8)
    dec = quant_state(pm).decisions
    norms = [d for d in dec.layers.values() if d.kind == "norm"]
    assert len(norms) == 3
    for d in norms:
        qp = d.inputs[0]
        assert qp.spec.per_channel and qp.spec.axis == 2
        r = qp.scale / qp.scale.min()
        assert torch.allclose(r, torch.exp2(torch.round(torch.log2(r)))) and float(r.max()) <= 8
    logs = [(d.kind, qp.spec.quantizer, float(qp.scale)) for d in dec.layers.values() for qp in d.inputs.values()
            if not qp.spec.uniform]
    assert logs == [("matmul", "log2", 1.0)]
    # partial mode: no norm inputs are quantized
    pp, _ = _run(tiny, tiny_images, method="fq-vit")
    assert not any(d.kind == "norm" for d in quant_state(pp).decisions.layers.values())
    with torch.no_grad():
        ref, out = tiny(tiny_images), qm(tiny_images)
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.95


def test_non_uniform_and_full_mode_graphs_export_and_match_in_onnxruntime(tiny, tiny_images, tmp_path):
    import numpy as np
    from qhyvit_fx.export import export_onnx, ort_session
    for kw in (dict(method="ptq4vit", w_bits=6, a_bits=6), dict(method="fq-vit", mode="full")):
        _, qm = _run(tiny, tiny_images, **kw)
        path = export_onnx(qm, str(tmp_path / "m.onnx"))
        sess = ort_session(path, optimize=False)
        got = sess.run(None, {"input": tiny_images[:4].numpy()})[0]
        with torch.no_grad():
            want = qm(tiny_images[:4]).numpy()
        # rounding ties may fall differently in float ops: allow a few quantization steps of logits
        assert np.abs(got - want).max() < 0.05 * np.abs(want).max(), kw


def test_repq_vit_reparameterises_a_functional_group_norm():
    """timm's GroupNorm1 captures as F.group_norm reading its module's weight/bias (MobileViT-v2)."""
    from timm.layers import GroupNorm1
    from qhyvit_fx.decisions import Decisions
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), GroupNorm1(8), torch.nn.Conv2d(8, 8, 1)).eval()
    with torch.no_grad():
        m[1].weight.uniform_(0.2, 3.0)
        m[1].bias.uniform_(-1, 1)
    x = torch.randn(16, 3, 8, 8)
    pm, qm = _run(m, x, method="repq-vit", w_bits=6, a_bits=6)
    dec = quant_state(pm).decisions
    assert dec.layers["2"].reparam is not None and dec.layers["2"].reparam["norm"] == "1"
    plain = Decisions.from_dict(dec.to_dict())
    for d in plain.layers.values():
        d.weight, d.inputs = None, {i: None for i in d.inputs}
    with torch.no_grad():
        assert torch.allclose(q.convert(pm, plain)(x), m(x), atol=1e-5)

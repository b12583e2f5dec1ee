import copy
import json
from dataclasses import replace

import pytest
import torch

import qhyvit_fx as q
from qhyvit_fx.calibration import build_problems, collect
from qhyvit_fx.decisions import Decisions, DecisionsError
from qhyvit_fx.methods.minmax import MinMax
from qhyvit_fx.methods.qhyvit import search_options
from qhyvit_fx.modules import FakeQuantize
from qhyvit_fx.passes.convert import convert_graph
from qhyvit_fx.search import hybrid as H
from qhyvit_fx.search.problem import MatmulProblem
from qhyvit_fx.state import quant_state

# Tie tolerance for "fast == exhaustive".  The fast search ranks candidates by successive halving on
# row subsets; when two candidates' objectives differ by less than the sampling noise of the subset
# they can swap.  Such swaps are harmless only if the excess objective is small: we allow at most 2 %
# (the objective's own spread between two calibration draws of the same size is larger than that), and
# require most steps to pick exactly the same quantizer.
TIE_TOL = 0.02


@pytest.fixture(scope="module")
def problems(tiny, tiny_images):
    cfg = q.QConfig.flat(w_bits=6, a_bits=6, method="qhyvit", max_positions=100000, target="fakequant")
    pm = q.prepare(tiny, tiny_images[:1], cfg)
    pm(tiny_images)
    init = MinMax(cfg).decide(pm, None)
    recs, tails, side = collect(pm, convert_graph(pm, init), tiny_images, cfg.method_params, seed=cfg.seed)
    probs, _ = build_problems(pm, recs, tails, side, cfg.method_params)
    return cfg, probs


def test_fast_steps_match_exhaustive(problems):
    cfg, probs = problems
    fast = search_options(cfg)
    ex = replace(fast, exhaustive=True)
    same = total = 0
    for p in probs.values():
        if isinstance(p, MatmulProblem):
            chs = [H._minmax_choice(*p.stats[i].range(False), p.specs[i].with_(per_channel=False)) for i in (0, 1)]
            other = H.quant_operand(p.b, chs[1].qp)
            a, b = H._search_mm(p, 0, other, chs[0], fast, {}), H._search_mm(p, 0, other, chs[0], ex, {})
            ea = float(H._mm_err(p, 0, H.one(a.qp), other, p.a.shape[1], ex)[0])
            eb = float(H._mm_err(p, 0, H.one(b.qp), other, p.a.shape[1], ex)[0])
            pairs = [(a.key == b.key, ea, eb)]
        else:
            wch = H._minmax_choice(*H.channel_minmax(p.weight, 0), p.w_spec)
            ach = H._minmax_choice(*p.act_stats.range(False), p.a_spec.with_(per_channel=False))
            xq = H.quant_patches(p, p.patches, ach.qp)
            a, b = H._search_weight(p, xq, wch, fast, {}), H._search_weight(p, xq, wch, ex, {})
            pairs = [(a.key == b.key, H._weight_error(p, xq, a, None, ex), H._weight_error(p, xq, b, None, ex))]
            wq = H.weight_candidates(p.weight, H.one(wch.qp))[0]
            c, d = H._search_act(p, lambda s: wq, ach, fast, {}), H._search_act(p, lambda s: wq, ach, ex, {})
            fc = float(H._act_errors(p, c.spec, torch.tensor([c.frac]), wq, p.rows, ex)[0])
            fd = float(H._act_errors(p, d.spec, torch.tensor([d.frac]), wq, p.rows, ex)[0])
            pairs.append((c.key == d.key, fc, fd))
        for eq, ef, ee in pairs:
            total += 1
            same += eq
            # the exhaustive choice is optimal: the fast one is never better, and at most TIE_TOL worse
            assert ef >= ee * (1 - 1e-5)
            assert eq or ef <= ee * (1 + TIE_TOL), (p.name, ef / ee - 1)
    assert same >= 0.8 * total


def test_search_never_increases_the_objective(tiny, tiny_images):
    pm = q.prepare(tiny, tiny_images[:1], q.QConfig(w_bits=4, a_bits=4, method="qhyvit"))
    q.calibrate(pm, tiny_images)
    dec = quant_state(pm).decisions
    assert len(dec.layers) == 14
    for d in dec.layers.values():
        assert d.error["after"] <= d.error["before"] * (1 + 1e-6), d.layer
    assert sum(d.error["after"] for d in dec.layers.values()) < 0.7 * sum(d.error["before"] for d in dec.layers.values())


def test_bridge_layers_use_the_bridge_objective(tiny, tiny_images):
    pm = q.prepare(tiny, tiny_images[:1], q.QConfig(method="qhyvit"))
    q.calibrate(pm, tiny_images)
    dec = quant_state(pm).decisions
    assert dec.layers["vit.conv_kxk.conv"].bridge == 0
    assert dec.layers["vit.conv_kxk.conv"].info["bridge_objective"] == "output of vit.conv_1x1"
    assert "bridge_objective" not in dec.layers["vit.conv_1x1"].info


def test_decisions_are_deterministic(tiny, tiny_images):
    out = []
    for _ in range(2):
        pm = q.prepare(tiny, tiny_images[:1], q.QConfig(w_bits=6, a_bits=6, method="qhyvit"))
        q.calibrate(pm, tiny_images)
        d = quant_state(pm).decisions
        d.meta.pop("seconds_collect", None), d.meta.pop("seconds_total", None)
        out.append(d.to_json())
    assert out[0] == out[1]


def test_ablation_switches_restrict_the_choices(tiny, tiny_images):
    cfg = q.QConfig.flat(w_bits=6, a_bits=6, method="qhyvit", search_granularity=False, search_scheme=False)
    pm = q.prepare(tiny, tiny_images[:1], cfg)
    q.calibrate(pm, tiny_images)
    for d in quant_state(pm).decisions.layers.values():
        if d.weight is not None:
            assert d.weight.spec.per_channel and d.weight.spec.symmetric
        for qp in d.inputs.values():
            assert not qp.spec.per_channel and not qp.spec.symmetric
    # scale search off on the observers' own images (no mirrored copies) gives exactly MinMax
    cfg = replace(cfg, method_params=replace(cfg.method_params, search_scale=False, calib_augment="none"))
    pm = q.prepare(tiny, tiny_images[:1], cfg)
    q.calibrate(pm, tiny_images)
    mm = MinMax(cfg).decide(pm, None)
    for name, d in quant_state(pm).decisions.layers.items():   # scale search off + defaults == MinMax
        assert d.to_dict()["weight"] == mm.layers[name].to_dict()["weight"]
        assert d.to_dict()["inputs"] == mm.layers[name].to_dict()["inputs"]


def test_edited_decisions_are_applied_exactly(tmp_path, tiny, tiny_images):
    pm = q.prepare(tiny, tiny_images[:1], q.QConfig(method="qhyvit"))
    q.calibrate(pm, tiny_images)
    d = quant_state(pm).decisions.to_dict()
    layer = next(l for l in d["layers"] if l["layer"] == "head")
    layer["inputs"]["0"]["scale"] = [0.125]
    layer["inputs"]["0"]["zero_point"] = [7]
    layer["inputs"]["0"].update(granularity="tensor", scheme="asymmetric", axis=None, signed=False)
    path = tmp_path / "edited.json"
    Decisions.from_dict(d).save(str(path))
    qm = q.convert(pm, str(path))
    fq = next(m for n, m in qm.named_modules() if isinstance(m, FakeQuantize) and n.endswith("head__in0"))
    assert float(fq.scale) == 0.125 and int(fq.zero_point) == 7 and fq.axis is None
    bad = copy.deepcopy(d)
    next(l for l in bad["layers"] if l["layer"] == "head")["weight"]["scale"] = [0.1, 0.2]
    bad_layer = next(l for l in bad["layers"] if l["layer"] == "head")
    bad_layer["weight"]["granularity"] = "channel"
    bad_layer["weight"]["axis"] = 0
    bad_layer["weight"]["zero_point"] = [0, 0]
    with pytest.raises(DecisionsError, match="head.*2 scales.*10 channels"):
        q.convert(pm, bad)
    # a bias correction edited to the wrong length is refused, a right one lands in the bias
    wrong = copy.deepcopy(d)
    next(l for l in wrong["layers"] if l["layer"] == "head")["bias_delta"] = [0.5] * 3
    with pytest.raises(DecisionsError, match="head.*bias_delta has 3 values.*10 output channels"):
        q.convert(pm, wrong)
    right = copy.deepcopy(d)
    next(l for l in right["layers"] if l["layer"] == "head")["bias_delta"] = [0.5] * 10
    qb, q0 = q.convert(pm, right), q.convert(pm, d)
    assert torch.allclose(qb.get_submodule("head").bias, q0.get_submodule("head").bias + 0.5)


def test_device_plumbing(tiny, tiny_images):
    from qhyvit_fx.config import ConfigError
    from qhyvit_fx.methods.qhyvit import _to, search_device
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            search_device("cuda")
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            q.QConfig(method="qhyvit", device="cuda")
    with pytest.raises(ConfigError, match="not supported"):
        search_device("meta")
    # moving a problem back and forth keeps every tensor
    cfg = q.QConfig(method="qhyvit")
    pm = q.prepare(tiny, tiny_images[:1], cfg)
    pm(tiny_images)
    recs, tails, side = collect(pm, convert_graph(pm, MinMax(cfg).decide(pm, None)), tiny_images, cfg.method_params,
                                 seed=cfg.seed)
    probs, _ = build_problems(pm, recs, tails, side, cfg.method_params)
    p = next(v for v in probs.values() if not isinstance(v, MatmulProblem))
    moved = _to(p, "cpu")
    assert torch.equal(moved.patches, p.patches) and moved.act_stats.folds is not None


def test_bridge_tail_takes_side_inputs_at_the_sampled_rows():
    """The rest of a bridge block with a side input (a residual add) must see the side rows that
    belong to the candidate rows: the first r rows, or an index subset (cross-validation folds)."""
    import torch.fx as fx
    from qhyvit_fx.calibration import Tail, tail_callable

    class Rest(torch.nn.Module):
        def forward(self, x, side):
            return torch.relu(x) * 2 + side

    gm = fx.symbolic_trace(Rest())
    S, C, n = 50, 3, 4
    side = torch.randn(S, C)
    fn = tail_callable(Tail(gm, ["side"], "add"), [side])
    rows = torch.randn(n, 7, C)
    assert torch.equal(fn(rows, None), torch.relu(rows) * 2 + side[:7])
    idx = torch.tensor([3, 11, 12, 40, 41, 42, 49])
    assert torch.equal(fn(rows, idx), torch.relu(rows) * 2 + side[idx])


class _TokenMajor(torch.nn.Module):
    """A linear layer on token-major tokens [T, B, C] (Mobile-Former's layout, T=3 < batch): dim 0
    is not image-major, so its input has no per-image cross-validation folds."""

    def __init__(self):
        super().__init__()
        self.tokens = torch.nn.Parameter(torch.randn(3, 1, 8))
        self.proj = torch.nn.Linear(8, 8)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        f = self.conv(x).mean((2, 3))                           # [B, 8]
        t = self.proj(self.tokens + f.unsqueeze(0))             # [3, B, 8]
        return self.head(t.mean(0))


def test_search_handles_token_major_inputs_with_cross_validation():
    torch.manual_seed(0)
    m = _TokenMajor().eval()
    x = torch.randn(8, 3, 12, 12)
    cfg = q.QConfig.flat(w_bits=4, a_bits=4, method="qhyvit", act_cv=True, cv_folds=4, calib_batch=4, progress=False)
    pm = q.prepare(m, x[:1], cfg)
    q.calibrate(pm, x)
    dec = quant_state(pm).decisions
    assert sorted(dec.layers) == ["conv", "head", "proj"]
    assert all(d.error["after"] <= d.error["before"] + 1e-9 for d in dec.layers.values())


def test_grouped_layer_forward_with_candidate_weights():
    """Grouped (not depthwise) convs, as in Mobile-Former: candidate-batched weights [n, C, Kg]
    against unbatched patch rows [S, K] give [n, S, C], equal to one matmul per group."""
    from qhyvit_fx.search.problem import ActStats, WeightedLayerProblem
    from qhyvit_fx.quantizer import QSpec
    g, S, Cg, Kg, n = 2, 5, 3, 4, 6
    x, w = torch.randn(S, g * Kg), torch.randn(n, g * Cg, Kg)
    p = WeightedLayerProblem("c", x, w[0], None, torch.zeros(S, g * Cg), torch.ones(S, g * Cg), g,
                             torch.arange(g * Kg), ActStats(x.min(), x.max()), QSpec(bits=8), QSpec(bits=8))
    out = p.layer_forward(x, w)
    assert out.shape == (n, S, g * Cg)
    want = torch.cat([x[:, i * Kg:(i + 1) * Kg] @ w[:, i * Cg:(i + 1) * Cg].transpose(-1, -2) for i in range(g)], -1)
    assert torch.allclose(out, want, atol=1e-5)


def test_damping_keeps_zero_gradient_channels_from_clipping_to_nothing():
    """An output channel whose gradient is zero on every calibration row makes every weight
    candidate tie at zero error; without damping the search took the smallest scale (1 % of the
    range) for it -- Mobile-Former's dynamic-ReLU failure."""
    from qhyvit_fx.calibration import damped as _damped
    from qhyvit_fx.quantizer import QSpec, channel_minmax
    from qhyvit_fx.search.hybrid import search_weighted
    from qhyvit_fx.search.problem import ActStats, SearchOptions, WeightedLayerProblem
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    w = torch.randn(4, 16, generator=g)
    out = x @ w.T
    grad2 = torch.rand(64, 4, generator=g)
    grad2[:, 0] = 0.0                                   # channel 0: never matters on these rows
    lo, hi = channel_minmax(w, 0)
    amax = torch.maximum(lo.abs(), hi.abs())

    def chosen(g2):
        p = WeightedLayerProblem(
            name="fc", patches=x, weight=w, bias=None, out_fp=out, grad2=g2, groups=1, col_channel=torch.arange(16),
            act_stats=ActStats(x.min(), x.max(), x.min(0).values, x.max(0).values),
            w_spec=QSpec(bits=4, symmetric=True, per_channel=True), a_spec=QSpec(bits=8, symmetric=False, signed=False))
        res = search_weighted(p, SearchOptions(rounds=1, search_granularity=False, search_scheme=False))
        return res.weight.scale * res.weight.spec.qmax / amax           # chosen fraction per channel

    assert float(chosen(grad2)[0]) < 0.02                               # undamped: the 0.01 candidate
    damped = chosen(_damped(grad2, 0.01))
    assert float(damped[0]) > 0.5                                       # damped: a real range
    assert torch.allclose(damped[1:], chosen(grad2)[1:], atol=0.03)     # other channels barely move
    assert torch.equal(_damped(grad2, 0.0), grad2)
    assert torch.allclose(_damped(grad2, 0.01), grad2 + 0.01 * grad2.mean())


def test_flip_augmentation_keeps_each_image_and_its_mirror_in_one_fold(tiny, tiny_images):
    """calib_augment='flip': the search sees 2N images, image i at 2i and its mirror at 2i+1, and the
    cross-validation folds split the N source images (a validation fold never holds the mirror of a
    training image), so the fold statistics hold N/folds * 2 images each."""
    from qhyvit_fx.calibration import augment_images
    x = tiny_images[:6]
    aug, copies = augment_images(x, "flip")
    assert copies == 2 and aug.shape == (12,) + tuple(x.shape[1:])
    assert torch.equal(aug[0::2], x) and torch.equal(aug[1::2], x.flip(-1))
    assert augment_images(x, "none")[0] is x
    cfg = q.QConfig.flat(w_bits=6, a_bits=6, method="qhyvit", calib_augment="flip", cv_folds=4)
    imgs = tiny_images[:8]
    pm = q.prepare(tiny, imgs[:1], cfg)
    pm(imgs)
    init = MinMax(cfg).decide(pm, None)
    aug, copies = augment_images(imgs, cfg.method_params.calib_augment)
    recs, _, _ = collect(pm, convert_graph(pm, init), aug, cfg.method_params, seed=cfg.seed, copies=copies)
    fold_of = next(iter(recs.values())).fold_of
    assert fold_of.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    # and the whole method: decisions differ from the un-augmented search, the recorded count stays 8
    pm = q.prepare(tiny, imgs[:1], cfg)
    q.calibrate(pm, imgs)
    dec = quant_state(pm).decisions
    plain = q.prepare(tiny, imgs[:1], replace(cfg, method_params=replace(cfg.method_params, calib_augment="none")))
    q.calibrate(plain, imgs)
    assert dec.meta["calib_images"] == 8 and dec.meta["config"]["method_params"]["calib_augment"] == "flip"
    assert dec.to_dict() != quant_state(plain).decisions.to_dict()
    from qhyvit_fx.config import ConfigError
    with pytest.raises(ConfigError, match="calib_augment"):
        q.QConfig.flat(method="qhyvit", calib_augment="rotate")


def test_widened_channel_ranges_cover_what_new_images_bring():
    """act_channel_beta: per-channel activation ranges measured on few images miss values that new
    images produce.  Here every fold of images has a spike (3x the usual range) in its own channel,
    so the ranges of the other folds never contain it, and the cross-validated objective sees the
    clipping.  With candidates only up to beta = 1.2 the per-channel ranges must clip the spikes (so
    the search falls back to one per-tensor range); the widened grid reaches past them with per-
    channel ranges and scores better on the same validation folds."""
    from qhyvit_fx.config import ConfigError
    from qhyvit_fx.quantizer import QSpec
    from qhyvit_fx.search.hybrid import search_weighted
    from qhyvit_fx.search.problem import ActStats, SearchOptions, WeightedLayerProblem
    g = torch.Generator().manual_seed(0)
    amp = torch.tensor([1.0, 0.1, 0.1, 0.1])
    w = torch.randn(3, 4, generator=g)
    x = torch.rand(256, 4, generator=g) * amp
    fold = torch.arange(256) % 4
    for k in range(4):
        x[(fold == k).nonzero().squeeze(1)[:8], k] = 3 * amp[k]

    def stats(t):
        return ActStats(t.min(), t.max(), t.min(0).values, t.max(0).values)

    st = stats(x)
    st.folds = [stats(x[fold != k]) for k in range(4)]
    p = WeightedLayerProblem(
        name="fc", patches=x, weight=w, bias=None, out_fp=x @ w.T, grad2=torch.ones(256, 3), groups=1,
        col_channel=torch.arange(4), act_stats=st, row_fold=fold,
        w_spec=QSpec(bits=8, symmetric=True, per_channel=True),
        a_spec=QSpec(bits=4, symmetric=False, signed=False, axis=1))
    cfg = q.QConfig(method="qhyvit")
    assert torch.allclose(cfg.method_params.channel_fractions(), torch.arange(13, 31) / 10)
    assert replace(cfg.method_params, act_channel_beta=cfg.method_params.beta).channel_fractions() is None
    res, cv = {}, {}
    for name, extra in (("narrow", None), ("wide", cfg.method_params.channel_fractions())):
        opts = SearchOptions(rounds=1, search_scheme=False, channel_fractions=extra)
        qp = search_weighted(p, opts).inputs[0]
        frac = float((qp.scale * (qp.spec.qmax - qp.spec.qmin) / (st.range(qp.spec.per_channel)[1])).mean())
        res[name] = (qp.spec.per_channel, round(frac, 1))
        wq = H.weight_candidates(w, H.one(H._minmax_choice(*H.channel_minmax(w, 0), p.w_spec).qp))[0]
        cv[name] = float(H._act_errors(p, qp.spec, torch.tensor([frac]), wq, p.rows, opts)[0])
    assert res["narrow"][0] is False or res["narrow"][1] <= cfg.method_params.beta
    assert res["wide"][0] is True and res["wide"][1] > cfg.method_params.beta
    assert cv["wide"] < 0.5 * cv["narrow"]
    with pytest.raises(ConfigError, match="act_channel_beta"):
        q.QConfig.flat(method="qhyvit", act_channel_beta=1.0)


def test_gptq_rounding_equals_nearest_without_input_correlation_and_beats_it_with():
    from qhyvit_fx.quantizer import QSpec, fake_quant, params_from_range
    from qhyvit_fx.search.rounding import dequantize, gptq_codes, gram
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 12, generator=g)
    spec = QSpec(bits=4, symmetric=True, signed=True, per_channel=True, axis=0)
    qp = params_from_range(w.min(1).values, w.max(1).values, spec)
    rtn = fake_quant(w, qp.scale, qp.zero_point, spec.qmin, spec.qmax, axis=0)
    # H = I (no damping effect on a diagonal): compensation never moves another column -> nearest
    eye = gptq_codes(w, qp, torch.eye(12)[None], damp=0.0)
    assert torch.equal(dequantize(eye, qp), rtn)
    # correlated inputs: the output error is lower than with nearest rounding
    x = torch.randn(512, 3, generator=g) @ torch.randn(3, 12, generator=g) + 0.1 * torch.randn(512, 12, generator=g)
    codes = gptq_codes(w, qp, gram(x, torch.ones(512), 1))
    assert int(codes.min()) >= spec.qmin and int(codes.max()) <= spec.qmax
    err = lambda wq: float(((x @ (wq - w).t()) ** 2).sum())
    assert err(dequantize(codes, qp)) < 0.5 * err(rtn)
    # groups are independent problems: a depthwise layer (6 groups of 2 inputs) solved batched equals
    # each group solved alone
    xd = torch.randn(256, 12, generator=g)
    wd = torch.randn(6, 2, generator=g)
    qd = params_from_range(wd.min(1).values, wd.max(1).values, spec)
    batched = gptq_codes(wd, qd, gram(xd, torch.ones(256), 6))
    for c in range(6):
        one = gptq_codes(wd[c:c + 1], type(qd)(spec, qd.scale[c:c + 1], qd.zero_point[c:c + 1]),
                         gram(xd[:, 2 * c:2 * c + 2], torch.ones(256), 1))
        assert torch.equal(batched[c:c + 1], one)


def test_gptq_rounding_ships_its_codes(tmp_path, tiny, tiny_images):
    """weight_rounding="gptq": layers keep GPTQ codes only where they lower the objective; the codes
    survive decisions.json and are the exported ONNX weights."""
    import onnx
    from onnx import numpy_helper
    from qhyvit_fx.export import export_onnx
    cfg = q.QConfig.flat(method="qhyvit", target="ort", w_bits=4, a_bits=8, weight_rounding="gptq")
    pm = q.prepare(tiny, tiny_images[:1], cfg)
    q.calibrate(pm, tiny_images)
    dec = quant_state(pm).decisions
    near = q.prepare(tiny, tiny_images[:1], q.QConfig.flat(method="qhyvit", target="ort", w_bits=4, a_bits=8))
    q.calibrate(near, tiny_images)
    ref = quant_state(near).decisions
    rounded = [n for n, d in dec.layers.items() if d.weight_codes is not None]
    assert len(rounded) >= 3
    for n in rounded:
        assert dec.layers[n].error["after"] < ref.layers[n].error["after"]
    back = Decisions.from_dict(json.loads(dec.to_json()))
    assert all(torch.equal(back.layers[n].weight_codes, dec.layers[n].weight_codes) for n in rounded)
    qm = q.convert(pm, back)
    layer = rounded[0]
    mod = qm.get_submodule(layer)
    assert torch.equal(mod.weight_int.reshape(mod.weight_int.shape[0], -1), dec.layers[layer].weight_codes)
    path = str(tmp_path / "g.onnx")
    export_onnx(qm, path)
    inits = [numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    codes = mod.weight_int.numpy()
    assert any(a.shape == codes.shape and (a == codes).all() for a in inits)


def test_output_candidates_clip_each_end_and_the_activation_behind_is_found(tiny, tiny_images):
    from qhyvit_fx.calibration.interpreters import output_activation
    from qhyvit_fx.passes.annotate import ANNOTATION
    from qhyvit_fx.quantizer import QSpec
    spec = QSpec(bits=8, symmetric=False, signed=False)
    f = torch.tensor([0.5, 1.0])
    c = H.output_candidates(torch.tensor(-8.0), torch.tensor(2.0), spec, f)
    assert c.scale.numel() == len(H.OUTPUT_LO_FRACTIONS) * 2
    # MinMax itself (lower fraction 1, scale fraction 1) and a range whose lower end shrank to 0.05 * lo
    assert abs(float(c.scale[1]) - 10.0 / 255) < 1e-6
    j = 2 * H.OUTPUT_LO_FRACTIONS.index(0.05) + 1
    lo = -float(c.zero_point[j]) * float(c.scale[j])
    assert abs(lo - (-0.4)) < float(c.scale[j]) and abs(lo + float(c.scale[j]) * 255 - 2.0) < float(c.scale[j])
    sym = H.output_candidates(torch.tensor(-8.0), torch.tensor(2.0), QSpec(bits=8, symmetric=True, signed=True), f)
    assert sym.scale.numel() == 2
    pm = q.prepare(tiny, tiny_images[:1], q.QConfig.flat(target="ort", method="minmax"))
    found = {n.meta[ANNOTATION].layer: output_activation(pm, n) for n in pm.graph.nodes
             if ANNOTATION in n.meta and n.meta[ANNOTATION].output is not None}
    assert isinstance(found["stem.0"][1], torch.nn.SiLU) and found["head"] is None

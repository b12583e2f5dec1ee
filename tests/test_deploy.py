import collections
import dataclasses
import os

import pytest
import torch

import qhyvit_fx as q
from qhyvit_fx import cli
from qhyvit_fx.check import check_onnx
from qhyvit_fx.decisions import Decisions
from qhyvit_fx.export import export_onnx, ort_callable
from qhyvit_fx.state import quant_state


def _export(tmp_path, model, images, **kw):
    pm = q.prepare(model, images[:1], q.QConfig(**{"target": "fakequant", **kw}))
    q.calibrate(pm, images)
    qm = q.convert(pm)
    path = str(tmp_path / "m.onnx")
    export_onnx(qm, path)
    return qm, path


def _assert_ort_matches_torch(qm, path, min_agreement):
    """onnxruntime's kernels on the exported file against the fake-quant graph, 64 random images:
    top-1 agreement at least ``min_agreement`` and logits within 5 % of their largest value."""
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = qm(x)
    out = ort_callable(path)(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= min_agreement
    assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item()


@pytest.mark.parametrize("method", ["minmax", "qhyvit"])
def test_ort_target_runs_every_op_in_integer_kernels(tmp_path, tiny, tiny_images, method):
    qm, path = _export(tmp_path, tiny, tiny_images, method=method, target="ort", weight_range_bits=7)
    rep = check_onnx(path)
    assert len(rep.ops) == 14 and rep.integer_count == 14 and rep.mac_share == 100.0
    assert rep.by_op() == {"Conv": {"total": 7, "integer": 7}, "MatMul": {"total": 6, "integer": 6},
                           "Gemm": {"total": 1, "integer": 1}}
    kernels = {o.kernel for o in rep.ops}
    assert {"QLinearConv", "QLinearMatMul"} <= kernels
    # and the integer kernels compute what the fake-quant graph computes
    _assert_ort_matches_torch(qm, path, min_agreement=0.98)


def test_ort_target_decisions_fit_the_kernels(tiny, tiny_images):
    pm = q.prepare(tiny, tiny_images[:1], q.QConfig(method="qhyvit", target="ort", weight_range_bits=7))
    q.calibrate(pm, tiny_images)
    dec = quant_state(pm).decisions
    for d in dec.layers.values():
        if d.weight is not None:
            assert d.weight.spec.symmetric and d.weight.spec.bits == 7
        for i, qp in list(d.inputs.items()) + ([("out", d.output)] if d.output is not None else []):
            # per-channel codes only where they are read with one scale (migrated into the weight)
            assert not qp.spec.per_channel or (i == 0 and d.input_migration is not None)
            assert not qp.spec.symmetric and not qp.spec.signed
    # output Q/DQ only where onnxruntime's kernels need one: convs (QLinearConv) and the 2-D head (QGemm)
    with_out = {d.layer for d in dec.layers.values() if d.output is not None}
    assert with_out == {d.layer for d in dec.layers.values() if d.kind == "conv"} | {"head"}



def test_check_reports_float_islands_with_reasons(tmp_path, tiny, tiny_images, capsys):
    _, path = _export(tmp_path, tiny, tiny_images)          # fake-quant target: no Q on conv outputs
    rep = check_onnx(path)
    convs = [o for o in rep.ops if o.op == "Conv" and not o.integer]
    assert len(convs) >= 6
    assert all("no QuantizeLinear on the output" in o.reason for o in convs)
    assert {o.name for o in convs} >= {"stem.0", "vit.conv_1x1", "vit.conv_fusion.conv"}
    assert 0 < rep.mac_share < 100
    code = cli.main(["check", path, "--require-int8", "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert code == 3 and "run in float" in err and f"float islands ({len(rep.ops) - rep.integer_count})" in out
    assert os.path.exists(tmp_path / "r.json")


def test_check_rejects_non_onnx(tmp_path, capsys):
    p = tmp_path / "x.onnx"
    p.write_bytes(b"nope")
    assert cli.main(["check", str(p)]) == 2
    assert "cannot load" in capsys.readouterr().err


class _Bottleneck(torch.nn.Module):
    """A linear bottleneck straight into the next conv (MobileNet/MobileViT-v2 stages): conv output
    and next conv input are the same tensor."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 16, 3, 2, 1)
        self.b = torch.nn.Conv2d(16, 8, 1)                      # no activation after b
        self.c = torch.nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = self.c(self.b(torch.relu(self.a(x))))
        return self.head(torch.relu(x).mean((2, 3)))


def test_output_quantizer_feeding_an_input_quantizer_is_tied(tmp_path, tiny_images):
    torch.manual_seed(0)
    m = _Bottleneck().eval()
    cfg = dict(method="qhyvit", target="ort", weight_range_bits=7, progress=False)
    pm = q.prepare(m, tiny_images[:1], q.QConfig(**cfg))
    q.calibrate(pm, tiny_images)
    dec = quant_state(pm).decisions
    # b's output is c's input: one quantizer, searched on both objectives (b's output, c's output)
    # a's output quantizer sits after its relu (onnxruntime folds the relu into QLinearConv), and
    # that tensor feeds b directly, so it is b's input quantizer; c's output goes to relu and a mean
    ann = {n.meta["qhyvit_quant"].layer: n.meta["qhyvit_quant"] for n in pm.graph.nodes if "qhyvit_quant" in n.meta}
    assert ann["a"].output_after is not None and ann["b"].output_after is None and ann["c"].output_after is not None
    assert sorted(dec.groups.values()) == [["a:out", "b:in0"], ["b:out", "c:in0"]]
    assert dec.layers["b"].info["out_group"] == dec.layers["c"].info["in0_group"]
    oa, ib = dec.layers["a"].output, dec.layers["b"].inputs[0]
    assert oa.same_as(ib) and int(oa.zero_point) == 0
    assert dec.layers["b"].output.same_as(dec.layers["c"].inputs[0])
    assert ann["b"].observers["out"] == ann["c"].observers["in0"]          # one observer for the group
    assert dec.meta["group_members_unified"] == 0                          # nothing overwritten afterwards
    qm = q.convert(pm)
    path = str(tmp_path / "b.onnx")
    export_onnx(qm, path)
    rep = check_onnx(path)
    assert rep.integer_count == len(rep.ops) == 4


def test_full_mode_keeps_every_layer_in_integer_kernels(tmp_path, tiny, tiny_images):
    import onnx
    counts = {}
    for mode in ("partial", "full"):
        d = tmp_path / mode
        d.mkdir()
        qm, path = _export(d, tiny, tiny_images, method="minmax", target="ort", weight_range_bits=7, mode=mode)
        rep = check_onnx(path)
        assert len(rep.ops) == 14 and rep.integer_count == 14, mode
        counts[mode] = sum(n.op_type == "QuantizeLinear" for n in onnx.load(path).graph.node)
    # full mode adds quantizers on the inputs of 3 LayerNorms, the softmax, the SiLUs and 3 adds
    # (6 operands); where such an input already carries a layer's output quantizer, or another reader's
    # quantizer, it is that one (one quantizer per tensor: passes/group_quantizers)
    assert counts["full"] == counts["partial"] + 6


def test_integer_mode_runs_silu_and_residual_adds_in_integer_kernels(tmp_path, tiny, tiny_images):
    reps, ratios = {}, {}
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    for mode in ("partial", "integer"):
        d = tmp_path / mode
        d.mkdir()
        qm, path = _export(d, tiny, tiny_images, method="minmax", target="ort", weight_range_bits=7, mode=mode)
        reps[mode] = rep = check_onnx(path)
        assert len(rep.ops) == 14 and rep.integer_count == 14, mode
        with torch.no_grad():
            ref = qm(x)
        out = ort_callable(path)(x)
        assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.95, mode
        ratios[mode] = (out - ref).abs().max().item() / ref.abs().max().item()
    part, integ = reps["partial"].optimized_ops, reps["integer"].optimized_ops
    # the stem's and the dw block's SiLU (x * sigmoid(x)) and the three residual adds (dw block, two in
    # the transformer) run on integers; in partial mode all of them stay float
    assert integ.get("QLinearSigmoid") == 2 and integ.get("QLinearMul") == 2 and integ.get("QLinearAdd") == 3
    assert integ.get("QLinearConcat") == 1       # the MobileViT block joins its shortcut on integers too
    assert not any(k in part for k in ("QLinearSigmoid", "QLinearMul", "QLinearAdd", "QLinearConcat"))
    assert "Sigmoid" not in integ and "QuickGelu" not in integ
    # the softmax stays float on onnxruntime (its QLinearSoftmax is slower than Softmax between Q/DQ)
    assert "QLinearSoftmax" not in integ and integ.get("Softmax") == 1
    # fewer float <-> integer conversions
    assert integ["QuantizeLinear"] + integ["DequantizeLinear"] < part["QuantizeLinear"] + part["DequantizeLinear"]
    assert ratios["integer"] < 0.08
    text = reps["integer"].format()
    assert "other integer ops: " in text and "QLinearMul 2" in text and "QLinearSigmoid 2" in text


def test_integer_mode_search_keeps_one_quantizer_per_tensor(tmp_path, tiny, tiny_images):
    from qhyvit_fx.decisions import DecisionsError
    from qhyvit_fx.modules import FakeQuantize
    pm = q.prepare(tiny, tiny_images[:1], q.QConfig(method="qhyvit", target="ort", weight_range_bits=7,
                                                    mode="integer"))
    q.calibrate(pm, tiny_images)
    dec = quant_state(pm).decisions
    # the stem's output feeds the dw block's first conv (searched) and the residual add: one group,
    # decided before calibration, searched once on the conv's objective
    group = next(name for name, ms in dec.groups.items() if "dw.0:in0" in ms)
    assert "add:in0" in dec.groups[group] and dec.layers["dw.0"].info["in0_group"] == group
    assert dec.layers["dw.0"].inputs[0].same_as(dec.layers["add"].inputs[0])
    assert dec.meta["group_members_unified"] == 0
    qm = q.convert(pm, dec)
    for n in qm.graph.nodes:
        fqs = [u for u in n.users if u.op == "call_module" and isinstance(qm.get_submodule(u.target), FakeQuantize)]
        assert len(fqs) <= 1, n.name
    # an edited file that splits the group is refused, naming the group
    d = Decisions.from_dict(dec.to_dict())
    d.groups = {}
    qp = d.layers["dw.0"].inputs[0]
    d.layers["dw.0"].inputs[0] = dataclasses.replace(qp, scale=qp.scale * 0.5)
    with pytest.raises(DecisionsError, match=group):
        q.convert(pm, d)
    with pytest.raises(DecisionsError, match="give them the same"):
        d.groups = dec.groups
        Decisions.from_dict(d.to_dict())


def test_output_quantizers_read_by_float_ops_keep_8_bits(tmp_path, tiny_images):
    """W6A6 for onnxruntime: every layer input is quantized to 6 bits; an output quantizer that only
    exists for QLinearConv's fusion (a float op reads it) keeps 8-bit codes, one that is the next
    layer's input (after a ReLU, or tied to its reader) takes the reader's 6 bits."""
    torch.manual_seed(0)
    m = _Bottleneck().eval()
    for out_bits in (8, 6):
        cfg = dict(method="minmax", target="ort", w_bits=6, a_bits=6)
        if out_bits != 8:
            cfg["output_bits"] = out_bits
        pm = q.prepare(m, tiny_images[:1], q.QConfig(**cfg))
        q.calibrate(pm, tiny_images)
        dec = quant_state(pm).decisions
        assert all(qp.spec.bits == 6 for d in dec.layers.values() for qp in d.inputs.values())
        assert dec.layers["a"].output.spec.bits == 6          # after a's relu: b's input
        assert dec.layers["b"].output.spec.bits == 6          # tied to c's 6-bit input
        assert dec.layers["c"].output.spec.bits == 6          # after c's relu (the quantizer follows it)
        assert dec.layers["head"].output.spec.bits == out_bits  # the logits: read by nothing quantized
        assert dec.meta["config"]["output_bits"] == out_bits
    from qhyvit_fx.config import ConfigError
    with pytest.raises(ConfigError, match="output_bits"):
        q.QConfig(output_bits=9)


def test_migrated_per_channel_inputs_run_in_integer_kernels(tmp_path, tiny, tiny_images):
    """target ort: per-channel input ranges of linears / unpadded convs are deployed as per-channel
    codes read with one scale, the channel ratios m moved into the weight.  The converted layer
    computes x_hat @ (Q(W * m) / m)^T (what the search scored), onnxruntime runs it in its integer
    kernels, and its outputs match the fake-quant graph's."""
    import torch.nn.functional as F
    from qhyvit_fx.modules import MigratedQuantize
    from qhyvit_fx.quantizer import fake_quant
    pm = q.prepare(tiny, tiny_images[:1], q.QConfig(method="qhyvit", target="ort", w_bits=6, a_bits=6))
    q.calibrate(pm, tiny_images)
    dec = quant_state(pm).decisions
    migrated = {d.layer for d in dec.layers.values() if d.input_migration is not None}
    # linears (per-channel zero points), and padded convs (one zero point: act_channel_migrate_scales)
    assert migrated == {"vit.transformer.0.attn.qkv", "vit.transformer.0.mlp.fc1", "dw.0", "vit.conv_kxk.conv"}
    qm = q.convert(pm)
    d = dec.layers["vit.transformer.0.mlp.fc1"]
    qin, m = d.inputs[0], d.input_migration
    assert qin.spec.per_channel and qin.spec.axis == 2 and m.numel() == 24 and float(m.max()) == 1.0
    mods = dict(qm.named_modules())
    assert sum(isinstance(x, MigratedQuantize) for x in mods.values()) == 4
    # the deployed arithmetic equals per-channel quantization with the weight Q(W * m) / m
    lin = pm.get_submodule("vit.transformer.0.mlp.fc1")
    x = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(3)) * 2
    xq = fake_quant(x, qin.scale, qin.zero_point, qin.spec.qmin, qin.spec.qmax, axis=2)
    wq = fake_quant(lin.weight * m, d.weight.scale, d.weight.zero_point, d.weight.spec.qmin, d.weight.spec.qmax, axis=0)
    ref = F.linear(xq, wq / m, lin.bias)
    obs = next(n for n in qm.graph.nodes if n.op == "call_module" and isinstance(mods[n.target], MigratedQuantize)
               and "fc1" in n.target)
    got = qm.get_submodule("vit.transformer.0.mlp.fc1")(qm.get_submodule(obs.target)(x))
    assert (got - ref).abs().max().item() < 1e-4 * ref.abs().max().item()
    path = str(tmp_path / "mig.onnx")
    export_onnx(qm, path)
    rep = check_onnx(path)
    assert rep.integer_count == len(rep.ops) == 14
    _assert_ort_matches_torch(qm, path, min_agreement=0.95)
    # off: no migrated layer, every input per-tensor
    pm = q.prepare(tiny, tiny_images[:1], q.QConfig.flat(method="qhyvit", target="ort", act_channel_migrate=False))
    q.calibrate(pm, tiny_images)
    assert all(d.input_migration is None and not any(qp.spec.per_channel for qp in d.inputs.values())
               for d in quant_state(pm).decisions.layers.values())


def _onnx_quantize_params(path):
    """(scale values, zero-point values) of every QuantizeLinear in the file, rounded for matching."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(path)
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    out = []
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            s, z = consts[n.input[1]].reshape(-1), consts[n.input[2]].reshape(-1)
            out.append((tuple(round(float(v), 9) for v in s), tuple(int(v) for v in z)))
    return out


@pytest.mark.parametrize("bits,mode", [((8, 8), "partial"), ((6, 6), "partial"), ((8, 8), "integer")])
def test_every_exported_quantizer_is_a_searched_decision(tmp_path, tiny, tiny_images, bits, mode):
    """What ships is what was searched: every QuantizeLinear of the exported activations carries the
    scale and zero point of a decisions.json entry, and every activation quantizer of decisions.json
    is in the file."""
    w, a = bits
    qm, path = _export(tmp_path, tiny, tiny_images, method="qhyvit", target="ort", w_bits=w, a_bits=a, mode=mode)
    dec = quant_state(qm).decisions
    key = lambda qp: (tuple(round(float(v), 9) for v in qp.scale.reshape(-1)),
                      tuple(int(v) for v in qp.zero_point.reshape(-1)))
    decided = collections.Counter(key(qp) for _, qp in dec.quantizers())
    shipped = collections.Counter(_onnx_quantize_params(path))
    assert sum(shipped.values()) >= 14
    # one QuantizeLinear per decisions entry (a group counts once), equal scale and zero point
    assert shipped == decided


def test_output_quantizers_keep_minmax_ranges_unless_searched(tiny, tiny_images):
    """search_outputs off (default): the output quantizers onnxruntime's fusions need keep their
    observed ranges, exactly MinMax's; on: the search may clip them.  An output quantizer that is
    also a reader's input quantizer (one group) is searched on both objectives either way."""
    def outputs(**kw):
        pm = q.prepare(tiny, tiny_images[:1], q.QConfig.flat(target="ort", **kw))
        q.calibrate(pm, tiny_images)
        dec = quant_state(pm).decisions
        assert list(dec.groups.values()) == [["vit.conv_kxk.conv:out", "vit.conv_1x1:in0"]]
        grouped = {m.split(":")[0] for ms in dec.groups.values() for m in ms if m.endswith(":out")}
        return {d.layer: d.output for d in dec.layers.values() if d.output is not None and d.layer not in grouped}
    ref, got = outputs(method="minmax"), outputs(method="qhyvit")
    assert set(got) == set(ref) and {"stem.0", "head"} <= set(got)
    for layer, qp in got.items():
        assert torch.equal(qp.scale, ref[layer].scale) and torch.equal(qp.zero_point, ref[layer].zero_point)
    searched = outputs(method="qhyvit", search_outputs=True)
    assert set(searched) == set(ref)


def test_integer_mode_leaves_float_what_the_backend_names(tiny, tiny_images):
    """Backend.integer_mode_float_ops is the one switch: softmax float in integer mode on ort, quantized
    on the fake-quant target and in full mode."""
    from qhyvit_fx.passes.annotate import ANNOTATION, quantized_layers
    kinds = {}
    for target, mode in (("ort", "integer"), ("fakequant", "integer"), ("ort", "full")):
        pm = q.prepare(tiny, tiny_images[:1], q.QConfig(target=target, mode=mode))
        kinds[target, mode] = [n.meta[ANNOTATION].kind for n in quantized_layers(pm)].count("softmax")
    assert kinds == {("ort", "integer"): 0, ("fakequant", "integer"): 1, ("ort", "full"): 1}


@pytest.mark.parametrize("bits,method", [(8, "minmax"), (6, "minmax"), (8, "qhyvit")])
def test_relu6_convs_stay_fused_below_8_bits(tmp_path, bits, method):
    """A conv read by ReLU6 runs as QLinearConv at 6-bit activations too: onnxruntime drops the Clip in
    front of a QuantizeLinear only where the Q's uint8 range lies inside [0, 6], which 6-bit codes break,
    so below 8 bits the output quantizer sits on the raw conv output.  At 8 bits the quantizer follows
    the ReLU6, and the search may not widen its range past 6 (annotation ``output_max``)."""
    import torch.nn as nn
    from qhyvit_fx.passes.annotate import ANNOTATION, quantized_layers
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 3
    pm = q.prepare(m, x[:1], q.QConfig(method=method, target="ort", w_bits=bits, a_bits=bits, weight_range_bits=7))
    q.calibrate(pm, x)
    dec = quant_state(pm).decisions
    capped = [n.meta[ANNOTATION] for n in quantized_layers(pm) if n.meta[ANNOTATION].output_max]
    assert len(capped) == (2 if bits == 8 else 0)
    for ann in capped:
        out = dec.layers[ann.layer].output
        assert float((out.spec.qmax - out.zero_point) * out.scale) <= 6.0 * (1 + 1e-6)
    path = str(tmp_path / "m.onnx")
    export_onnx(q.convert(pm), path)
    rep = check_onnx(path)
    assert rep.integer_count == len(rep.ops) == 3


class _NormLinear(torch.nn.Module):
    """Tokens -> LayerNorm whose affine makes two outlier channels (30x the others' range, as trained
    transformers' norms do) -> linear -> GELU -> linear."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.norm = torch.nn.LayerNorm(16)
        with torch.no_grad():
            self.norm.weight.copy_(torch.cat([torch.full((2,), 30.0), torch.ones(14)]))
            self.norm.bias.copy_(torch.linspace(-1, 2, 16))
        self.fc = torch.nn.Linear(16, 32)
        self.head = torch.nn.Linear(32, 8)
        self.fc.weight.data = torch.randn(32, 16, generator=g) * 0.3
        self.fc.weight.data[:, :2] /= 30          # the outlier channels are read through small weights

    def forward(self, x):
        return self.head(torch.nn.functional.gelu(self.fc(self.norm(x))))


@pytest.mark.parametrize("target", ["openvino", "tensorrt", "ort"])
def test_norm_folded_input_is_the_searched_per_channel_quantizer(target):
    """Where a layer reads a norm's output alone and cannot migrate (OpenVINO, TensorRT, onnxruntime in
    integer mode), the search may pick per-channel input ranges; they ship as one per-tensor quantizer
    with the scales folded into the norm's affine and the weight, and the converted layer computes
    exactly the per-channel quantization the search scored."""
    from qhyvit_fx.quantizer import fake_quant
    x = torch.randn(32, 10, 16, generator=torch.Generator().manual_seed(1))
    m = _NormLinear().eval()
    mode = "integer" if target == "ort" else "partial"
    a_bits = 8 if target == "tensorrt" else 4          # TensorRT runs 8-bit activations only
    pm = q.prepare(m, x[:1], q.QConfig(method="qhyvit", target=target, mode=mode, w_bits=6, a_bits=a_bits))
    assert pm.get_submodule("fc") is not None
    ann = next(n.meta["qhyvit_quant"] for n in pm.graph.nodes if n.meta.get("qhyvit_quant")
               and n.meta["qhyvit_quant"].layer == "fc")
    assert ann.fold_norm == "norm" and not ann.input_migrate
    q.calibrate(pm, x)
    d = quant_state(pm).decisions.layers["fc"]
    assert d.reparam is not None and d.reparam["norm"] == "norm" and d.reparam["shift"] == "quantized"
    assert d.input_migration is None and not d.inputs[0].spec.per_channel
    r, t, qp = d.reparam["in_scale"], d.reparam["in_shift"], d.inputs[0]
    assert float(r.max()) == 1.0 and float(r.min()) < 0.2          # the outliers' range was folded
    if target == "tensorrt":
        assert int(qp.zero_point) == 0 and float(t.abs().max()) == 0.0
    qm = q.convert(pm, quant_state(pm).decisions)
    # what the search scored: per-channel codes of the norm output (s_c = r s, z_c = z + t / s_c),
    # times the quantized weight of W * r, divided by r
    got = {}
    qm.get_submodule("norm").register_forward_hook(lambda mod, inp, out: got.update(norm_in=inp[0]))
    qm.get_submodule("fc").register_forward_hook(lambda mod, inp, out: got.update(fc=out))
    with torch.no_grad():
        qm(x)
        y = m.norm(got["norm_in"])            # the original norm, on what the folded norm read
    s_c = r * qp.scale
    z_c = torch.round(qp.zero_point.float() + t / s_c).to(torch.int32)
    y_q = fake_quant(y, s_c, z_c, qp.spec.qmin, qp.spec.qmax, axis=-1)
    w_q = qm.get_submodule("fc").dequantized_weight() / r
    b = m.fc.bias + (d.bias_delta if d.bias_delta is not None else 0)
    want = y_q @ w_q.t() + b
    assert torch.allclose(got["fc"], want, atol=1e-4), float((got["fc"] - want).abs().max())


class _PaddedConvs(torch.nn.Module):
    """1x1 conv -> SiLU -> padded depthwise 3x3 -> SiLU -> padded dense 3x3 -> pool -> linear, with
    channel ranges spread over 30x (the inputs the MobileNetV2 / MobileViT blocks give their kxk convs)."""

    def __init__(self):
        super().__init__()
        self.pw = torch.nn.Conv2d(3, 16, 1)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.kxk = torch.nn.Conv2d(16, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)
        with torch.no_grad():
            self.pw.weight.mul_(torch.linspace(0.2, 6, 16)[:, None, None, None])
            self.dw.weight.mul_(torch.linspace(6, 0.2, 16)[:, None, None, None])

    def forward(self, x):
        x = torch.nn.functional.silu(self.dw(torch.nn.functional.silu(self.pw(x))))
        return self.head(self.kxk(x).mean((2, 3)))


def test_padded_and_grouped_convs_migrate_per_channel_scales_with_one_zero_point(tmp_path):
    """act_channel_migrate_scales: a padded (depthwise or dense) conv may take per-channel input scales
    with one zero point for all channels, read with one scale, the ratios moved into the weights.  The
    kernel pads with that zero point, so the deployed conv equals per-channel quantization followed by
    the zero-padded conv of Q(W * m) / m, border included; onnxruntime runs it in QLinearConv."""
    import torch.nn.functional as F
    from qhyvit_fx.modules import MigratedQuantize
    from qhyvit_fx.quantizer import fake_quant
    torch.manual_seed(0)
    m = _PaddedConvs().eval()
    x = torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    pm = q.prepare(m, x[:1], q.QConfig(method="qhyvit", target="ort", w_bits=6, a_bits=6))   # on by default
    anns = {n.meta["qhyvit_quant"].layer: n.meta["qhyvit_quant"] for n in pm.graph.nodes if "qhyvit_quant" in n.meta}
    assert {k: a.input_migrate for k, a in anns.items()} == {"pw": "channel", "dw": "scale", "kxk": "scale",
                                                             "head": "channel"}
    q.calibrate(pm, x)
    dec = quant_state(pm).decisions
    for layer in ("dw", "kxk"):
        d = dec.layers[layer]
        assert d.input_migration is not None and d.inputs[0].spec.per_channel
        zp = d.inputs[0].zero_point
        assert bool((zp == zp[0]).all()) and 0 < int(zp[0]) < 63      # one zero point, SiLU's negative share
    qm = q.convert(pm)
    d = dec.layers["dw"]
    qin, ratios = d.inputs[0], d.input_migration
    mods = dict(qm.named_modules())
    obs = next(mods[n.target] for n in qm.graph.nodes if n.op == "call_module"
               and isinstance(mods[n.target], MigratedQuantize) and n.target.endswith("dw__in0"))
    assert obs.dq_zero_point == int(qin.zero_point[0])
    y = torch.nn.functional.silu(torch.randn(2, 16, 6, 6, generator=torch.Generator().manual_seed(3)) * 3)
    yq = fake_quant(y, qin.scale, qin.zero_point, qin.spec.qmin, qin.spec.qmax, axis=1)
    w = m.dw.weight * ratios[:, None, None, None]
    wq = fake_quant(w, d.weight.scale, d.weight.zero_point, d.weight.spec.qmin, d.weight.spec.qmax, axis=0)
    ref = F.conv2d(yq, wq / ratios[:, None, None, None], m.dw.bias, padding=1, groups=16)
    got = qm.get_submodule("dw")(obs(y))
    assert (got - ref).abs().max().item() < 1e-4 * ref.abs().max().item()
    path = str(tmp_path / "padded.onnx")
    export_onnx(qm, path)
    rep = check_onnx(path)
    assert rep.integer_count == len(rep.ops) == 4
    with torch.no_grad():
        want = qm(x)
    assert (ort_callable(path, optimize=False)(x) - want).abs().max().item() < 1e-5   # Q/DQ in float: torch
    assert (ort_callable(path)(x) - want).abs().max().item() < 0.05 * want.abs().max().item()
    # off: padded convs keep per-tensor inputs
    pm = q.prepare(m, x[:1], q.QConfig.flat(method="qhyvit", target="ort", w_bits=6, a_bits=6,
                                            act_channel_migrate_scales=False))
    q.calibrate(pm, x)
    assert all(quant_state(pm).decisions.layers[k].input_migration is None for k in ("dw", "kxk"))


def test_shared_zero_point_ranges_give_every_channel_one_zero_point():
    from qhyvit_fx.quantizer import QSpec, params_from_range
    from qhyvit_fx.search.candidates import _shared_zero_spans, shared_zero_point_stats
    from qhyvit_fx.search.problem import ActStats
    lo = torch.tensor([-0.28, -0.28, -0.1, 0.0, -3.0, 0.0])
    hi = torch.tensor([7.0, 1.3, 2.0, 0.0, 3.0, 4.0])           # a dead channel, a symmetric one
    st = ActStats(lo.min(), hi.max(), lo, hi)
    st.folds = [ActStats(lo.min(), hi.max(), lo * 0.5, hi * 0.9)]
    spec = QSpec(bits=6, symmetric=False, per_channel=True, axis=1, signed=False)
    out = shared_zero_point_stats(st, spec)
    z = int(params_from_range(out.ch_lo, out.ch_hi, spec).zero_point[0])
    for s in [out] + out.folds:
        qp = params_from_range(s.ch_lo, s.ch_hi, spec, fraction=torch.tensor([[1.0], [0.6], [1.2]]))
        assert bool((qp.zero_point == z).all())
    # every channel's observed range is covered, and no other zero point has less noise (sum of span^2)
    assert bool((out.ch_hi >= hi - 1e-6).all()) and bool((out.ch_lo <= lo + 1e-6).all())
    noise = [float((_shared_zero_spans(lo, hi, k, 63) ** 2).sum()) for k in range(64)]
    assert noise[z] == min(noise) and 0 < z < 63
    assert noise[0] == float("inf")                    # z = 0 cannot hold the negative values

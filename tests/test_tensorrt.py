"""``--target tensorrt``: symmetric int8 everywhere, per-tensor activations, per-output-channel weights,
Q/DQ on conv/gemm/matmul inputs -- checked structurally on the exported files (no GPU needed)."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import qhyvit_fx as q
from qhyvit_fx import cli
from qhyvit_fx.check_tensorrt import check_tensorrt
from qhyvit_fx.config import ConfigError
from qhyvit_fx.models import MOBILEFORMER_MODELS, create_model
from qhyvit_fx.state import quant_state


def _export(path, model, images, **kw):
    pm = q.prepare(model, images[:1], q.QConfig(**kw))
    q.calibrate(pm, images)
    qm = q.convert(pm)
    q.export_onnx(qm, str(path))
    return qm


def test_tensorrt_config_takes_symmetric_activations_only():
    assert q.QConfig(target="tensorrt").a_scheme == "symmetric"
    assert q.QConfig(target="ort").a_scheme == "asymmetric" and q.QConfig().a_scheme == "asymmetric"
    with pytest.raises(ConfigError, match="target 'tensorrt' takes symmetric activations"):
        q.QConfig(target="tensorrt", a_scheme="asymmetric")
    c = q.QConfig(target="tensorrt", method="qhyvit", w_bits=6)
    assert q.QConfig.from_dict(c.to_dict()) == c


def test_tensorrt_config_refuses_activations_below_8_bits():
    """6-bit activation codes export as Q -> Clip -> DQ, which TensorRT's rules reject (the check reported
    0/90 for such a file); the config says so up front."""
    with pytest.raises(ConfigError, match="target 'tensorrt' runs 8-bit activations only.*a_bits=6"):
        q.QConfig(target="tensorrt", w_bits=6, a_bits=6)
    with pytest.raises(ConfigError, match="a_bits=4"):
        q.QConfig(target="tensorrt", layer_overrides={"head": {"a_bits": 4}})
    assert q.QConfig(target="tensorrt", w_bits=4, a_bits=8).a_bits == 8
    assert q.QConfig(target="openvino", a_bits=6).a_bits == 6


@pytest.mark.parametrize("method", ["minmax", "qhyvit", "easyquant"])
def test_tensorrt_export_follows_its_rules(tmp_path, tiny, tiny_images, method):
    qm = _export(tmp_path / "m.onnx", tiny, tiny_images, method=method, target="tensorrt")
    rep = check_tensorrt(str(tmp_path / "m.onnx"))
    assert rep.violations == []
    assert (len(rep.ops), rep.integer_count, rep.mac_share) == (14, 14, 100.0), rep.format()
    model = onnx.load(str(tmp_path / "m.onnx"))
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    # inputs only: one QuantizeLinear per quantized tensor, none on outputs (TensorRT fuses those itself)
    dec = quant_state(qm).decisions
    assert all(d.output is None for d in dec.layers.values())
    assert len(qs) == len(dec.quantizers())
    # onnxruntime evaluates the file with its Q/DQ in float: the fake-quant graph's numbers
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = qm(x)
    out = q.export.ort_callable(str(tmp_path / "m.onnx"), optimize=False)(x)
    assert (out - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())


def test_onnxruntime_export_breaks_tensorrt_rules(tmp_path, tiny, tiny_images):
    _export(tmp_path / "m.onnx", tiny, tiny_images, method="minmax", target="ort")
    rep = check_tensorrt(str(tmp_path / "m.onnx"))
    assert rep.integer_count == 0 and len(rep.ops) == 14
    assert {o.reason for o in rep.ops} == {"input DequantizeLinear: uint8 codes (TensorRT takes int8)"}
    assert len(rep.violations) == 2 * sum(n.op_type == "QuantizeLinear"
                                          for n in onnx.load(str(tmp_path / "m.onnx")).graph.node)


def _linear_onnx(path, axis: int, act_zp: int = 0):
    """x -> Q -> DQ -> MatMul(DQ(W[out, in], axis) -> Transpose): a linear as our exporter writes it."""
    w = numpy_helper.from_array(np.ones((4, 3), np.int8), "w")
    ws = numpy_helper.from_array(np.full((4,) if axis == 0 else (3,), 0.1, np.float32), "ws")
    wz = numpy_helper.from_array(np.zeros((4,) if axis == 0 else (3,), np.int8), "wz")
    s = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    z = numpy_helper.from_array(np.array(act_zp, np.int8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=axis),
             helper.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["xd", "wt"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, ws, wz, s, z])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return str(path)


def test_weight_scales_must_sit_on_the_output_channel_axis(tmp_path):
    assert check_tensorrt(_linear_onnx(tmp_path / "a.onnx", axis=0)).integer_count == 1
    rep = check_tensorrt(_linear_onnx(tmp_path / "b.onnx", axis=1))
    assert rep.integer_count == 0 and "not on the output-channel axis (0)" in rep.ops[0].reason
    rep = check_tensorrt(_linear_onnx(tmp_path / "c.onnx", axis=0, act_zp=3))
    assert rep.integer_count == 0 and "zero point 3" in rep.ops[0].reason and len(rep.violations) == 2


def test_check_cli_runtime_tensorrt(tmp_path, tiny, tiny_images, capsys):
    _export(tmp_path / "m.onnx", tiny, tiny_images, method="minmax", target="ort")
    assert cli.main(["check", str(tmp_path / "m.onnx"), "--runtime", "tensorrt", "--require-int8"]) == 3
    out, err = capsys.readouterr()
    assert "0/14 conv/gemm/matmul ops in INT8 under TensorRT's rules" in out and "--target tensorrt" in err


FAST = {"mobilevit_xxs"}
# the benchmark models at the 64 px of their CIFAR-10 checkpoints (EfficientFormer L1 at 64 px is our
# efficientformer_l1_64; V2 takes img_size)
MODELS = {"mobilevit_xxs": {}, "mobilevitv2_050": {}, "efficientformerv2_s0": {"img_size": 64},
          "efficientformer_l1_64": {}, MOBILEFORMER_MODELS[0]: {}}


@pytest.mark.parametrize("name", [pytest.param(m, marks=() if m in FAST else pytest.mark.slow) for m in MODELS])
def test_every_model_exports_under_tensorrt_rules(tmp_path, name):
    model = create_model(name, **MODELS[name]).model.eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    _export(tmp_path / "m.onnx", model, x, method="minmax", target="tensorrt")
    rep = check_tensorrt(str(tmp_path / "m.onnx"))
    assert rep.violations == [] and rep.integer_count == len(rep.ops) > 0, rep.format()


# ---- OpenVINO (same structure: the compiled CPU model says which ops run in int8) ----------------

def test_openvino_target_runs_every_op_in_int8(tmp_path, tiny, tiny_images):
    pytest.importorskip("openvino")
    from qhyvit_fx.check_openvino import check_openvino, openvino_callable
    qm = _export(tmp_path / "m.onnx", tiny, tiny_images, method="qhyvit", target="openvino")
    dec = quant_state(qm).decisions
    # asymmetric uint8 activations except the second operand of a matmul of two activations (int8)
    for d in dec.layers.values():
        for slot, qp in d.inputs.items():
            assert qp.spec.symmetric == (d.kind == "matmul" and slot == 1) and not qp.spec.per_channel
        assert d.output is None
    rep = check_openvino(str(tmp_path / "m.onnx"))
    assert (len(rep.ops), rep.integer_count) == (14, 14), rep.format()
    assert {o.kernel.split()[0] for o in rep.ops} == {"Convolution", "FullyConnected", "Subgraph"}
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = qm(x)
    out = openvino_callable(str(tmp_path / "m.onnx"))(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.85
    assert (out - ref).abs().max().item() < 0.1 * ref.abs().max().item()


def test_openvino_target_fixes_the_attention_matmuls_onnxruntimes_export_leaves_in_f32(tmp_path, xxs):
    pytest.importorskip("openvino")
    from qhyvit_fx.check_openvino import check_openvino
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    _export(tmp_path / "ort.onnx", xxs, x, method="minmax", target="ort")
    rep = check_openvino(str(tmp_path / "ort.onnx"))
    floats = [o for o in rep.ops if not o.integer]
    assert len(floats) >= 9 and {o.op for o in floats} == {"MatMul"}, rep.format()
    assert all("second operand in u8" in o.reason for o in floats)
    _export(tmp_path / "ov.onnx", xxs, x, method="minmax", target="openvino")
    rep = check_openvino(str(tmp_path / "ov.onnx"))
    assert rep.integer_count == len(rep.ops) == 90, rep.format()

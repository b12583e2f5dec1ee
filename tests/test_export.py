import os
from collections import Counter

import onnx
import pytest
import torch

import qhyvit_fx as q
from qhyvit_fx.export import ExportError, export_onnx, ort_callable


def _quantized(model, x, **kw):
    pm = q.prepare(model, x[:1], q.QConfig(**{"target": "fakequant", **kw}))
    q.calibrate(pm, x)
    return q.convert(pm)


@pytest.mark.parametrize("bits", [(8, 8), (6, 6), (4, 8)])
def test_export_checker_and_ort_parity(tmp_path, tiny, tiny_images, bits):
    w, a = bits
    qm = _quantized(tiny, tiny_images, w_bits=w, a_bits=a, weight_range_bits=7)
    path = str(tmp_path / "m.onnx")
    export_onnx(qm, path)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    # tiny model: 7 convs + 5 linears (12 weights, 12 inputs) and 2 matmuls (4 operands)
    assert ops["QuantizeLinear"] == 16
    assert ops["DequantizeLinear"] == 16 + 12
    assert ops.get("Clip", 0) == (ops["QuantizeLinear"] if a < 8 else 0)
    # weights are int8 initializers
    inits = {i.name: i for i in model.graph.initializer}
    w_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(w_dq) == 12 and all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in w_dq)
    # onnxruntime with default optimisations (its integer kernels) agrees with the torch graph
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    run = ort_callable(path)
    with torch.no_grad():
        ref = qm(x)
    out = run(x)
    assert out.shape == ref.shape
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree >= 0.98
    assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_export_is_deterministic(tmp_path, tiny, tiny_images):
    qm = _quantized(tiny, tiny_images)
    a, b = str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx")
    export_onnx(qm, a)
    export_onnx(qm, b)
    assert open(a, "rb").read() == open(b, "rb").read()


def test_export_leaves_no_partial_file(tmp_path, tiny, tiny_images):
    qm = _quantized(tiny, tiny_images)
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx(qm, str(tmp_path / "missing" / "m.onnx"))
    assert not os.path.exists(tmp_path / "missing")
    assert os.listdir(tmp_path) == []


def test_int4_weight_format_halves_weight_bytes_and_keeps_parity(tmp_path, tiny, tiny_images):
    qm = _quantized(tiny, tiny_images, w_bits=4, a_bits=8)
    p8, p4 = str(tmp_path / "w8.onnx"), str(tmp_path / "w4.onnx")
    export_onnx(qm, p8)
    export_onnx(qm, p4, weight_format="int4")
    m8, m4 = onnx.load(p8), onnx.load(p4)
    onnx.checker.check_model(m4, full_check=True)
    assert max(o.version for o in m4.opset_import if o.domain in ("", "ai.onnx")) == 21
    i8 = {i.name: i for i in m8.graph.initializer}
    i4 = {i.name: i for i in m4.graph.initializer}
    w4 = [n for n in i4.values() if n.data_type == onnx.TensorProto.INT4]
    assert len(w4) == 12                                          # every conv / linear weight
    b8 = sum(len(onnx.numpy_helper.to_array(i8[t.name]).tobytes()) for t in w4)
    b4 = sum(len(t.raw_data) for t in w4)
    assert b4 == sum((onnx.numpy_helper.to_array(i8[t.name]).size + 1) // 2 for t in w4) and 2 * b4 >= b8
    assert all(torch.equal(torch.from_numpy(onnx.numpy_helper.to_array(i4[t.name]).astype("int64")),
                           torch.from_numpy(onnx.numpy_helper.to_array(i8[t.name]).astype("int64"))) for t in w4)
    assert os.path.getsize(p4) < os.path.getsize(p8)
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = qm(x)
    out4, out8 = ort_callable(p4)(x), ort_callable(p8)(x)
    assert (out4.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.98
    for out in (out4, out8):
        assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item()
    # 8-bit weights do not fit: a clear error, nothing written
    qm8 = _quantized(tiny, tiny_images, w_bits=8, a_bits=8)
    with pytest.raises(ExportError, match="w_bits <= 4"):
        export_onnx(qm8, str(tmp_path / "bad.onnx"), weight_format="int4")
    assert not os.path.exists(tmp_path / "bad.onnx")


def test_group_norm_export_is_lowered_and_shares_its_constants(tmp_path):
    import torch.nn as nn
    import torch.nn.functional as F

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.w1, self.w2 = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.rand(8) + 0.5)
            self.b1, self.b2 = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))

        def forward(self, x):
            y = F.group_norm(self.conv(x), 1, self.w1, self.b1)
            return F.group_norm(y * 2, 1, self.w2, self.b2).mean((2, 3))

    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    qm = _quantized(M().eval(), x)
    path = str(tmp_path / "gn.onnx")
    export_onnx(qm, path)
    model = onnx.load(path)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["LayerNormalization"] == 2 and "InstanceNormalization" not in ops and "Shape" not in ops
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    # both norms read the same all-ones scale and all-zeros bias (one copy each in the file)
    assert ln[0].input[1:] == ln[1].input[1:]
    consts = list(model.graph.initializer) + [n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"]
    assert sum(list(t.dims) == [8, 6, 6] for t in consts) == 2
    with torch.no_grad():
        ref = qm(x)
    assert torch.allclose(ort_callable(path)(x), ref, atol=1e-3 * ref.abs().max().item())

import os
from collections import Counter

import onnx
import pytest
import torch

import qhyvit_fx as q
from qhyvit_fx.export import export_onnx, ort_callable
from qhyvit_fx.evaluate import compare


def _quantized(model, x, **kw):
    pm = q.prepare(model, x[:1], q.QConfig(**kw))
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
    with pytest.raises(Exception):
        export_onnx(qm, str(tmp_path / "missing" / "m.onnx"))
    assert not os.path.exists(tmp_path / "missing")
    assert os.listdir(tmp_path) == []

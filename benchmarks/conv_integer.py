#!/usr/bin/env python3
"""Could a conv run in integers without an output quantizer?  onnxruntime's ConvInteger against
QLinearConv (DQ -> Conv -> Q fused) and float Conv, single convs of MobileViT-like shapes.

    python benchmarks/conv_integer.py

ConvInteger (uint8 input, int8 weight, int32 output, rescaled and biased in float) would keep a conv's
output in float, so the u8 output quantizer that QLinearConv needs would go.  1 thread, batch 1,
median of 50 runs.  Writes benchmarks/results/conv-integer.json.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, write_json  # noqa: E402

# (channels, spatial size, kernel, groups): pointwise, depthwise and dense 3x3 convs
SHAPES = [(64, 64, 1, 1), (64, 64, 3, 64), (96, 32, 3, 1), (128, 32, 1, 1), (256, 16, 3, 256)]


def session(nodes, inits, in_type, shape):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", in_type, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def median_ms(sess, x, runs=50):
    sess.run(None, {"x": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    rows = []
    for c, h, k, groups in SHAPES:
        w = rng.standard_normal((c, c // groups, k, k)).astype(np.float32) * 0.1
        w_scale = (np.abs(w).reshape(c, -1).max(1) / 127).astype(np.float32)
        w_codes = np.round(w / w_scale[:, None, None, None]).astype(np.int8)
        bias = rng.standard_normal(c).astype(np.float32)
        x_scale, x_zero = np.float32(0.02), np.uint8(10)
        xu = rng.integers(0, 255, (1, c, h, h)).astype(np.uint8)
        conv = dict(pads=[k // 2] * 4, group=groups)
        fp = session([helper.make_node("Conv", ["x", "w", "b"], ["y"], **conv)],
                     [nh.from_array(w_codes.astype(np.float32) * w_scale[:, None, None, None], "w"),
                      nh.from_array(bias, "b")], TensorProto.FLOAT, [1, c, h, h])
        integer = session(
            [helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["acc"], **conv),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["accf", "s"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
            [nh.from_array(w_codes, "w"), nh.from_array(np.array(x_zero), "xz"),
             nh.from_array(np.array(0, np.int8), "wz"),     # onnxruntime: one weight zero point per tensor
             nh.from_array((x_scale * w_scale).reshape(1, c, 1, 1), "s"),
             nh.from_array(bias.reshape(1, c, 1, 1), "b")], TensorProto.UINT8, [1, c, h, h])
        qlinear = session(
            [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["c"], **conv),
             helper.make_node("QuantizeLinear", ["c", "os", "oz"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "os", "oz"], ["y"])],
            [nh.from_array(w_codes, "w"), nh.from_array(np.array(x_zero), "xz"),
             nh.from_array(np.array(x_scale), "xs"), nh.from_array(w_scale, "ws"),
             nh.from_array(np.zeros(c, np.int8), "wz"), nh.from_array(bias, "b"),
             nh.from_array(np.array(0.05, np.float32), "os"), nh.from_array(np.array(128, np.uint8), "oz")],
            TensorProto.UINT8, [1, c, h, h])
        xf = (xu.astype(np.float32) - float(x_zero)) * x_scale
        err = float(np.abs(fp.run(None, {"x": xf})[0] - integer.run(None, {"x": xu})[0]).max())
        row = {"channels": c, "size": h, "kernel": k, "groups": groups, "float_ms": median_ms(fp, xf),
               "convinteger_ms": median_ms(integer, xu), "qlinearconv_ms": median_ms(qlinear, xu),
               "convinteger_vs_float_max_abs": err}
        rows.append(row)
        print(f"C={c:3d} {h:2d}x{h:<2d} k{k} groups {groups:3d}: float {row['float_ms']:.3f} ms, "
              f"ConvInteger {row['convinteger_ms']:.3f} ms, QLinearConv {row['qlinearconv_ms']:.3f} ms "
              f"(ConvInteger vs float: max |diff| {err:.1e})", flush=True)
    write_json(os.path.join(RESULTS, "conv-integer.json"), {"rows": rows})


if __name__ == "__main__":
    main()

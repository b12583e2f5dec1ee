"""``qhyvit check --runtime openvino``: which conv / matmul OpenVINO's CPU plugin really runs in int8.

The file is compiled for the CPU (``INFERENCE_PRECISION_HINT=f32``, so that bf16 does not blur
the picture) and its runtime model is read: every executed node lists the original layers it absorbed
(``originalLayersNames``; the low-precision transformations rename a quantized MatMul
``<name>/DequantizationMultiply``) and the precision it runs in (``runtimePrecision``). An ONNX
Conv / MatMul / Gemm is integer when the node that absorbed it runs in u8 or i8: a convolution, a
fully connected layer, or an attention ``Subgraph`` (MatMul -> Softmax -> MatMul fused). Every op
left in f32 gets a reason read off the ONNX graph.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

from .check import CheckReport, OpReport, _display_name, _macs, _weight_init

INT_PRECISIONS = ("u8", "i8")


def _openvino():
    try:
        import openvino
    except ImportError as e:
        raise ImportError("OpenVINO is not installed; pip install 'qhyvit-fx[openvino]' (or openvino)") from e
    return openvino
RUNTIME_COMPUTE = {"Convolution", "FullyConnected", "MatMul", "Subgraph", "Deconvolution", "GroupConvolution"}


def _onnx_name(runtime_name: str, wanted: Dict[str, str]) -> str:
    """The ONNX node a runtime node's original-layer entry stands for: the entry itself or its longest
    prefix at a "/" that ``wanted`` (node names and output tensor names -> node name) holds
    (``/fc/Gemm/WithoutBiases`` -> ``/fc/Gemm``; a graph output keeps the tensor's name, ``logits``)."""
    parts = runtime_name.split("/")
    for k in range(len(parts), 0, -1):
        cand = "/".join(parts[:k])
        if cand in wanted:
            return wanted[cand]
    return runtime_name


def _runtime_owners(path: str, wanted: Dict[str, str], device: str = "CPU") -> Tuple[Dict[str, Tuple[str, str]], Dict[str, int]]:
    """{ONNX node name in ``wanted``: (runtime layer type, runtime precision)} and the runtime op counts."""
    ov = _openvino()
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), device,
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    owners: Dict[str, Tuple[str, str]] = {}
    counts: Dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer_type = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
        key = f"{layer_type} {prec}".strip()
        counts[key] = counts.get(key, 0) + 1
        names = info["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in info else []
        for n in names:
            base = _onnx_name(n, wanted)
            # a fused node lists its neighbours' layers too: a compute node wins over any other
            if base not in owners or owners[base][0] not in RUNTIME_COMPUTE:
                owners[base] = (layer_type, prec)
    return owners, counts


def _f32_reason(node, producers, values) -> str:
    """Why OpenVINO's low-precision transformations left ``node`` in f32, read off the ONNX graph."""
    import numpy as np
    acts = [0] + ([1] if node.op_type == "MatMul" and node.input[1] not in values else [])
    for k in acts:
        p = producers.get(node.input[k])
        if p is None or p.op_type != "DequantizeLinear":
            return f"input {k} is not quantized (no DequantizeLinear in front)"
    if node.op_type == "MatMul" and len(acts) == 2:
        dq = producers[node.input[1]]
        zp = values.get(dq.input[2]) if len(dq.input) > 2 else None
        if zp is None or zp.dtype != np.int8:
            return ("second operand in u8: OpenVINO's int8 attention kernels want i8 there (--target openvino "
                    "quantizes it symmetric)")
    return "OpenVINO kept it in f32 (its low-precision transformations did not apply)"


def check_openvino(path: str, device: str = "CPU") -> CheckReport:
    """Every Conv / MatMul / Gemm of ``path`` with the OpenVINO runtime node that executes it."""
    from .check_tensorrt import graph_tables
    model, compute, shapes, inits, values, producers = graph_tables(path)
    wanted = {n.output[0]: n.name for n in compute}
    wanted.update({n.name: n.name for n in compute})
    owners, counts = _runtime_owners(path, wanted, device)
    rep = CheckReport(os.path.basename(path), optimized_ops=counts)
    for node in compute:
        layer_type, prec = owners.get(node.name, ("not found", ""))
        integer = prec in INT_PRECISIONS
        kernel = f"{layer_type} {prec}".strip()
        reason = "" if integer else _f32_reason(node, producers, values)
        rep.ops.append(OpReport(_display_name(node, _weight_init(node, producers, inits), producers), node.op_type,
                                _macs(node, shapes), kernel, integer, reason))
    return rep


def openvino_callable(path: str, precision: str = "f32", threads: int = 2):
    """A torch-in, torch-out callable running the ONNX file compiled by OpenVINO for the CPU
    (``precision``: the inference precision hint; "f32" for accuracy, "" for the plugin's default)."""
    import torch
    ov = _openvino()
    core = ov.Core()
    cfg: Dict[str, object] = {"INFERENCE_NUM_THREADS": threads}
    if precision:
        cfg["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(core.read_model(path), "CPU", cfg)
    request = compiled.create_infer_request()

    static_batch = compiled.input(0).get_partial_shape()[0].is_static

    def run(x: "torch.Tensor") -> "torch.Tensor":
        chunks = [x[i:i + 1] for i in range(x.shape[0])] if static_batch else [x]
        outs: List = []
        for c in chunks:
            request.infer({0: c.detach().cpu().numpy()})
            outs.append(torch.from_numpy(request.get_output_tensor(0).data.copy()))
        return torch.cat(outs)
    return run

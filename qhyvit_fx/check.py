"""``qhyvit check``: which quantized ops onnxruntime really runs in integer kernels.

The model is loaded with onnxruntime's default graph optimisations and the
optimised graph is saved and inspected.  Every Conv / MatMul / Gemm of the
original graph is followed into the optimised one through the tensor that
feeds it (onnxruntime keeps the names of quantized tensors when it fuses
DequantizeLinear -> op -> QuantizeLinear into one integer op).  MACs come from
the original graph with shapes inferred at batch 1.  Every op left in float
gets a reason read off the original graph.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "QGemm",
               "DynamicQuantizeMatMul", "QAttention", "NhwcQLinearConv", "QLinearConvTranspose"}
FLOAT_COMPUTE = {"Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm", "TransposeMatMul"}
COMPUTE = {"Conv", "MatMul", "Gemm"}


@dataclass
class OpReport:
    name: str
    op: str
    macs: int
    kernel: str                 # optimised op that runs it
    integer: bool
    reason: str = ""


@dataclass
class CheckReport:
    model: str
    ops: List[OpReport] = field(default_factory=list)
    optimized_ops: Dict[str, int] = field(default_factory=dict)

    @property
    def integer_count(self) -> int:
        return sum(o.integer for o in self.ops)

    @property
    def mac_share(self) -> float:
        total = sum(o.macs for o in self.ops)
        return 100.0 * sum(o.macs for o in self.ops if o.integer) / total if total else 0.0

    def by_op(self) -> Dict[str, Dict[str, int]]:
        out: Dict[str, Dict[str, int]] = {}
        for o in self.ops:
            d = out.setdefault(o.op, {"total": 0, "integer": 0})
            d["total"] += 1
            d["integer"] += int(o.integer)
        return out

    def to_dict(self) -> dict:
        return {"model": self.model, "compute_ops": len(self.ops), "integer_ops": self.integer_count,
                "integer_mac_share": round(self.mac_share, 3), "by_op": self.by_op(),
                "optimized_ops": self.optimized_ops, "ops": [asdict(o) for o in self.ops]}

    def format(self) -> str:
        lines = [f"{self.model}: {self.integer_count}/{len(self.ops)} conv/gemm/matmul ops in integer kernels, "
                 f"{self.mac_share:.1f} % of MACs"]
        for op, d in self.by_op().items():
            lines.append(f"  {op:<7} {d['integer']:>4}/{d['total']:<4} integer")
        kernels: Dict[str, int] = {}
        for o in self.ops:
            kernels[o.kernel] = kernels.get(o.kernel, 0) + 1
        lines.append("  kernels: " + ", ".join(f"{k} {v}" for k, v in sorted(kernels.items())))
        other = {k: v for k, v in self.optimized_ops.items() if k.startswith("QLinear") and k not in kernels}
        if other:
            lines.append("  other integer ops: " + ", ".join(f"{k} {v}" for k, v in sorted(other.items())))
        conv = {k: self.optimized_ops[k] for k in ("QuantizeLinear", "DequantizeLinear") if k in self.optimized_ops}
        if conv:
            lines.append("  float<->integer conversions: " + ", ".join(f"{k} {v}" for k, v in conv.items()))
        islands = [o for o in self.ops if not o.integer]
        if islands:
            lines.append(f"  float islands ({len(islands)}):")
            for o in islands:
                lines.append(f"    {o.name} ({o.op}, {o.macs / 1e6:.2f} MMAC): {o.reason}")
        return "\n".join(lines)


def _shapes(model, tensors: List[str]) -> Dict[str, List[int]]:
    """Exact shapes of ``tensors`` at batch 1: run the model once in onnxruntime
    (optimisations off) with those tensors added as outputs."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    for t in tensors:
        if t not in have and t not in inits:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
            have.add(t)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dtype = np.float32 if "float" in i.type else np.int64
        feeds[i.name] = np.zeros(shape, dtype=dtype)
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, (list(v.shape) for v in sess.run(names, feeds))))
    out.update(inits)
    return out


def _macs(node, shapes) -> int:
    out = shapes.get(node.output[0])
    if out is None:
        return 0
    if node.op_type == "Conv":
        w = shapes.get(node.input[1])
        if w is None:
            return 0
        return int(math.prod(out) * math.prod(w[1:]))
    a = shapes.get(node.input[0])
    if a is None:
        return 0
    if node.op_type == "Gemm":
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[-1]
        return int(math.prod(out) * k)
    return int(math.prod(out) * a[-1])


def _float_reason(node, producers, consumers, inits) -> str:
    acts = [node.input[0]] + ([node.input[1]] if node.op_type == "MatMul" and node.input[1] not in inits else [])
    for t in acts:
        p = producers.get(t)
        if p is None or p.op_type != "DequantizeLinear":
            return f"input '{t}' is not quantized (no DequantizeLinear in front)"
        scale = p.input[1]
        if scale in inits and math.prod(inits[scale].dims or [1]) > 1:
            return "per-channel activation quantization (integer kernels need a per-tensor input scale)"
    if node.op_type in ("Conv", "Gemm") or (node.op_type == "MatMul" and node.input[1] in inits):
        w = node.input[1]
        p = producers.get(w)
        if w not in inits and (p is None or p.op_type != "DequantizeLinear"):
            return "weight is not quantized"
        if p is not None and p.op_type == "DequantizeLinear" and p.input[0] not in inits:
            return "weight codes are not a constant initializer"
    users = consumers.get(node.output[0], [])
    if node.op_type == "Conv" and not (len(users) == 1 and users[0].op_type == "QuantizeLinear"):
        return "no QuantizeLinear on the output (QLinearConv needs Q/DQ on inputs and output)"
    return "not fused by onnxruntime"


def check_onnx(path: str, keep_optimized: Optional[str] = None) -> CheckReport:
    import onnx
    import onnxruntime as ort
    model = onnx.load(path)
    compute = [n for n in model.graph.node if n.op_type in COMPUTE]
    shapes = _shapes(model, [t for n in compute for t in list(n.input[:2]) + [n.output[0]]])
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: Dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    with tempfile.TemporaryDirectory() as d:
        opt_path = keep_optimized or os.path.join(d, "optimized.onnx")
        so = ort.SessionOptions()
        so.optimized_model_filepath = opt_path
        so.log_severity_level = 3
        ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        opt = onnx.load(opt_path)
    # optimised nodes by the tensors they read
    reader: Dict[str, list] = {}
    for n in opt.graph.node:
        for i in n.input:
            reader.setdefault(i, []).append(n)
    writer = {o: n for n in opt.graph.node for o in n.output}
    optimized_ops: Dict[str, int] = {}
    for n in opt.graph.node:
        optimized_ops[n.op_type] = optimized_ops.get(n.op_type, 0) + 1
    rep = CheckReport(os.path.basename(path), optimized_ops=optimized_ops)
    for node in model.graph.node:
        if node.op_type not in COMPUTE:
            continue
        w = _weight_init(node, producers, inits)
        keys = [w] if w is not None else []      # onnxruntime keeps weight initializer names
        for x in node.input[:2]:
            if x in inits or x == w or (producers.get(x) is not None and producers[x].op_type == "DequantizeLinear"
                                        and producers[x].input[0] == w):
                continue
            p = producers.get(x)
            if p is not None and p.op_type == "DequantizeLinear":
                keys.append(p.input[0])          # the quantized tensor an integer kernel reads
            keys.append(x)
        outs = [node.output[0]] + [q.output[0] for q in consumers.get(node.output[0], [])
                                   if q.op_type == "QuantizeLinear"]
        wrs = [writer[o] for o in outs if o in writer]
        # the op writing this op's output (float, or the quantized one of a DQ -> op -> Q fusion), e.g.
        # MatMulIntegerToFloat when the quantized input's name changed in a fusion upstream (QLinearSoftmax
        # in front of attn @ v), or QLinearMatMul behind a weight Transpose that onnxruntime folded
        wr = next((w for w in wrs if w.op_type in INTEGER_OPS), None) or next(
            (w for w in wrs if w.op_type in FLOAT_COMPUTE), None)
        kernel = _kernel_reading(keys, reader) or (wr.op_type if wr is not None else None) or "unknown"
        integer = kernel in INTEGER_OPS
        reason = "" if integer else _float_reason(node, producers, consumers, inits)
        rep.ops.append(OpReport(_display_name(node, w, producers), node.op_type, _macs(node, shapes), kernel, integer,
                                reason))
    return rep


RUNTIMES = ("onnxruntime", "tensorrt", "openvino")


def check_runtime(path: str, runtime: str = "onnxruntime", keep_optimized: Optional[str] = None) -> CheckReport:
    """``path`` judged by ``runtime``: onnxruntime's optimised CPU graph, TensorRT's Q/DQ rules
    (:mod:`qhyvit_fx.check_tensorrt`) or OpenVINO's compiled CPU model (:mod:`qhyvit_fx.check_openvino`)."""
    if runtime == "tensorrt":
        from .check_tensorrt import check_tensorrt
        return check_tensorrt(path)
    if runtime == "openvino":
        from .check_openvino import check_openvino
        return check_openvino(path)
    if runtime != "onnxruntime":
        raise ValueError(f"runtime '{runtime}' is not one of {', '.join(RUNTIMES)}")
    return check_onnx(path, keep_optimized=keep_optimized)


def _weight_init(node, producers, inits) -> Optional[str]:
    if len(node.input) < 2:
        return None
    w = node.input[1]
    if w in inits:
        return w
    p = producers.get(w)
    if p is not None and p.op_type == "DequantizeLinear" and p.input[0] in inits:
        return p.input[0]
    return None


def _display_name(node, weight: Optional[str], producers) -> str:
    """Layer name: from the weight initializer (module path) or the input quantizer's name."""
    if weight:
        for suffix in (".weight_int", ".weight"):
            if weight.endswith(suffix):
                return weight[: -len(suffix)]
        return weight
    p = producers.get(node.input[0])
    src = p.name if p is not None else ""
    if "qhyvit_obs__" in src:
        return src.split("qhyvit_obs__")[1].split("__")[0]
    return node.name or node.output[0]


_LAYOUT = {"Transpose", "Reshape", "ReorderInput", "Flatten", "Squeeze", "Unsqueeze"}


def _kernel_reading(keys: List[str], reader: Dict[str, list], depth: int = 3) -> Optional[str]:
    """The compute op of the optimised graph that reads one of ``keys``, possibly
    through layout ops onnxruntime inserted (NHWC transposes, NCHWc reorders)."""
    frontier = list(keys)
    for _ in range(depth):
        nxt = []
        for t in frontier:
            for n in reader.get(t, []):
                if n.op_type in INTEGER_OPS or n.op_type in FLOAT_COMPUTE:
                    return n.op_type
                if n.op_type in _LAYOUT:
                    nxt.extend(n.output)
        frontier = nxt
    return None


def write_json(rep: CheckReport, path: str) -> None:
    from .decisions import atomic_write_text
    atomic_write_text(path, json.dumps(rep.to_dict(), indent=1))

"""``qhyvit check --runtime tensorrt``: does a QDQ ONNX follow TensorRT's explicit-quantization rules?

TensorRT builds INT8 kernels from Q/DQ it finds in the graph (explicit quantization). What it
accepts, read from its "Working with Quantized Types" guide:

* QuantizeLinear / DequantizeLinear in INT8 with zero point 0 (symmetric);
* activation scales per tensor; weight scales per tensor or per output channel: the DequantizeLinear
  axis, followed through the Transposes between it and the op, lands on the op's output-channel
  axis (Conv weight axis 0; MatMul's constant B: its last axis; Gemm's B: 0 with ``transB``, else 1);
* a Conv / MatMul / Gemm runs in INT8 when every data input comes from a DequantizeLinear (a weight's
  DequantizeLinear may be followed by Transposes, which TensorRT commutes with it) and every
  activation DequantizeLinear reads a QuantizeLinear of the same scale and zero point.

No GPU or TensorRT install is needed: this reads the graph. It is the structural check for
``--target tensorrt`` exports; the engine's own layer report, when a GPU is at hand, is the final word.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .check import COMPUTE, CheckReport, OpReport, _display_name, _macs, _shapes, _weight_init

KERNEL_INT8, KERNEL_FLOAT = "int8 (TensorRT rules)", "float"


@dataclass
class TensorRTReport(CheckReport):
    violations: List[str] = field(default_factory=list)     # Q/DQ nodes TensorRT rejects, whatever reads them

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["violations"] = list(self.violations)
        return d

    def format(self) -> str:
        text = super().format().replace("in integer kernels", "in INT8 under TensorRT's rules", 1)
        if self.violations:
            by_reason: Dict[str, List[str]] = {}
            for v in self.violations:
                name, reason = v.split(": ", 1)
                by_reason.setdefault(reason, []).append(name)
            text += f"\n  Q/DQ that TensorRT rejects ({len(self.violations)}):"
            for reason, names in by_reason.items():
                more = f", ... ({len(names) - 3} more)" if len(names) > 3 else ""
                text += f"\n    {reason}: {len(names)} ({', '.join(names[:3])}{more})"
        return text


def _values(model) -> Dict[str, "object"]:
    """Constant tensors of the graph (initializers and Constant nodes) as numpy arrays."""
    from onnx import numpy_helper
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else list(a.ints)
    return default


def _qdq_problem(node, values) -> Optional[str]:
    """Why TensorRT rejects this QuantizeLinear / DequantizeLinear, or None."""
    import numpy as np
    zp = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zp is None:
        if node.op_type == "QuantizeLinear":
            return "no zero point, so uint8 codes (TensorRT takes int8 with zero point 0)"
        return None
    if zp.dtype != np.int8:
        return f"{zp.dtype} codes (TensorRT takes int8)"
    if np.any(zp != 0):
        return f"zero point {int(np.abs(zp).max())} (TensorRT takes 0: use --act-scheme symmetric)"
    return None


def _scale_count(node, values) -> int:
    s = values.get(node.input[1])
    return 1 if s is None else int(math.prod(s.shape) or 1)


def _output_axis(node, transposes: List, values) -> Optional[int]:
    """The weight axis that must carry per-channel scales, in the DequantizeLinear's own layout."""
    rank_axis = {"Conv": 0}.get(node.op_type)
    if node.op_type == "Gemm":
        rank_axis = 0 if _attr(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        rank_axis = -1
    # undo the Transposes between the DequantizeLinear and the op, last first
    axis = rank_axis
    for t in reversed(transposes):
        perm = _attr(t, "perm")
        if perm is None:
            return None
        axis = perm[axis % len(perm)]
    return axis


def _op_verdict(node, producers, values, inits) -> str:
    """'' when TensorRT runs ``node`` in INT8, else the rule it breaks."""
    weight_in = 1 if node.op_type in ("Conv", "Gemm") or node.input[1] in inits or \
        _weight_dq(node.input[1], producers, inits)[0] is not None else None
    for k, t in enumerate(node.input[:2]):
        if k == weight_in:
            dq, transposes = _weight_dq(t, producers, inits)
            if dq is None:
                return "weight is not quantized (no DequantizeLinear of constant codes in front)"
            bad = _qdq_problem(dq, values)
            if bad:
                return f"weight DequantizeLinear: {bad}"
            if _scale_count(dq, values) > 1:
                axis = _attr(dq, "axis", 1)
                want = _output_axis(node, transposes, values)
                codes = values.get(dq.input[0])
                rank = codes.ndim if codes is not None else None
                if want is None or rank is None or axis % rank != want % rank:
                    return f"per-channel weight scales on axis {axis}, not on the output-channel axis ({want})"
            continue
        dq = producers.get(t)
        if dq is None or dq.op_type != "DequantizeLinear":
            return f"input '{t}' is not quantized (no DequantizeLinear in front)"
        bad = _qdq_problem(dq, values)
        if bad:
            return f"input DequantizeLinear: {bad}"
        if _scale_count(dq, values) > 1:
            return "per-channel activation scales (TensorRT takes one scale per activation tensor)"
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            return f"input DequantizeLinear reads '{dq.input[0]}', not a QuantizeLinear"
        import numpy as np
        same = all(np.array_equal(values.get(a), values.get(b)) for a, b in zip(q.input[1:3], dq.input[1:3]))
        if not same:
            return "QuantizeLinear and DequantizeLinear of the input differ in scale or zero point"
    return ""


def _weight_dq(t: str, producers, inits):
    """(DequantizeLinear of constant codes feeding ``t`` through Transposes, those Transposes)."""
    transposes = []
    p = producers.get(t)
    while p is not None and p.op_type == "Transpose":
        transposes.append(p)
        p = producers.get(p.input[0])
    transposes.reverse()
    if p is not None and p.op_type == "DequantizeLinear" and p.input[0] in inits:
        return p, transposes
    return None, []


def graph_tables(path: str):
    """(model, compute ops, shapes, initializers, constant values, producer of each tensor) of an ONNX
    file: what both runtime checks read."""
    import onnx
    model = onnx.load(path)
    compute = [n for n in model.graph.node if n.op_type in COMPUTE]
    shapes = _shapes(model, [t for n in compute for t in list(n.input[:2]) + [n.output[0]]])
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    return model, compute, shapes, inits, _values(model), producers


def check_tensorrt(path: str) -> TensorRTReport:
    """Every Conv / MatMul / Gemm of ``path`` judged by TensorRT's explicit-quantization rules."""
    model, compute, shapes, inits, values, producers = graph_tables(path)
    rep = TensorRTReport(os.path.basename(path))
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            bad = _qdq_problem(n, values)
            if bad:
                rep.violations.append(f"{n.op_type} {n.name or n.output[0]}: {bad}")
    for node in compute:
        reason = _op_verdict(node, producers, values, inits)
        rep.ops.append(OpReport(_display_name(node, _weight_init(node, producers, inits), producers), node.op_type,
                                _macs(node, shapes), KERNEL_FLOAT if reason else KERNEL_INT8, not reason, reason))
    return rep

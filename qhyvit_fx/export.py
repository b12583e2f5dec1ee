"""QDQ ONNX export of a converted (fake-quant) GraphModule.

Activations export as QuantizeLinear -> [Clip] -> DequantizeLinear, weights as
int8 initializers -> DequantizeLinear (see :mod:`qhyvit_fx.modules`).  The
legacy TorchScript exporter is used (opset 20, under a second for these
models); ``onnx.checker`` validates the result, and the file is written
atomically.
"""
from __future__ import annotations

import copy
import io
import os
import warnings
from typing import Optional

import torch
import torch.fx as fx

from .decisions import atomic_write_bytes
from .passes.lower_group_norm import lower_group_norm
from .passes.specialize_shapes import specialize_shapes
from .state import quant_state


class ExportError(RuntimeError):
    """The model could not be exported; the message says why."""


OPSET = 20      # 20 has Gelu as one op (opset 17 spells it Div/Erf/Add/Mul/Mul: five float nodes per GELU)


def export_onnx(qm: fx.GraphModule, path: str, example_input: Optional[torch.Tensor] = None, opset: int = OPSET,
                dynamic_batch: bool = True, specialize: bool = True, weight_format: str = "int8") -> str:
    """Write ``qm`` as QDQ ONNX to ``path``; returns the path.

    ``specialize`` (default): export a copy on which shape arithmetic is folded to constants (the
    batch stays dynamic) and one-group GroupNorms are lowered to LayerNorm; see
    :mod:`qhyvit_fx.passes.specialize_shapes` and :mod:`qhyvit_fx.passes.lower_group_norm`.  This
    only removes shape bookkeeping nodes; ``qm`` itself is not changed.

    ``weight_format``: ``"int8"`` (default) stores weight codes in int8 containers, which
    onnxruntime's integer kernels read (codes narrower than 8 bits, e.g. W6 or W4, are simply
    smaller numbers in them).  ``"int4"`` stores weights whose codes fit in 4 bits as ONNX INT4
    (opset 21), half the bytes; onnxruntime (1.32) has no int4 conv/gemm kernel, so it dequantizes
    those weights and runs the layers in float -- the smallest file, not the fastest."""
    import onnx

    if example_input is None:
        shape = quant_state(qm).example_shape
        if shape is None:
            raise ExportError("pass example_input: the model carries no example shape")
        example_input = torch.zeros((1,) + tuple(shape[1:]))
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        raise ExportError(f"output folder '{out_dir}' does not exist; create it or choose another path")
    if specialize:
        qm = specialize_shapes(lower_group_norm(copy.deepcopy(qm)), example_input)
    qm.eval()
    try:
        data = _torchscript_export(qm, example_input, opset, dynamic_batch)
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    model = onnx.load_from_string(data)
    model.producer_name = "qhyvit-fx"
    _compact_tensor_names(model)
    _bypass_constant_identities(model)
    _share_equal_constants(model)
    if weight_format == "int4":
        if _int4_weights(model) == 0:
            raise ExportError("weight_format int4: no weight has 4-bit codes; quantize with w_bits <= 4 "
                              "(e.g. --bits w4a8) or use the default int8 format")
    elif weight_format != "int8":
        raise ExportError(f"weight_format '{weight_format}' is not one of int8, int4")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"exported ONNX failed onnx.checker: {e}") from e
    atomic_write_bytes(path, model.SerializeToString())
    return path


def _int4_weights(model) -> int:
    """Store int8 weight initializers that feed a DequantizeLinear and hold only codes in [-8, 7]
    (with their zero points) as INT4; raises the default opset to 21, the first with INT4 Q/DQ
    (the ops used here mean the same in 20 and 21).  Returns the number of weights converted."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def int4_ok(name):
        t = inits.get(name)
        if t is None and name in consts:
            t = consts[name].attribute[0].t
        if t is not None and t.data_type == TensorProto.INT4:
            return True                      # a zero point shared with a weight converted before
        if t is None or t.data_type != TensorProto.INT8:
            return None
        a = numpy_helper.to_array(t)
        return a if a.size and a.min() >= -8 and a.max() <= 7 else None

    def replace(name, a):
        flat = a.astype(np.int8).flatten()
        if flat.size % 2:
            flat = np.append(flat, np.int8(0))
        nib = (flat & 0x0F).astype(np.uint8)
        packed = nib[0::2] | (nib[1::2] << 4)           # two codes per byte, the first in the low nibble
        t = helper.make_tensor(name, TensorProto.INT4, a.shape, packed.tobytes(), raw=True)
        if name in inits:
            inits[name].CopyFrom(t)
        else:
            consts[name].attribute[0].t.CopyFrom(t)

    done = 0
    for n in g.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits or len(n.input) < 3:
            continue
        w, z = int4_ok(n.input[0]), int4_ok(n.input[2])
        if w is None or w is True or z is None:
            continue
        replace(n.input[0], w)
        if z is not True:
            replace(n.input[2], z)
        done += 1
    if done:
        for op in model.opset_import:
            if op.domain in ("", "ai.onnx") and op.version < 21:
                op.version = 21
        model.ir_version = max(model.ir_version, 10)
    return done


def _nodes_with_subgraphs(graph):
    """Every node of ``graph`` and of the graphs nested in its nodes (If / Loop bodies): a nested
    node may read any outer tensor, so a renamed or merged tensor must be renamed there too."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _nodes_with_subgraphs(g)


def _torchscript_export(qm: fx.GraphModule, example_input: torch.Tensor, opset: int, dynamic_batch: bool) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            qm, (example_input,), buf, dynamo=False, opset_version=opset, input_names=["input"],
            output_names=["logits"], do_constant_folding=True,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None)
    return buf.getvalue()


def _bypass_constant_identities(model) -> int:
    """Readers of ``Identity(constant)`` read the constant itself.  The exporter deduplicates equal
    parameters that way (e.g. two all-zero weights, as zero-initialised BatchNorm gammas fold to),
    and onnxruntime's QDQ fusions need the weight codes as an initializer, not an op's output, or
    the layer stays in float.  Returns the number of Identity nodes removed."""
    g = model.graph
    consts = {i.name for i in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    outputs = {o.name for o in g.output}
    alias = {n.output[0]: n.input[0] for n in g.node
             if n.op_type == "Identity" and n.input[0] in consts and n.output[0] not in outputs}
    if not alias:
        return 0
    for n in _nodes_with_subgraphs(g):
        for i, x in enumerate(n.input):
            if x in alias:
                n.input[i] = alias[x]
    for n in [n for n in g.node if n.op_type == "Identity" and n.output[0] in alias]:
        g.node.remove(n)
    return len(alias)


def _share_equal_constants(model) -> int:
    """Constants (initializers and Constant nodes) with the same type, shape and values become one.
    The exporter writes a separate copy of a constant per op: e.g. the all-ones scale and all-zeros
    bias of every lowered GroupNorm's LayerNormalization, C*H*W floats each.  Returns the number of
    copies removed."""
    import hashlib

    from onnx import numpy_helper
    g = model.graph
    first, alias = {}, {}

    def key(t):
        return (t.data_type, tuple(t.dims), hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest())

    for t in g.initializer:
        alias.setdefault(t.name, first.setdefault(key(t), t.name))
    dup_nodes = []
    for n in g.node:                   # graph order: the first Constant comes before every later reader
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            name = first.setdefault(key(n.attribute[0].t), n.output[0])
            alias[n.output[0]] = name
            if name != n.output[0]:
                dup_nodes.append(n)
    alias = {k: v for k, v in alias.items() if k != v}
    if not alias:
        return 0
    outputs = {o.name for o in g.output}
    alias = {k: v for k, v in alias.items() if k not in outputs}
    for n in _nodes_with_subgraphs(g):
        for i, x in enumerate(n.input):
            if x in alias:
                n.input[i] = alias[x]
    keep = [t for t in g.initializer if t.name not in alias]
    del g.initializer[:]
    g.initializer.extend(keep)
    for n in dup_nodes:
        if n.output[0] in alias:
            g.node.remove(n)
    return len(alias)


def _compact_tensor_names(model) -> None:
    """Rename intermediate tensors to short ids (the exporter's names repeat the module path at every
    producer and consumer: about a quarter of a small model's file).  Graph inputs/outputs,
    initializers (named after their layers) and node names are kept."""
    g = model.graph
    keep = {v.name for v in list(g.input) + list(g.output)} | {i.name for i in g.initializer} | {""}
    new = {}
    for node in g.node:
        for i, o in enumerate(node.output):
            if o not in keep:
                new[o] = new.get(o) or f"t{len(new)}"
                node.output[i] = new[o]
    for node in _nodes_with_subgraphs(g):
        for i, x in enumerate(node.input):
            if x in new:
                node.input[i] = new[x]
    vi = [v for v in g.value_info if v.name in new]
    del g.value_info[:]
    for v in vi:
        v.name = new[v.name]
        g.value_info.append(v)


def ort_session(path: str, threads: int = 2, optimize: bool = True):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_callable(path: str, threads: int = 2, optimize: bool = True):
    """A torch-in, torch-out callable running the ONNX file in onnxruntime."""
    sess = ort_session(path, threads, optimize)
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy()})[0])
    return run

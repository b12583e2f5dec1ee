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


class ExportError(RuntimeError):
    """The model could not be exported; the message says why."""


OPSET = 20      # 20 has Gelu as one op (opset 17 spells it Div/Erf/Add/Mul/Mul: five float nodes per GELU)


def export_onnx(qm: fx.GraphModule, path: str, example_input: Optional[torch.Tensor] = None, opset: int = OPSET,
                dynamic_batch: bool = True, specialize: bool = True) -> str:
    """Write ``qm`` as QDQ ONNX to ``path``; returns the path.

    ``specialize`` (default): export a copy on which shape arithmetic is folded to constants (the
    batch stays dynamic) and one-group GroupNorms are lowered to LayerNorm; see
    :mod:`qhyvit_fx.passes.specialize_shapes` and :mod:`qhyvit_fx.passes.lower_group_norm`.  This
    only removes shape bookkeeping nodes; ``qm`` itself is not changed."""
    import onnx

    if example_input is None:
        shape = qm.meta.get("qhyvit_example_shape")
        if shape is None:
            raise ExportError("pass example_input: the model carries no example shape")
        example_input = torch.zeros((1,) + tuple(shape[1:]))
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        raise ExportError(f"output folder '{out_dir}' does not exist; create it or choose another path")
    if specialize:
        qm = specialize_shapes(lower_group_norm(copy.deepcopy(qm), example_input), example_input)
    buf = io.BytesIO()
    qm.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            qm, (example_input,), buf, dynamo=False, opset_version=opset, input_names=["input"],
            output_names=["logits"], do_constant_folding=True,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None)
    model = onnx.load_from_string(buf.getvalue())
    model.producer_name = "qhyvit-fx"
    _compact_tensor_names(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"exported ONNX failed onnx.checker: {e}") from e
    atomic_write_bytes(path, model.SerializeToString())
    return path


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
    for node in g.node:
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

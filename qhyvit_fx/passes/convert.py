"""Pass: execute decisions -- observers become fake-quantizers, conv/linear
modules become weight-quantized modules.  Returns a new GraphModule; the
prepared one is left untouched (so it can be converted again, e.g. with an
edited decisions file)."""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn

from ..decisions import Decisions, DecisionsError
from ..modules import FakeQuantize, QuantConv2d, QuantLinear
from ..quantizer import QParams
from .annotate import ANNOTATION

RECORDER = "qhyvit_calib_recorder"


def _check_channels(layer: str, what: str, qp: QParams, channels: int) -> None:
    if qp.spec.per_channel and qp.scale.numel() != channels:
        raise DecisionsError(f"layer '{layer}' {what}: per-channel decision has {qp.scale.numel()} scales "
                             f"but the tensor has {channels} channels")


def _shape(node: fx.Node):
    tm = node.meta.get("tensor_meta")
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def convert_graph(prepared: fx.GraphModule, decisions: Decisions) -> fx.GraphModule:
    gm = copy.deepcopy(prepared)
    g = gm.graph
    for node in list(g.nodes):
        if node.op == "call_module" and node.target == RECORDER:
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
    for node in list(g.nodes):
        ann = node.meta.get(ANNOTATION)
        if ann is None:
            continue
        d = decisions.layers.get(ann.layer)
        if d is None:
            raise DecisionsError(f"no decision for quantized layer '{ann.layer}'; the decisions do not "
                                 "belong to this model or config (re-run calibration)")
        if ann.weight is not None and d.weight is not None:
            mod = gm.get_submodule(node.target)
            _check_channels(ann.layer, "weight", d.weight, mod.weight.shape[0])
            if d.weight.spec.per_channel and d.weight.spec.axis != 0:
                raise DecisionsError(f"layer '{ann.layer}': weight channels are on axis 0")
            q = QuantConv2d(mod, d.weight) if isinstance(mod, nn.Conv2d) else QuantLinear(mod, d.weight)
            if d.bias_delta is not None:
                if d.bias_delta.numel() != mod.weight.shape[0]:
                    raise DecisionsError(f"layer '{ann.layer}': bias_delta has {d.bias_delta.numel()} values "
                                         f"but the layer has {mod.weight.shape[0]} output channels")
                base = q.bias.detach() if q.bias is not None else torch.zeros(mod.weight.shape[0])
                q.bias = nn.Parameter(base + d.bias_delta, requires_grad=False)
            gm.add_submodule(node.target, q)
        for slot, obs_name in ann.observers.items():
            obs_node = next(n for n in g.nodes if n.op == "call_module" and n.target == obs_name)
            qp = d.output if slot == "out" else d.inputs.get(int(slot[2:]))
            if qp is None:
                obs_node.replace_all_uses_with(obs_node.args[0])
                g.erase_node(obs_node)
                continue
            shape = _shape(obs_node)
            axis = None
            if qp.spec.per_channel:
                axis = qp.spec.axis
                if shape is None or not -len(shape) <= axis < len(shape):
                    raise DecisionsError(f"layer '{ann.layer}' {slot}: per-channel axis {axis} is invalid")
                axis = axis % len(shape)
                _check_channels(ann.layer, slot, qp, shape[axis])
            gm.add_submodule(obs_name, FakeQuantize(qp, axis=axis))
    g.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.meta["qhyvit_decisions"] = decisions
    gm.meta["qhyvit_converted"] = True
    return gm

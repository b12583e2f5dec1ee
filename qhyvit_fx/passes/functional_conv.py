"""Functional convolutions on module weights -> ``nn.Conv2d`` modules.

Some layers call ``torch.conv2d`` themselves with their own weight, e.g. timm's ``Conv2dSame``
(TF "same" padding: an ``F.pad`` computed from the input shape, then ``conv2d`` with no padding).
The capture traces through them, so the graph holds ``conv2d(x, get_attr weight, ...)`` and the
layer would stay unquantized (and in float in onnxruntime).  This pass turns every such call whose
weight (and bias) are module attributes into a plain ``nn.Conv2d`` module call with the same
stride / padding / dilation / groups and the same parameters, registered under the owning module's
name; the padding op in front stays as it is.  Output is unchanged (bit-exact).
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..patterns.kinds import metadata_read

_CONV2D = (torch.conv2d, F.conv2d)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def functional_convs_to_modules(gm: fx.GraphModule) -> fx.GraphModule:
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _CONV2D:
            continue
        args = list(node.args) + [None] * (7 - len(node.args))
        x, w, b, stride, padding, dilation, groups = args[:7]
        stride = node.kwargs.get("stride", stride if stride is not None else 1)
        padding = node.kwargs.get("padding", padding if padding is not None else 0)
        dilation = node.kwargs.get("dilation", dilation if dilation is not None else 1)
        groups = node.kwargs.get("groups", groups if groups is not None else 1)
        b = node.kwargs.get("bias", b)
        if not (isinstance(w, fx.Node) and w.op == "get_attr" and w.target.endswith(".weight")):
            continue
        if b is not None and not (isinstance(b, fx.Node) and b.op == "get_attr"):
            continue
        if isinstance(padding, str) or not all(isinstance(v, int) for v in
                                               _pair(stride) + _pair(padding) + _pair(dilation) + (groups,)):
            continue
        weight = gm.get_parameter(w.target)
        # the layer may read its weight's shape (Conv2dSame computes its padding from it): such
        # reads become constants, any other use of the weight keeps the call functional
        others = [u for u in w.users if u is not node]
        if not all(metadata_read(u) in ("shape", "size") for u in others):
            continue
        for u in others:
            value = tuple(weight.shape) if metadata_read(u) == "shape" else weight.size(*u.args[1:])
            for v in list(u.users):
                v.args = fx.node.map_arg(v.args, lambda a, u=u, value=value: value if a is u else a)
                v.kwargs = fx.node.map_arg(v.kwargs, lambda a, u=u, value=value: value if a is u else a)
            gm.graph.erase_node(u)
        bias = gm.get_parameter(b.target) if b is not None else None
        owner = w.target[: -len(".weight")]
        conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=_pair(stride),
                         padding=_pair(padding), dilation=_pair(dilation), groups=groups, bias=bias is not None)
        conv.weight = weight
        if bias is not None:
            conv.bias = bias
        parent, _, leaf = owner.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, conv)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(owner, (x,))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return gm

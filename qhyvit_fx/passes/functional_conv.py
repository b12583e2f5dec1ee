"""Functional convolutions and linears on module tensors -> ``nn.Conv2d`` / ``nn.Linear`` modules.

Some layers call ``torch.conv2d`` / ``F.linear`` themselves with their own weight, e.g. timm's
``Conv2dSame`` (TF "same" padding: an ``F.pad`` computed from the input shape, then ``conv2d`` with
no padding), ``StdConv2d`` (a standardised weight, which :mod:`.fold_constants` has computed once),
or classifier heads that call ``F.linear``.  The capture traces through them, so the graph holds
``conv2d(x, get_attr weight, ...)`` and the layer would stay unquantized (and in float in
onnxruntime).  This pass turns every such call whose weight (and bias) are module attributes into a
plain module call with the same stride / padding / dilation / groups and the same tensors,
registered under the owning module's name; the padding op in front stays as it is.  Output is
unchanged (bit-exact).
"""
from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..patterns.kinds import metadata_read
from ..state import quant_state

_CONV2D = (torch.conv2d, F.conv2d)
_LINEAR = (F.linear, torch._C._nn.linear)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _module_name(gm: fx.GraphModule, node: fx.Node, weight_target: str) -> str:
    """Where the new module goes: the module owning the weight (``a.b`` for ``a.b.weight``, or for
    the folded constant computed from it), unless a module call already uses that name."""
    weight_target = quant_state(gm).folded.get(weight_target, weight_target)
    owner = weight_target.rpartition(".")[0]
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    if not owner:
        owner = node.name
    name = owner
    while name in called:
        name += "_layer"
    return name


def _tensor_attr(gm: fx.GraphModule, n) -> Optional[torch.Tensor]:
    if isinstance(n, fx.Node) and n.op == "get_attr":
        v = operator.attrgetter(n.target)(gm)
        if isinstance(v, torch.Tensor):
            return v
    return None


def _constant_shape_reads(w: fx.Node, node: fx.Node, weight: torch.Tensor) -> bool:
    """Replace reads of the weight's shape by constants (Conv2dSame computes its padding from it);
    False (nothing changed) when the weight has another use."""
    others = [u for u in w.users if u is not node]
    if not all(metadata_read(u) in ("shape", "size") for u in others):
        return False
    for u in others:
        value = tuple(weight.shape) if metadata_read(u) == "shape" else weight.size(*u.args[1:])
        for v in list(u.users):
            v.args = fx.node.map_arg(v.args, lambda a, u=u, value=value: value if a is u else a)
            v.kwargs = fx.node.map_arg(v.kwargs, lambda a, u=u, value=value: value if a is u else a)
        u.graph.erase_node(u)
    return True


def _as_param(t: torch.Tensor) -> nn.Parameter:
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach().clone(), requires_grad=False)


def _install(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module, x) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, (x,))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    tensors = [a for a in node.all_input_nodes if a.op == "get_attr"]
    gm.graph.erase_node(node)
    for a in tensors:              # the module holds them now (a folded one may live on the replaced module)
        if not a.users:
            gm.graph.erase_node(a)


def _conv(gm: fx.GraphModule, node: fx.Node) -> bool:
    args = list(node.args) + [None] * (7 - len(node.args))
    x, w, b, stride, padding, dilation, groups = args[:7]
    stride = node.kwargs.get("stride", stride if stride is not None else 1)
    padding = node.kwargs.get("padding", padding if padding is not None else 0)
    dilation = node.kwargs.get("dilation", dilation if dilation is not None else 1)
    groups = node.kwargs.get("groups", groups if groups is not None else 1)
    b = node.kwargs.get("bias", b)
    weight, bias = _tensor_attr(gm, w), _tensor_attr(gm, b)
    if weight is None or weight.dim() != 4 or (b is not None and bias is None):
        return False
    if isinstance(padding, str) or not all(isinstance(v, int) for v in
                                           _pair(stride) + _pair(padding) + _pair(dilation) + (groups,)):
        return False
    name = _module_name(gm, node, w.target)
    if not _constant_shape_reads(w, node, weight):
        return False
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=_pair(stride),
                     padding=_pair(padding), dilation=_pair(dilation), groups=groups, bias=bias is not None)
    conv.weight = _as_param(weight)
    if bias is not None:
        conv.bias = _as_param(bias)
    _install(gm, node, name, conv, x)
    return True


def _linear(gm: fx.GraphModule, node: fx.Node) -> bool:
    args = list(node.args) + [None] * (3 - len(node.args))
    x, w, b = args[:3]
    b = node.kwargs.get("bias", b)
    w = node.kwargs.get("weight", w)
    weight, bias = _tensor_attr(gm, w), _tensor_attr(gm, b)
    if weight is None or weight.dim() != 2 or (b is not None and bias is None) or len(w.users) != 1:
        return False
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    lin.weight = _as_param(weight)
    if bias is not None:
        lin.bias = _as_param(bias)
    _install(gm, node, _module_name(gm, node, w.target), lin, x)
    return True


def functional_convs_to_modules(gm: fx.GraphModule) -> fx.GraphModule:
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _CONV2D:
            changed |= _conv(gm, node)
        elif node.target in _LINEAR:
            changed |= _linear(gm, node)
    if changed:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return gm

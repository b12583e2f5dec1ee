"""Classify fx nodes into op kinds, and build the contracted kind graph.

The kind graph is the networkx view the bridge matchers run on: only nodes
that produce tensors are kept, shape arithmetic is dropped, chains of layout
ops (reshape/permute/transpose/flatten/unfold, ...) become one ``reshape``
node, and single-input pass-through ops (activations, BatchNorm, dropout,
identity, scaling by a constant or parameter) are contracted away so that a
pattern edge ``conv -> conv`` means "the second conv consumes the first one's
output, possibly through an activation".
"""
from __future__ import annotations

import enum
import operator
from typing import Dict, Iterable, List, Optional

import networkx as nx
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F


class Kind(str, enum.Enum):
    CONV = "conv"
    LINEAR = "linear"
    MATMUL = "matmul"
    NORM = "norm"          # LayerNorm / GroupNorm (token norms; stay in the graph)
    BATCHNORM = "batchnorm"
    ACT = "activation"
    SOFTMAX = "softmax"
    RESHAPE = "reshape"
    ELEMENTWISE = "elementwise"
    POOL = "pool"
    INPUT = "input"
    OUTPUT = "output"
    PARAM = "param"        # get_attr
    SHAPE = "shape"        # non-tensor (shape arithmetic, asserts)
    OTHER = "other"

    def __str__(self) -> str:  # for tables and JSON
        return self.value


QUANTIZABLE = (Kind.CONV, Kind.LINEAR, Kind.MATMUL)
LAYER_KINDS = tuple(k.value for k in QUANTIZABLE)   # "conv", "linear", "matmul": what methods search

_CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)
_BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                nn.LeakyReLU, nn.Mish, nn.ELU, nn.PReLU)
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample)
_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten)

_CONV_FUNCS = {F.conv1d, F.conv2d, F.conv3d}
_LINEAR_FUNCS = {F.linear}
_MATMUL_FUNCS = {torch.matmul, operator.matmul, torch.bmm, torch.mm}
_MATMUL_METHODS = {"matmul", "bmm", "mm", "__matmul__"}
_NORM_FUNCS = {F.layer_norm, F.group_norm, F.instance_norm}
_BN_FUNCS = {F.batch_norm}
_ACT_FUNCS = {F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, torch.sigmoid, torch.tanh, torch.relu,
              F.leaky_relu, F.mish, F.elu, F.sigmoid, F.tanh}
_ACT_METHODS = {"relu", "sigmoid", "tanh", "gelu", "silu", "relu_", "sigmoid_"}
_SOFTMAX_FUNCS = {F.softmax, torch.softmax}
_RESHAPE_FUNCS = {torch.reshape, torch.flatten, torch.permute, torch.transpose, torch.unsqueeze, torch.squeeze,
                  F.unfold, F.fold, F.pixel_shuffle, F.pixel_unshuffle, torch.unflatten, torch.movedim}
_RESHAPE_METHODS = {"reshape", "view", "permute", "transpose", "flatten", "unflatten", "contiguous", "unsqueeze",
                    "squeeze", "expand", "expand_as", "movedim", "view_as", "reshape_as", "t"}
_ELEMENTWISE_FUNCS = {operator.add, operator.mul, operator.sub, operator.truediv, torch.add, torch.mul, torch.sub,
                      torch.div, torch.cat, torch.stack, operator.neg, torch.where}
_ELEMENTWISE_METHODS = {"add", "mul", "sub", "div", "add_", "mul_", "sum", "mean", "clamp", "neg"}
_POOL_FUNCS = {F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, F.interpolate, F.adaptive_avg_pool1d}


def node_module(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    if node.op != "call_module":
        return None
    try:
        return gm.get_submodule(node.target)
    except AttributeError:
        return None


def is_tensor_node(node: fx.Node) -> bool:
    """Whether the node produced a tensor when the graph was captured."""
    tm = node.meta.get("tensor_meta")
    if isinstance(tm, (tuple, list)) and not hasattr(tm, "shape"):
        return len(tm) > 0 and all(hasattr(t, "shape") for t in tm)
    return tm is not None and hasattr(tm, "shape")


def classify(gm: fx.GraphModule, node: fx.Node) -> Kind:
    """The kind of one node (see :class:`Kind`)."""
    op, t = node.op, node.target
    if op == "placeholder":
        return Kind.INPUT
    if op == "output":
        return Kind.OUTPUT
    if op == "get_attr":
        return Kind.PARAM
    if not is_tensor_node(node):
        return Kind.SHAPE
    if op == "call_module":
        m = node_module(gm, node)
        # wrapped quantized modules expose the float module they replace
        m = getattr(m, "qhyvit_float_type", None) or type(m)
        if issubclass(m, _CONV_MODULES):
            return Kind.CONV
        if issubclass(m, nn.Linear):
            return Kind.LINEAR
        if issubclass(m, _NORM_MODULES):
            return Kind.NORM
        if issubclass(m, _BN_MODULES):
            return Kind.BATCHNORM
        if issubclass(m, _ACT_MODULES):
            return Kind.ACT
        if issubclass(m, nn.Softmax):
            return Kind.SOFTMAX
        if issubclass(m, _POOL_MODULES):
            return Kind.POOL
        if issubclass(m, _PASS_MODULES):
            return Kind.RESHAPE if issubclass(m, nn.Flatten) else Kind.OTHER
        return Kind.OTHER
    if op == "call_function":
        if t in _CONV_FUNCS:
            return Kind.CONV
        if t in _LINEAR_FUNCS:
            return Kind.LINEAR
        if t in _MATMUL_FUNCS:
            return Kind.MATMUL
        if t in _NORM_FUNCS:
            return Kind.NORM
        if t in _BN_FUNCS:
            return Kind.BATCHNORM
        if t in _ACT_FUNCS:
            return Kind.ACT
        if t in _SOFTMAX_FUNCS:
            return Kind.SOFTMAX
        if t in _RESHAPE_FUNCS or t is operator.getitem:
            return Kind.RESHAPE
        if t in _ELEMENTWISE_FUNCS:
            return Kind.ELEMENTWISE
        if t in _POOL_FUNCS:
            return Kind.POOL
        return Kind.OTHER
    if op == "call_method":
        if t in _MATMUL_METHODS:
            return Kind.MATMUL
        if t == "softmax":
            return Kind.SOFTMAX
        if t in _ACT_METHODS:
            return Kind.ACT
        if t in _RESHAPE_METHODS or t in ("split", "chunk", "unbind"):
            return Kind.RESHAPE
        if t in _ELEMENTWISE_METHODS:
            return Kind.ELEMENTWISE
        return Kind.OTHER
    return Kind.OTHER


def activation_nodes(gm: fx.GraphModule) -> set:
    """Nodes whose value depends on a graph input (not only on parameters)."""
    live = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a in live for a in node.all_input_nodes):
            live.add(node)
    return live


def tensor_inputs(node: fx.Node) -> List[fx.Node]:
    """Input nodes that carry activations (not parameters or shape values)."""
    return [a for a in node.all_input_nodes if a.op != "get_attr" and (is_tensor_node(a) or a.op == "placeholder")]


def is_pass_through(kind: Kind, n_activation_inputs: int) -> bool:
    """Single-activation-input ops the kind graph contracts away (activations,
    BatchNorm, scaling by a parameter, dropout/identity)."""
    return n_activation_inputs == 1 and kind in (Kind.ACT, Kind.BATCHNORM, Kind.OTHER, Kind.ELEMENTWISE)


def is_weight_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    return classify(gm, node) in (Kind.CONV, Kind.LINEAR)


def build_kind_graph(gm: fx.GraphModule) -> nx.DiGraph:
    """The contracted kind graph of ``gm`` (needs ``tensor_meta`` on nodes).

    Graph nodes are fx node names; attributes: ``kind`` (str), ``members``
    (the fx node names contracted into it, in graph order), ``rank`` / ``shape`` of the value it
    produces and ``in_rank`` / ``in_shape`` of its first activation input, and for layers
    ``module`` (qualified name) and ``kernel``/``groups``/``stride`` for convs.
    """
    g = nx.DiGraph()
    rep: Dict[str, str] = {}  # fx node name -> kind-graph node it was contracted into
    live = activation_nodes(gm)
    for node in gm.graph.nodes:
        kind = classify(gm, node)
        if kind in (Kind.PARAM, Kind.SHAPE, Kind.OUTPUT) or node not in live:
            continue
        ins = [rep[a.name] for a in tensor_inputs(node) if a.name in rep]
        ins = list(dict.fromkeys(ins))
        if kind == Kind.RESHAPE and len(ins) == 1 and g.nodes[ins[0]]["kind"] == Kind.RESHAPE.value \
                and g.out_degree(ins[0]) == 0:
            # extend a reshape chain that has no other consumer yet
            rep[node.name] = ins[0]
            g.nodes[ins[0]]["members"].append(node.name)
            g.nodes[ins[0]]["rank"] = rank(node)
            g.nodes[ins[0]]["shape"] = shape(node)
            continue
        if is_pass_through(kind, len(ins)):
            rep[node.name] = ins[0]
            g.nodes[ins[0]].setdefault("absorbed", []).append(node.name)
            continue
        attrs = {"kind": kind.value, "members": [node.name], "rank": rank(node), "shape": shape(node)}
        act_in = [a for a in tensor_inputs(node) if a in live]
        if act_in:
            attrs["in_rank"] = rank(act_in[0])
            attrs["in_shape"] = shape(act_in[0])
        m = node_module(gm, node)
        if m is not None:
            attrs["module"] = node.target
        if kind == Kind.CONV and m is not None:
            conv = getattr(m, "qhyvit_float", m)
            attrs["kernel"] = tuple(conv.kernel_size)
            attrs["groups"] = conv.groups
            attrs["stride"] = tuple(conv.stride)
        g.add_node(node.name, **attrs)
        rep[node.name] = node.name
        for i in ins:
            g.add_edge(i, node.name)
    return g


def norm_owner(norm_node: fx.Node) -> Optional[str]:
    """The module holding a norm's affine parameters: the norm module itself, or, for a functional
    norm (timm's GroupNorm1 captures as F.group_norm), the one module whose ``weight`` and ``bias``
    it reads through get_attr."""
    if norm_node.op == "call_module":
        return norm_node.target
    attrs = [a.target for a in list(norm_node.args) + list(norm_node.kwargs.values())
             if isinstance(a, fx.Node) and a.op == "get_attr"]
    owners = {t.rsplit(".", 1)[0] for t in attrs if "." in t}
    if len(attrs) == 2 and len(owners) == 1 and {t.rsplit(".", 1)[1] for t in attrs} == {"weight", "bias"}:
        return owners.pop()
    return None


def shape(node: fx.Node) -> Optional[tuple]:
    """Shape of the tensor ``node`` produced when the graph was captured, or None."""
    tm = node.meta.get("tensor_meta")
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def rank(node: fx.Node) -> Optional[int]:
    """Rank of the tensor ``node`` produces (from the capture's tensor_meta), or None."""
    s = shape(node)
    return None if s is None else len(s)


def metadata_read(user: fx.Node) -> Optional[str]:
    """What a use of a tensor reads when it reads only metadata, not values: ``"shape"``,
    ``"dtype"``, ``"device"`` (``x.shape`` ...), ``"size"`` or ``"dim"`` (``x.size()`` ...); else None."""
    if user.op == "call_function" and user.target is getattr and len(user.args) == 2 \
            and user.args[1] in ("shape", "dtype", "device"):
        return user.args[1]
    if user.op == "call_method" and user.target in ("size", "dim"):
        return user.target
    return None


def quantizable_nodes(gm: fx.GraphModule) -> List[fx.Node]:
    """conv / linear / matmul nodes, in graph order."""
    return [n for n in gm.graph.nodes if classify(gm, n) in QUANTIZABLE]


def layer_name(gm: fx.GraphModule, node: fx.Node) -> str:
    """Human name of a layer: module path for call_module, else the node name."""
    return node.target if node.op == "call_module" else node.name


def count_kinds(gm: fx.GraphModule, nodes: Optional[Iterable[fx.Node]] = None) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for n in (nodes if nodes is not None else gm.graph.nodes):
        k = classify(gm, n).value
        out[k] = out.get(k, 0) + 1
    return out

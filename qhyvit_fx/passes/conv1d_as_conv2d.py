"""Pass: ``nn.Conv1d`` layers become ``nn.Conv2d`` on a width-1 map.

1-D convolutions appear in hybrids on token sequences (CoaT's class-token aggregation,
EfficientViM's state-space projections).  Quantized layers, the search and onnxruntime's QLinearConv
all handle 2-D convs, so ``conv1d(x)`` becomes ``conv2d(x.unsqueeze(-1)).squeeze(-1)`` with the
kernel (k, 1), stride (s, 1), padding (p, 0) and dilation (d, 1): the same products and sums, so
the output is bit-exact.  The module keeps its name.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn


def _as_conv2d(c: nn.Conv1d) -> nn.Conv2d:
    padding = c.padding if isinstance(c.padding, str) else (c.padding[0], 0)
    conv = nn.Conv2d(c.in_channels, c.out_channels, (c.kernel_size[0], 1), stride=(c.stride[0], 1),
                     padding=padding, dilation=(c.dilation[0], 1), groups=c.groups, bias=c.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(c.weight.unsqueeze(-1))
        if c.bias is not None:
            conv.bias.copy_(c.bias)
    return conv


def conv1d_as_conv2d(gm: fx.GraphModule) -> fx.GraphModule:
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        mod = gm.get_submodule(node.target)
        if type(mod) is not nn.Conv1d or mod.padding_mode != "zeros":
            continue
        parent, _, leaf = node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, _as_conv2d(mod))
        g = gm.graph
        with g.inserting_before(node):
            wide = g.call_method("unsqueeze", (node.args[0], -1))
        with g.inserting_after(node):
            narrow = g.call_method("squeeze", (node, -1))
        node.replace_all_uses_with(narrow, delete_user_cb=lambda u: u is not narrow)
        node.args = (wide,)
        _widen_meta(node, wide, narrow)
        changed = True
    if changed:
        g.lint()
        gm.recompile()
    return gm


def _widen_meta(node: fx.Node, wide: fx.Node, narrow: fx.Node) -> None:
    """tensor_meta of the new nodes (later passes read shapes from it)."""
    tm_in = node.args[0].args[0].meta.get("tensor_meta")
    tm_out = node.meta.get("tensor_meta")
    narrow.meta["tensor_meta"] = tm_out
    if tm_in is not None:
        wide.meta["tensor_meta"] = _with_shape(tm_in, tuple(tm_in.shape) + (1,))
    if tm_out is not None:
        node.meta["tensor_meta"] = _with_shape(tm_out, tuple(tm_out.shape) + (1,))


def _with_shape(tm, shape):
    return tm._replace(shape=torch.Size(shape), stride=None)

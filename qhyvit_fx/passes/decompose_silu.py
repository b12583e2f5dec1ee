"""Pass: SiLU becomes x * sigmoid(x).

onnxruntime has integer kernels for Sigmoid and Mul (QLinearSigmoid, QLinearMul) but none for SiLU,
and it only fuses them when the sigmoid's output is quantized.  In the graph a SiLU module is one
node, so there is no tensor to put that quantizer on; after this pass there is.  Used by the
``integer`` mode (see :mod:`qhyvit_fx.passes.annotate`).  GraphModule in, GraphModule out; the
values are those of ``F.silu`` up to float rounding.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from ..state import BRIDGE, count_change


def _is_silu(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), nn.SiLU)
    if n.op == "call_function":
        return n.target is F.silu
    return n.op == "call_method" and n.target == "silu"


def decompose_silu(gm: fx.GraphModule) -> fx.GraphModule:
    g = gm.graph
    done = 0
    for n in list(g.nodes):
        if not _is_silu(gm, n) or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        x = n.args[0]
        with g.inserting_before(n):
            s = g.call_function(torch.sigmoid, (x,))
            y = g.call_function(operator.mul, (x, s))
        for k in ("tensor_meta", BRIDGE):
            if k in n.meta:
                y.meta[k] = n.meta[k]
        if "tensor_meta" in n.meta:
            s.meta["tensor_meta"] = n.meta["tensor_meta"]
        n.replace_all_uses_with(y)
        g.erase_node(n)
        done += 1
    g.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    count_change(gm, "decompose_silu", done)
    return gm

"""Pass: remove inference no-ops (Identity, eval-mode Dropout, shape asserts).

GraphModule in, GraphModule out; the graph computes exactly the same values.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

_NOOP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _is_noop(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        return isinstance(m, _NOOP_MODULES) and not m.training and len(node.args) == 1 and not node.kwargs
    if node.op == "call_function" and node.target in (F.dropout, F.dropout1d, F.dropout2d):
        training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
        return training is False
    return False


def remove_noops(gm: fx.GraphModule) -> fx.GraphModule:
    g = gm.graph
    for node in list(g.nodes):
        if node.op == "call_function" and node.target is torch._assert:
            g.erase_node(node)
        elif _is_noop(gm, node):
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
    g.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    g.lint()
    gm.recompile()
    return gm

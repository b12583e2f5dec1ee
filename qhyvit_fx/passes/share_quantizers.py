"""Pass: one quantizer per tensor -- equal fake-quantizers on the same tensor become one node.

Several consumers of a tensor (a residual branch and the next block, in full mode the next add and
the next norm) each get their own input quantizer.  When their parameters are equal the copies
compute the same values, so the later ones are replaced by the first.  onnxruntime then sees one
QuantizeLinear/DequantizeLinear pair on the tensor, which its QDQ fusions need (an op whose output
fans out into several Q nodes stays in float).  GraphModule in, GraphModule out, values unchanged.
"""
from __future__ import annotations

import torch.fx as fx

from ..modules import FakeQuantize


def _key(m: FakeQuantize) -> tuple:
    return (m.spec, m.axis, tuple(m._scale_list), tuple(m._zp_list))


def share_quantizers(gm: fx.GraphModule) -> fx.GraphModule:
    g = gm.graph
    merged = 0
    order = {n: i for i, n in enumerate(g.nodes)}
    for node in list(g.nodes):
        seen = {}
        for u in list(node.users):
            if u.op != "call_module" or len(u.args) != 1 or u.kwargs:
                continue
            m = gm.get_submodule(u.target)
            if not isinstance(m, FakeQuantize):
                continue
            k = _key(m)
            if k not in seen:
                seen[k] = u
                continue
            first = seen[k]
            if order[u] < order[first]:
                first, u = u, first
                seen[k] = first
            u.replace_all_uses_with(first)
            g.erase_node(u)
            merged += 1
    g.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.meta["qhyvit_shared_quantizers"] = merged
    return gm

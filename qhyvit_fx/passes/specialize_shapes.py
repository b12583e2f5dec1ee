"""Pass: constant reshape targets -- shape arithmetic is folded, the batch dimension stays free.

The capture keeps shape arithmetic symbolic (``x.reshape(B * C * nh, ph, nw, pw)`` reads ``B``, ``C``
and ``nh`` off ``x.shape`` at run time), so one graph serves every batch size.  Exported to ONNX,
each such reshape costs a Shape -> Gather -> Unsqueeze -> Concat chain, and at 64 px onnxruntime
spends more time dispatching nodes than computing.

This pass runs the graph at two batch sizes and looks at every reshape/view (and expand/expand_as)
whose target shape is computed.  A target whose entries do not change with the batch becomes a constant; a target where
exactly one entry changes becomes a constant with -1 in that entry (reshape infers it, and it is
the only entry that can depend on the batch).  Anything else is left symbolic.  The dead shape
arithmetic is then removed.  GraphModule in, GraphModule out; outputs unchanged at every batch size
for the spatial size the graph was captured at (the capture already fixes that: see
``gm.meta["capture"]``).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.fx as fx
from ..state import count_change

_RESHAPES_METHOD = ("reshape", "view")
_RESHAPES_FUNCTION = (torch.reshape,)
_EXPANDS = ("expand", "expand_as")


def _is_reshape(node: fx.Node) -> bool:
    return ((node.op == "call_method" and node.target in _RESHAPES_METHOD)
            or (node.op == "call_function" and node.target in _RESHAPES_FUNCTION))


def _is_expand(node: fx.Node) -> bool:
    return node.op == "call_method" and node.target in _EXPANDS and not node.kwargs


def _target_args(node: fx.Node) -> tuple:
    """The shape arguments of a reshape/expand node, flattened (reshape(x, (a, b)) and x.view(a, b)
    alike; expand_as(x, other) counts ``other`` as computed)."""
    rest = node.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = tuple(rest[0])
    return tuple(rest)


class _ShapeRecorder(fx.Interpreter):
    """Records the output shape of the watched nodes and the shape of their first argument."""

    def __init__(self, gm: fx.GraphModule, watch):
        super().__init__(gm)
        self.watch = watch
        self.shapes: Dict[fx.Node, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n in self.watch and isinstance(out, torch.Tensor):
            src = self.env[n.args[0]]
            self.shapes[n] = (tuple(src.shape), tuple(out.shape))
        return out


def specialize_shapes(gm: fx.GraphModule, example_input: torch.Tensor, batches: Tuple[int, int] = (2, 3)
                      ) -> fx.GraphModule:
    g = gm.graph
    watch = [n for n in g.nodes if (_is_reshape(n) or _is_expand(n))
             and any(isinstance(a, fx.Node) for a in _target_args(n))]
    if not watch:
        count_change(gm, "specialize_shapes", 0)
        return gm
    shapes = []
    with torch.no_grad():
        for b in batches:
            x = example_input[:1].expand((b,) + tuple(example_input.shape[1:])).contiguous()
            rec = _ShapeRecorder(gm, set(watch))
            rec.run(x)
            shapes.append(rec.shapes)
    done = 0
    for n in watch:
        if n not in shapes[0] or n not in shapes[1]:
            continue
        (i0, s0), (i1, s1) = shapes[0][n], shapes[1][n]
        moving = [i for i, (a, b) in enumerate(zip(s0, s1)) if a != b]
        if len(s0) != len(s1) or len(moving) > 1:
            continue
        if _is_expand(n):
            # expand's -1 keeps the input's size: right only where the input already has the output's
            # size at both batch sizes (the batch itself, not a broadcast size-1 dim)
            if len(i0) != len(s0) or any(i0[d] != s0[d] or i1[d] != s1[d] for d in moving):
                continue
            n.target = "expand"
        target = tuple(-1 if i in moving else int(v) for i, v in enumerate(s0))
        n.args = (n.args[0], target) if n.op == "call_function" else (n.args[0],) + target
        done += 1
    g.eliminate_dead_code()
    g.lint()
    gm.recompile()
    count_change(gm, "specialize_shapes", done)
    return gm

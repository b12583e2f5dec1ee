"""Pass: one-group GroupNorm becomes LayerNorm over (C, H, W) plus a per-channel affine.

timm's ``GroupNorm1`` (MobileViT-v2, EfficientFormer-v2) calls ``F.group_norm(x, 1, w, b)``.  The
TorchScript ONNX exporter writes it as Shape -> Reshape ->
InstanceNormalization -> Reshape -> Mul -> Add, six nodes on a dynamic shape.  With one group the
statistics are those of the whole (C, H, W) sample, which is exactly ``F.layer_norm(x, (C, H, W))``:
one LayerNormalization node, then Mul/Add by the channel weights.  The spatial size is fixed by
the capture, so (C, H, W) is a constant.  GraphModule in, GraphModule out; the values agree to
float rounding (the two kernels sum in a different order).
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from ..state import count_change


def _groups(node: fx.Node):
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("num_groups")


def _arg(node: fx.Node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def lower_group_norm(gm: fx.GraphModule) -> fx.GraphModule:
    """The input shapes come from ``tensor_meta`` (written by the capture, copied onto inserted
    quantizers); a norm whose input has none is left as it is."""
    g = gm.graph
    nodes = [n for n in g.nodes if n.op == "call_function" and n.target is F.group_norm and _groups(n) == 1]
    done = 0
    for n in nodes:
        x = n.args[0] if n.args else None
        tm = x.meta.get("tensor_meta") if isinstance(x, fx.Node) else None
        shape = tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else ()
        if len(shape) < 2:
            continue
        w, b = _arg(n, 2, "weight"), _arg(n, 3, "bias")
        eps = _arg(n, 4, "eps", 1e-5)
        bcast = (shape[1],) + (1,) * (len(shape) - 2)
        with g.inserting_before(n):
            y = g.call_function(F.layer_norm, (x, tuple(shape[1:])), {"eps": eps})
            if w is not None:
                y = g.call_function(torch.mul, (y, g.call_method("reshape", (w,) + bcast)))
            if b is not None:
                y = g.call_function(torch.add, (y, g.call_method("reshape", (b,) + bcast)))
        n.replace_all_uses_with(y)
        g.erase_node(n)
        done += 1
    g.lint()
    gm.recompile()
    count_change(gm, "lower_group_norm", done)
    return gm

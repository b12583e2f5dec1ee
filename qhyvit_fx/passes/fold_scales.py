"""Pass: fold a constant scale after a conv / linear into its weights (LayerScale and the like).

EfficientFormer-V2 (and other timm models with ``LayerScale``) multiply a layer's output by a learned
per-channel vector: ``conv(x) * gamma.view(1, -1, 1, 1)``.  That product is one more op between
the conv and the residual add: in ONNX a float Mul between a DequantizeLinear and a QuantizeLinear.
When the conv (or linear) feeds only the product and the factor is a constant -- a number, or a
parameter reshaped to broadcast along the output channels -- ``conv'(x) = conv(x) * gamma`` with
``W' = W * gamma`` and ``b' = b * gamma`` per output channel, so the product disappears.  Runs with
BatchNorm folding, before quantization, so the quantizers see the weights that are deployed.
GraphModule in, GraphModule out; the values agree to float rounding.
"""
from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn
from ..state import count_change

_LAYOUT_METHODS = {"view", "reshape", "unsqueeze", "squeeze", "flatten"}


def _constant(gm: fx.GraphModule, a) -> Optional[torch.Tensor]:
    """The value of ``a`` if it only depends on parameters through layout ops, else None."""
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return torch.tensor(float(a))
    if not isinstance(a, fx.Node):
        return None
    if a.op == "get_attr":
        obj = gm
        for part in a.target.split("."):
            obj = getattr(obj, part, None)
        return obj.detach() if isinstance(obj, torch.Tensor) else None
    if a.op == "call_method" and a.target in _LAYOUT_METHODS and not a.kwargs:
        base = _constant(gm, a.args[0])
        if base is None or any(isinstance(x, fx.Node) for x in a.args[1:]):
            return None
        return getattr(base, a.target)(*a.args[1:])
    return None


def _is_product(n: fx.Node) -> bool:
    return (n.op == "call_function" and n.target in (operator.mul, torch.mul) and len(n.args) == 2
            and not n.kwargs) or (n.op == "call_method" and n.target in ("mul", "mul_") and len(n.args) == 2)


def _per_channel(s: torch.Tensor, out_rank: int, ch_axis: int, channels: int) -> Optional[torch.Tensor]:
    """``s`` as a [channels] vector if it broadcasts along ``ch_axis`` of a rank-``out_rank`` output."""
    if s.numel() == 1:
        return s.reshape(1).expand(channels).clone()
    if s.dim() > out_rank:
        return None
    shape = (1,) * (out_rank - s.dim()) + tuple(s.shape)
    if shape[ch_axis] != channels or any(d != 1 for i, d in enumerate(shape) if i != ch_axis):
        return None
    return s.reshape(channels)


def fold_scales(gm: fx.GraphModule) -> fx.GraphModule:
    g = gm.graph
    uses = {}
    for n in g.nodes:
        if n.op == "call_module":
            uses[n.target] = uses.get(n.target, 0) + 1
    folded = 0
    for node in list(g.nodes):
        if not _is_product(node):
            continue
        for i in (0, 1):
            layer, other = node.args[i], node.args[1 - i]
            if not isinstance(layer, fx.Node) or layer.op != "call_module" or len(layer.users) != 1 \
                    or uses.get(layer.target) != 1:
                continue
            mod = gm.get_submodule(layer.target)
            if type(mod) not in (nn.Conv2d, nn.Linear):
                continue
            s = _constant(gm, other)
            tm = layer.meta.get("tensor_meta")
            if s is None or tm is None or not hasattr(tm, "shape"):
                continue
            rank = len(tm.shape)
            ch_axis = 1 if isinstance(mod, nn.Conv2d) else rank - 1
            vec = _per_channel(s, rank, ch_axis, mod.weight.shape[0])
            if vec is None or not bool(torch.isfinite(vec).all()):
                continue
            with torch.no_grad():
                v = vec.to(torch.float64)
                w = mod.weight.double() * v.reshape((-1,) + (1,) * (mod.weight.dim() - 1))
                mod.weight = nn.Parameter(w.to(mod.weight.dtype), requires_grad=False)
                if mod.bias is not None:
                    mod.bias = nn.Parameter((mod.bias.double() * v).to(mod.bias.dtype), requires_grad=False)
            node.replace_all_uses_with(layer)
            g.erase_node(node)
            folded += 1
            break
    g.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    g.lint()
    gm.recompile()
    count_change(gm, "fold_scales", folded)
    return gm

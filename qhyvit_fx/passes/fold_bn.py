"""Pass: fold BatchNorm into the preceding convolution (or linear).

Handles ``nn.BatchNorm2d`` modules and ``F.batch_norm`` calls (timm's
``BatchNormAct2d`` traces into the latter) whose input is an ``nn.Conv2d``
used nowhere else, and ``nn.BatchNorm1d`` after an ``nn.Linear`` on [N, C].  Must run before quantization: onnxruntime cannot fuse a
BatchNorm into a conv whose weight comes out of DequantizeLinear, and the
quantizer must see the weights the deployed conv really uses.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from ..state import count_change


def _attr(gm: fx.GraphModule, n):
    if n is None:
        return None
    if isinstance(n, fx.Node):
        if n.op != "get_attr":
            raise ValueError("not a parameter")
        obj = gm
        for a in n.target.split("."):
            obj = getattr(obj, a)
        return obj
    return n


def _bn_params(gm: fx.GraphModule, node: fx.Node):
    """(mean, var, weight, bias, eps) of a BN node in eval mode, or None."""
    if node.op == "call_module":
        bn = gm.get_submodule(node.target)
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or bn.training or bn.running_mean is None:
            return None
        return bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps
    if node.op == "call_function" and node.target is F.batch_norm:
        names = ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"]
        defaults = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}
        a = dict(defaults)
        a.update(zip(names, node.args))
        a.update(node.kwargs)
        if a["training"] is not False:
            return None
        try:
            return (_attr(gm, a["running_mean"]), _attr(gm, a["running_var"]), _attr(gm, a["weight"]),
                    _attr(gm, a["bias"]), float(a["eps"]))
        except ValueError:
            return None
    return None


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    folded = 0
    uses = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            uses[n.target] = uses.get(n.target, 0) + 1
    for node in list(gm.graph.nodes):
        if not node.args or not isinstance(node.args[0], fx.Node):
            continue
        conv_node = node.args[0]
        if conv_node.op != "call_module" or len(conv_node.users) != 1 or uses.get(conv_node.target) != 1:
            continue
        conv = gm.get_submodule(conv_node.target)
        if type(conv) not in (nn.Conv2d, nn.Linear):
            continue
        if type(conv) is nn.Linear and not (node.op == "call_module"
                                            and isinstance(gm.get_submodule(node.target), nn.BatchNorm1d)
                                            and len(conv_node.meta.get("tensor_meta").shape) == 2):
            continue          # BatchNorm1d over the features of a [N, C] linear output only
        p = _bn_params(gm, node)
        if p is None:
            continue
        mean, var, gamma, beta, eps = p
        with torch.no_grad():
            inv = torch.rsqrt(var.double() + eps)
            g = gamma.double() if gamma is not None else torch.ones_like(inv)
            b = beta.double() if beta is not None else torch.zeros_like(inv)
            w = conv.weight.double() * (g * inv).reshape((-1,) + (1,) * (conv.weight.dim() - 1))
            cb = conv.bias.double() if conv.bias is not None else torch.zeros_like(inv)
            bias = (cb - mean.double()) * g * inv + b
            conv.weight = nn.Parameter(w.to(conv.weight.dtype), requires_grad=False)
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    count_change(gm, "fold_batchnorm", folded, add=True)
    return gm

"""Pass: compute once what does not depend on the input.

Some layers derive their tensors from parameters at every call: weight standardisation
(``StdConv2d``: a batch_norm over the weight, then conv2d), relative-position MLPs run on a fixed
coordinate table (Swin V2's continuous position bias), attention-bias gathers.  Left in the graph,
these are float convs / matmuls on constants: onnxruntime runs them in float at every inference,
``qhyvit check`` reports them as float islands, and a conv whose weight is computed cannot be
quantized.  This pass evaluates every tensor-valued node that depends on no graph input and
replaces the frontier (the constants read by input-dependent nodes) with buffers of the root
module named after the first parameter each reads (``a_b_weight_folded`` for ``a.b.weight``;
``quant_state(gm).folded`` maps them back).  Outputs are unchanged (the same ops ran on the same values).
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..patterns.kinds import activation_nodes
from ..state import quant_state


def _free_name(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 1
    while True:
        try:
            operator.attrgetter(name)(gm)
        except AttributeError:
            return name
        i += 1
        name = f"{base}{i}"


def fold_constants(gm: fx.GraphModule) -> fx.GraphModule:
    live = activation_nodes(gm)
    values, source = {}, {}
    for node in gm.graph.nodes:
        if node in live or node.op in ("placeholder", "output"):
            continue
        if node.op == "get_attr":
            values[node] = operator.attrgetter(node.target)(gm)
            source[node] = node.target
            continue
        if any(a not in values for a in node.all_input_nodes):
            continue
        args = fx.node.map_arg(node.args, lambda a: values[a])
        kwargs = fx.node.map_arg(node.kwargs, lambda a: values[a])
        with torch.no_grad():
            if node.op == "call_function":
                values[node] = node.target(*args, **kwargs)
            elif node.op == "call_method":
                values[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                values[node] = gm.get_submodule(node.target)(*args, **kwargs)
        srcs = [source[a] for a in node.all_input_nodes if a in source]
        if srcs:
            source[node] = srcs[0]
    changed = False
    for node in list(values):
        v = values[node]
        if node.op == "get_attr" or not isinstance(v, torch.Tensor) or not any(u in live for u in node.users):
            continue
        src = source.get(node) or "qhyvit_const"
        # on the root: a module that owns the source may be replaced later (convert swaps layers)
        name = _free_name(gm, src.replace(".", "_") + "_folded")
        gm.register_buffer(name, v.detach().clone())
        quant_state(gm).folded[name] = src
        with gm.graph.inserting_before(node):
            const = gm.graph.get_attr(name)
        const.meta = dict(node.meta)
        node.replace_all_uses_with(const)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
    return gm

"""Pass: a module called from several places gets one copy per call site.

Some models call one parameterised module more than once (CoaT's convolutional position encoding
is shared by the blocks of a stage).  Every later pass treats a ``call_module`` node as one layer:
BatchNorm folding rewrites its weight, calibration decides its quantizers, convert swaps it for a
weight-quantized module.  With a shared module the first call site's rewrite would change the
others.  Each call after the first therefore gets a deep copy, registered beside the original as
``<name>_call<i>`` (i = 1, 2, ...).  The graph computes exactly the same values; stateless
modules (activations, dropout) stay shared.
"""
from __future__ import annotations

import copy
from collections import defaultdict

import torch.fx as fx


def _has_state(module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def unshare_modules(gm: fx.GraphModule) -> fx.GraphModule:
    calls = defaultdict(list)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target].append(node)
    changed = False
    for target, nodes in calls.items():
        original = gm.get_submodule(target)
        if len(nodes) < 2 or not _has_state(original):
            continue
        for i, node in enumerate(nodes[1:], start=1):
            name = f"{target}_call{i}"
            while _exists(gm, name):
                name += "_"
            gm.add_submodule(name, copy.deepcopy(original))
            node.target = name
            changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm


def _exists(gm: fx.GraphModule, name: str) -> bool:
    try:
        gm.get_submodule(name)
        return True
    except AttributeError:
        return False

"""Pass: insert an :class:`~qhyvit_fx.modules.ActObserver` on every annotated
input (and output) of every annotated node."""
from __future__ import annotations

import torch.fx as fx

from ..modules import ActObserver, InputRecorder
from .annotate import ANNOTATION
from .convert import RECORDER


def _module_name(layer: str, slot: str) -> str:
    return "qhyvit_obs__" + layer.replace(".", "_") + "__" + slot


def insert_observers(gm: fx.GraphModule, record_images: int = 0) -> fx.GraphModule:
    """``record_images`` > 0 also records that many calibration images at the
    graph input (for methods that re-run the graph, like Q-HyViT)."""
    g = gm.graph
    if record_images:
        ph = next(n for n in g.nodes if n.op == "placeholder")
        gm.add_submodule(RECORDER, InputRecorder(record_images))
        with g.inserting_after(ph):
            rec = g.call_module(RECORDER, (ph,))
        rec.meta["tensor_meta"] = ph.meta.get("tensor_meta")
        ph.replace_all_uses_with(rec, delete_user_cb=lambda u: u is not rec)
    by_name = {n.name: n for n in g.nodes}
    for node in list(g.nodes):
        ann = node.meta.get(ANNOTATION)
        if ann is None:
            continue
        for idx in sorted(ann.inputs):
            arg = node.args[idx]
            if not isinstance(arg, fx.Node):
                continue
            name = _module_name(ann.layer, f"in{idx}")
            gm.add_submodule(name, ActObserver(axis=ann.input_axes.get(idx)))
            with g.inserting_before(node):
                obs = g.call_module(name, (arg,))
            obs.meta["tensor_meta"] = arg.meta.get("tensor_meta")
            obs.meta["qhyvit_observer"] = {"layer": ann.layer, "slot": f"in{idx}"}
            node.update_arg(idx, obs)
            ann.observers[f"in{idx}"] = name
        if ann.output is not None:
            name = _module_name(ann.layer, "out")
            gm.add_submodule(name, ActObserver(axis=ann.output_axis))
            src = by_name[ann.output_after] if ann.output_after else node
            with g.inserting_after(src):
                obs = g.call_module(name, (src,))
            obs.meta["tensor_meta"] = src.meta.get("tensor_meta")
            obs.meta["qhyvit_observer"] = {"layer": ann.layer, "slot": "out"}
            src.replace_all_uses_with(obs, delete_user_cb=lambda u: u is not obs)
            ann.observers["out"] = name
    g.lint()
    gm.recompile()
    return gm

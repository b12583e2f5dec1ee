"""Pass: insert one :class:`~qhyvit_fx.modules.ActObserver` per quantizer group
(:mod:`.group_quantizers`): after the layer for a group holding an output quantizer, else in front
of the group's first reader, every member reading it.  In integer mode every other reader of the
tensor reads the observer too, so the tensor exists once, quantized, as the deployed graph holds it
(onnxruntime's QDQ fusions need the producer's only reader to be one QuantizeLinear)."""
from __future__ import annotations

import torch.fx as fx

from ..modules import ActObserver, InputRecorder
from ..patterns.kinds import metadata_read
from .annotate import ANNOTATION
from .convert import RECORDER
from .group_quantizers import group_quantizers, observer_name, quant_groups
from ..state import OBSERVER, ObserverSite, quant_state

_module_name = observer_name      # the name older code imports


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
    if quant_state(gm).quant_groups is None:
        group_quantizers(gm)
    config = quant_state(gm).config
    every_use = config is not None and config.mode_rules.integer_tensors
    by_name = {n.name: n for n in g.nodes}
    nodes = {}
    for n in g.nodes:
        ann = n.meta.get(ANNOTATION)
        if ann is not None:
            nodes[ann.layer] = n
    for grp in quant_groups(gm):
        gm.add_submodule(grp.name, ActObserver(axis=grp.axis))
        readers = [(nodes[layer], int(slot[2:])) for layer, slot in grp.members if slot != "out"]
        if grp.output:
            tensor = by_name[grp.tensor]
            with g.inserting_after(tensor):
                obs = g.call_module(grp.name, (tensor,))
            tensor.replace_all_uses_with(obs, delete_user_cb=lambda u: u is not obs)
        else:
            tensor = readers[0][0].args[readers[0][1]]      # (the calibration recorder for the graph input)
            # in integer mode a float reader may come first: the observer then follows the tensor
            with (g.inserting_after(tensor) if every_use else g.inserting_before(readers[0][0])):
                obs = g.call_module(grp.name, (tensor,))
            for node, j in readers:
                node.update_arg(j, obs)
            if every_use:
                for u in list(tensor.users):
                    if u is not obs and u.op != "output" and metadata_read(u) is None:
                        u.replace_input_with(tensor, obs)
        obs.meta["tensor_meta"] = tensor.meta.get("tensor_meta")
        obs.meta[OBSERVER] = ObserverSite(grp.members[0][0], grp.members[0][1], grp.name)
        for layer, slot in grp.members:
            nodes[layer].meta[ANNOTATION].observers[slot] = grp.name
    g.lint()
    gm.recompile()
    return gm

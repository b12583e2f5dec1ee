"""The Method interface."""
from __future__ import annotations

import difflib
from typing import Dict, Optional, Type

import torch
import torch.fx as fx

from ..config import ConfigError, QConfig
from ..decisions import Decisions
from .params import MethodParams

METHODS: Dict[str, Type["Method"]] = {}


class Method:
    """A calibration method.

    ``decide`` reads the calibrated prepared graph (observer statistics,
    recorded images, ``node.meta`` annotations) and returns per-layer
    decisions; it never edits the graph.
    """

    name = ""
    needs_images = False        # re-runs the graph on the recorded calibration images
    params_class: Type[MethodParams] = MethodParams

    def __init__(self, config: QConfig):
        self.config = config
        self.params = config.method_params

    def decide(self, prepared: fx.GraphModule, images: Optional[torch.Tensor]) -> Decisions:
        raise NotImplementedError


def unify_groups(decisions: Decisions) -> int:
    """Methods that read observers give a group's members equal params by construction (one observer,
    one spec); the searches decide each group jointly.  Where a method swaps in a quantizer of its own
    for one member (FQ-ViT's log2 softmax input, RepQ-ViT's reparameterised norm output), the group's
    first member -- its output quantizer, else its first reader -- holds for all, as the deployed graph
    has one quantizer there.  Returns how many members changed (``meta["group_members_unified"]``)."""
    changed = 0
    for name, members in decisions.groups.items():
        lead = decisions.slot(members[0])
        for m in members[1:]:
            qp = decisions.slot(m)
            if lead is None or qp is None or qp.same_as(lead):
                continue
            layer, slot = m.rsplit(":", 1)
            d = decisions.layers[layer]
            if slot == "out":
                d.output = lead
            else:
                d.inputs[int(slot[2:])] = lead
            d.info[f"{slot}_from_group_leader"] = members[0]
            changed += 1
    decisions.meta["group_members_unified"] = changed
    return changed


def register_method(cls: Type[Method]) -> Type[Method]:
    METHODS[cls.name] = cls
    return cls


def params_fields(cls: Optional[Type[MethodParams]] = None) -> set:
    """Field names of one params class, or of every registered method's."""
    import dataclasses
    classes = [cls] if cls is not None else [m.params_class for m in METHODS.values()]
    return {f.name for c in classes for f in dataclasses.fields(c)}


def get_method(name: str) -> Type[Method]:
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))}){hint}")
    return METHODS[name]

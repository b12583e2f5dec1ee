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

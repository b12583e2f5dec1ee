"""The Method interface."""
from __future__ import annotations

import difflib
from typing import Dict, Optional, Type

import torch
import torch.fx as fx

from ..config import ConfigError, QConfig
from ..decisions import Decisions

METHODS: Dict[str, Type["Method"]] = {}


class Method:
    """A calibration method.

    ``decide`` reads the calibrated prepared graph (observer statistics,
    recorded images, ``node.meta`` annotations) and returns per-layer
    decisions; it never edits the graph.
    """

    name = ""
    needs_images = False        # re-runs the graph on the recorded calibration images

    def __init__(self, config: QConfig):
        self.config = config

    def decide(self, prepared: fx.GraphModule, images: Optional[torch.Tensor]) -> Decisions:
        raise NotImplementedError


def register_method(cls: Type[Method]) -> Type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> Type[Method]:
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))}){hint}")
    return METHODS[name]

"""EasyQuant baseline: per-layer scale search maximising output cosine similarity."""
from __future__ import annotations

from dataclasses import dataclass

from ..search.easyquant import easyquant
from .base import register_method
from .params import SearchParams
from .search_method import SearchMethod


@dataclass
class EasyQuantParams(SearchParams):
    """The shared search's rounds, candidates and row sampling; the cosine objective has no switches."""


@register_method
class EasyQuant(SearchMethod):
    """Wu et al., "EasyQuant: Post-training quantization via scale optimization" (2020).

    Same calibration data flow as Q-HyViT (float inputs and outputs of every layer on sampled
    rows); the search replaces the Hessian-guided error with the cosine similarity of the layer's
    own output, keeps the annotated granularity and scheme, and uses EasyQuant's candidate range
    [0.5, 1.2] x the MinMax scale (100 candidates) unless the config sets ``alpha``/``beta``."""

    name = "easyquant"
    params_class = EasyQuantParams
    step = staticmethod(easyquant)

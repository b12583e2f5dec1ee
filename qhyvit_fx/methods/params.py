"""Parameters owned by each calibration method.

``QConfig`` holds what every method shares (bits, mode, target, layer policy, calibration images,
seed, device); everything one method alone reads lives in that method's params dataclass, as
aimet's ``SeqMseParams`` does.  A method declares its class in ``Method.params_class``; the CLI
makes one flag per field (``help`` from the field's metadata), and ``QConfig.to_dict`` records the
values, so ``qhyvit export`` rebuilds the same config.

The shared sampled-row search (``SearchParams``) reads a few switches that only Q-HyViT has
(bridge objective, validation folds, migration, ...).  They are plain class attributes here, off,
and become fields in ``QHyViTParams``: a method that does not declare a switch does not have it,
so a new Q-HyViT option cannot leak into the baselines.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from ..config import ConfigError
from ..quantizer import candidate_fractions

CALIB_AUGMENTS = ("none", "flip")
GRAD_SOURCES = ("kl", "fisher")


def param(default: Any, help: str, **meta: Any) -> Any:
    """A params field: its default, its CLI help, and optional ``choices``."""
    return field(default=default, metadata=dict(help=help, **meta))


@dataclass
class MethodParams:
    """No parameters (MinMax and the baselines built on its ranges)."""

    def validate(self) -> "MethodParams":
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name}={getattr(self, f.name)!r} is not one of {', '.join(choices)}")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], method: str = "") -> "MethodParams":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            have = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"method '{method or cls.__name__}' has no parameters {unknown} (it has: {have})")
        return cls(**d)

    @classmethod
    def field_types(cls) -> Dict[str, type]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@dataclass
class SearchParams(MethodParams):
    """The per-layer scale search on sampled output rows that Q-HyViT, EasyQuant and PTQ4ViT share."""

    rounds: int = param(3, "search rounds (weights and inputs alternately)")
    round_tol: float = param(1e-2,
        "a round improving the objective less than this (relative) ends the search")
    n_candidates: int = param(100, "scale candidates per operand")
    alpha: float = param(0.01, "smallest candidate, as a fraction of the MinMax scale")
    beta: float = param(1.2, "largest candidate, as a fraction of the MinMax scale")
    grad_source: str = param("kl",
        "kl: (dKL/dO)^2 at the MinMax-quantized graph (paper); fisher: diagonal Fisher of the float "
        "predictions", choices=GRAD_SOURCES)
    fisher_classes: int = param(10, "most likely classes summed for the Fisher")
    grad_damping: float = param(0.01,
        "g^2 + damping * mean(g^2) per layer: outputs with zero gradient on the calibration images would "
        "make every clipping candidate free")
    max_positions: int = param(4096, "sampled output positions per layer")
    topk_verify: int = param(4, "candidates re-scored on all sampled positions")
    coarse_rows: int = param(256, "positions the first halving stage scores every candidate on")
    exhaustive: bool = param(False, "reference search: every candidate on every position")
    calib_batch: int = param(8, "images per pass while collecting the search's rows")

    # Q-HyViT's switches (fields in QHyViTParams); off for every other search-based method
    search_scale = True
    search_granularity = False
    search_scheme = False
    search_outputs = False
    shared_output_objective = True
    weight_rounding = "nearest"
    act_channel_migrate = False
    act_channel_migrate_scales = False
    bridge_objective = False
    act_cv = False
    cv_folds = 4
    calib_augment = "none"
    bias_correction = False

    @property
    def act_channel_beta(self) -> float:
        """Per-channel activation candidates end at ``beta`` unless a method widens them."""
        return self.beta

    def validate(self) -> "SearchParams":
        super().validate()
        if self.rounds < 1 or self.n_candidates < 1:
            raise ConfigError("rounds and n_candidates must be at least 1")
        if not 0 < self.alpha < self.beta:
            raise ConfigError("need 0 < alpha < beta for the scale candidates")
        if not self.grad_damping >= 0:
            raise ConfigError(f"grad_damping={self.grad_damping!r} must be >= 0 (0 turns damping off)")
        if self.act_channel_beta < self.beta:
            raise ConfigError(f"act_channel_beta={self.act_channel_beta} is below beta={self.beta}; "
                              "set it to beta or more (beta: the paper's grid)")
        return self

    def fractions(self) -> torch.Tensor:
        return candidate_fractions(self.n_candidates, self.alpha, self.beta)

    def channel_fractions(self) -> Optional[torch.Tensor]:
        """Fractions above beta, 0.1 apart, up to act_channel_beta (None when it equals beta)."""
        n = int(round((self.act_channel_beta - self.beta) / 0.1))
        if n < 1:
            return None
        return torch.tensor([self.beta + 0.1 * i for i in range(1, n + 1)], dtype=torch.float32)

"""MinMax: quantizer ranges straight from the observed (or weight) min/max."""
from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from ..decisions import Decisions, LayerDecision
from ..passes.annotate import ANNOTATION, quantized_layers
from ..quantizer import QParams, QSpec, channel_minmax, params_from_range
from .base import Method, register_method


class CalibrationError(RuntimeError):
    """Calibration data did not reach a layer, or was unusable."""


def weight_minmax(w: torch.Tensor, spec: QSpec) -> QParams:
    lo, hi = channel_minmax(w.detach(), 0 if spec.per_channel else None)
    return params_from_range(lo, hi, spec)


def observer_minmax(obs, spec: QSpec, layer: str, slot: str) -> QParams:
    if not obs.observed:
        raise CalibrationError(f"layer '{layer}' ({slot}) saw no calibration data; run calibration images "
                               "through the prepared model (qhyvit_fx.calibrate) before convert")
    if spec.per_channel:
        if obs.ch_min.numel() == 0:
            raise CalibrationError(f"layer '{layer}' ({slot}) has no per-channel statistics")
        return params_from_range(obs.ch_min, obs.ch_max, spec)
    return params_from_range(obs.min_val, obs.max_val, spec)


def observed_inputs(prepared: fx.GraphModule, decisions: Decisions, nodes):
    """(node, annotation, decision, input index, producer, producer node name, observer) for every
    quantized input of ``nodes`` that has an observer: what the baselines that swap in their own
    input quantizers after MinMax (RepQ-ViT, FQ-ViT) walk over."""
    for node in nodes:
        ann = node.meta[ANNOTATION]
        d = decisions.layers[ann.layer]
        for i, (producer, src) in sorted(ann.producers.items()):
            name = ann.observers.get(f"in{i}")
            if name is not None and d.inputs.get(i) is not None:
                yield node, ann, d, i, producer, src, prepared.get_submodule(name)


@register_method
class MinMax(Method):
    name = "minmax"

    def decide(self, prepared: fx.GraphModule, images: Optional[torch.Tensor]) -> Decisions:
        layers = {}
        for node in quantized_layers(prepared):
            ann = node.meta[ANNOTATION]
            d = LayerDecision(layer=ann.layer, kind=ann.kind, bridge=ann.bridge)
            if ann.weight is not None:
                d.weight = weight_minmax(prepared.get_submodule(node.target).weight, ann.weight)
            for idx, spec in ann.inputs.items():
                name = ann.observers.get(f"in{idx}")
                if name is not None:
                    d.inputs[idx] = observer_minmax(prepared.get_submodule(name), spec, ann.layer, f"input {idx}")
            if ann.output is not None and "out" in ann.observers:
                d.output = observer_minmax(prepared.get_submodule(ann.observers["out"]), ann.output,
                                           ann.layer, "output")
            layers[ann.layer] = d
        return Decisions(layers, {"method": self.name})

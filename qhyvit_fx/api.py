"""Public API: prepare -> calibrate -> convert -> export_onnx."""
from __future__ import annotations

import copy
from typing import Any, Iterable, Optional, Union

import torch
import torch.fx as fx

from .capture import capture
from .config import QConfig
from .decisions import Decisions, DecisionsError
from .methods import get_method
from .methods.base import unify_groups
from .methods.minmax import CalibrationError
from .passes.annotate import annotate
from .passes.cleanup import remove_noops
from .passes.convert import RECORDER, convert_graph
from .passes.conv1d_as_conv2d import conv1d_as_conv2d
from .passes.decompose_silu import decompose_silu
from .passes.fold_bn import fold_batchnorm
from .passes.fold_constants import fold_constants
from .passes.fold_scales import fold_scales
from .passes.functional_conv import functional_convs_to_modules
from .passes.group_quantizers import group_quantizers, quant_groups
from .passes.insert_observers import insert_observers
from .passes.unshare_modules import unshare_modules
from .patterns.bridges import tag_bridges
from .state import quant_state

__all__ = ["prepare", "calibrate", "convert", "PreparedError"]


class PreparedError(TypeError):
    """An API call got a model that is not in the state it needs."""


def _example_tuple(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def layer_graph(model: torch.nn.Module, example_inputs: Any) -> fx.GraphModule:
    """The captured graph with one module per layer call: what ``prepare`` quantizes and ``qhyvit
    inspect`` shows (same layer names).  ``model`` is traced as it is (not copied)."""
    gm = capture(model, _example_tuple(example_inputs))
    gm = unshare_modules(gm)
    gm = remove_noops(gm)
    gm = fold_constants(gm)
    gm = functional_convs_to_modules(gm)
    return conv1d_as_conv2d(gm)


def prepare(model: torch.nn.Module, example_inputs: Any, config: Optional[QConfig] = None) -> fx.GraphModule:
    """Capture ``model`` and make it ready for calibration.

    The model is deep-copied (it stays untouched).  Passes: remove no-ops,
    fold BatchNorm, tag bridge blocks, annotate quantizable nodes from
    ``config``, insert observers.  Run calibration images through the result
    (or use :func:`calibrate`), then :func:`convert` it.
    """
    config = (config or QConfig()).validate()
    method = get_method(config.method)
    example = _example_tuple(example_inputs)
    model = copy.deepcopy(model).eval()
    gm = layer_graph(model, example)
    gm = fold_batchnorm(gm)
    gm = fold_scales(gm)
    gm = tag_bridges(gm)
    if config.mode_rules.integer_tensors:
        gm = decompose_silu(gm)
    gm = annotate(gm, config)
    gm = group_quantizers(gm)
    gm = insert_observers(gm, record_images=config.calib_images if method.needs_images else 0)
    st = quant_state(gm)
    st.prepared, st.example_shape = True, tuple(example[0].shape)
    gm.eval()
    return gm


def _check_prepared(qm: Any) -> None:
    if not isinstance(qm, fx.GraphModule) or not quant_state(qm).prepared:
        raise PreparedError("expected the model returned by qhyvit_fx.prepare(...)")
    if quant_state(qm).converted:
        raise PreparedError("this model is already converted; calibrate and convert the prepared model")


def _batches(data: Any) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield data
        return
    for item in data:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise CalibrationError(f"calibration data must yield tensors or (tensor, label) pairs, got {type(x).__name__}")
        yield x


def calibrate(qm: fx.GraphModule, data: Any, *, max_images: Optional[int] = None, progress: bool = False
              ) -> fx.GraphModule:
    """Run calibration images through a prepared model, then let the
    configured method take its decisions (stored in ``qm.meta``)."""
    _check_prepared(qm)
    config: QConfig = quant_state(qm).config
    limit = max_images or config.calib_images
    expect = quant_state(qm).example_shape[1:]
    seen = 0
    it = _batches(data)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="calibrate", unit="batch")
    with torch.no_grad():
        for x in it:
            if tuple(x.shape[1:]) != tuple(expect):
                raise CalibrationError(
                    f"calibration batch has shape {tuple(x.shape)} but the model was prepared for "
                    f"[N, {', '.join(map(str, expect))}]; resize the images or prepare with a matching example input")
            if seen >= limit:
                break
            x = x[: limit - seen]
            qm(x)
            seen += x.shape[0]
    if seen == 0:
        raise CalibrationError("no calibration images were given")
    st = quant_state(qm)
    st.calib_count += seen
    st.decisions = decide(qm)
    return qm


def decide(qm: fx.GraphModule) -> Decisions:
    config: QConfig = quant_state(qm).config
    method = get_method(config.method)(config)
    images = None
    if method.needs_images:
        rec = qm.get_submodule(RECORDER)
        images = rec.images()
        if images is None:
            raise CalibrationError("no calibration images were recorded; run data through the prepared model")
    decisions = method.decide(qm, images)
    decisions.groups = {g.name: [f"{layer}:{slot}" for layer, slot in g.members]
                        for g in quant_groups(qm) if g.shared}
    unify_groups(decisions)
    decisions.meta.setdefault("method", config.method)
    decisions.meta["w_bits"], decisions.meta["a_bits"] = config.w_bits, config.a_bits
    decisions.meta["target"] = config.target
    decisions.meta["mode"] = config.mode
    decisions.meta["quantize_outputs"] = config.quantize_outputs or config.backend.fused_outputs
    decisions.meta["weight_range_bits"] = config.weight_code_bits
    decisions.meta["config"] = config.to_dict()      # `qhyvit export` re-prepares exactly this graph
    decisions.meta["calib_images"] = int(images.shape[0]) if images is not None else quant_state(qm).calib_count
    return decisions


def convert(qm: fx.GraphModule, decisions: Union[None, str, dict, Decisions] = None) -> fx.GraphModule:
    """Turn a calibrated prepared model into a fake-quant GraphModule.

    ``decisions``: None (use the ones calibration produced, or take them now
    from the observers), a :class:`Decisions`, its dict form, or a path to a
    decisions JSON file (applied exactly, e.g. after editing).
    """
    _check_prepared(qm)
    if decisions is None:
        decisions = quant_state(qm).decisions or decide(qm)
    elif isinstance(decisions, str):
        decisions = Decisions.load(decisions)
    elif isinstance(decisions, dict):
        decisions = Decisions.from_dict(decisions)
    elif not isinstance(decisions, Decisions):
        raise DecisionsError(f"decisions must be a path, dict or Decisions, got {type(decisions).__name__}")
    return convert_graph(qm, decisions)

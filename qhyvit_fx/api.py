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
from .passes.insert_observers import insert_observers
from .passes.unshare_modules import unshare_modules
from .patterns.bridges import tag_bridges

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
    gm = insert_observers(gm, record_images=config.calib_images if method.needs_images else 0)
    gm.meta["qhyvit_prepared"] = True
    gm.meta["qhyvit_example_shape"] = tuple(example[0].shape)
    gm.eval()
    return gm


def _check_prepared(qm: Any) -> None:
    if not isinstance(qm, fx.GraphModule) or not qm.meta.get("qhyvit_prepared"):
        raise PreparedError("expected the model returned by qhyvit_fx.prepare(...)")
    if qm.meta.get("qhyvit_converted"):
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
    config: QConfig = qm.meta["qhyvit_config"]
    limit = max_images or config.calib_images
    expect = qm.meta["qhyvit_example_shape"][1:]
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
    qm.meta["qhyvit_calib_count"] = qm.meta.get("qhyvit_calib_count", 0) + seen
    qm.meta["qhyvit_decisions"] = decide(qm)
    return qm


def decide(qm: fx.GraphModule) -> Decisions:
    config: QConfig = qm.meta["qhyvit_config"]
    method = get_method(config.method)(config)
    images = None
    if method.needs_images:
        rec = qm.get_submodule(RECORDER)
        images = rec.images()
        if images is None:
            raise CalibrationError("no calibration images were recorded; run data through the prepared model")
    decisions = method.decide(qm, images)
    if config.mode_rules.integer_tensors:
        _one_quantizer_per_tensor(qm, decisions)
    _tie_output_quantizers(qm, decisions)
    decisions.meta.setdefault("method", config.method)
    decisions.meta["w_bits"], decisions.meta["a_bits"] = config.w_bits, config.a_bits
    decisions.meta["target"] = config.target
    decisions.meta["mode"] = config.mode
    decisions.meta["quantize_outputs"] = config.quantize_outputs or config.backend.fused_outputs
    decisions.meta["weight_range_bits"] = config.weight_range_bits
    decisions.meta["config"] = config.to_dict()      # `qhyvit export` re-prepares exactly this graph
    decisions.meta["calib_images"] = int(images.shape[0]) if images is not None else qm.meta.get("qhyvit_calib_count")
    return decisions


def _observer_owners(qm: fx.GraphModule) -> dict:
    """observer submodule name -> (layer, slot), slot 'in0', 'in1', ... or 'out'."""
    from .passes.annotate import ANNOTATION, quantized_layers
    owner = {}
    for n in quantized_layers(qm):
        ann = n.meta[ANNOTATION]
        for slot, obs in ann.observers.items():
            owner[obs] = (ann.layer, slot)
    return owner


def _same_params(a, b) -> bool:
    return a.spec == b.spec and torch.equal(a.scale, b.scale) and torch.equal(a.zero_point, b.zero_point)


def _range_width(q) -> float:
    return float((q.spec.qmax - q.spec.qmin) * q.scale.reshape(-1)[0])


def _one_quantizer_per_tensor(qm: fx.GraphModule, decisions: Decisions) -> None:
    """Integer mode: the input quantizers that read one tensor get one set of parameters, the one
    covering the widest range (the least clipping for every reader).  A searched conv input and a
    residual add reading the same tensor would otherwise quantize it twice, differently, and
    onnxruntime keeps the producer in float (its fusions need a single QuantizeLinear behind it)."""
    owner = {obs: (layer, int(slot[2:])) for obs, (layer, slot) in _observer_owners(qm).items()
             if slot.startswith("in")}
    groups = {}
    for node in qm.graph.nodes:
        if node.op == "call_module" and node.target in owner and node.args:
            groups.setdefault(node.args[0], []).append(owner[node.target])
    for readers in groups.values():
        qps = [(l, i, decisions.layers[l].inputs.get(i)) for l, i in readers if l in decisions.layers]
        qps = [t for t in qps if t[2] is not None]
        if len(qps) < 2 or any(q.spec.per_channel or not q.spec.uniform or q.spec != qps[0][2].spec
                               for _, _, q in qps):
            continue
        best_layer, best_i, best = max(qps, key=lambda t: _range_width(t[2]))
        for l, i, q in qps:
            if q is not best and not _same_params(q, best):
                decisions.layers[l].inputs[i] = best
                decisions.layers[l].info[f"input_{i}_shared_with"] = f"{best_layer} input {best_i}"


def _tie_output_quantizers(qm: fx.GraphModule, decisions: Decisions) -> None:
    """A layer output quantizer whose tensor feeds only input quantizers of other layers takes
    their parameters when they agree.  Two different quantizers back to back on one tensor
    (Q1 DQ1 Q2 DQ2) make onnxruntime merge the pair and, where a layout op lands in between,
    leave the layer in float; with equal parameters the second pair is an exact no-op."""
    from .passes.annotate import ANNOTATION, quantized_layers
    from .patterns.kinds import metadata_read
    owner = _observer_owners(qm)
    clipped = {n.meta[ANNOTATION].layer: n.meta[ANNOTATION].output_after is not None for n in quantized_layers(qm)}
    for node in qm.graph.nodes:
        layer, slot = owner.get(node.target, (None, None)) if node.op == "call_module" else (None, None)
        if slot != "out" or layer not in decisions.layers or not node.users:
            continue
        users = [u for u in node.users if metadata_read(u) is None]
        if not users:
            continue
        targets = [owner.get(u.target) if u.op == "call_module" else None for u in users]
        if any(t is None or not t[1].startswith("in") or t[0] not in decisions.layers for t in targets):
            continue
        qps = [decisions.layers[l].inputs.get(int(sl[2:])) for l, sl in targets]
        first = qps[0]
        if first is None or any(q is None or not _same_params(q, first) for q in qps[1:]):
            continue
        d = decisions.layers[layer]
        # the output's code width may differ (output_bits): a tied output takes the readers' width
        if d.output is None or d.output.spec.with_(bits=first.spec.bits) != first.spec or first.scale.numel() != 1:
            continue
        if clipped.get(layer):
            # the output quantizer follows a ReLU/ReLU6 and must stay inside its range for
            # onnxruntime to fold the activation into the integer conv: the consumers take it
            for l, sl in targets:
                decisions.layers[l].inputs[int(sl[2:])] = d.output
                decisions.layers[l].info[f"input_{sl[2:]}_tied_to"] = f"{layer} output"
            d.info["output_tied_to"] = f"{targets[0][0]} input {targets[0][1][2:]} (theirs set to ours)"
        else:
            d.output = first
            d.info["output_tied_to"] = f"{targets[0][0]} input {targets[0][1][2:]}"


def convert(qm: fx.GraphModule, decisions: Union[None, str, dict, Decisions] = None) -> fx.GraphModule:
    """Turn a calibrated prepared model into a fake-quant GraphModule.

    ``decisions``: None (use the ones calibration produced, or take them now
    from the observers), a :class:`Decisions`, its dict form, or a path to a
    decisions JSON file (applied exactly, e.g. after editing).
    """
    _check_prepared(qm)
    if decisions is None:
        decisions = qm.meta.get("qhyvit_decisions") or decide(qm)
    elif isinstance(decisions, str):
        decisions = Decisions.load(decisions)
    elif isinstance(decisions, dict):
        decisions = Decisions.from_dict(decisions)
    elif not isinstance(decisions, Decisions):
        raise DecisionsError(f"decisions must be a path, dict or Decisions, got {type(decisions).__name__}")
    return convert_graph(qm, decisions)

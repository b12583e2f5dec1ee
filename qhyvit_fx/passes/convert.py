"""Pass: execute decisions -- observers become fake-quantizers, conv/linear
modules become weight-quantized modules.  Returns a new GraphModule; the
prepared one is left untouched (so it can be converted again, e.g. with an
edited decisions file)."""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn

from ..decisions import Decisions, DecisionsError
from ..modules import MigratedQuantize, QuantConv2d, QuantLinear, make_quantizer
from ..patterns.kinds import shape as node_shape
from ..quantizer import QParams, weight_column_ratios
from .annotate import ANNOTATION, migratable
from ..state import quant_state

RECORDER = "qhyvit_calib_recorder"


def _check_channels(layer: str, what: str, qp: QParams, channels: int) -> None:
    if qp.spec.per_channel and qp.scale.numel() != channels:
        raise DecisionsError(f"layer '{layer}' {what}: per-channel decision has {qp.scale.numel()} scales "
                             f"but the tensor has {channels} channels")


def _reparameterise(gm: fx.GraphModule, node: fx.Node, layer: str, rp: dict) -> None:
    """Apply a RepQ-ViT reparameterisation (see LayerDecision.reparam) to the copy ``gm``: the
    norm's output becomes (y + t) / r per channel and the layer undoes it, so the float function
    is unchanged while the layer input's channel ranges are equalised."""
    try:
        norm = gm.get_submodule(rp["norm"])
    except AttributeError:
        raise DecisionsError(f"layer '{layer}': reparam names the norm '{rp['norm']}', which the model lacks") from None
    mod = gm.get_submodule(node.target)
    r, t = rp["in_scale"].float(), rp["in_shift"].float()
    if not isinstance(mod, (nn.Linear, nn.Conv2d)) or (isinstance(mod, nn.Conv2d) and mod.groups != 1):
        raise DecisionsError(f"layer '{layer}': reparam needs a linear or an ungrouped conv")
    k = mod.weight.shape[1]
    if getattr(norm, "weight", None) is None or norm.weight.numel() != k or r.numel() != k:
        raise DecisionsError(f"layer '{layer}': reparam needs an affine norm with {k} channels "
                             f"(got in_scale of {r.numel()})")
    norm = copy.deepcopy(norm)
    with torch.no_grad():
        norm.weight.copy_(norm.weight / r)
        if norm.bias is None:
            norm.bias = nn.Parameter(torch.zeros(k))
        norm.bias.copy_((norm.bias + t) / r)
        w = mod.weight.detach()
        mod = _scaled_input_channels(mod, r)
        if mod.bias is None:
            mod.bias = nn.Parameter(torch.zeros(w.shape[0]))
        if rp.get("shift", "float") == "float":         # else through the quantized weight (_quantized_shift)
            mod.bias.copy_(mod.bias - w.reshape(w.shape[0], k, -1).sum(-1) @ t)
    gm.add_submodule(rp["norm"], norm)
    gm.add_submodule(node.target, mod)


def _scaled_input_channels(mod: nn.Module, r: torch.Tensor) -> nn.Module:
    """A copy of the conv / linear whose weight is W * r along its input channels (a grouped conv's
    output channel o reads the input channels of its group)."""
    mod = copy.deepcopy(mod)
    per_column = weight_column_ratios(r, getattr(mod, "groups", 1), mod.weight.shape[0])
    with torch.no_grad():
        mod.weight.mul_(per_column.reshape(per_column.shape + (1,) * (mod.weight.dim() - 2)))
    return mod


def _migrated_read(layer: str, qp: Optional[QParams], m: torch.Tensor) -> float:
    """The one scale s_r = s_c / m_c that reads a migrated input's per-channel codes back."""
    if qp is None or not qp.spec.per_channel or qp.spec.signed or qp.scale.numel() != m.numel():
        raise DecisionsError(f"layer '{layer}': input_migration needs a per-channel unsigned input 0 "
                             f"with one scale per channel ({m.numel()})")
    r = qp.scale.float() / m
    if not torch.allclose(r, r.mean().expand_as(r), rtol=1e-4):
        raise DecisionsError(f"layer '{layer}': input scales / input_migration must be one number "
                             "(the per-tensor scale the kernel reads)")
    return float(r.mean())


def _migrated_zero_point(layer: str, mod: nn.Module, qp: QParams) -> int:
    """The one zero point the kernel reads a migrated input with: 0 where the bias absorbs the
    channels' zero points (:func:`migratable` layers), else their common value (a padded or
    grouped conv pads with it, so it must be every channel's)."""
    if migratable(mod):
        return 0
    z = qp.zero_point.reshape(-1)
    if not isinstance(mod, nn.Conv2d) or not bool((z == z[0]).all()):
        raise DecisionsError(f"layer '{layer}': input_migration on a padded or grouped conv needs one zero "
                             "point for all channels (the kernel pads with it)")
    return int(z[0])


def _zero_point_bias(q: nn.Module, qp: QParams, dq_scale: float, dq_zero_point: int) -> None:
    """Codes read with one zero point z_r instead of z_c add W'(z_c - z_r) s_r per output: remove it.
    Exact where no input position is padding (1x1 convs without padding, linears)."""
    _subtract_input_offset(q, (qp.zero_point.float() - dq_zero_point) * dq_scale)


def _subtract_input_offset(q: nn.Module, v: torch.Tensor) -> None:
    """Bias of the quantized layer ``q`` minus Q(W') v: what a constant offset v [K] of every input
    position adds to the output, through the weight as the kernel applies it."""
    w = q.dequantized_weight().detach()
    shift = w.reshape(w.shape[0], w.shape[1], -1).sum(-1) @ v
    base = q.bias.detach() if q.bias is not None else torch.zeros(w.shape[0])
    q.bias = nn.Parameter(base - shift, requires_grad=False)


def convert_graph(prepared: fx.GraphModule, decisions: Decisions) -> fx.GraphModule:
    """Apply ``decisions`` to a copy of ``prepared``.  Weight rewrites are data of the decisions
    (``reparam``, ``input_migration``, ``bias_delta``), so an edited or saved decisions file converts
    the same way without the method that wrote it."""
    gm = copy.deepcopy(prepared)
    g = gm.graph
    for node in list(g.nodes):
        if node.op == "call_module" and node.target == RECORDER:
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
    _check_layers_match(g, decisions)
    placed = {}                     # observer (group) name -> (layer, slot, params) of its first member
    for node in list(g.nodes):
        ann = node.meta.get(ANNOTATION)
        if ann is None:
            continue
        d = decisions.layers.get(ann.layer)
        if d is None:
            raise DecisionsError(f"no decision for quantized layer '{ann.layer}'; the decisions do not "
                                 "belong to this model or config (re-run calibration)")
        if d.reparam is not None:
            _reparameterise(gm, node, ann.layer, d.reparam)
        dq_scale = dq_zero = None
        if d.input_migration is not None:
            if ann.weight is None or d.weight is None:
                raise DecisionsError(f"layer '{ann.layer}': input_migration needs a quantized weight to move into")
            dq_scale = _migrated_read(ann.layer, d.inputs.get(0), d.input_migration)
            dq_zero = _migrated_zero_point(ann.layer, gm.get_submodule(node.target), d.inputs[0])
        if ann.weight is not None and d.weight is not None:
            q = _quantized_layer(gm.get_submodule(node.target), ann.layer, d, dq_scale)
            if d.reparam is not None and d.reparam.get("shift") == "quantized":
                # the norm's output carries t / r per channel: remove it through the quantized weight
                _subtract_input_offset(q, d.reparam["in_shift"].float() / d.reparam["in_scale"].float())
            gm.add_submodule(node.target, q)
        for slot, obs_name in ann.observers.items():
            qp = d.output if slot == "out" else d.inputs.get(int(slot[2:]))
            if obs_name in placed:
                _check_shared(obs_name, placed[obs_name], (ann.layer, slot, qp))
                continue
            placed[obs_name] = (ann.layer, slot, qp)
            _place_quantizer(gm, ann.layer, slot, obs_name, d, dq_scale, dq_zero)
    g.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    st = quant_state(gm)
    st.decisions, st.converted = decisions, True
    return gm


def _check_shared(group: str, first, other) -> None:
    """The members of a quantizer group (passes/group_quantizers) are one quantizer: equal params."""
    (l0, s0, a), (l1, s1, b) = first, other
    same = (a is None) == (b is None) and (a is None or a.same_as(b))
    if not same:
        raise DecisionsError(f"'{l1}' {s1} and '{l0}' {s0} share one quantizer in the deployed graph "
                             f"(decisions \"groups\": {group}) but their decisions differ; give every member "
                             "of the group the same spec, scale and zero point")


def _check_layers_match(g: fx.Graph, decisions: Decisions) -> None:
    annotated = {n.meta[ANNOTATION].layer for n in g.nodes if ANNOTATION in n.meta}
    extra = [name for name in decisions.layers if name not in annotated]
    if extra:
        mode = decisions.meta.get("mode")
        raise DecisionsError(f"the decisions name {len(extra)} layer(s) this prepared model does not quantize "
                             f"(first: '{extra[0]}'); they were made "
                             + (f"in mode '{mode}': prepare with QConfig(mode='{mode}')" if mode else
                                "for another model or mode") + " or re-run calibration")


def _quantized_layer(mod: nn.Module, layer: str, d, dq_scale: Optional[float]) -> nn.Module:
    """The weight-quantized replacement of a conv / linear (input migration and bias_delta applied)."""
    _check_channels(layer, "weight", d.weight, mod.weight.shape[0])
    if d.weight.spec.per_channel and d.weight.spec.axis != 0:
        raise DecisionsError(f"layer '{layer}': weight channels are on axis 0")
    if dq_scale is not None:
        channels = mod.weight.shape[1] * getattr(mod, "groups", 1)
        if d.input_migration.numel() != channels:
            raise DecisionsError(f"layer '{layer}': input_migration has {d.input_migration.numel()} "
                                 f"values for {channels} input channels")
        mod = _scaled_input_channels(mod, d.input_migration)
    q = QuantConv2d(mod, d.weight) if isinstance(mod, nn.Conv2d) else QuantLinear(mod, d.weight)
    if d.weight_codes is not None:
        q.set_codes(d.weight_codes, layer)
    if dq_scale is not None and migratable(mod):    # (a common zero point, dq_zero, adds no offset)
        _zero_point_bias(q, d.inputs[0], dq_scale, 0)
    if d.bias_delta is not None:
        if d.bias_delta.numel() != mod.weight.shape[0]:
            raise DecisionsError(f"layer '{layer}': bias_delta has {d.bias_delta.numel()} values "
                                 f"but the layer has {mod.weight.shape[0]} output channels")
        base = q.bias.detach() if q.bias is not None else torch.zeros(mod.weight.shape[0])
        q.bias = nn.Parameter(base + d.bias_delta, requires_grad=False)
    return q


def _place_quantizer(gm: fx.GraphModule, layer: str, slot: str, obs_name: str, d,
                     dq_scale: Optional[float], dq_zero: Optional[int] = None) -> None:
    """The observer ``obs_name`` becomes the decided quantizer of ``slot``, or goes (no decision)."""
    g = gm.graph
    obs_node = next(n for n in g.nodes if n.op == "call_module" and n.target == obs_name)
    qp = d.output if slot == "out" else d.inputs.get(int(slot[2:]))
    if qp is None:
        obs_node.replace_all_uses_with(obs_node.args[0])
        g.erase_node(obs_node)
        return
    shape = node_shape(obs_node)
    axis = None
    if qp.spec.per_channel:
        axis = qp.spec.axis
        if shape is None or not -len(shape) <= axis < len(shape):
            raise DecisionsError(f"layer '{layer}' {slot}: per-channel axis {axis} is invalid")
        axis = axis % len(shape)
        _check_channels(layer, slot, qp, shape[axis])
    if slot == "in0" and dq_scale is not None:
        gm.add_submodule(obs_name, MigratedQuantize(qp, axis, dq_scale, dq_zero or 0))
    else:
        gm.add_submodule(obs_name, make_quantizer(qp, axis=axis))

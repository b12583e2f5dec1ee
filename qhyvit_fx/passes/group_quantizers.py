"""Pass: decide, before any observer exists, which quantization points share one quantizer.

A quantization point is one annotated input slot (``in0``, ``in1``, ...) or output slot (``out``) of
an annotated node.  Points on the same tensor are put in one group (union-find, as torchao's
``SharedQuantizationSpec``) when the deployed graph can only hold one quantizer there:

* an output quantizer and the input quantizers that read its tensor: two different Q/DQ pairs back
  to back make onnxruntime merge them and, where a layout op lands in between, keep the layer in
  float; and a quantizer after a ReLU must be the reader's too, or the ReLU is not folded.  (Except
  where the output keeps more bits than its quantized readers read and a float op reads it too;
  then the readers requantize the output's codes);
* on targets whose kernels need one quantizer per tensor (``Backend.one_quantizer_per_tensor``) or
  in integer mode, every input quantizer that reads one tensor: onnxruntime fuses the producer into
  an integer kernel only when its output goes through a single QuantizeLinear.

Each group gets one observer (:mod:`.insert_observers`), one decision (the methods score it with the
objective of every layer it feeds) and one quantizer in the converted graph and in the ONNX.  Members
of a group with more than one point are per-tensor with one spec (the narrowest bits among them),
and cannot migrate per-channel inputs into weights.  The groups are a typed record in
``quant_state(gm).quant_groups``; each annotation's ``groups`` maps its slots to group names.
GraphModule in, GraphModule out; the graph itself is not changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch.fx as fx
from networkx.utils import UnionFind

from ..patterns.kinds import metadata_read
from ..quantizer import QSpec
from .annotate import ANNOTATION, quantized_layers
from ..state import quant_state



@dataclass
class QuantGroup:
    name: str                               # the group's observer submodule (and quantizer) name
    tensor: str                             # fx node name of the quantized tensor
    members: List[Tuple[str, str]]          # (layer, slot) in graph order, slot 'in0', 'in1', ... or 'out'
    spec: QSpec                             # the spec every member quantizes with
    axis: object = None                     # observer channel axis (only a single point may have one)
    output: bool = False                    # one member is an output quantizer (the observer sits after it)

    @property
    def shared(self) -> bool:
        return len(self.members) > 1


def observer_name(layer: str, slot: str) -> str:
    return "qhyvit_obs__" + layer.replace(".", "_") + "__" + slot


def _points(gm: fx.GraphModule):
    """(layer, slot, tensor node, annotated node) of every quantization point, in graph order."""
    by_name = {n.name: n for n in gm.graph.nodes}
    for node in quantized_layers(gm):
        ann = node.meta[ANNOTATION]
        for j in sorted(ann.inputs):
            if j < len(node.args) and isinstance(node.args[j], fx.Node):
                yield ann.layer, f"in{j}", node.args[j], node
        if ann.output is not None:
            yield ann.layer, "out", by_name[ann.output_after] if ann.output_after else node, node


def group_quantizers(gm: fx.GraphModule) -> fx.GraphModule:
    config = quant_state(gm).config
    per_tensor = config.backend.one_quantizer_per_tensor or config.mode_rules.integer_tensors
    points = list(_points(gm))
    anns = {layer: node.meta[ANNOTATION] for layer, _, _, node in points}
    uf = UnionFind()
    on_tensor: Dict[fx.Node, List[Tuple[str, str]]] = {}
    for layer, slot, tensor, _ in points:
        uf[(layer, slot)]
        on_tensor.setdefault(tensor, []).append((layer, slot))
    readers = {(layer, slot): node for layer, slot, _, node in points}
    for tensor, pts in on_tensor.items():
        outs = [p for p in pts if p[1] == "out"]
        ins = [p for p in pts if p[1] != "out"]
        if per_tensor and len(ins) > 1:
            uf.union(*ins)
        if outs and ins and _output_joins(anns[outs[0][0]].output, [_spec_of(anns[l], s) for l, s in ins],
                                          tensor, {readers[p] for p in ins}):
            uf.union(outs[0], *ins)
    tensor_of = {(layer, slot): tensor for layer, slot, tensor, _ in points}
    groups: List[QuantGroup] = []
    seen = set()
    for layer, slot, _, _ in points:
        root = uf[(layer, slot)]
        if root in seen:
            continue
        seen.add(root)
        members = [(l, s) for l, s, _, _ in points if uf[(l, s)] == root]
        groups.append(_make_group(members, anns, tensor_of))
    for g in groups:
        for layer, slot in g.members:
            anns[layer].groups[slot] = g.name
    quant_state(gm).quant_groups = groups
    return gm


def _output_joins(out: QSpec, ins: List[QSpec], tensor: fx.Node, quantized_readers: set) -> bool:
    """Whether an output quantizer is its readers' input quantizer too.  Not when it keeps more bits
    than they read (``output_bits``) for a reader that takes the tensor in float (a residual add in
    partial mode): that reader keeps the finer codes, and the quantized readers requantize them."""
    if out.bits <= min(sp.bits for sp in ins):
        return True
    return not any(u.op == "output" or (u not in quantized_readers and metadata_read(u) is None)
                   for u in tensor.users)


def _spec_of(ann, slot: str) -> QSpec:
    return ann.output if slot == "out" else ann.inputs[int(slot[2:])]


def _make_group(members, anns, tensor_of) -> QuantGroup:
    out = [m for m in members if m[1] == "out"]
    first = out[0] if out else members[0]
    if len(members) == 1:
        ann = anns[first[0]]
        axis = ann.output_axis if first[1] == "out" else ann.input_axes.get(int(first[1][2:]))
        return QuantGroup(observer_name(*first), tensor_of[first].name, members, _spec_of(ann, first[1]),
                          axis, output=bool(out))
    # readers decide the spec: an output's wider code (output_bits) only exists where nothing
    # quantized reads it again
    readers = [m for m in members if m[1] != "out"] or members
    spec = min((_spec_of(anns[l], s) for l, s in readers), key=lambda sp: sp.bits)
    spec = spec.with_(per_channel=False, axis=0)
    for layer, slot in members:
        ann = anns[layer]
        if slot == "out":
            ann.output, ann.output_axis = spec, None
        else:
            j = int(slot[2:])
            ann.inputs[j], ann.input_axes[j] = spec, None
            if j == 0:
                ann.input_migrate, ann.fold_norm = None, None
    return QuantGroup(observer_name(*first), tensor_of[first].name, members, spec, None, output=bool(out))


def quant_groups(gm: fx.GraphModule) -> List[QuantGroup]:
    return quant_state(gm).quant_groups or []

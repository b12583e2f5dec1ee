"""The two ``torch.fx.Interpreter`` passes of calibration.

:class:`RowCollector` runs the float graph and records, for every searched layer, its inputs and
output on the layer's sampled rows and its input ranges over all rows; :class:`GradCollector` runs
a graph with autograd and keeps the outputs whose gradients the objective weighs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..modules import ActObserver, InputRecorder
from ..passes.annotate import QuantAnnotation
from ..patterns.kinds import Kind
from .rows import RowPlan, rows_of
from .stats import FoldedRanges

IDENTITY_MODULES = (ActObserver, InputRecorder, nn.Identity)     # observers run as identities here


def is_identity_node(gm: fx.GraphModule, n: fx.Node) -> bool:
    return n.op == "call_module" and isinstance(gm.get_submodule(n.target), IDENTITY_MODULES)


def searches_output(ann: QuantAnnotation) -> bool:
    """The output quantizer is searched when it sits on the layer's own output; after a ReLU/ReLU6
    it keeps its MinMax range (the search's rows are the layer's pre-activation outputs)."""
    return ann.output is not None and ann.output_after is None


def output_activation(gm: fx.GraphModule, node: fx.Node) -> Optional[Tuple[str, Callable]]:
    """(fx node name, callable) of the pointwise activation that is the only reader of ``node``'s
    output quantizer (observer), or None.  The output quantizer's error is then scored after that
    activation: its second-order estimate at the pre-activation output calls a clipped negative tail
    free where SiLU / GELU are flat, although the clipped values pass through the curved part."""
    from ..patterns.kinds import Kind, classify
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module" or not isinstance(gm.get_submodule(users[0].target),
                                                                          ActObserver):
        return None
    readers = list(users[0].users)
    if len(readers) != 1 or classify(gm, readers[0]) != Kind.ACT:
        return None
    a = readers[0]
    if not a.args or a.args[0] is not users[0] or any(isinstance(v, fx.Node) for v in list(a.args[1:]) +
                                                      list(a.kwargs.values())):
        return None
    if a.op == "call_module":
        return a.name, gm.get_submodule(a.target)
    if a.op == "call_function":
        return a.name, lambda t, f=a.target, args=tuple(a.args[1:]), kw=dict(a.kwargs): f(t, *args, **kw)
    if a.op == "call_method":
        return a.name, lambda t, m=a.target, args=tuple(a.args[1:]), kw=dict(a.kwargs): getattr(t, m)(*args, **kw)
    return None


@dataclass
class LayerRecord:
    """What the passes collect for one searched layer (rows in chunks until :func:`collect` joins them)."""

    node: str
    ann: QuantAnnotation
    plan: RowPlan
    ranges: List[FoldedRanges]                                          # per annotated input
    inputs: List[List[torch.Tensor]] = field(default_factory=list)     # per annotated input: chunks of rows
    out: List[torch.Tensor] = field(default_factory=list)
    grad: List[torch.Tensor] = field(default_factory=list)
    out_ranges: Optional[FoldedRanges] = None                           # output quantizers the search scores
    fold_of: Optional[torch.Tensor] = None                              # validation fold of every image
    # the pointwise activation that alone reads the output quantizer (SiLU, GELU, ...): its fx node,
    # how to apply it, and the squared gradients at its output (see output_activation)
    act: Optional[str] = None
    act_fn: Optional[Callable] = None
    act_grad: List[torch.Tensor] = field(default_factory=list)


class RowCollector(fx.Interpreter):
    """Float pass: sampled rows of layer inputs/outputs and full-range stats."""

    def _folds(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Cross-validation fold of every entry along dim 0 of ``x``: dim 0 may fold several
        entries per image (MobileViT: batch * patch area, image-major).  None when there are no
        folds or dim 0 is not image-major (e.g. a batch-independent tensor): the layer then has
        no fold statistics and its candidates are scored on all images."""
        n = self.i1 - self.i0
        if not self.fold_of.numel() or x.dim() == 0 or x.shape[0] == 0 or x.shape[0] % n:
            return None
        return self.fold_of[self.i0:self.i1].repeat_interleave(x.shape[0] // n)

    def __init__(self, gm: fx.GraphModule, records: Dict[str, LayerRecord], extra: Dict[str, RowPlan],
                 i0: int, i1: int, fold_of: torch.Tensor):
        super().__init__(gm)
        self.records, self.extra, self.i0, self.i1 = records, extra, i0, i1
        self.fold_of = fold_of              # cross-validation fold of every image (empty: no folds)
        self.extra_rows: Dict[str, torch.Tensor] = {}

    def call_module(self, target, args, kwargs):
        m = self.module.get_submodule(target)
        if isinstance(m, IDENTITY_MODULES):
            return args[0]
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        rec = self.records.get(n.name)
        if rec is not None:
            self._record(n, rec, out)
        plan = self.extra.get(n.name)
        if plan is not None:
            self.extra_rows[n.name] = rows_of(out, plan.layout, plan.for_chunk(self.i0, self.i1))
        return out

    def _record(self, n: fx.Node, rec: LayerRecord, out: torch.Tensor):
        idx = rec.plan.for_chunk(self.i0, self.i1)
        ann = rec.ann
        gm = self.module
        for j, ai in enumerate(sorted(ann.inputs)):
            x = self.env[n.args[ai]] if isinstance(n.args[ai], fx.Node) else n.args[ai]
            if ann.kind == Kind.CONV:
                conv = gm.get_submodule(n.target)
                cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)   # [n, K, P]
                rows = cols.permute(0, 2, 1).reshape(-1, cols.shape[1])[idx]
                axis = 1
            elif ann.kind == Kind.LINEAR:
                rows = x.reshape(-1, x.shape[-1])[idx]
                axis = x.dim() - 1
            else:
                rows = x.reshape((-1,) + tuple(x.shape[-2:]))[idx]
                axis = None
            rec.inputs[j].append(rows.clone())
            rec.ranges[j].add(x, axis, self._folds(x))
        rec.out.append(rows_of(out, rec.plan.layout, idx).clone())
        if searches_output(ann):
            if rec.out_ranges is None:
                rec.out_ranges = FoldedRanges.with_folds(len(rec.ranges[0].folds))
            rec.out_ranges.add(out, None, self._folds(out))


class GradCollector(fx.Interpreter):
    """Pass with autograd that keeps the outputs whose gradients are wanted."""

    def __init__(self, gm: fx.GraphModule, wanted: Set[str], skip_identity: bool = False):
        super().__init__(gm)
        self.wanted = wanted
        self.skip_identity = skip_identity
        self.kept: Dict[str, torch.Tensor] = {}

    def call_module(self, target, args, kwargs):
        if self.skip_identity and isinstance(self.module.get_submodule(target), IDENTITY_MODULES):
            return args[0]
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.wanted and isinstance(out, torch.Tensor) and out.requires_grad:
            out.retain_grad()
            self.kept[n.name] = out
        return out

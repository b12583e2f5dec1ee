"""Calibration data collection for reconstruction methods (FX side).

Two ``torch.fx.Interpreter`` passes over the calibration images, in chunks of
images (rows of different images are independent, so chunking is exact):

1. :class:`RowCollector` runs the float graph and records, for every
   quantized layer, its input/output on a seeded sample of output rows
   (conv: output positions, with their receptive fields unfolded; linear:
   tokens; matmul: whole matrices of the batch) and its input range
   statistics over all rows;
2. :class:`GradCollector` runs a MinMax fake-quant version of the graph with
   autograd and records dL/dO on the same rows, with
   L = KL(softmax(float logits) || softmax(quantized logits)).

Bridge members get the rest of their bridge block as a *tail*: a small
GraphModule from the layer output to the bridge output, run on rows (valid
when the tail is pointwise: 1x1 convs, activations, adds).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Set, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .modules import ActObserver, FakeQuantize, InputRecorder
from .passes.annotate import ANNOTATION, QuantAnnotation, searched_layers
from .patterns.kinds import Kind, classify, shape as node_shape
from .search.problem import ActStats, MatmulProblem, WeightedLayerProblem

if TYPE_CHECKING:
    from .methods.params import SearchParams

_IDENTITY_MODULES = (ActObserver, InputRecorder, nn.Identity)


def _is_identity_node(gm: fx.GraphModule, n: fx.Node) -> bool:
    return n.op == "call_module" and isinstance(gm.get_submodule(n.target), _IDENTITY_MODULES)


# ---- row plans -----------------------------------------------------------------------------

@dataclass
class RowPlan:
    """Which rows of a layer's output are sampled (global over all images)."""

    kind: str                      # 'nchw' | 'tokens' | 'matrices'
    per_image: int                 # rows (or matrices) per image
    index: torch.Tensor            # sorted global indices

    def _mask(self, i0: int, i1: int) -> torch.Tensor:
        return (self.index >= i0 * self.per_image) & (self.index < i1 * self.per_image)

    def for_chunk(self, i0: int, i1: int) -> torch.Tensor:
        """Chunk-local indices of the sampled rows of images [i0, i1), in plan order."""
        return self.index[self._mask(i0, i1)] - i0 * self.per_image

    def assemble(self, chunks: List[torch.Tensor], bounds: List[Tuple[int, int]]) -> torch.Tensor:
        """Rows gathered chunk by chunk -> rows in plan order (a random order, so
        any prefix is a uniform random subset)."""
        rows = torch.cat(chunks)
        pos = torch.cat([self._mask(a, b).nonzero().squeeze(1) for a, b in bounds])
        out = torch.empty_like(rows)
        out[pos] = rows
        return out


def _plan(kind: str, per_image: int, images: int, limit: int, seed: int, name: str) -> RowPlan:
    total = per_image * images
    if total <= limit:
        idx = torch.arange(total)
    else:
        g = torch.Generator().manual_seed((seed * 1000003 + zlib.crc32(name.encode())) & 0x7FFFFFFF)
        idx = torch.randperm(total, generator=g)[:limit]
    return RowPlan(kind, per_image, idx)


def _rows_of(t: torch.Tensor, kind: str, idx: torch.Tensor) -> torch.Tensor:
    """Select rows ``idx`` (local to this chunk) of an output-shaped tensor."""
    if kind == "nchw":
        n, c = t.shape[:2]
        return t.reshape(n, c, -1).permute(0, 2, 1).reshape(-1, c)[idx]
    if kind == "tokens":
        return t.reshape(-1, t.shape[-1])[idx]
    return t.reshape((-1,) + tuple(t.shape[-2:]))[idx]


# ---- bridge tails --------------------------------------------------------------------------

_POINTWISE_FUNCS = {torch.add, torch.mul, torch.sub, F.relu, F.gelu, F.silu, F.hardswish, F.sigmoid, torch.sigmoid,
                    F.batch_norm}


def _pointwise(gm: fx.GraphModule, n: fx.Node) -> bool:
    k = classify(gm, n)
    if n.op == "get_attr" or _is_identity_node(gm, n):
        return True
    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        if isinstance(m, nn.Conv2d):
            return m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding in ((0, 0), 0) and m.dilation == (1, 1)
        return isinstance(m, (nn.BatchNorm2d,)) or k == Kind.ACT
    return k in (Kind.ACT, Kind.BATCHNORM, Kind.ELEMENTWISE) and not (
        n.op == "call_function" and getattr(n.target, "__name__", "") in ("cat", "stack"))


@dataclass
class Tail:
    gm: fx.GraphModule
    side: List[str]                 # fx node names fed as extra inputs (rows)
    out_node: str


def build_tail(gm: fx.GraphModule, layer: fx.Node, out: fx.Node, block_nodes: List[str]) -> Tuple[Optional[Tail], str]:
    """Sub-graph computing ``out`` from ``layer``'s output; (None, reason) if not pointwise."""
    by = {n.name: n for n in gm.graph.nodes}
    members = set(block_nodes)
    # nodes downstream of the layer inside the block, up to the output
    down: Set[str] = set()
    stack = [layer]
    while stack:
        n = stack.pop()
        for u in n.users:
            # observers were inserted after the bridge was tagged: they belong to the block
            if (u.name in members or _is_identity_node(gm, u)) and u.name not in down:
                down.add(u.name)
                if u is not out:
                    stack.append(u)
    if out.name not in down:
        return None, "bridge output not reachable"
    order = [n for n in gm.graph.nodes if n.name in down]
    for n in order:
        if not _pointwise(gm, n):
            return None, f"non-pointwise op '{n.name}' in the bridge tail"
    g = fx.Graph()
    env: Dict[str, fx.Node] = {}
    x = g.placeholder("layer_out")
    env[layer.name] = x
    side: List[str] = []

    def arg_map(a: fx.Node):
        if a.name in env:
            return env[a.name]
        if a.op == "get_attr":
            env[a.name] = g.get_attr(a.target)
            return env[a.name]
        side.append(a.name)
        env[a.name] = g.placeholder(f"side_{len(side)}")
        return env[a.name]

    for n in order:
        if _is_identity_node(gm, n):
            env[n.name] = fx.node.map_arg(n.args[0], arg_map)
            continue
        env[n.name] = g.node_copy(n, arg_map)
    g.output(env[out.name])
    # placeholders must come first
    phs = [n for n in g.nodes if n.op == "placeholder"]
    first = next(iter(g.nodes))
    for p in phs:
        first.prepend(p) if p is not first else None
    tail_gm = fx.GraphModule(gm, g)
    return Tail(tail_gm, side, out.name), ""


def _rows_to_nchw(r: torch.Tensor) -> torch.Tensor:
    return r.t().reshape(1, r.shape[1], 1, r.shape[0])


def _nchw_to_rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[1], -1).t()


def tail_callable(tail: Tail, side_rows: List[torch.Tensor]):
    """The rest of a bridge block as ``fn(rows [n, r, C], idx) -> [n, r, C']`` for ``n`` candidate
    outputs on ``r`` sampled rows: the first ``r`` rows when ``idx`` is None, else rows ``idx``.
    Side inputs (e.g. a residual branch) are taken at the same rows."""
    def run(rows: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, r, c = rows.shape
        sides = [(s[:r] if idx is None else s[idx]).repeat(n, 1) for s in side_rows]
        with torch.no_grad():
            out = tail.gm(_rows_to_nchw(rows.reshape(n * r, c)), *(_rows_to_nchw(s) for s in sides))
        return _nchw_to_rows(out).reshape(n, r, -1)
    return run


# ---- collectors ----------------------------------------------------------------------------

@dataclass
class LayerRecord:
    node: str
    ann: QuantAnnotation
    plan: RowPlan
    inputs: List[List[torch.Tensor]] = field(default_factory=list)    # per annotated input: chunks of rows
    out: List[torch.Tensor] = field(default_factory=list)
    grad: List[torch.Tensor] = field(default_factory=list)
    lo: List[Optional[torch.Tensor]] = field(default_factory=list)
    hi: List[Optional[torch.Tensor]] = field(default_factory=list)
    ch_lo: List[Optional[torch.Tensor]] = field(default_factory=list)
    ch_hi: List[Optional[torch.Tensor]] = field(default_factory=list)
    stats: List[List[dict]] = field(default_factory=list)     # per input: [stats of fold 0..K-1, all]


def _update(cur, new, fn):
    return new if cur is None else fn(cur, new)


def _accumulate(st: dict, x: torch.Tensor, axis: Optional[int]) -> None:
    """Running min/max (and per-channel along ``axis``) into ``st``."""
    st["lo"] = _update(st.get("lo"), x.min(), torch.minimum)
    st["hi"] = _update(st.get("hi"), x.max(), torch.maximum)
    if axis is not None:
        xt = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        st["ch_lo"] = _update(st.get("ch_lo"), xt.min(1).values, torch.minimum)
        st["ch_hi"] = _update(st.get("ch_hi"), xt.max(1).values, torch.maximum)


def _stats(st: dict) -> Optional[ActStats]:
    if st.get("lo") is None:
        return None
    return ActStats(st["lo"], st["hi"], st.get("ch_lo"), st.get("ch_hi"))


def _merge(sts: List[dict]) -> dict:
    out: dict = {}
    for st in sts:
        for key, fn in (("lo", torch.minimum), ("hi", torch.maximum), ("ch_lo", torch.minimum),
                        ("ch_hi", torch.maximum)):
            if st.get(key) is not None:
                out[key] = _update(out.get(key), st[key], fn)
    return out


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
        if isinstance(m, _IDENTITY_MODULES):
            return args[0]
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        rec = self.records.get(n.name)
        if rec is not None:
            self._record(n, rec, out)
        plan = self.extra.get(n.name)
        if plan is not None:
            self.extra_rows[n.name] = _rows_of(out, plan.kind, plan.for_chunk(self.i0, self.i1))
        return out

    def _record(self, n: fx.Node, rec: LayerRecord, out: torch.Tensor):
        idx = rec.plan.for_chunk(self.i0, self.i1)
        ann = rec.ann
        gm = self.module
        for j, ai in enumerate(sorted(ann.inputs)):
            x = self.env[n.args[ai]] if isinstance(n.args[ai], fx.Node) else n.args[ai]
            if ann.kind == "conv":
                conv = gm.get_submodule(n.target)
                cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)   # [n, K, P]
                rows = cols.permute(0, 2, 1).reshape(-1, cols.shape[1])[idx]
                axis = 1
            elif ann.kind == "linear":
                rows = x.reshape(-1, x.shape[-1])[idx]
                axis = x.dim() - 1
            else:
                rows = x.reshape((-1,) + tuple(x.shape[-2:]))[idx]
                axis = None
            rec.inputs[j].append(rows.clone())
            _accumulate(rec.stats[j][-1], x, axis)
            folds = self._folds(x)
            if folds is not None:
                for k in folds.unique().tolist():
                    _accumulate(rec.stats[j][k], x[folds == k], axis)
        rec.out.append(_rows_of(out, rec.plan.kind, idx).clone())
        if searches_output(ann):
            if not hasattr(rec, "out_stats"):
                rec.out_stats = [{} for _ in range(len(rec.stats[0]))]
            _accumulate(rec.out_stats[-1], out, None)
            folds = self._folds(out)
            if folds is not None:
                for k in folds.unique().tolist():
                    _accumulate(rec.out_stats[k], out[folds == k], None)


class GradCollector(fx.Interpreter):
    """Pass with autograd that keeps the outputs whose gradients are wanted."""

    def __init__(self, gm: fx.GraphModule, wanted: Set[str], skip_identity: bool = False):
        super().__init__(gm)
        self.wanted = wanted
        self.skip_identity = skip_identity
        self.kept: Dict[str, torch.Tensor] = {}

    def call_module(self, target, args, kwargs):
        if self.skip_identity and isinstance(self.module.get_submodule(target), _IDENTITY_MODULES):
            return args[0]
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.wanted and isinstance(out, torch.Tensor) and out.requires_grad:
            out.retain_grad()
            self.kept[n.name] = out
        return out


def _grad2_chunk(prepared, quantized, x, fp_logits, wanted, params) -> Dict[str, torch.Tensor]:
    """Squared-gradient weights (the Hessian diagonal estimate) at every wanted output.

    kl:     (dL/dO)^2, L = KL(softmax(fp) || softmax(q)) on the MinMax-quantized graph (the paper)
    fisher: sum over the most likely classes y of p_y (d log p_y / dO)^2 on the float graph, the
            diagonal of the Fisher information, i.e. of the Hessian of KL(fp || q) at q = fp
    """
    if params.grad_source == "kl":
        gc = GradCollector(quantized, wanted)
        q_logits = gc.run(x.clone().requires_grad_(True))
        loss = F.kl_div(F.log_softmax(q_logits, -1), F.log_softmax(fp_logits, -1), log_target=True,
                        reduction="sum")
        loss.backward()
        return {n: (t.grad if t.grad is not None else torch.zeros_like(t)).detach() ** 2 for n, t in gc.kept.items()}
    gc = GradCollector(prepared, wanted, skip_identity=True)
    logits = gc.run(x.clone().requires_grad_(True))
    logp = F.log_softmax(logits, -1)
    p = logp.detach().exp()
    k = min(params.fisher_classes, logits.shape[-1])
    top = p.topk(k, -1).indices                                    # [n, k]
    acc: Dict[str, torch.Tensor] = {}
    outs = list(gc.kept.items())
    for r in range(k):
        y = top[:, r]
        nll = -logp.gather(1, y[:, None]).sum()
        grads = torch.autograd.grad(nll, [t for _, t in outs], retain_graph=r < k - 1, allow_unused=True)
        py = p.gather(1, y[:, None]).squeeze(1)
        for (name, t), g in zip(outs, grads):
            if g is None:
                g = torch.zeros_like(t)
            w = py.reshape((-1,) + (1,) * (g.dim() - 1)) if g.shape[0] == py.shape[0] else \
                py.repeat_interleave(g.shape[0] // py.shape[0]).reshape((-1,) + (1,) * (g.dim() - 1))
            acc[name] = acc.get(name, 0) + w * g.detach() ** 2
    return acc


# ---- driver --------------------------------------------------------------------------------

def _plan_for(n: fx.Node, kind: str, images: int, params: SearchParams, seed: int, name: str,
              example_batch: int) -> RowPlan:
    # shapes were recorded on the example input: everything but the channel axis, divided by
    # the example's batch, is "per image" (dim 0 can hold several entries per image, e.g.
    # MobileViT's batch * patch area)
    shape = node_shape(n)
    if kind == "conv":
        per = int(shape[0] * math.prod(shape[2:])) // example_batch
        return _plan("nchw", per, images, params.max_positions, seed, name)
    if kind == "linear":
        per = int(math.prod(shape[:-1])) // example_batch
        return _plan("tokens", per, images, params.max_positions, seed, name)
    per = int(math.prod(shape[:-2])) // example_batch
    rows_per_mat = shape[-2]
    limit = max(1, params.max_positions // max(1, rows_per_mat))
    return _plan("matrices", per, images, limit, seed, name)


def augment_images(images: torch.Tensor, how: str) -> Tuple[torch.Tensor, int]:
    """(images for the search, copies per calibration image).  ``flip``: every image followed by its
    left-right mirror image (NCHW, last axis), so each source image's copies are adjacent."""
    if how == "none":
        return images, 1
    if how == "flip":
        return torch.stack([images, images.flip(-1)], 1).reshape((-1,) + tuple(images.shape[1:])), 2
    raise ValueError(f"unknown calibration augmentation '{how}'")


def collect(prepared: fx.GraphModule, quantized: fx.GraphModule, images: torch.Tensor, params: SearchParams,
            seed: int = 0, chunk: int = 8, progress: bool = False, copies: int = 1):
    """Run both passes; returns (records, bridge info) for :func:`build_problems`.  ``copies``:
    consecutive images that are views of one calibration image (see :func:`augment_images`)."""
    nodes = searched_layers(prepared)
    n_img = images.shape[0]
    n_src = n_img // copies
    example_batch = int(prepared.meta.get("qhyvit_example_shape", (1,))[0])
    folds = params.cv_folds if params.act_cv and n_src >= 2 * params.cv_folds else 0
    # fold of every image: contiguous blocks of source images, so every fold holds n_src / folds of
    # them and all copies of an image (the validation images must be unseen, not mirrored)
    fold_of = ((torch.arange(n_img) // copies) * folds // n_src) if folds else torch.empty(0, dtype=torch.long)
    records: Dict[str, LayerRecord] = {}
    for n in nodes:
        ann: QuantAnnotation = n.meta[ANNOTATION]
        k = len(ann.inputs)
        records[n.name] = LayerRecord(n.name, ann, _plan_for(n, ann.kind, n_img, params, seed, ann.layer, example_batch),
                                      inputs=[[] for _ in range(k)],
                                      stats=[[{} for _ in range(folds + 1)] for _ in range(k)])
    # bridges: members get the output's row plan, and tails
    by = {n.name: n for n in prepared.graph.nodes}
    tails: Dict[str, Tuple[Optional[Tail], str, str]] = {}
    extra: Dict[str, RowPlan] = {}
    if params.bridge_objective:
        for t in prepared.meta.get("qhyvit_bridges", []):
            out_rec = records.get(t.output)
            if out_rec is None:
                continue
            for l in t.layers:
                if l == t.output or l not in records:
                    continue
                rec = records[l]
                if rec.ann.kind != "conv" or out_rec.ann.kind != "conv" or \
                        node_shape(by[l])[2:] != node_shape(by[t.output])[2:]:
                    tails[l] = (None, "bridge layer and output differ in layout", t.output)
                    continue
                tail, why = build_tail(prepared, by[l], by[t.output], t.nodes)
                tails[l] = (tail, why, t.output)
                if tail is not None:
                    rec.plan = out_rec.plan
                    for s in tail.side:
                        extra[s] = out_rec.plan
    side_rows: Dict[str, List[torch.Tensor]] = {s: [] for s in extra}
    chunks = range(0, n_img, chunk)
    bounds = [(i0, min(n_img, i0 + chunk)) for i0 in chunks]
    it = chunks
    if progress:
        from tqdm import tqdm
        it = tqdm(chunks, desc="collect", unit="chunk", leave=False)
    wanted = set(records)
    prepared.eval()
    quantized.eval()
    for i0 in it:
        i1 = min(n_img, i0 + chunk)
        x = images[i0:i1]
        with torch.no_grad():
            rc = RowCollector(prepared, records, extra, i0, i1, fold_of)
            fp_logits = rc.run(x)
            for s, r in rc.extra_rows.items():
                side_rows[s].append(r.clone())
            del rc
        with torch.enable_grad():
            grads = _grad2_chunk(prepared, quantized, x, fp_logits, wanted, params)
        for name, rec in records.items():
            if name in grads:
                rec.grad.append(_rows_of(grads[name], rec.plan.kind, rec.plan.for_chunk(i0, i1)).clone())
            else:
                # no gradient path from the image (EdgeNeXt's position encoding: a conv on a tensor built
                # from the input's shape only): weigh its output error uniformly (plain MSE)
                rec.grad.append(torch.ones_like(rec.out[-1]))
    for rec in records.values():
        rec.fold_of = fold_of
        rec.inputs = [[rec.plan.assemble(c, bounds)] for c in rec.inputs]
        rec.out = [rec.plan.assemble(rec.out, bounds)]
        rec.grad = [rec.plan.assemble(rec.grad, bounds)]
    side = {s: extra[s].assemble(v, bounds) for s, v in side_rows.items()}
    return records, tails, side


def _cat(chunks: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat(chunks) if chunks else torch.empty(0)


def searches_output(ann: QuantAnnotation) -> bool:
    """The output quantizer is searched when it sits on the layer's own output; after a ReLU/ReLU6
    it keeps its MinMax range (the search's rows are the layer's pre-activation outputs)."""
    return ann.output is not None and ann.output_after is None


def _fold_stats(per: List[dict]) -> Optional[List[ActStats]]:
    """Stats for fold i = the other folds' images merged; None unless every fold has them."""
    k = len(per) - 1
    folds = [_stats(_merge([per[o] for o in range(k) if o != i])) for i in range(k)]
    return None if any(f is None for f in folds) else folds


def _damped(grad2: torch.Tensor, damping: float) -> torch.Tensor:
    """Squared output gradients with a floor of ``damping`` x their mean.  Mobile-Former's
    dynamic-ReLU coefficients have exactly zero gradient where a branch never wins on the 32
    calibration images; undamped, every clipping candidate then ties at zero error there and the
    search took the smallest scale, which new images punish (W8A8 agreement 65.4 % vs 98.4 % damped, benchmarks/RESULTS.md)."""
    return grad2 + damping * grad2.mean() if damping and grad2.numel() else grad2


def build_problems(prepared: fx.GraphModule, records: Dict[str, LayerRecord], tails, side_rows,
                   params: SearchParams):
    """Turn records into FX-free search problems (see :mod:`qhyvit_fx.search.problem`)."""
    probs = {}
    info = {}
    for name, rec in records.items():
        ann = rec.ann
        plan = rec.plan
        ins = [_cat(c) for c in rec.inputs]
        out = _cat(rec.out)
        grad = _damped(_cat(rec.grad), params.grad_damping)
        stats = []
        for per in rec.stats:
            st = _stats(per[-1])
            k = len(per) - 1
            if k > 1:   # stats for fold i = the other folds' images merged
                st.folds = _fold_stats(per)
            stats.append(st)
        fold_of = getattr(rec, "fold_of", torch.empty(0, dtype=torch.long))
        o_stats = None
        if hasattr(rec, "out_stats"):
            per = rec.out_stats
            o_stats = _stats(per[-1])
            if len(per) - 1 > 1:
                o_stats.folds = _fold_stats(per)
        specs = [ann.inputs[i] for i in sorted(ann.inputs)]
        kinds = [ann.producers.get(i, (None,))[0] for i in sorted(ann.inputs)]
        if ann.kind == "matmul":
            probs[name] = MatmulProblem(ann.layer, ins[0], ins[1], out, grad, stats, specs, input_kinds=kinds)
            continue
        mod = prepared.get_submodule(ann.layer if ann.kind != "matmul" else name)
        w = mod.weight.detach().reshape(mod.weight.shape[0], -1).float()
        groups = getattr(mod, "groups", 1)
        if ann.kind == "conv":
            kk = int(math.prod(mod.kernel_size))
            col_channel = torch.arange(ins[0].shape[1]) // kk
        else:
            col_channel = torch.arange(ins[0].shape[1])
        tail_fn, layer_out = None, None
        obj_out, obj_grad = out, grad
        plan_rows = rec.plan
        t = tails.get(name)
        if t is not None:
            tail, why, bout = t
            if tail is None:
                info[ann.layer] = {"bridge_objective": f"unavailable: {why}"}
            else:
                orec = records[bout]
                tail_fn = tail_callable(tail, [side_rows[s] for s in tail.side])
                layer_out = out
                obj_out = _cat(orec.out)
                obj_grad = _damped(_cat(orec.grad), params.grad_damping)
                info[ann.layer] = {"bridge_objective": f"output of {orec.ann.layer}"}
        probs[name] = WeightedLayerProblem(
            name=ann.layer, patches=ins[0], weight=w,
            bias=None if mod.bias is None else mod.bias.detach().float(),
            out_fp=obj_out, grad2=obj_grad, groups=groups, col_channel=col_channel,
            act_stats=stats[0], w_spec=ann.weight, a_spec=specs[0],
            act_per_channel_ok=ann.input_axes.get(0) is not None or ann.input_migrate,
            act_migrate=ann.input_migrate, tail=tail_fn, layer_out_fp=layer_out,
            row_fold=fold_of[plan_rows.index // plan_rows.per_image] if fold_of.numel() else None,
            o_spec=ann.output if params.search_outputs and searches_output(ann) else None, o_stats=o_stats,
            input_kinds=kinds)
    return probs, info

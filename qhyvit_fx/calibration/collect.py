"""The calibration driver: both passes over the images in chunks, then FX-free search problems."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Tuple

import torch
import torch.fx as fx

from ..passes.annotate import ANNOTATION, QuantAnnotation, searched_layers
from ..search.candidates import shared_zero_point_stats
from ..search.problem import MatmulProblem, WeightedLayerProblem
from .gradients import damped, grad2_chunk
from .interpreters import LayerRecord, RowCollector, output_activation, searches_output
from .rows import plan_for, rows_of
from .stats import FoldedRanges
from .tails import bridge_tails, tail_callable
from ..patterns.kinds import Kind
from ..state import quant_state

if TYPE_CHECKING:
    from ..methods.params import SearchParams


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
    example_batch = int((quant_state(prepared).example_shape or (1,))[0])
    folds = params.cv_folds if params.act_cv and n_src >= 2 * params.cv_folds else 0
    # fold of every image: contiguous blocks of source images, so every fold holds n_src / folds of
    # them and all copies of an image (the validation images must be unseen, not mirrored)
    fold_of = ((torch.arange(n_img) // copies) * folds // n_src) if folds else torch.empty(0, dtype=torch.long)
    records: Dict[str, LayerRecord] = {}
    for n in nodes:
        ann: QuantAnnotation = n.meta[ANNOTATION]
        k = len(ann.inputs)
        records[n.name] = LayerRecord(n.name, ann, plan_for(n, ann.kind, n_img, params, seed, ann.layer, example_batch),
                                      ranges=[FoldedRanges.with_folds(folds) for _ in range(k)],
                                      inputs=[[] for _ in range(k)])
        if params.search_outputs and searches_output(ann):
            found = output_activation(prepared, n)
            if found is not None:
                records[n.name].act, records[n.name].act_fn = found
    # bridges: members get the output's row plan, and tails
    tails, extra = bridge_tails(prepared, records) if params.bridge_objective else ({}, {})
    side_rows: Dict[str, List[torch.Tensor]] = {s: [] for s in extra}
    chunks = range(0, n_img, chunk)
    bounds = [(i0, min(n_img, i0 + chunk)) for i0 in chunks]
    it = chunks
    if progress:
        from tqdm import tqdm
        it = tqdm(chunks, desc="collect", unit="chunk", leave=False)
    wanted = set(records) | {rec.act for rec in records.values() if rec.act is not None}
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
            grads = grad2_chunk(prepared, quantized, x, fp_logits, wanted, params)
        for name, rec in records.items():
            if name in grads:
                rec.grad.append(rows_of(grads[name], rec.plan.layout, rec.plan.for_chunk(i0, i1)).clone())
            else:
                # no gradient path from the image (EdgeNeXt's position encoding: a conv on a tensor built
                # from the input's shape only): weigh its output error uniformly (plain MSE)
                rec.grad.append(torch.ones_like(rec.out[-1]))
            if rec.act is not None:
                g = grads.get(rec.act)
                rec.act_grad.append(rows_of(g, rec.plan.layout, rec.plan.for_chunk(i0, i1)).clone() if g is not None
                                    else torch.ones_like(rec.out[-1]))
    for rec in records.values():
        rec.fold_of = fold_of
        rec.inputs = [[rec.plan.assemble(c, bounds)] for c in rec.inputs]
        rec.out = [rec.plan.assemble(rec.out, bounds)]
        rec.grad = [rec.plan.assemble(rec.grad, bounds)]
        if rec.act is not None:
            rec.act_grad = [rec.plan.assemble(rec.act_grad, bounds)]
    side = {s: extra[s].assemble(v, bounds) for s, v in side_rows.items()}
    return records, tails, side


def _cat(chunks: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat(chunks) if chunks else torch.empty(0)


def build_problems(prepared: fx.GraphModule, records: Dict[str, LayerRecord], tails, side_rows,
                   params: SearchParams):
    """Turn records into FX-free search problems (see :mod:`qhyvit_fx.search.problem`)."""
    probs = {}
    info = {}
    for name, rec in records.items():
        ann = rec.ann
        ins = [_cat(c) for c in rec.inputs]
        out = _cat(rec.out)
        grad = damped(_cat(rec.grad), params.grad_damping)
        stats = [r.stats() for r in rec.ranges]
        fold_of = rec.fold_of if rec.fold_of is not None else torch.empty(0, dtype=torch.long)
        o_stats = rec.out_ranges.stats() if rec.out_ranges is not None else None
        specs = [ann.inputs[i] for i in sorted(ann.inputs)]
        kinds = [ann.producers.get(i, (None,))[0] for i in sorted(ann.inputs)]
        if ann.kind == Kind.MATMUL:
            probs[name] = MatmulProblem(ann.layer, ins[0], ins[1], out, grad, stats, specs, input_kinds=kinds)
            continue
        mod = prepared.get_submodule(ann.layer if ann.kind != Kind.MATMUL else name)
        w = mod.weight.detach().reshape(mod.weight.shape[0], -1).float()
        groups = getattr(mod, "groups", 1)
        if ann.kind == Kind.CONV:
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
                obj_grad = damped(_cat(orec.grad), params.grad_damping)
                info[ann.layer] = {"bridge_objective": f"output of {orec.ann.layer}"}
        # per-channel input codes with one zero point (padded / grouped convs) only where the method
        # takes them: then the channel ranges are aligned to that zero point
        migrate = ann.input_migrate == "channel" or (ann.input_migrate == "scale" and
                                                     params.act_channel_migrate_scales)
        if migrate and ann.input_migrate == "scale":
            stats[0] = shared_zero_point_stats(stats[0], specs[0])
        probs[name] = WeightedLayerProblem(
            name=ann.layer, patches=ins[0], weight=w,
            bias=None if mod.bias is None else mod.bias.detach().float(),
            out_fp=obj_out, grad2=obj_grad, groups=groups, col_channel=col_channel,
            act_stats=stats[0], w_spec=ann.weight, a_spec=specs[0],
            act_per_channel_ok=ann.input_axes.get(0) is not None or migrate or ann.fold_norm is not None,
            act_migrate=migrate or ann.fold_norm is not None, tail=tail_fn, layer_out_fp=layer_out,
            row_fold=fold_of[plan_rows.index // plan_rows.per_image] if fold_of.numel() else None,
            o_spec=ann.output if params.search_outputs and searches_output(ann) else None, o_stats=o_stats,
            o_act=rec.act_fn, o_act_grad2=damped(_cat(rec.act_grad), params.grad_damping) if rec.act else None,
            input_kinds=kinds)
    return probs, info

"""The per-layer search that Q-HyViT, EasyQuant and PTQ4ViT share: MinMax start, one data
collection (rows, ranges, gradient weights; :mod:`qhyvit_fx.calibration`), FX-free problems, and a
*step* per layer, ``step(problem, options) -> LayerResult``, which is all a method brings (its
objective and candidates live in :mod:`qhyvit_fx.search`)."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Tuple

import torch
import torch.fx as fx

from ..calibration import augment_images, build_problems, collect
from ..config import check_device as search_device
from ..decisions import Decisions, LayerDecision
from ..passes.annotate import ANNOTATION, quantized_layers, searched_layers
from ..passes.convert import convert_graph
from ..quantizer import QParams, per_tensor_equivalent
from ..search.problem import SearchOptions
from ..search.shared import SharedPoint, decide_shared
from ..passes.group_quantizers import quant_groups
from .base import Method
from .minmax import MinMax
from .params import SearchParams


def _to(obj, dev):
    """Move the tensors (and QParams) held by a problem or result dataclass to ``dev``."""
    import dataclasses
    from ..quantizer import QParams
    from ..search.problem import ActStats
    if isinstance(obj, torch.Tensor):
        return obj.to(dev)
    if isinstance(obj, QParams):
        return QParams(obj.spec, obj.scale.to(dev), obj.zero_point.to(dev), obj.zp_overflow,
                       None if obj.scale2 is None else obj.scale2.to(dev))
    if isinstance(obj, list):
        return [_to(o, dev) for o in obj]
    if isinstance(obj, ActStats):
        st = ActStats(*(_to(getattr(obj, f), dev) for f in ("lo", "hi", "ch_lo", "ch_hi")))
        st.folds = _to(obj.folds, dev) if obj.folds is not None else None
        return st
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if torch.device(dev).type == "cpu" and not any(isinstance(getattr(obj, f.name), torch.Tensor) and
                                                       getattr(obj, f.name).device.type != "cpu"
                                                       for f in dataclasses.fields(obj)):
            return obj
        return dataclasses.replace(obj, **{f.name: _to(getattr(obj, f.name), dev) for f in dataclasses.fields(obj)
                                           if isinstance(getattr(obj, f.name), (torch.Tensor, QParams, list,
                                                                                ActStats))})
    return obj


def search_options(cfg) -> SearchOptions:
    """The FX-free search's options for a config: every ``SearchOptions`` field that the method's
    params have under the same name is copied (so a new search switch is one params field and one
    options field of that name), plus the candidate grids and the target's limits."""
    p, backend = cfg.method_params, cfg.backend
    same = {f.name: getattr(p, f.name) for f in dataclasses.fields(SearchOptions)
            if hasattr(p, f.name) and not callable(getattr(p, f.name))}
    return SearchOptions(**same, fractions=p.fractions(), channel_fractions=p.channel_fractions(),
                         topk=p.topk_verify, act_migrate=p.act_channel_migrate,
                         weight_asym_ok=backend.asymmetric_weights, act_scheme_search=backend.searchable_act_scheme)


def norm_fold(norm: str, per_channel: QParams, m: torch.Tensor) -> Tuple[QParams, dict]:
    """A searched per-channel input (scales s_c = m_c s_r, zero points z_c) of a layer fed by ``norm``, as one
    per-tensor quantizer (s_r, z_r) and the reparameterisation that makes it compute the same codes: the
    norm's output becomes (y + t) / m with t_c = s_c (z_c - z_r), the layer's weight W * m, exactly the
    weight the search scored (it searched the weight on W * m).  ``shift: quantized``: convert removes
    the shift through the quantized weight, so the layer computes what the search scored."""
    qp, _, t = per_tensor_equivalent(per_channel, per_channel.scale.max())      # r = m (the search's ratios)
    return qp, {"norm": norm, "in_scale": m.clone(), "in_shift": t, "shift": "quantized"}


class SearchMethod(Method):
    """A method made of the shared data collection and one layer step (``step``)."""

    needs_images = True
    params_class = SearchParams
    step: Callable = None       # (problem, SearchOptions) -> LayerResult

    def search(self, p, opts: SearchOptions):
        return self.step(p, opts)

    def finish(self, prepared: fx.GraphModule, layers: dict, init: Decisions) -> dict:
        """All decisions in graph order: the searched layers', and MinMax ranges for the ops that
        full mode quantizes without a search (paper: "unoptimized scaling factors are initialized
        with minimum and maximum values")."""
        names = [n.meta[ANNOTATION].layer for n in quantized_layers(prepared)]
        return {name: layers.get(name) or init.layers[name] for name in names}

    @staticmethod
    def _decision(ann, res, info: dict, init: Decisions, rows: int) -> LayerDecision:
        d = LayerDecision(layer=ann.layer, kind=ann.kind, bridge=ann.bridge,
                          weight=res.weight if ann.weight is not None else None,
                          inputs={i: q for i, q in zip(sorted(ann.inputs), res.inputs)},
                          error={"before": res.error_before, "after": res.error_after},
                          info=dict(info.get(ann.layer, {}), rounds=res.rounds, rows=rows),
                          bias_delta=res.bias_delta, input_migration=res.migration,
                          weight_codes=getattr(res, "weight_codes", None))
        if ann.fold_norm is not None and res.migration is not None:
            d.inputs[0], d.reparam = norm_fold(ann.fold_norm, res.inputs[0], res.migration)
            d.input_migration = None
        if ann.output is not None:
            d.output = getattr(res, "output", None) or init.layers[ann.layer].output
        return d

    def decide(self, prepared: fx.GraphModule, images: Optional[torch.Tensor]) -> Decisions:
        cfg, params = self.config, self.params
        torch.manual_seed(cfg.seed)
        t0 = time.time()
        init = MinMax(cfg).decide(prepared, None)
        quantized = convert_graph(prepared, init)
        images, copies = augment_images(images, params.calib_augment)
        records, tails, side = collect(prepared, quantized, images, params, seed=cfg.seed, chunk=params.calib_batch,
                                       progress=cfg.progress, copies=copies)
        del quantized
        probs, info = build_problems(prepared, records, tails, side, params)
        del records
        t_collect = time.time() - t0
        opts = search_options(cfg)
        layers = {}
        nodes = searched_layers(prepared)
        it = nodes
        if cfg.progress:
            from tqdm import tqdm
            it = tqdm(nodes, desc=f"{self.name} search", unit="layer")
        dev = search_device(cfg.device)
        shared = _SharedGroups(prepared, {n.meta[ANNOTATION].layer for n in nodes})
        for n in it:
            ann = n.meta[ANNOTATION]
            p = _to(probs.pop(n.name), dev)
            if getattr(p, "tail", None) is not None and dev.type != "cpu":
                tail = p.tail           # a CPU GraphModule: run it there
                p.tail = lambda r, idx, t=tail: t(r.cpu(), None if idx is None else idx.cpu()).to(dev)
            with torch.device(dev):
                res = self.search(p, opts)
                resolved = shared.searched(ann, p, res, opts)
            for layer, res in resolved:
                layers[layer] = self._decision(shared.anns[layer], _to(res, "cpu"), info, init, shared.rows[layer])
                layers[layer].info.update(shared.notes.pop(layer, {}))
        layers = self.finish(prepared, layers, init)
        shared.apply(layers)
        meta = {"method": self.name, "seconds_collect": round(t_collect, 2),
                "seconds_total": round(time.time() - t0, 2)}
        return Decisions(layers, meta)


class _SharedGroups:
    """Holds the searched layers that belong to a shared quantizer group until every searched member
    of the group is done, then decides the group on all of their objectives (search/shared.py)."""

    def __init__(self, prepared: fx.GraphModule, searched: set):
        self.anns = {n.meta[ANNOTATION].layer: n.meta[ANNOTATION] for n in quantized_layers(prepared)}
        self.groups = [g for g in quant_groups(prepared) if g.shared]
        self.waiting = {g.name: {layer for layer, _ in g.members if layer in searched} for g in self.groups}
        self.held: dict = {}           # layer -> (problem, result) while a group of it is open
        self.rows: dict = {}
        self.decided: dict = {}        # group name -> QParams
        self.notes: dict = {}          # layer -> decision info about its groups

    def searched(self, ann, p, res, opts) -> list:
        """[(layer, result)] whose decisions are final now (this layer's, and the held members of
        every group this layer closes, refitted to the group's quantizer)."""
        self.rows[ann.layer] = p.rows
        mine = [g for g in self.groups if ann.layer in self.waiting[g.name]]
        if not mine:
            return [(ann.layer, res)]
        self.held[ann.layer] = (p, res)
        for g in mine:
            self.waiting[g.name].discard(ann.layer)
            if self.waiting[g.name]:
                continue
            pts = [(layer, slot) for layer, slot in g.members if layer in self.held]
            caps = [self.anns[l].output_max for l, s in g.members if s == "out" and self.anns[l].output_max]
            got = decide_shared([SharedPoint(*self.held[l], s) for l, s in pts], g.spec, opts,
                                max_value=min(caps) if caps else None)
            if got is None:
                continue
            qp, err, results = got
            self.decided[g.name] = _to(qp, "cpu")
            for (layer, slot), r in zip(pts, results):
                self.notes.setdefault(layer, {}).update({f"{slot}_group": g.name, f"{slot}_group_error": err})
                self.held[layer] = (self.held[layer][0], r)
        out = []
        for layer in list(self.held):
            if not any(self.waiting[g.name] and any(m[0] == layer for m in g.members) for g in self.groups):
                out.append((layer, self.held.pop(layer)[1]))
        return out

    def apply(self, layers: dict) -> None:
        """Members that no search covered (full-mode ops, MinMax-decided) take the group's quantizer."""
        for g in self.groups:
            qp = self.decided.get(g.name)
            if qp is None:
                continue
            for layer, slot in g.members:
                d = layers[layer]
                if slot == "out":
                    d.output = qp
                else:
                    d.inputs[int(slot[2:])] = qp

"""Q-HyViT: hybrid reconstruction search of scale, granularity and scheme."""
from __future__ import annotations

import time
from typing import Optional

import torch
import torch.fx as fx

from ..calibration import augment_images, build_problems, collect
from ..config import check_device as search_device
from ..decisions import Decisions, LayerDecision
from ..passes.annotate import ANNOTATION, quantized_layers, searched_layers
from ..passes.convert import convert_graph
from ..quantizer import candidate_fractions
from ..search.hybrid import search_matmul, search_weighted
from ..search.problem import MatmulProblem, SearchOptions
from .base import Method, register_method
from .minmax import MinMax


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


def channel_fractions(cfg) -> Optional[torch.Tensor]:
    """Fractions above beta, 0.1 apart, up to act_channel_beta (None when it equals beta)."""
    n = int(round((cfg.act_channel_beta - cfg.beta) / 0.1))
    if n < 1:
        return None
    return torch.tensor([cfg.beta + 0.1 * i for i in range(1, n + 1)], dtype=torch.float32)


def search_options(cfg) -> SearchOptions:
    return SearchOptions(channel_fractions=channel_fractions(cfg),
        rounds=cfg.rounds, round_tol=cfg.round_tol, fractions=candidate_fractions(cfg.n_candidates, cfg.alpha, cfg.beta),
        search_scale=cfg.search_scale, search_granularity=cfg.search_granularity, search_scheme=cfg.search_scheme,
        weight_asym_ok=cfg.target != "ort", act_scheme_search=cfg.target != "ort", topk=cfg.topk_verify, exhaustive=cfg.exhaustive,
        act_cv=cfg.act_cv, act_migrate=cfg.act_channel_migrate, coarse_rows=cfg.coarse_rows, bias_correction=cfg.bias_correction)


@register_method
class QHyViT(Method):
    """Paper Algorithm 1.  Gradients come from a MinMax-quantized copy of the
    graph (KL to the float predictions), inputs and outputs from the float
    graph ("parallel" reconstruction: every layer sees float inputs)."""

    name = "qhyvit"
    needs_images = True

    def search(self, p, opts: SearchOptions):
        """One layer's problem -> LayerResult (the only step other search-based methods replace)."""
        return search_matmul(p, opts) if isinstance(p, MatmulProblem) else search_weighted(p, opts)

    def finish(self, prepared: fx.GraphModule, layers: dict, init: Decisions) -> dict:
        """All decisions in graph order: the searched layers', and MinMax ranges for the ops that
        full mode quantizes without a search (paper: "unoptimized scaling factors are initialized
        with minimum and maximum values")."""
        names = [n.meta[ANNOTATION].layer for n in quantized_layers(prepared)]
        return {name: layers.get(name) or init.layers[name] for name in names}

    def decide(self, prepared: fx.GraphModule, images: Optional[torch.Tensor]) -> Decisions:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        t0 = time.time()
        init = MinMax(cfg).decide(prepared, None)
        quantized = convert_graph(prepared, init)
        images, copies = augment_images(images, cfg.calib_augment)
        records, tails, side = collect(prepared, quantized, images, cfg, chunk=cfg.calib_batch,
                                       progress=cfg.progress, copies=copies)
        del quantized
        probs, info = build_problems(prepared, records, tails, side, cfg)
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
        for n in it:
            ann = n.meta[ANNOTATION]
            p = _to(probs.pop(n.name), dev)
            if getattr(p, "tail", None) is not None and dev.type != "cpu":
                tail = p.tail           # a CPU GraphModule: run it there
                p.tail = lambda r, idx, t=tail: t(r.cpu(), None if idx is None else idx.cpu()).to(dev)
            with torch.device(dev):
                res = self.search(p, opts)
            res = _to(res, "cpu")
            d = LayerDecision(layer=ann.layer, kind=ann.kind, bridge=ann.bridge,
                              weight=res.weight if ann.weight is not None else None,
                              inputs={i: q for i, q in zip(sorted(ann.inputs), res.inputs)},
                              error={"before": res.error_before, "after": res.error_after},
                              info=dict(info.get(ann.layer, {}), rounds=res.rounds, rows=p.rows),
                              bias_delta=res.bias_delta, input_migration=res.migration)
            if ann.output is not None:
                d.output = getattr(res, "output", None) or init.layers[ann.layer].output
            layers[ann.layer] = d
        layers = self.finish(prepared, layers, init)
        meta = {"method": self.name, "seconds_collect": round(t_collect, 2),
                "seconds_total": round(time.time() - t0, 2),
                "search": {"rounds": cfg.rounds, "candidates": cfg.n_candidates + 1, "alpha": cfg.alpha,
                           "beta": cfg.beta, "act_channel_beta": cfg.act_channel_beta, "granularity": cfg.search_granularity, "scheme": cfg.search_scheme,
                           "scale": cfg.search_scale, "bridge_objective": cfg.bridge_objective,
                           "grad_damping": cfg.grad_damping, "act_channel_migrate": cfg.act_channel_migrate, "calib_augment": cfg.calib_augment,
                           "max_positions": cfg.max_positions, "exhaustive": cfg.exhaustive}}
        return Decisions(layers, meta)

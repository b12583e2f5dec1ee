"""Q-HyViT: hybrid reconstruction search of scale, granularity and scheme."""
from __future__ import annotations

import time
from typing import Optional

import torch
import torch.fx as fx

from ..calibration import build_problems, collect
from ..decisions import Decisions, LayerDecision
from ..passes.annotate import ANNOTATION, quantized_layers
from ..passes.convert import convert_graph
from ..quantizer import candidate_fractions
from ..search.hybrid import search_matmul, search_weighted
from ..search.problem import MatmulProblem, SearchOptions
from .base import Method, register_method
from .minmax import MinMax


def search_options(cfg) -> SearchOptions:
    return SearchOptions(
        rounds=cfg.rounds, round_tol=cfg.round_tol, fractions=candidate_fractions(cfg.n_candidates, cfg.alpha, cfg.beta),
        search_scale=cfg.search_scale, search_granularity=cfg.search_granularity, search_scheme=cfg.search_scheme,
        weight_asym_ok=cfg.target != "ort", act_scheme_search=cfg.target != "ort", topk=cfg.topk_verify, exhaustive=cfg.exhaustive,
        act_cv=cfg.act_cv, coarse_rows=cfg.coarse_rows, bias_correction=cfg.bias_correction)


@register_method
class QHyViT(Method):
    """Paper Algorithm 1.  Gradients come from a MinMax-quantized copy of the
    graph (KL to the float predictions), inputs and outputs from the float
    graph ("parallel" reconstruction: every layer sees float inputs)."""

    name = "qhyvit"
    needs_images = True

    def decide(self, prepared: fx.GraphModule, images: Optional[torch.Tensor]) -> Decisions:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        t0 = time.time()
        init = MinMax(cfg).decide(prepared, None)
        quantized = convert_graph(prepared, init)
        records, tails, side = collect(prepared, quantized, images, cfg, chunk=cfg.calib_batch,
                                       progress=cfg.progress)
        del quantized
        probs, info = build_problems(prepared, records, tails, side, cfg)
        del records
        t_collect = time.time() - t0
        opts = search_options(cfg)
        layers = {}
        nodes = quantized_layers(prepared)
        it = nodes
        if cfg.progress:
            from tqdm import tqdm
            it = tqdm(nodes, desc="Q-HyViT search", unit="layer")
        for n in it:
            ann = n.meta[ANNOTATION]
            p = probs.pop(n.name)
            res = search_matmul(p, opts) if isinstance(p, MatmulProblem) else search_weighted(p, opts)
            d = LayerDecision(layer=ann.layer, kind=ann.kind, bridge=ann.bridge,
                              weight=res.weight if ann.weight is not None else None,
                              inputs={i: q for i, q in zip(sorted(ann.inputs), res.inputs)},
                              error={"before": res.error_before, "after": res.error_after},
                              info=dict(info.get(ann.layer, {}), rounds=res.rounds, rows=p.rows),
                              bias_delta=res.bias_delta)
            if ann.output is not None:
                d.output = getattr(res, "output", None) or init.layers[ann.layer].output
            layers[ann.layer] = d
        meta = {"method": self.name, "seconds_collect": round(t_collect, 2),
                "seconds_total": round(time.time() - t0, 2),
                "search": {"rounds": cfg.rounds, "candidates": cfg.n_candidates + 1, "alpha": cfg.alpha,
                           "beta": cfg.beta, "granularity": cfg.search_granularity, "scheme": cfg.search_scheme,
                           "scale": cfg.search_scale, "bridge_objective": cfg.bridge_objective,
                           "max_positions": cfg.max_positions, "exhaustive": cfg.exhaustive}}
        return Decisions(layers, meta)

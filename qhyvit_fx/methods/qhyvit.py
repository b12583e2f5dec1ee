"""Q-HyViT: hybrid reconstruction search of scale, granularity and scheme."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.fx as fx

from ..calibration import augment_images, build_problems, collect
from ..config import check_device as search_device
from ..decisions import Decisions, LayerDecision
from ..passes.annotate import ANNOTATION, quantized_layers, searched_layers
from ..passes.convert import convert_graph
from ..search.hybrid import search_matmul, search_weighted
from ..search.problem import MatmulProblem, SearchOptions
from .base import Method, register_method
from .minmax import MinMax
from .params import CALIB_AUGMENTS, SearchParams, param


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


@dataclass
class QHyViTParams(SearchParams):
    """Q-HyViT's search (paper Algorithm 1) and the additions measured in benchmarks/RESULTS.md."""

    act_channel_beta: float = param(3.0,
        "per-channel activation candidates go on, in steps of 0.1, up to this multiple of the calibration "
        "ranges (1.2 = beta, the paper's grid): ranges of 32 images underestimate what new images produce")
    search_scale: bool = param(True, "search the scale (off: MinMax scales)")
    search_granularity: bool = param(True, "search per-tensor vs per-channel")
    search_scheme: bool = param(True, "search symmetric vs asymmetric")
    search_outputs: bool = param(False,
        "search output quantizers (target ort) with the layer objective; off: MinMax ranges (on held-out "
        "training images at W8A8 searched ones raised KL by about 50 % on both MobileViTs)")
    act_channel_migrate: bool = param(True,
        "target ort, partial/full mode: per-channel input ranges stay a choice on linears and unpadded "
        "ungrouped convs, deployed as per-channel codes read with one scale, the ratios moved into the weights")
    bridge_objective: bool = param(True,
        "bridge-block members are scored at the bridge output (paper); off: at their own output")
    act_cv: bool = param(True, "score activation candidates by K-fold validation over images")
    cv_folds: int = param(4, "folds of the activation validation")
    calib_augment: str = param("none",
        "flip: the search also sees every calibration image mirrored left-right (twice the activation "
        "samples; +50 % calibration time, mixed on held-out data)", choices=CALIB_AUGMENTS)
    bias_correction: bool = param(False,
        "remove each conv/linear's mean quantization shift (decisions: bias_delta)")


def search_options(cfg) -> SearchOptions:
    """The FX-free search's options for a config (its method's params and the target's limits)."""
    p, backend = cfg.method_params, cfg.backend
    return SearchOptions(channel_fractions=p.channel_fractions(),
        rounds=p.rounds, round_tol=p.round_tol, fractions=p.fractions(),
        search_scale=p.search_scale, search_granularity=p.search_granularity, search_scheme=p.search_scheme,
        weight_asym_ok=backend.asymmetric_weights, act_scheme_search=backend.searchable_act_scheme, topk=p.topk_verify,
        exhaustive=p.exhaustive, act_cv=p.act_cv, act_migrate=p.act_channel_migrate, coarse_rows=p.coarse_rows,
        bias_correction=p.bias_correction)


@register_method
class QHyViT(Method):
    """Paper Algorithm 1.  Gradients come from a MinMax-quantized copy of the
    graph (KL to the float predictions), inputs and outputs from the float
    graph ("parallel" reconstruction: every layer sees float inputs)."""

    name = "qhyvit"
    needs_images = True
    params_class = QHyViTParams

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
                "seconds_total": round(time.time() - t0, 2)}
        return Decisions(layers, meta)

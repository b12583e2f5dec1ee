"""PTQ4ViT baseline: twin-uniform quantization and a Hessian-guided scale search."""
from __future__ import annotations

from dataclasses import dataclass

from ..search.hybrid import LayerResult, hybrid_step
from ..search.nonuniform import input_role, objective, refine_input, twin_candidates
from ..search.problem import MatmulProblem
from .base import register_method
from .params import SearchParams
from .search_method import SearchMethod


@dataclass
class PTQ4ViTParams(SearchParams):
    """Scale only (granularity and scheme as annotated), Hessian-guided objective on the layer's own output."""


@register_method
class PTQ4ViT(SearchMethod):
    """Yuan et al., "PTQ4ViT: Post-training quantization for vision transformers with twin uniform
    quantization" (ECCV 2022), as set up in the Q-HyViT paper (alpha = 0, beta = 1.2, parallel
    quantization: every layer sees float inputs).

    * Scale only: the annotated granularity and scheme are kept (per-channel symmetric weights,
      per-tensor asymmetric activations); the weight and input scales are searched alternately with
      the Hessian-guided objective sum (dL/dO)^2 (O_q - O_fp)^2 on the layer's own output.
    * Twin-uniform inputs: a layer input that comes straight from a softmax, or from a GELU (and, in
      these hybrids, SiLU / Hardswish), is quantized with two (bits-1)-bit ranges whose scales differ
      by a power of two; the free scale is chosen with the same objective.
    """

    name = "ptq4vit"
    params_class = PTQ4ViTParams

    @staticmethod
    def step(p, opts) -> LayerResult:
        """Q-HyViT's step without its switches (scale only), then twin-uniform inputs."""
        res = hybrid_step(p, opts)
        weight = None if isinstance(p, MatmulProblem) else res.weight
        stats = p.stats if isinstance(p, MatmulProblem) else [p.act_stats]
        inputs = list(res.inputs)
        for i, producer in enumerate(p.input_kinds or []):
            role = input_role(producer)
            if role is None or not inputs[i].spec.uniform:
                continue
            cands = twin_candidates(role, inputs[i].spec.bits, stats[i], opts.fractions)
            inputs[i], _ = refine_input(p, i, inputs, weight, cands)
            res.info[f"input_{i}_twin"] = role
        if any(k.endswith("_twin") for k in res.info):
            res.inputs = inputs
            res.error_after = objective(p, inputs, weight)
        return res

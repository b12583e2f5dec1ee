"""FQ-ViT baseline: Power-of-Two Factor for norm inputs and Log-Int-Softmax."""
from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from ..decisions import Decisions
from ..passes.annotate import quantized_layers
from ..patterns.kinds import Kind
from ..quantizer import QParams, ptf_params
from ..search.nonuniform import input_role, log_params
from ..search.problem import ActStats
from .base import register_method
from .minmax import MinMax, observed_inputs

PTF_FACTORS = 3          # FQ-ViT's K: channel scales s * 2^a, a in 0..K


@register_method
class FQViT(MinMax):
    """Lin et al., "FQ-ViT: Post-training quantization for fully quantized vision transformer"
    (IJCAI 2022), on MinMax ranges (per-channel symmetric weights, per-tensor asymmetric
    activations, as the Q-HyViT paper sets it up).

    * Full mode: the input of every LayerNorm / GroupNorm gets Power-of-Two-Factor quantization
      (per-channel scales ``s * 2^a_c`` around one zero point, :func:`~qhyvit_fx.quantizer.ptf_params`).
    * Softmax outputs (the attention matrix entering the next matmul) get the log2 quantizer
      (``a_bits`` codes) of its Log-Int-Softmax.
    """

    name = "fq-vit"

    def decide(self, prepared: fx.GraphModule, images: Optional[torch.Tensor]) -> Decisions:
        dec = super().decide(prepared, images)
        dec.meta["method"] = self.name
        for node, ann, d, i, producer, _, obs in observed_inputs(prepared, dec, quantized_layers(prepared)):
            if ann.kind == Kind.NORM and ann.input_axes.get(i) is not None and obs.ch_min.numel():
                qp = ptf_params(obs.min_val, obs.max_val, obs.ch_min, obs.ch_max, ann.inputs[i].bits, PTF_FACTORS)
                d.inputs[i] = QParams(qp.spec.with_(axis=ann.input_axes[i]), qp.scale, qp.zero_point, qp.zp_overflow)
                d.info[f"input_{i}"] = "power-of-two factor"
            elif input_role(producer) == "softmax":
                d.inputs[i] = log_params("log2", ann.inputs[i].bits, ActStats(obs.min_val, obs.max_val))
                d.info[f"input_{i}"] = "log2 (log-int-softmax)"
        return dec

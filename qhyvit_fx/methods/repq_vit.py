"""RepQ-ViT baseline: scale reparameterisation of post-norm activations and log-sqrt2 softmax."""
from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn

from ..decisions import Decisions
from ..passes.annotate import ANNOTATION, searched_layers
from ..patterns.kinds import metadata_read, norm_owner
from ..quantizer import params_from_range, per_tensor_equivalent
from ..search.nonuniform import input_role, log_params
from ..search.problem import ActStats
from .base import register_method
from .minmax import MinMax, observed_inputs, weight_minmax


def reparam_params(ch_lo: torch.Tensor, ch_hi: torch.Tensor, spec) -> tuple:
    """RepQ-ViT's per-channel -> per-tensor reparameterisation (FX-free).

    Per-channel asymmetric params (s_c, z_c) of the input become one per-tensor quantizer
    (mean s, round(mean z)); the norm's output is rescaled per channel by r = s_c / s and shifted
    by t = s_c (z_c - z), which makes the per-tensor quantizer of the new input compute exactly the
    per-channel quantization of the old one.  Returns (per-tensor QParams, r, t)."""
    pc = params_from_range(ch_lo, ch_hi, spec.with_(per_channel=True, axis=0))
    return per_tensor_equivalent(pc, pc.scale.mean())


@register_method
class RepQViT(MinMax):
    """Li et al., "RepQ-ViT: Scale reparameterization for post-training quantization of vision
    transformers" (ICCV 2023), on MinMax ranges.

    * A linear or 1x1 conv fed only by an affine LayerNorm / GroupNorm gets its input quantized
      per channel, then reparameterised to per-tensor (scales into the norm's affine and the
      layer's weight, see :func:`reparam_params`); the layer's per-channel weight range is taken
      after the rescaling.  Needs per-channel input statistics (``target='fakequant'``).
    * Softmax outputs get the log-sqrt2 quantizer (``a_bits`` codes).
    """

    name = "repq-vit"

    def decide(self, prepared: fx.GraphModule, images: Optional[torch.Tensor]) -> Decisions:
        dec = super().decide(prepared, images)
        dec.meta["method"] = self.name
        for node, ann, d, i, producer, src, obs in observed_inputs(prepared, dec, searched_layers(prepared)):
            if input_role(producer) == "softmax":
                d.inputs[i] = log_params("logsqrt2", ann.inputs[i].bits, ActStats(obs.min_val, obs.max_val))
                d.info[f"input_{i}"] = "log-sqrt2 (post-softmax)"
            elif i == 0 and producer in ("layernorm", "groupnorm"):
                d.info["reparam"] = self._reparameterise(prepared, node, src, obs, d)
        return dec

    @staticmethod
    def _reparameterise(prepared: fx.GraphModule, node: fx.Node, src: str, obs, d) -> str:
        ann = node.meta[ANNOTATION]
        norm_node = next(n for n in prepared.graph.nodes if n.name == src)
        mod = prepared.get_submodule(node.target)
        owner = norm_owner(norm_node)
        norm = prepared.get_submodule(owner) if owner is not None else None
        if norm is None or getattr(norm, "weight", None) is None:
            return "not applied: the norm has no affine parameters"
        if isinstance(mod, nn.Conv2d) and (mod.groups != 1 or tuple(mod.kernel_size) != (1, 1)):
            return "not applied: only linears and ungrouped 1x1 convs are reparameterised"
        users = [u for u in norm_node.users if metadata_read(u) is None]    # x.shape reads do not count
        if len(users) != 1 or users[0].target != ann.observers["in0"]:
            return "not applied: the norm output has other users"
        if obs.ch_min.numel() != mod.weight.shape[1]:
            return "not applied: no per-channel input statistics (target 'ort')"
        qp, r, t = reparam_params(obs.ch_min, obs.ch_max, ann.inputs[0])
        d.inputs[0] = qp
        w = mod.weight.detach() * r.reshape((1, -1) + (1,) * (mod.weight.dim() - 2))
        d.weight = weight_minmax(w, ann.weight)
        d.reparam = {"norm": owner, "in_scale": r, "in_shift": t}
        return f"applied: scales of {owner} (r in {float(r.min()):.3g}..{float(r.max()):.3g})"

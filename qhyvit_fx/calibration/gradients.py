"""Weights of the layer objective: squared output gradients (the Hessian diagonal estimate)."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from .interpreters import GradCollector


def grad2_chunk(prepared, quantized, x, fp_logits, wanted, params) -> Dict[str, torch.Tensor]:
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


def damped(grad2: torch.Tensor, damping: float) -> torch.Tensor:
    """Squared output gradients with a floor of ``damping`` x their mean.  Mobile-Former's
    dynamic-ReLU coefficients have exactly zero gradient where a branch never wins on the 32
    calibration images; undamped, every clipping candidate then ties at zero error there and the
    search took the smallest scale, which new images punish (W8A8 agreement 65.4 % vs 98.4 % damped, benchmarks/RESULTS.md)."""
    return grad2 + damping * grad2.mean() if damping and grad2.numel() else grad2

"""Accuracy of float and quantized models on labelled images, side by side."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional

import torch
import torch.nn.functional as F


@dataclass
class Metrics:
    name: str
    n: int = 0
    correct: int = 0
    agree: int = 0                 # top-1 equal to the reference's
    kl_sum: float = 0.0            # sum over images of KL(p_ref || p)
    sig: float = 0.0               # sum ref logits^2
    noise: float = 0.0             # sum (logits - ref)^2
    max_abs: float = 0.0

    @property
    def top1(self) -> float:
        return 100.0 * self.correct / max(self.n, 1)

    @property
    def agreement(self) -> float:
        return 100.0 * self.agree / max(self.n, 1)

    @property
    def kl(self) -> float:
        return self.kl_sum / max(self.n, 1)

    @property
    def sqnr_db(self) -> float:
        return float("inf") if self.noise == 0 else 10.0 * math.log10(self.sig / self.noise)

    def update(self, logits: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor,
               ref_top: Optional[torch.Tensor] = None, ref_logp: Optional[torch.Tensor] = None) -> "Metrics":
        """Add a batch: ``logits`` of this model, ``ref`` of the reference, true ``labels``."""
        ref_top = ref.argmax(1) if ref_top is None else ref_top
        ref_logp = F.log_softmax(ref, 1) if ref_logp is None else ref_logp
        self.n += logits.shape[0]
        self.correct += int((logits.argmax(1) == labels).sum())
        self.agree += int((logits.argmax(1) == ref_top).sum())
        self.kl_sum += float(F.kl_div(F.log_softmax(logits, 1), ref_logp, log_target=True, reduction="sum"))
        self.sig += float((ref ** 2).sum())
        self.noise += float(((logits - ref) ** 2).sum())
        self.max_abs = max(self.max_abs, float((logits - ref).abs().max()))
        return self

    def to_dict(self) -> dict:
        return {"name": self.name, "images": self.n, "top1": round(self.top1, 3),
                "agreement": round(self.agreement, 3), "kl": self.kl, "sqnr_db": self.sqnr_db,
                "max_abs_logit_diff": self.max_abs}


def compare(models: Dict[str, Callable[[torch.Tensor], torch.Tensor]], batches: Iterable, reference: str,
            progress: bool = False, total: Optional[int] = None) -> Dict[str, Metrics]:
    """Run every model on the same (x, y) batches; agreement/KL/SQNR relative to ``reference``."""
    res = {k: Metrics(k) for k in models}
    it = batches
    if progress:
        from tqdm import tqdm
        it = tqdm(batches, desc="evaluate", unit="batch", total=total)
    with torch.no_grad():
        for x, y in it:
            outs = {k: m(x).float() for k, m in models.items()}
            ref = outs[reference]
            ref_top = ref.argmax(1)
            ref_logp = F.log_softmax(ref, 1)
            for k, o in outs.items():
                res[k].update(o, ref, y, ref_top, ref_logp)
    return res

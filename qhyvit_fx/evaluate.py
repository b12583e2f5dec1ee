"""Accuracy of float and quantized models on labelled images, side by side."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
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
                r = res[k]
                r.n += x.shape[0]
                r.correct += int((o.argmax(1) == y).sum())
                r.agree += int((o.argmax(1) == ref_top).sum())
                r.kl_sum += float(F.kl_div(F.log_softmax(o, 1), ref_logp, log_target=True, reduction="sum"))
                r.sig += float((ref ** 2).sum())
                r.noise += float(((o - ref) ** 2).sum())
                r.max_abs = max(r.max_abs, float((o - ref).abs().max()))
    return res

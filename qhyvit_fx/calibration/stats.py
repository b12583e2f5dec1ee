"""Activation range statistics, over all calibration images and per validation fold."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ..search.problem import ActStats


def _update(cur, new, fn):
    return new if cur is None else fn(cur, new)


@dataclass
class RangeAccumulator:
    """Running min / max of a tensor (and per channel along an axis)."""

    lo: Optional[torch.Tensor] = None
    hi: Optional[torch.Tensor] = None
    ch_lo: Optional[torch.Tensor] = None
    ch_hi: Optional[torch.Tensor] = None

    def add(self, x: torch.Tensor, axis: Optional[int]) -> None:
        self.lo = _update(self.lo, x.min(), torch.minimum)
        self.hi = _update(self.hi, x.max(), torch.maximum)
        if axis is not None:
            xt = x.movedim(axis, 0).reshape(x.shape[axis], -1)
            self.ch_lo = _update(self.ch_lo, xt.min(1).values, torch.minimum)
            self.ch_hi = _update(self.ch_hi, xt.max(1).values, torch.maximum)

    @classmethod
    def merged(cls, accs: List["RangeAccumulator"]) -> "RangeAccumulator":
        out = cls()
        for a in accs:
            for key, fn in (("lo", torch.minimum), ("hi", torch.maximum), ("ch_lo", torch.minimum),
                            ("ch_hi", torch.maximum)):
                if getattr(a, key) is not None:
                    setattr(out, key, _update(getattr(out, key), getattr(a, key), fn))
        return out

    def stats(self) -> Optional[ActStats]:
        if self.lo is None:
            return None
        return ActStats(self.lo, self.hi, self.ch_lo, self.ch_hi)


@dataclass
class FoldedRanges:
    """Ranges over all images, and over each validation fold's images (no folds: an empty list)."""

    folds: List[RangeAccumulator]
    all: RangeAccumulator = field(default_factory=RangeAccumulator)

    @classmethod
    def with_folds(cls, n: int) -> "FoldedRanges":
        return cls([RangeAccumulator() for _ in range(n)])

    def add(self, x: torch.Tensor, axis: Optional[int], fold_ids: Optional[torch.Tensor]) -> None:
        """``fold_ids``: the fold of every entry along dim 0 of ``x`` (None: all images only)."""
        self.all.add(x, axis)
        if fold_ids is not None:
            for k in fold_ids.unique().tolist():
                self.folds[k].add(x[fold_ids == k], axis)

    def stats(self) -> Optional[ActStats]:
        """Stats of all images; with two folds or more, ``.folds[i]``: the other folds' images merged
        (None unless every fold has them)."""
        st = self.all.stats()
        k = len(self.folds)
        if k > 1:
            folds = [RangeAccumulator.merged([self.folds[o] for o in range(k) if o != i]).stats() for i in range(k)]
            st.folds = None if any(f is None for f in folds) else folds
        return st

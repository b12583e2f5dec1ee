"""Row plans: which rows of a layer's output the search samples, seeded per layer, global over the
calibration images and identical whether the images are processed in one batch or in chunks."""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Tuple

import torch
import torch.fx as fx

from ..patterns.kinds import Kind
from ..patterns.kinds import shape as node_shape

if TYPE_CHECKING:
    from ..methods.params import SearchParams


@dataclass
class RowPlan:
    """Which rows of a layer's output are sampled (global over all images)."""

    layout: str                    # 'nchw' | 'tokens' | 'matrices'
    per_image: int                 # rows (or matrices) per image
    index: torch.Tensor            # sorted global indices

    def _mask(self, i0: int, i1: int) -> torch.Tensor:
        return (self.index >= i0 * self.per_image) & (self.index < i1 * self.per_image)

    def for_chunk(self, i0: int, i1: int) -> torch.Tensor:
        """Chunk-local indices of the sampled rows of images [i0, i1), in plan order."""
        return self.index[self._mask(i0, i1)] - i0 * self.per_image

    def assemble(self, chunks: List[torch.Tensor], bounds: List[Tuple[int, int]]) -> torch.Tensor:
        """Rows gathered chunk by chunk -> rows in plan order (a random order, so
        any prefix is a uniform random subset)."""
        rows = torch.cat(chunks)
        pos = torch.cat([self._mask(a, b).nonzero().squeeze(1) for a, b in bounds])
        out = torch.empty_like(rows)
        out[pos] = rows
        return out


def _plan(layout: str, per_image: int, images: int, limit: int, seed: int, name: str) -> RowPlan:
    total = per_image * images
    if total <= limit:
        idx = torch.arange(total)
    else:
        g = torch.Generator().manual_seed((seed * 1000003 + zlib.crc32(name.encode())) & 0x7FFFFFFF)
        idx = torch.randperm(total, generator=g)[:limit]
    return RowPlan(layout, per_image, idx)


def rows_of(t: torch.Tensor, layout: str, idx: torch.Tensor) -> torch.Tensor:
    """Select rows ``idx`` (local to this chunk) of an output-shaped tensor."""
    if layout == "nchw":
        n, c = t.shape[:2]
        return t.reshape(n, c, -1).permute(0, 2, 1).reshape(-1, c)[idx]
    if layout == "tokens":
        return t.reshape(-1, t.shape[-1])[idx]
    return t.reshape((-1,) + tuple(t.shape[-2:]))[idx]


def plan_for(n: fx.Node, kind: Kind, images: int, params: SearchParams, seed: int, name: str,
              example_batch: int) -> RowPlan:
    # shapes were recorded on the example input: everything but the channel axis, divided by
    # the example's batch, is "per image" (dim 0 can hold several entries per image, e.g.
    # MobileViT's batch * patch area)
    shape = node_shape(n)
    if kind == Kind.CONV:
        per = int(shape[0] * math.prod(shape[2:])) // example_batch
        return _plan("nchw", per, images, params.max_positions, seed, name)
    if kind == Kind.LINEAR:
        per = int(math.prod(shape[:-1])) // example_batch
        return _plan("tokens", per, images, params.max_positions, seed, name)
    per = int(math.prod(shape[:-2])) // example_batch
    rows_per_mat = shape[-2]
    limit = max(1, params.max_positions // max(1, rows_per_mat))
    return _plan("matrices", per, images, limit, seed, name)

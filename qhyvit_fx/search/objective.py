"""The layer objective every Q-HyViT search step scores (paper eq. 6), FX-free."""
from __future__ import annotations

import torch


def weighted_error(o: torch.Tensor, ref: torch.Tensor, g2: torch.Tensor, dims=None) -> torch.Tensor:
    """sum over ``dims`` (None: all) of g^2 (O_q - O)^2: the quantized output ``o`` (candidates stacked in
    leading dimensions) against the float reference ``ref``, weighted by the squared output gradients ``g2``."""
    d = o - ref
    e = d.mul_(d).mul_(g2)
    return e.sum() if dims is None else e.sum(dims)

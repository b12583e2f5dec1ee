"""Weight rounding against the layer objective (GPTQ-style), FX-free.

Round-to-nearest picks each weight code alone.  Here the codes of one output channel are chosen one
input column at a time and the rounding error of each column is compensated on the columns not yet
rounded, through the inverse of the (gradient-weighted) input Gram matrix

    H = sum_s r_s x_s x_s^T,   r_s = mean over the objective's channels of g^2 at row s,

which is the objective's second derivative in the weights (paper eq. 6, with one row weight instead of
one per output channel so that every channel of a group shares H).  ``x`` are the layer's *quantized*
input rows, as the deployed kernel sees them.  Scale and zero point stay the searched ones; only the
codes change, and they are kept only where the exact objective on every sampled row is lower than
with round-to-nearest.  Groups (grouped / depthwise convs) each have their own H, batched.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..quantizer import QParams

ROUNDINGS = ("nearest", "gptq")


def gram(xq: torch.Tensor, row_weight: torch.Tensor, groups: int) -> torch.Tensor:
    """H [groups, Kg, Kg] from input rows xq [S, K] (K = groups * Kg) and row weights [S]."""
    S, K = xq.shape
    xg = xq.reshape(S, groups, K // groups).permute(1, 0, 2)                 # [G, S, Kg]
    return (xg * row_weight[None, :, None]).transpose(1, 2) @ xg


def gptq_codes(w: torch.Tensor, qp: QParams, H: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Integer codes [C, Kg] for weight w [C, Kg] (C = groups * Cg) with the scales / zero points of
    ``qp`` (per output channel or per tensor), error-compensated through H [groups, Kg, Kg]."""
    G, Kg, _ = H.shape
    C = w.shape[0]
    s = qp.scale.reshape(-1).float().expand(C) if qp.scale.numel() == 1 else qp.scale.float()
    z = qp.zero_point.reshape(-1).float().expand(C) if qp.zero_point.numel() == 1 else qp.zero_point.float()
    lo, hi = qp.spec.qmin, qp.spec.qmax
    W = w.float().clone().reshape(G, C // G, Kg)
    s, z = s.reshape(G, C // G), z.reshape(G, C // G)
    eye = torch.eye(Kg, dtype=H.dtype)
    diag = H.diagonal(dim1=-2, dim2=-1)
    dead = diag <= 0                                         # inputs that never vary: any code is free
    Hd = H + torch.diag_embed(dead.to(H.dtype)) + damp * diag.mean(-1, keepdim=True)[..., None] * eye
    L = torch.linalg.cholesky(Hd)
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)        # Hinv = U^T U
    codes = torch.empty_like(W)
    for k in range(Kg):
        col = W[:, :, k]
        q = torch.clamp(torch.round(col / s) + z, lo, hi)
        codes[:, :, k] = q
        err = (col - (q - z) * s) / U[:, k, k][:, None]                      # [G, Cg]
        if k + 1 < Kg:
            W[:, :, k + 1:] -= err[:, :, None] * U[:, k, k + 1:][:, None, :]
    return codes.reshape(C, Kg).to(torch.int8)


def dequantize(codes: torch.Tensor, qp: QParams) -> torch.Tensor:
    s = qp.scale.float().reshape(-1, 1) if qp.scale.numel() > 1 else qp.scale.float()
    z = qp.zero_point.float().reshape(-1, 1) if qp.zero_point.numel() > 1 else qp.zero_point.float()
    return (codes.float() - z) * s


def round_weight(xq: torch.Tensor, w: torch.Tensor, qp: QParams, row_weight: torch.Tensor, groups: int,
                 err_of) -> Tuple[Optional[torch.Tensor], float, float]:
    """(codes or None, objective with them, objective with round-to-nearest): GPTQ codes for weight
    w [C, Kg] on input rows xq [S, K]; ``err_of(wq [C, Kg]) -> float`` is the exact layer objective.
    None when GPTQ does not lower it."""
    from ..quantizer import fake_quant
    rtn = fake_quant(w, qp.scale, qp.zero_point, qp.spec.qmin, qp.spec.qmax,
                     axis=0 if qp.spec.per_channel else None)
    base = err_of(rtn)
    codes = gptq_codes(w, qp, gram(xq, row_weight, groups))
    got = err_of(dequantize(codes, qp))
    return (codes, got, base) if got < base else (None, base, base)

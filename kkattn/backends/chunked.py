"""Plain-PyTorch backend that walks query blocks: peak memory O(B·H·block·N), never N×N.

Forward: per block of query rows, the logits ``scale·K_r Kᵀ + G_r`` (block × N), their row
log-sum-exp (saved for the backward) and ``P_r V``.  Backward recomputes each block's logits
from K and the saved log-sum-exp, so it also stays at O(block·N).

Runs on any device and dtype (float16/bfloat16 are upcast to float32, float64 stays float64).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._alloc import acc_dtype, empty_output
from .._numerics import logit_grad_
from .._prior import prior_from_distances, squared_distances

# Rows per block: large enough for efficient GEMMs, small enough that each (B, H, rows, N)
# temporary (logits, probabilities, prior) stays around 16 MiB in fp32.
_MAX_BLOCK_ROWS = 256
_BLOCK_BUDGET_ELEMENTS = 4 * 1024 * 1024


def block_rows(batch: int, heads: int, n_tokens: int) -> int:
    rows = _BLOCK_BUDGET_ELEMENTS // max(1, batch * heads * n_tokens)
    return int(max(16, min(_MAX_BLOCK_ROWS, rows)))


class _Logits:
    """Builds ``scale·K_r Kᵀ + G_r`` for one block of rows ``r``; shares the prior's distances."""

    def __init__(self, k: Tensor, sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int, scale: float):
        self.k, self.scale = k, scale
        self.kt = k.transpose(-1, -2)
        self.grid_w, self.num_prefix_tokens = grid_w, num_prefix_tokens
        self.sigma = sigma  # (H,), already in k's (accumulation) dtype
        self.cols = torch.arange(k.shape[2], device=k.device)

    def block(self, start: int, stop: int, need_distances: bool = False):
        """Logits ``(B, H, rows, N)``; with ``need_distances`` also ``(G, d²)`` of the block."""
        s = (self.k[:, :, start:stop] @ self.kt).mul_(self.scale)
        if self.sigma is None:
            return s, None, None
        d2, on_grid = squared_distances(self.cols[start:stop], self.cols, self.grid_w,
                                        self.num_prefix_tokens, dtype=s.dtype)
        g = prior_from_distances(d2, on_grid, self.sigma)  # (H, rows, N), broadcast over the batch
        s += g
        return (s, g, d2) if need_distances else (s, None, None)


def _diagonal(block: Tensor, start: int) -> Tensor:
    """View of the entries (i, i) of a ``(B, H, rows, N)`` block whose rows start at token ``start``."""
    return torch.diagonal(block[..., start:start + block.shape[-2]], dim1=-2, dim2=-1)


def forward(k: Tensor, v: Tensor, sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int,
            scale: float, with_stats: bool, rows: Optional[int] = None):
    """Returns ``out (B, H, N, D)`` in k's dtype, ``lse (B, H, N)`` and, with ``with_stats``, the
    off-diagonal ``out_off (B, H, N, D)`` and ``p_off (B, H, N)`` (accumulation dtype; else None)."""
    batch, heads, n_tokens, _ = k.shape
    compute = acc_dtype(k.dtype)
    rows = rows or block_rows(batch, heads, n_tokens)
    out = empty_output(k.shape, like=k)
    lse = empty_output(k.shape[:-1], like=k, dtype=compute)
    out_off = empty_output(k.shape, like=k, dtype=compute) if with_stats else None
    p_off = empty_output(k.shape[:-1], like=k, dtype=compute) if with_stats else None
    kc, vc = k.to(compute), v.to(compute)
    logits = _Logits(kc, sigma, grid_w, num_prefix_tokens, scale)
    for start in range(0, n_tokens, rows):
        stop = min(start + rows, n_tokens)
        s, _, _ = logits.block(start, stop)
        block_lse = torch.logsumexp(s, dim=-1)
        p = s.sub_(block_lse[..., None]).exp_()  # in place: one block temporary
        diag = _diagonal(p, start).clone()
        _diagonal(p, start).zero_()  # the off-diagonal part, accumulated on its own (see kkattn._ops)
        block_off = p @ vc
        out[:, :, start:stop] = block_off + diag[..., None] * vc[:, :, start:stop]
        lse[:, :, start:stop] = block_lse
        if with_stats:
            out_off[:, :, start:stop] = block_off
            p_off[:, :, start:stop] = p.sum(-1)
    return out, lse, out_off, p_off


def backward(dout: Tensor, k: Tensor, v: Tensor, lse: Tensor, delta: Tensor, delta_diag: Tensor, p_diag: Tensor,
             sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int, scale: float, need_dsigma: bool,
             rows: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``dk, dv`` (accumulation dtype) and ``(H,)`` ``Σ dS·G·d²`` (= dσ·σ³, lse dtype; zeros unless asked).

    ``dS_ij = P_ij (dP_ij − δ_i)`` off the diagonal, ``dS_ii = −P_ii δ'_i`` on it, with the saved
    ``P_ii`` (see kkattn._ops for why).
    """
    batch, heads, n_tokens, _ = k.shape
    compute = acc_dtype(k.dtype)
    rows = rows or block_rows(batch, heads, n_tokens)
    kc, vc, doc = k.to(compute), v.to(compute), dout.to(compute)
    dk_acc = torch.zeros_like(kc)
    dv_acc = torch.zeros_like(vc)
    dsigma = torch.zeros(heads, dtype=compute, device=k.device)
    logits = _Logits(kc, sigma, grid_w, num_prefix_tokens, scale)
    for start in range(0, n_tokens, rows):
        stop = min(start + rows, n_tokens)
        s, g, d2 = logits.block(start, stop, need_distances=need_dsigma)
        p = s.sub_(lse[:, :, start:stop, None]).exp_()
        _diagonal(p, start).copy_(p_diag[:, :, start:stop])
        do_r = doc[:, :, start:stop]
        dv_acc += p.transpose(-1, -2) @ do_r
        ds = logit_grad_(do_r @ vc.transpose(-1, -2), delta[:, :, start:stop, None], p)
        _diagonal(ds, start).copy_(-p_diag[:, :, start:stop] * delta_diag[:, :, start:stop])
        # dK = scale·(dS + dSᵀ)K: this block's rows of dS, and its columns of dSᵀ.
        dk_acc[:, :, start:stop] += (ds @ kc) * scale
        dk_acc += (ds.transpose(-1, -2) @ kc[:, :, start:stop]) * scale
        if need_dsigma:
            dsigma += (ds * (g * d2)).sum(dim=(0, 2, 3))
    return dk_acc, dv_acc, dsigma  # accumulation dtype: kkattn._ops restores k's dtype and layout

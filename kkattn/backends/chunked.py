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

from .._alloc import empty_output, empty_output_like
from .._prior import prior_from_distances, squared_distances

# Rows per block: large enough for efficient GEMMs, small enough that each (B, H, rows, N)
# temporary (logits, probabilities, prior) stays around 16 MiB in fp32.
_MAX_BLOCK_ROWS = 256
_BLOCK_BUDGET_ELEMENTS = 4 * 1024 * 1024


def block_rows(batch: int, heads: int, n_tokens: int) -> int:
    rows = _BLOCK_BUDGET_ELEMENTS // max(1, batch * heads * n_tokens)
    return int(max(16, min(_MAX_BLOCK_ROWS, rows)))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Logits:
    """Builds ``scale·K_r Kᵀ + G_r`` for one block of rows ``r``; shares the prior's distances."""

    def __init__(self, k: Tensor, sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int, scale: float):
        self.k, self.scale = k, scale
        self.kt = k.transpose(-1, -2)
        self.grid_w, self.num_prefix_tokens = grid_w, num_prefix_tokens
        self.sigma = None if sigma is None else sigma.detach().to(k.dtype)
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


def forward(k: Tensor, v: Tensor, sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int,
            scale: float, rows: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Returns ``out (B, H, N, D)`` in k's dtype and ``lse (B, H, N)`` (float32, or float64)."""
    batch, heads, n_tokens, _ = k.shape
    compute = _compute_dtype(k.dtype)
    rows = rows or block_rows(batch, heads, n_tokens)
    out = empty_output(k.shape, like=k)
    lse = empty_output(k.shape[:-1], like=k, dtype=compute)
    kc, vc = k.to(compute), v.to(compute)
    logits = _Logits(kc, sigma, grid_w, num_prefix_tokens, scale)
    for start in range(0, n_tokens, rows):
        stop = min(start + rows, n_tokens)
        s, _, _ = logits.block(start, stop)
        block_lse = torch.logsumexp(s, dim=-1)
        out[:, :, start:stop] = s.sub_(block_lse[..., None]).exp_() @ vc  # in place: one block temporary
        lse[:, :, start:stop] = block_lse
    return out, lse


def backward(dout: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, sigma: Optional[Tensor],
             grid_w: int, num_prefix_tokens: int, scale: float, need_dsigma: bool,
             rows: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``dk, dv`` (k's dtype and layout) and ``(H,)`` ``Σ dS·G·d²`` (= dσ·σ³, lse dtype; zeros unless asked)."""
    batch, heads, n_tokens, _ = k.shape
    compute = _compute_dtype(k.dtype)
    rows = rows or block_rows(batch, heads, n_tokens)
    kc, vc, doc = k.to(compute), v.to(compute), dout.to(compute)
    delta = (doc * out.to(compute)).sum(-1)  # rowsum(dP ∘ P) = rowsum(dO ∘ O)
    dk_acc = torch.zeros_like(kc)
    dv_acc = torch.zeros_like(vc)
    dsigma = torch.zeros(heads, dtype=compute, device=k.device)
    logits = _Logits(kc, sigma, grid_w, num_prefix_tokens, scale)
    for start in range(0, n_tokens, rows):
        stop = min(start + rows, n_tokens)
        s, g, d2 = logits.block(start, stop, need_distances=need_dsigma)
        p = s.sub_(lse[:, :, start:stop, None].to(compute)).exp_()
        do_r = doc[:, :, start:stop]
        dv_acc += p.transpose(-1, -2) @ do_r
        ds = (do_r @ vc.transpose(-1, -2)).sub_(delta[:, :, start:stop, None]).mul_(p)
        # dK = scale·(dS + dSᵀ)K: this block's rows of dS, and its columns of dSᵀ.
        dk_acc[:, :, start:stop] += (ds @ kc) * scale
        dk_acc += (ds.transpose(-1, -2) @ kc[:, :, start:stop]) * scale
        if need_dsigma:
            dsigma += (ds * (g * d2)).sum(dim=(0, 2, 3))
    dk = empty_output_like(k).copy_(dk_acc)
    dv = empty_output_like(v).copy_(dv_acc)
    return dk, dv, dsigma

"""The token-grid index math and the Gaussian prior G, in plain PyTorch.

Every PyTorch code path (the reference, the chunked backend, :func:`gaussian_prior`) builds G
through these functions.  The Triton kernels mirror the same three steps (token index →
(row, col) → squared distance → ``exp``) in ``kkattn/backends/triton_kernels.py``.

Conventions shared by every backend:

* tokens ``num_prefix_tokens … N−1`` lie row-major on a ``(h, w)`` grid: token ``t`` sits at
  ``row = (t − P) // w``, ``col = (t − P) % w``;
* prefix tokens (a CLS token, registers) get **no** prior: their rows and columns of G are 0;
* ``G(i, j) = exp(−d²(i, j) / (2σ²))``, unnormalized, 1 on the diagonal.
"""
from __future__ import annotations


import torch
from torch import Tensor

LOG2E = 1.4426950408889634

# A tile whose every entry of G is below 2**-24 can skip the prior without changing any fp32
# softmax weight: exp(s + g) = exp(s)·exp(g) and fl(exp(g)) == 1 for 0 <= g < 2**-24 (round to
# nearest), so only the prior's derivative (for a learnable σ) would notice.  In log2 units
# G = exp2(-d²·log2e/(2σ²)) < 2**-24  <=>  d²·log2e/(2σ²) > 24, i.e. d > σ·sqrt(48·ln 2) ≈ 5.77σ.
NEGLIGIBLE_PRIOR_LOG2 = 24.0

# Any σ below SIGMA_MIN gives the same G, the identity on the grid, in fp32 and fp64 alike: the
# nearest neighbour's exp(−1/(2σ²)) = exp(−1250) already underflows to 0 in float64 (below
# 4.9e-324), and so does its σ-derivative.  Every path clamps σ here, so G stays exactly what the
# float64 formula gives for any positive σ instead of 0·∞ = NaN on the diagonal (σ² underflows
# below ~1e-23 in fp32 and ~1e-162 in fp64).  Huge σ needs nothing: 1/(2σ²) → 0 and G → 1.
SIGMA_MIN = 0.02


def token_coords(index: Tensor, grid_w: int, num_prefix_tokens: int) -> tuple[Tensor, Tensor, Tensor]:
    """Grid position of token indices.

    Args:
        index: integer tensor of token indices, any shape.
    Returns:
        ``(row, col, on_grid)`` of the same shape; prefix tokens get row = col = 0 and
        ``on_grid = False``.
    """
    pos = index - num_prefix_tokens
    on_grid = pos >= 0
    pos = pos.clamp_min(0)
    return pos // grid_w, pos % grid_w, on_grid


def squared_distances(rows: Tensor, cols: Tensor, grid_w: int, num_prefix_tokens: int,
                      dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Squared grid distances between two sets of tokens.

    Args:
        rows: ``(R,)`` token indices (queries); cols: ``(C,)`` token indices (keys).
    Returns:
        ``d2`` of shape ``(R, C)`` in ``dtype`` and the ``(R, C)`` bool mask of pairs that are
        both on the grid (the pairs that get a prior at all).
    """
    r_i, c_i, on_i = token_coords(rows, grid_w, num_prefix_tokens)
    r_j, c_j, on_j = token_coords(cols, grid_w, num_prefix_tokens)
    dr = (r_i[:, None] - r_j[None, :]).to(dtype)
    dc = (c_i[:, None] - c_j[None, :]).to(dtype)
    return dr * dr + dc * dc, on_i[:, None] & on_j[None, :]


def prior_from_distances(d2: Tensor, on_grid: Tensor, sigma: Tensor) -> Tensor:
    """G from squared distances.

    Args:
        d2, on_grid: ``(R, C)`` from :func:`squared_distances`.
        sigma: ``(S,)`` positive σ values (S = 1 or one per head); differentiable.  Values below
            :data:`SIGMA_MIN` act as SIGMA_MIN (the same G, zero gradient).
    Returns:
        ``(S, R, C)`` prior, 0 wherever ``on_grid`` is False.
    """
    sigma = sigma.clamp_min(SIGMA_MIN)
    inv_two_var = 0.5 / (sigma * sigma)
    g = torch.exp(-d2[None] * inv_two_var[:, None, None])
    return g * on_grid[None].to(g.dtype)


def prior_tile(rows: Tensor, cols: Tensor, grid_w: int, num_prefix_tokens: int, sigma: Tensor) -> Tensor:
    """``(S, R, C)`` block of G for token indices ``rows`` × ``cols`` (see :func:`prior_from_distances`)."""
    d2, on_grid = squared_distances(rows, cols, grid_w, num_prefix_tokens, dtype=sigma.dtype)
    return prior_from_distances(d2, on_grid, sigma)

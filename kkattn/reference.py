"""Materialized PyTorch oracle: builds the full N×N prior and logits.

Plain autograd, float64-capable; every test compares the kernels against
:func:`neighborhood_kk_attention` run in float64.  Memory is O(B·H·N²): use it for checks and
small inputs, not for real workloads.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._prior import prior_tile
from ._validation import Problem, Sigma, check_grid, check_inputs, check_sigma


def _sigma_tensor(sigma: Sigma, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(sigma, Tensor):
        return sigma.to(dtype)
    return torch.tensor([min(sigma, torch.finfo(dtype).max)], dtype=dtype, device=device)


def gaussian_prior(grid: tuple[int, int], sigma: Sigma, num_prefix_tokens: int = 0, *,
                   dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None) -> Tensor:
    """The materialized prior G, for references and plots.

    Args:
        grid: ``(h, w)`` token grid.
        sigma: a positive float or 0-d tensor, or a ``(H,)`` tensor of per-head values (differentiable).
        num_prefix_tokens: tokens before the grid, whose rows and columns of G are 0.
        dtype, device: default to σ's for a tensor σ, else float32 on the CPU.
    Returns:
        ``(N, N)`` for a float (or 0-d) σ, ``(H, N, N)`` for an ``(H,)`` σ, with ``N = h·w + num_prefix_tokens``.
    """
    if isinstance(grid, (tuple, list)) and len(grid) == 2 and all(isinstance(x, int) for x in grid):
        n_tokens = grid[0] * grid[1] + num_prefix_tokens
    else:
        n_tokens = 1  # let check_grid produce the error message
    check_grid(grid, n_tokens, num_prefix_tokens)
    if sigma is None:
        raise ValueError("gaussian_prior needs a sigma (a positive float or a (H,) tensor), got None")
    scalar = not isinstance(sigma, Tensor) or sigma.dim() == 0
    if isinstance(sigma, Tensor):
        device = sigma.device if device is None else device
        dtype = sigma.dtype if dtype is None else dtype
    dtype = dtype or torch.float32
    sigma = check_sigma(sigma, None, device if isinstance(sigma, Tensor) else None)
    idx = torch.arange(n_tokens, device=device)
    g = prior_tile(idx, idx, grid[1], num_prefix_tokens, _sigma_tensor(sigma, dtype, device))
    return g[0] if scalar else g


def neighborhood_kk_attention(k: Tensor, v: Tensor, sigma: Sigma, *, grid=None, scale: Optional[float] = None,
                              num_prefix_tokens: int = 0, return_lse: bool = False):
    """``softmax(scale · K Kᵀ + G) V`` with everything materialized.

    Args:
        k, v: ``(B, H, N, D)``.
        sigma: ``None`` (no prior), a positive float, or a ``(H,)`` tensor (its gradient is computed).
        return_lse: also return the row log-sum-exp of the logits, ``(B, H, N)``.
    Returns:
        ``(B, H, N, D)`` in the input dtype (and the fp32/fp64 log-sum-exp when ``return_lse``).
        Computes in float64 for float64 inputs and in float32 otherwise.
    """
    problem, sigma = check_inputs(k, v, sigma, grid, scale, num_prefix_tokens)
    return attention(k, v, sigma, problem, return_lse)


def attention(k: Tensor, v: Tensor, sigma: Sigma, problem: Problem, return_lse: bool = False):
    """:func:`neighborhood_kk_attention` for an already validated ``problem`` (no checks: traceable
    by ``torch.compile`` with symbolic sizes)."""
    compute = torch.float64 if k.dtype == torch.float64 else torch.float32
    kc, vc = k.to(compute), v.to(compute)
    logits = problem.scale * (kc @ kc.transpose(-1, -2))
    if sigma is not None:
        idx = torch.arange(problem.n_tokens, device=k.device)
        logits = logits + prior_tile(idx, idx, problem.grid[1], problem.num_prefix_tokens,
                                     _sigma_tensor(sigma, compute, k.device))
    lse = torch.logsumexp(logits, dim=-1)
    out = (torch.exp(logits - lse[..., None]) @ vc).to(k.dtype)
    return (out, lse) if return_lse else out

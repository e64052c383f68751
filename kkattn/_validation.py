"""Argument checks shared by the public operator, the reference and :func:`gaussian_prior`.

Everything here raises ``TypeError``/``ValueError`` naming the argument and the expected form,
before any kernel runs.  Backend-specific limits (dtype, device, head dim) live with each backend
(``kkattn/backends``).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

Sigma = Union[None, float, Tensor]
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Problem:
    """A validated call: shapes ``(batch, heads, n_tokens, head_dim)`` and the grid layout."""

    batch: int
    heads: int
    n_tokens: int
    head_dim: int
    grid: tuple[int, int]
    num_prefix_tokens: int
    scale: float


def check_grid(grid, n_tokens: int, num_prefix_tokens: int) -> tuple[int, int]:
    """Return ``(h, w)`` with ``h·w = n_tokens − num_prefix_tokens``; ``grid=None`` means square."""
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, numbers.Integral):
        raise TypeError(f"num_prefix_tokens must be an int, got {type(num_prefix_tokens).__name__}")
    if not 0 <= num_prefix_tokens < n_tokens:
        raise ValueError(
            f"num_prefix_tokens must be in [0, N-1] = [0, {n_tokens - 1}] (at least one grid token), "
            f"got {num_prefix_tokens}")
    n_grid = n_tokens - int(num_prefix_tokens)
    if grid is None:
        # Not math.isqrt: under torch.compile(dynamic=True) N is a SymInt, which it cannot take.
        side = torch.sym_int(torch.sym_sqrt(n_grid))
        side = side - 1 if side * side > n_grid else side  # float rounding, for N beyond 2**52
        if side * side != n_grid:
            raise ValueError(
                f"grid=None means a square grid, but N - num_prefix_tokens = {n_grid} is not a perfect "
                f"square; pass grid=(h, w) with h*w = {n_grid}")
        return side, side
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2
            or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in grid)):
        raise TypeError(f"grid must be a pair of ints (h, w) or None, got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1:
        raise ValueError(f"grid (h, w) must be positive, got {grid!r}")
    if h * w != n_grid:
        raise ValueError(
            f"grid {h}x{w} = {h * w} tokens does not match N - num_prefix_tokens = "
            f"{n_tokens} - {num_prefix_tokens} = {n_grid}")
    return h, w


def check_sigma(sigma: Sigma, heads: Optional[int], device: Optional[torch.device]) -> Sigma:
    """σ: ``None`` (no prior), a positive finite float, or a 1-D tensor of ``heads`` positive values.

    A 0-d tensor is a scalar σ for every head: it comes back as a ``(heads,)`` view (``(1,)`` when ``heads``
    is None), so a σ that requires grad gets the sum of the heads' gradients.
    """
    if sigma is None:
        return None
    if isinstance(sigma, Tensor):
        if sigma.dim() == 0:
            sigma = sigma.reshape(1).expand(heads if heads is not None else 1)
        if sigma.dim() != 1 or (heads is not None and sigma.shape[0] != heads):
            expected = f"({heads},)" if heads is not None else "(H,)"
            raise ValueError(f"sigma tensor must have shape {expected} (one value per head) or () (one for all), "
                             f"got {tuple(sigma.shape)}")
        if not sigma.is_floating_point():
            raise TypeError(f"sigma tensor must be floating point, got {sigma.dtype}")
        if device is not None and sigma.device != device:
            raise ValueError(f"sigma tensor is on {sigma.device} but k is on {device}; "
                             f"move sigma to {device}")
        # Value checks read the tensor (a device sync); torch.compile traces without them.
        if not torch.compiler.is_compiling():
            values = sigma.detach()  # no autograd graph for the checks
            if not bool(torch.isfinite(values).all()) or not bool((values > 0).all()):
                raise ValueError(f"sigma must be positive and finite, got {sigma.detach().cpu().tolist()}")
        return sigma
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"sigma must be None, a positive float or a 1-D tensor of per-head values, "
                        f"got {type(sigma).__name__}")
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive finite float, got {sigma}")
    return sigma


def check_scale(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite float, got {scale}")
    return scale


def check_inputs(k: Tensor, v: Tensor, sigma: Sigma, grid, scale, num_prefix_tokens) -> tuple[Problem, Sigma]:
    """Check the operator's arguments; return the problem description and the checked σ."""
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, H, N, D), got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, N, D) (rank 4), got rank {t.dim()} "
                             f"shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, H, N, D), got k {tuple(k.shape)} "
                         f"and v {tuple(v.shape)}")
    if k.device != v.device:
        raise ValueError(f"k and v must be on the same device, got k on {k.device} and v on {v.device}")
    if k.dtype != v.dtype:
        raise TypeError(f"k and v must have the same dtype, got k {k.dtype} and v {v.dtype}")
    if k.dtype not in FLOAT_DTYPES:
        raise TypeError(f"k and v must be float16, bfloat16, float32 or float64, got {k.dtype}")
    batch, heads, n_tokens, head_dim = k.shape
    if n_tokens < 1 or head_dim < 1 or batch < 1 or heads < 1:
        raise ValueError(f"k must have non-empty dimensions (B, H, N, D), got {tuple(k.shape)}")
    hw = check_grid(grid, n_tokens, num_prefix_tokens)
    sigma = check_sigma(sigma, heads, k.device)
    problem = Problem(batch, heads, n_tokens, head_dim, hw, int(num_prefix_tokens), check_scale(scale, head_dim))
    return problem, sigma


def sigma_per_head(sigma: Sigma, heads: int, device: torch.device, dtype: torch.dtype) -> Optional[Tensor]:
    """The ``(H,)`` σ tensor the kernels take (``None`` stays ``None``: no prior).

    A float σ becomes a ``dtype`` tensor (float64 for float64 inputs, so their prior is computed
    in float64); a σ beyond the dtype's range is clamped to its largest value, where G is already
    exactly 1 (``1/(2σ²)`` underflows to 0).
    """
    if sigma is None or isinstance(sigma, Tensor):
        return sigma
    return torch.full((heads,), min(sigma, torch.finfo(dtype).max), dtype=dtype, device=device)

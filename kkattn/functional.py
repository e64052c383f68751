"""The public operator: validate, pick a backend, call the custom op."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference
from ._alloc import acc_dtype
from ._ops import forward_op
from ._validation import Sigma, check_inputs, sigma_per_head
from .backends import resolve


def neighborhood_kk_attention(k: Tensor, v: Tensor, sigma: Sigma, *, grid: Optional[tuple[int, int]] = None,
                              scale: Optional[float] = None, num_prefix_tokens: int = 0,
                              backend: str = "auto") -> Tensor:
    """Neighborhood key–key attention: ``softmax(scale · K Kᵀ + G) V``, row-wise.

    ``G(i, j) = exp(−‖p_i − p_j‖² / (2σ²))`` with ``p`` the (row, col) of a token on the patch grid.
    G is generated inside the kernels; no backend but ``"reference"`` materializes an N×N matrix.

    Args:
        k, v: ``(B, H, N, D)`` (the layout of ``F.scaled_dot_product_attention``), same shape, device
            and dtype (float16, bfloat16, float32; float64 on ``"chunked"``/``"reference"``).
            Any strides.
        sigma: ``None`` (no prior: pure key–key attention), a positive float or 0-d tensor (all heads),
            or a ``(H,)`` tensor of positive per-head values; a tensor is differentiable when it requires grad.
        grid: ``(h, w)`` with ``h·w = N − num_prefix_tokens``, tokens row-major; ``None`` = square.
        scale: logit scale, default ``1/√D``.
        num_prefix_tokens: leading tokens (CLS, registers) that attend and are attended to with
            no prior (their rows and columns of G are 0).
        backend: ``"auto"`` (compiled kernel for the device when built, else ``"triton"`` on CUDA
            and ``"chunked"`` on CPU), ``"triton"``, ``"chunked"``, ``"reference"``, ``"cpu"``, ``"cuda"``.
            See :func:`kkattn.available_backends`.

    Returns:
        ``(B, H, N, D)`` in the input dtype (accumulated in float32, float64 for float64 inputs).
    """
    problem, sigma = check_inputs(k, v, sigma, grid, scale, num_prefix_tokens)
    name = resolve(backend, k)
    if name == "reference":
        return reference.attention(k, v, sigma, problem)
    sigma_t = sigma_per_head(sigma, problem.heads, k.device, acc_dtype(k.dtype))
    # The backward's statistics (an fp32 (B, H, N, D) buffer) only when a gradient can be asked for.
    with_stats = torch.is_grad_enabled() and (
        k.requires_grad or v.requires_grad or (sigma_t is not None and sigma_t.requires_grad))
    out, _, _, _ = forward_op(k, v, sigma_t, problem.grid[1], problem.num_prefix_tokens, problem.scale, name,
                              with_stats)
    return out

"""The operator as ``torch.library`` custom ops: kernels dispatch, fake tensors, autograd, FLOPs.

``kkattn::forward`` and ``kkattn::backward`` are opaque to ``torch.compile`` (traced through their
fake implementations, no graph break) and counted by ``FlopCounterMode``.  Both take an already
validated problem and a resolved backend name; the public entry point is
:func:`kkattn.neighborhood_kk_attention`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .backends import get_backend


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("kkattn::forward", mutates_args=())
def forward_op(k: Tensor, v: Tensor, sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int,
               scale: float, backend: str) -> tuple[Tensor, Tensor]:
    """``(out (B, H, N, D), lse (B, H, N))`` of ``softmax(scale·KKᵀ + G) V``."""
    return get_backend(backend).forward(k, v, sigma, grid_w, num_prefix_tokens, scale)


@forward_op.register_fake
def _forward_fake(k, v, sigma, grid_w, num_prefix_tokens, scale, backend):
    return k.new_empty(k.shape), k.new_empty(k.shape[:-1], dtype=_lse_dtype(k.dtype))


@torch.library.custom_op("kkattn::backward", mutates_args=())
def backward_op(dout: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, sigma: Optional[Tensor],
                grid_w: int, num_prefix_tokens: int, scale: float, backend: str,
                need_dsigma: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(dk, dv, Σ dS·G·d²)``; the last is ``(H,)`` in the lse dtype (= dσ·σ³), zeros unless ``need_dsigma``."""
    return get_backend(backend).backward(dout, k, v, out, lse, sigma, grid_w, num_prefix_tokens, scale,
                                         need_dsigma)


@backward_op.register_fake
def _backward_fake(dout, k, v, out, lse, sigma, grid_w, num_prefix_tokens, scale, backend, need_dsigma):
    return torch.empty_like(k), torch.empty_like(v), k.new_empty((k.shape[1],), dtype=_lse_dtype(k.dtype))


def _setup_context(ctx, inputs, output):
    k, v, sigma, grid_w, num_prefix_tokens, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(k, v, out, lse, sigma)
    ctx.args = (grid_w, num_prefix_tokens, scale, backend)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    k, v, out, lse, sigma = ctx.saved_tensors
    grid_w, num_prefix_tokens, scale, backend = ctx.args
    need_dsigma = sigma is not None and ctx.needs_input_grad[2]
    dk, dv, dsigma_cubed = backward_op(dout, k, v, out, lse, sigma, grid_w, num_prefix_tokens, scale, backend,
                                       need_dsigma)
    if not need_dsigma:
        return dk, dv, None, None, None, None, None
    # dσ = Σ dS·∂G/∂σ = Σ dS·G·d² / σ³: the backends return the sum, the σ³ is divided here once.
    s = sigma.detach().to(dsigma_cubed.dtype)
    return dk, dv, (dsigma_cubed / (s * s * s)).to(sigma.dtype), None, None, None, None


torch.library.register_autograd("kkattn::forward", _backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.kkattn.forward)
def _forward_flops(k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    batch, heads, n_tokens, head_dim = k_shape
    return 4 * batch * heads * n_tokens * n_tokens * head_dim  # K Kᵀ and P V


@register_flop_formula(torch.ops.kkattn.backward)
def _backward_flops(dout_shape, k_shape, *args, out_shape=None, **kwargs) -> int:
    batch, heads, n_tokens, head_dim = k_shape
    # Five N²·D matmuls: S, dV, dP_iJ, dP_Jiᵀ, dK (FlashAttention's 2.5× forward).
    return 10 * batch * heads * n_tokens * n_tokens * head_dim

"""The operator as ``torch.library`` custom ops: kernels dispatch, fake tensors, autograd, FLOPs.

``kkattn::forward`` and ``kkattn::backward`` are opaque to ``torch.compile`` (traced through their
fake implementations, no graph break) and counted by ``FlopCounterMode``.  Both take an already
validated problem and a resolved backend name; the public entry point is
:func:`kkattn.neighborhood_kk_attention`.

The chores every backend needs are done here, once: σ is handed to the kernels detached,
contiguous, in the accumulation dtype and clamped to where G is representable
(:data:`kkattn._prior.SIGMA_MIN`); the backward's row statistics δ are formed here (see
:func:`_row_deltas`); dσ is divided by σ³ here.

**Why δ is not rowsum(dO ∘ O).**  The logit gradient is ``dS_ij = P_ij (dP_ij − δ_i)`` with
``δ_i = Σ_k P_ik dP_ik``.  Key–key logits put the row maximum on the diagonal (Cauchy–Schwarz), so
P is nearly one-hot there and ``dP_ii − δ_i = Σ_{k≠i} P_ik (dP_ii − dP_ik)`` is a tiny difference
of two nearly equal numbers.  Formed from O rounded to the input dtype (FlashAttention's
``rowsum(dO ∘ O)``) the rounding of O is the whole result in fp16/bf16, and even fp32 loses it at
D = 128.  So every forward also returns the *off-diagonal* part of its output,
``O'_i = Σ_{k≠i} P_ik V_k`` (fp32, O(N·D)), and the off-diagonal weight ``p_off_i = Σ_{k≠i} P_ik``,
both accumulated without the diagonal term; then ``δ'_i = δ_i − dP_ii = dO_i·O'_i − dP_ii·p_off_i``
has no cancellation, the backends take ``dS_ii = −P_ii·δ'_i`` on the diagonal and use
``P_ii = 1 − p_off_i`` (exact even when the softmax saturates).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from ._alloc import acc_dtype, restore
from ._prior import SIGMA_MIN
from .backends import get_backend


def _kernel_sigma(sigma: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """σ as the kernels take it: ``(H,)``, detached, contiguous, accumulation dtype, ≥ SIGMA_MIN.

    Below SIGMA_MIN the prior is already exactly the identity on the grid in fp32 and fp64
    (``exp(−1/(2σ²))`` underflows to 0), so the clamp changes no value and avoids 0·∞ = NaN.
    """
    if sigma is None:
        return None
    return sigma.detach().to(acc_dtype(dtype)).clamp_min(SIGMA_MIN).contiguous()


def _empty(like: Tensor) -> Tensor:
    return like.new_empty((0,), dtype=acc_dtype(like.dtype))


@torch.library.custom_op("kkattn::forward", mutates_args=())
def forward_op(k: Tensor, v: Tensor, sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int,
               scale: float, backend: str, with_stats: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``softmax(scale·KKᵀ + G) V`` and what its backward needs.

    Returns ``(out (B, H, N, D) k's dtype, lse (B, H, N), out_off (B, H, N, D), p_off (B, H, N))``:
    lse, out_off and p_off in the accumulation dtype.  ``out_off = Σ_{k≠i} P_ik V_k`` and
    ``p_off = Σ_{k≠i} P_ik`` (the off-diagonal output and weight, see the module docstring) are
    empty ``(0,)`` tensors unless ``with_stats`` (inference skips them).
    """
    out, lse, out_off, p_off = get_backend(backend).forward(
        k, v, _kernel_sigma(sigma, k.dtype), grid_w, num_prefix_tokens, scale, with_stats)
    out = out.to(k.dtype).contiguous()  # backends may return their accumulation dtype
    if not with_stats:
        return out, lse, _empty(k), _empty(k)
    return out, lse, out_off, p_off


@forward_op.register_fake
def _forward_fake(k, v, sigma, grid_w, num_prefix_tokens, scale, backend, with_stats=True):
    acc = acc_dtype(k.dtype)
    lse = k.new_empty(k.shape[:-1], dtype=acc)
    if not with_stats:
        return k.new_empty(k.shape), lse, _empty(k), _empty(k)
    return k.new_empty(k.shape), lse, k.new_empty(k.shape, dtype=acc), k.new_empty(k.shape[:-1], dtype=acc)


@torch.library.custom_op("kkattn::backward", mutates_args=())
def backward_op(dout: Tensor, k: Tensor, v: Tensor, lse: Tensor, delta: Tensor, delta_diag: Tensor, p_diag: Tensor,
                sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int, scale: float, backend: str,
                need_dsigma: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(dk, dv, Σ dS·G·d²)``; the last is ``(H,)`` in the lse dtype (= dσ·σ³), zeros unless ``need_dsigma``.

    ``lse, delta, delta_diag, p_diag``: ``(B, H, N)`` contiguous, accumulation dtype (see :func:`_row_deltas`).
    """
    dk, dv, dsigma = get_backend(backend).backward(dout, k, v, lse, delta, delta_diag, p_diag,
                                                   _kernel_sigma(sigma, k.dtype), grid_w, num_prefix_tokens, scale,
                                                   need_dsigma)
    return restore(dk, k), restore(dv, v), dsigma  # k's and v's dtype and layout, for every backend


@backward_op.register_fake
def _backward_fake(dout, k, v, lse, delta, delta_diag, p_diag, sigma, grid_w, num_prefix_tokens, scale, backend,
                   need_dsigma):
    return torch.empty_like(k), torch.empty_like(v), k.new_empty((k.shape[1],), dtype=acc_dtype(k.dtype))


# Rows of the (B, H, N, D) inputs per step of _row_deltas in eager mode: fp32 temporaries of at most
# 2**22 elements (16 MiB), never a full-size fp32 copy of dO or V.
_DELTA_CHUNK_ELEMENTS = 1 << 22


def _row_deltas(dout: Tensor, v: Tensor, out_off: Tensor, p_off: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(δ, δ', P_ii)``, each ``(B, H, N)`` in the accumulation dtype, contiguous.

    ``dP_ii = dO_i·V_i``; ``δ'_i = dO_i·O'_i − dP_ii·p_off_i`` (= δ_i − dP_ii, formed without
    cancellation); ``δ_i = dP_ii + δ'_i`` (used off the diagonal); ``P_ii = 1 − p_off_i``.
    """
    acc = out_off.dtype

    def block(do, vv, oo, po):
        do = do.to(acc)
        dp_diag = (do * vv.to(acc)).sum(-1)
        delta_diag = (do * oo).sum(-1) - dp_diag * po
        return dp_diag + delta_diag, delta_diag

    if torch.compiler.is_compiling():  # inductor fuses the products into the reductions
        delta, delta_diag = block(dout, v, out_off, p_off)
        return delta.contiguous(), delta_diag.contiguous(), (1.0 - p_off).contiguous()
    batch, heads, n_tokens, head_dim = v.shape
    rows = max(1, _DELTA_CHUNK_ELEMENTS // max(1, batch * heads * head_dim))
    delta, delta_diag = torch.empty_like(p_off), torch.empty_like(p_off)
    for start in range(0, n_tokens, rows):  # slices of dO are views, even of an expanded dO
        part = slice(start, start + rows)
        delta[:, :, part], delta_diag[:, :, part] = block(dout[:, :, part], v[:, :, part], out_off[:, :, part],
                                                          p_off[:, :, part])
    return delta, delta_diag, 1.0 - p_off


def _setup_context(ctx, inputs, output):
    k, v, sigma, grid_w, num_prefix_tokens, scale, backend, _with_stats = inputs
    _, lse, out_off, p_off = output
    ctx.save_for_backward(k, v, out_off, p_off, lse, sigma)
    ctx.args = (grid_w, num_prefix_tokens, scale, backend)
    ctx.mark_non_differentiable(lse, out_off, p_off)


def _backward(ctx, dout, _dlse, _dout_off, _dp_off):
    k, v, out_off, p_off, lse, sigma = ctx.saved_tensors
    grid_w, num_prefix_tokens, scale, backend = ctx.args
    if out_off.dim() != k.dim():
        raise RuntimeError("kkattn: this forward ran without the statistics its backward needs "
                           "(with_stats=False); call it with gradients enabled")
    need_dsigma = sigma is not None and ctx.needs_input_grad[2]
    delta, delta_diag, p_diag = _row_deltas(dout, v, out_off, p_off)
    dk, dv, dsigma_cubed = backward_op(dout, k, v, lse.contiguous(), delta, delta_diag, p_diag, sigma, grid_w,
                                       num_prefix_tokens, scale, backend, need_dsigma)
    if not need_dsigma:
        return dk, dv, None, None, None, None, None, None
    # dσ = Σ dS·∂G/∂σ = Σ dS·G·d² / σ³: the backends return the sum, the σ³ is divided here once, in
    # float64 so that σ³ neither under- nor overflows (below SIGMA_MIN the sum is exactly 0).
    s = sigma.detach().to(torch.float64).clamp_min(SIGMA_MIN)
    dsigma = dsigma_cubed.to(torch.float64) / (s * s * s)
    return dk, dv, dsigma.to(sigma.dtype), None, None, None, None, None


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

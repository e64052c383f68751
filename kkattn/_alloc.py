"""Output allocation for every backend, with an optional NaN poison for tests.

Kernels write into buffers from :func:`empty_output`; under :func:`kkattn.testing.poisoned_outputs`
those buffers start NaN-filled, so an element a kernel forgot to write fails the comparison
instead of passing by luck with leftover memory.
"""
from __future__ import annotations

import torch
from torch import Tensor

_poison_depth = 0


def _maybe_poison(t: Tensor) -> Tensor:
    if _poison_depth > 0:
        t.fill_(float("nan"))
    return t


def empty_output(shape, *, like: Tensor, dtype=None) -> Tensor:
    """A contiguous output buffer on ``like``'s device."""
    return _maybe_poison(torch.empty(shape, dtype=dtype or like.dtype, device=like.device))


def empty_output_like(t: Tensor) -> Tensor:
    """A buffer with ``t``'s shape, dtype and (dense) layout — gradients keep their input's layout."""
    return _maybe_poison(torch.empty_like(t))


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of every backend: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def restore(t: Tensor, like: Tensor) -> Tensor:
    """``t`` with ``like``'s dtype and (dense) layout — what the ops' fake implementations promise.

    Backends return results in whatever dtype and layout they computed them; this is done once, in
    ``kkattn._ops``, for every backend.
    """
    if t.dtype == like.dtype and t.stride() == like.stride():
        return t
    if like.is_contiguous():
        return t.to(like.dtype).contiguous()
    return empty_output_like(like).copy_(t)

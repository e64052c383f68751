"""The compiled CUDA kernels of ``kkattn._C`` (csrc/kkattn_cuda.cu) behind the backend interface.

They take fp16/bf16 CUDA tensors with head dims 32, 64, 128 and write outputs in the input dtype
(contiguous, allocated here so tests can poison them); ``lse`` and ``dsigma`` are float32.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from .._alloc import empty_output
from .cpu import load  # one library holds both the CPU and the CUDA kernels


def compiled() -> bool:
    """Whether this build of ``kkattn._C`` contains the CUDA kernels."""
    return load() is None and "cuda" in torch.ops.kkattn_C.build_info()


@functools.lru_cache(maxsize=None)  # a constant of the compiled library, asked on every dispatch
def shared_memory(head_dim: int) -> tuple[int, int]:
    """Bytes of shared memory per block of the (forward, backward) kernels for ``head_dim``."""
    load()
    forward, backward = torch.ops.kkattn_C.cuda_shared_memory(head_dim)
    return int(forward), int(backward)


def device_limit(index: Optional[int] = None) -> int:
    """The most shared memory a block may opt in to on GPU ``index`` (None: the current one): 163 KB on
    A100 (sm_80), 99 KB on RTX 30xx/40xx (sm_86/89), 227 KB on H100/H200 (sm_90)."""
    from ._probes import gpu_shared_memory
    return gpu_shared_memory(index)


def forward(k: Tensor, v: Tensor, sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int,
            scale: float, with_stats: bool):
    out = empty_output(k.shape, like=k, dtype=k.dtype)
    lse = empty_output(k.shape[:-1], like=k, dtype=torch.float32)
    out_off = empty_output(k.shape, like=k, dtype=torch.float32) if with_stats else None
    p_off = empty_output(k.shape[:-1], like=k, dtype=torch.float32) if with_stats else None
    torch.ops.kkattn_C.forward(k, v, sigma, grid_w, num_prefix_tokens, scale, out, lse, out_off, p_off)
    return out, lse, out_off, p_off


def backward(dout: Tensor, k: Tensor, v: Tensor, lse: Tensor, delta: Tensor, delta_diag: Tensor, p_diag: Tensor,
             sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int, scale: float,
             need_dsigma: bool) -> tuple[Tensor, Tensor, Tensor]:
    dk = empty_output(k.shape, like=k, dtype=k.dtype)
    dv = empty_output(k.shape, like=k, dtype=k.dtype)
    dsigma = empty_output((k.shape[1],), like=k, dtype=torch.float32)
    torch.ops.kkattn_C.backward(dout, k, v, lse, delta, delta_diag, p_diag, sigma, grid_w, num_prefix_tokens, scale,
                                need_dsigma, dk, dv, dsigma)
    return dk, dv, dsigma  # contiguous: kkattn._ops restores k's and v's layout

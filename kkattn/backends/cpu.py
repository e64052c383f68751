"""The compiled C++ CPU kernel, ``kkattn._C`` (csrc/kkattn_cpu.cpp), behind the backend interface.

The kernel keeps every statistic and accumulator in float32 (fp16/bf16 tile products run in their own
dtype where the CPU's brgemm takes it: :func:`half_precision_path`) and writes into float32 buffers
allocated here (so tests can poison them); ``kkattn._ops`` casts the results back to the input dtype and
layout.
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch
from torch import Tensor

from .._alloc import empty_output

# How to get the kernel: pip builds it only when it can see the installed torch (see setup.py).
REBUILD = "reinstall kkattn from its source folder with torch installed: pip install --no-build-isolation ."
_load_error: Optional[str] = None
_loaded = False


def load() -> Optional[str]:
    """Load ``kkattn._C`` once; returns why it is unavailable, or None."""
    global _loaded, _load_error
    if not _loaded:
        _loaded = True
        spec = importlib.util.find_spec("kkattn._C")
        if spec is None or spec.origin is None:
            _load_error = f"not compiled: this install has no kkattn._C extension; {REBUILD}"
        else:
            try:
                torch.ops.load_library(spec.origin)
            except (OSError, RuntimeError) as err:  # e.g. built against another torch
                _load_error = f"kkattn._C failed to load ({str(err).splitlines()[0]}); {REBUILD}"
    return _load_error


def forward(k: Tensor, v: Tensor, sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int,
            scale: float, with_stats: bool):
    """Returns ``out (B, H, N, D)`` (contiguous, k's dtype), ``lse (B, H, N)`` float32 and, with
    ``with_stats``, ``out_off (B, H, N, D)`` and ``p_off (B, H, N)`` float32 (else None)."""
    out32 = empty_output(k.shape, like=k, dtype=torch.float32)
    lse = empty_output(k.shape[:-1], like=k, dtype=torch.float32)
    out_off = empty_output(k.shape, like=k, dtype=torch.float32) if with_stats else None
    p_off = empty_output(k.shape[:-1], like=k, dtype=torch.float32) if with_stats else None
    torch.ops.kkattn_C.forward(k, v, sigma, grid_w, num_prefix_tokens, scale, out32, lse, out_off, p_off)
    return out32, lse, out_off, p_off  # kkattn._ops casts out to k's dtype


def backward(dout: Tensor, k: Tensor, v: Tensor, lse: Tensor, delta: Tensor, delta_diag: Tensor, p_diag: Tensor,
             sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int, scale: float,
             need_dsigma: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``dk, dv`` (float32, contiguous: kkattn._ops restores k's dtype and layout) and ``(H,)``
    ``Σ dS·G·d²`` (= dσ·σ³, float32; zeros unless asked)."""
    dk32 = empty_output(k.shape, like=k, dtype=torch.float32)
    dv32 = empty_output(k.shape, like=k, dtype=torch.float32)
    dsigma = empty_output((k.shape[1],), like=k, dtype=torch.float32)
    torch.ops.kkattn_C.backward(dout, k, v, lse, delta, delta_diag, p_diag, sigma, grid_w, num_prefix_tokens, scale,
                                need_dsigma, dk32, dv32, dsigma)
    return dk32, dv32, dsigma


def half_precision_path(dtype: torch.dtype, head_dim: int) -> str:
    """How the kernel computes ``dtype`` inputs of head dim ``head_dim`` on this CPU: ``"native"`` (the
    forward's tile products in fp16/bf16 through ATen's brgemm, fp32 accumulation: oneDNN ukernels on AMX
    or AVX-512-BF16/FP16), ``"upcast"`` (in fp32: the CPU has no half-precision brgemm, the head dim is not
    a multiple of 16, or ``KKATTN_CPU_HALF=upcast`` is set) or ``"fp32"`` for float32 inputs."""
    return torch.ops.kkattn_C.half_precision_path(str(dtype).removeprefix("torch."), head_dim)


def vector_isa() -> str:
    """The instruction set of the smoother's one-pass epilogue (csrc/kkattn_cpu_epilogue.h): ``"avx512-bf16"``
    where the CPU has AVX-512 with BF16, else ``"generic"`` (portable vectors; also forced by
    ``KKATTN_CPU_ISA=generic``)."""
    return torch.ops.kkattn_C.vector_isa()


def smoother_path(k: Tensor, has_prior: bool, num_prefix_tokens: int, scale: float) -> str:
    """Which forward/backward path the kernel takes for these keys: ``"smoother"`` (every (batch,
    head) within the smoother's range), ``"online"`` (none: the online-softmax fallback) or
    ``"mixed"``.  ``k``: ``(B, H, N, D)``.  The kernel decides per (batch, head) from the spread of
    c_i = scale·‖k_i‖²/2 + g_i/2 (csrc/kkattn_cpu.cpp); this asks the same C++ code."""
    spread = torch.ops.kkattn_C.smoother_spread(k.detach().cpu(), has_prior, num_prefix_tokens, scale)
    inside = spread <= torch.ops.kkattn_C.smoother_max_spread()  # NaN: outside
    return "smoother" if bool(inside.all()) else ("online" if not bool(inside.any()) else "mixed")

"""Launch the Triton kernels: block sizes per GPU, dtype handling, output allocation.

Triton chooses its interpreter when a kernel is decorated, and ``triton.language`` is already
imported with torch's flop counter: ``TRITON_INTERPRET=1`` must be set before importing kkattn.

Each pass is described by one function (:func:`forward_launch`, :func:`backward_launch`) that
returns the kernel, its grid, arguments and compile-time options; the passes launch exactly that,
and ``tests/triton_aot.py`` compiles the same description ahead of time for every GPU architecture
(on meta tensors, no GPU) to check each variant's shared memory against the architecture's budget.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
from torch import Tensor

from .. import _smoother
from .._alloc import empty_output, empty_output_like
from .._prior import LOG2E
from ._probes import SHARED_MEMORY_PER_BLOCK, gpu_shared_memory, interpreting
from . import triton_kernels as kernels

INTERPRETED = interpreting()


def _dot_upcast(dtype: torch.dtype) -> bool:
    # Interpreter trap: under TRITON_INTERPRET=1, tl.dot on bfloat16 multiplies the raw bit patterns
    # (numpy has no bf16).  There we upcast the operands to fp32 first; products of bf16 values are
    # exact in fp32, so only the rounding of P/dS to bf16 before their matmuls (done on GPUs) is skipped.
    return INTERPRETED and dtype == torch.bfloat16


def _input_precision(dtype: torch.dtype) -> Optional[str]:
    if dtype != torch.float32:
        return None
    # fp32 inputs follow PyTorch's matmul setting: full fp32 unless the user allowed TF32.
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


# (rows, columns, num_warps, num_stages) of a tile, by pass and head dim (≤ 64 or not).  Fixed, not
# autotuned: autotuning under the interpreter would need a CPU do_bench, and the benchmarks tune these.
# Shared memory per block with these (tests/triton_aot.py, triton 3.8, prior + statistics/dσ): fp16/bf16 at
# most 80 KB on sm_80–89 and 144 KB on sm_90 (112 KB at D ≤ 64; the forward's smoother vectors included);
# IEEE fp32 up to 160 KB (sm_80's budget is 163 KB). The test compiles every table below for its architectures.
_GPU_TILES = {
    ("forward", True): (128, 64, 4, 3), ("forward", False): (64, 64, 4, 2),
    ("backward", True): (64, 64, 4, 2), ("backward", False): (32, 64, 4, 2),
}
# fp32 operands take twice the space: GPUs below _LARGE_BUDGET per block (RTX 30xx/40xx: 99 KB) run
# fp32 with these, at most 96 KB.
_GPU_TILES_FP32_SMALL = {
    ("forward", True): (64, 64, 4, 2), ("forward", False): (64, 32, 4, 2),
    ("backward", True): (32, 64, 4, 2), ("backward", False): (16, 32, 4, 2),
}
# TF32 (fp32 inputs under torch.set_float32_matmul_precision("high")) stages its tensor-core operands in
# shared memory, twice the bytes of fp16's (the large tiles would need 224–288 KB on sm_90, 176 KB on
# sm_80): the small fp32 tiles, on every architecture, at most 96 KB (sm_80–89) and 160 KB (sm_90).
_GPU_TILES_TF32 = _GPU_TILES_FP32_SMALL
_LARGE_BUDGET = SHARED_MEMORY_PER_BLOCK[80]  # A100's 163 KB: every _GPU_TILES variant fits


def gpu_tiles(kind: str, head_dim: int, dtype: torch.dtype, budget: int,
              input_precision: Optional[str] = None) -> tuple[int, int, int, int]:
    """The tile of pass ``kind`` for a GPU allowing ``budget`` bytes of shared memory per block.

    ``input_precision``: what :func:`_input_precision` gives fp32 ("ieee" or "tf32")."""
    key = (kind, head_dim <= 64)
    if dtype == torch.float32 and input_precision == "tf32":
        return _GPU_TILES_TF32[key]
    if dtype == torch.float32 and budget < _LARGE_BUDGET:
        return _GPU_TILES_FP32_SMALL[key]
    return _GPU_TILES[key]


def _tiles(kind: str, head_dim: int, dtype: torch.dtype, device: torch.device,
           budget: Optional[int]) -> tuple[int, int, int, int]:
    if INTERPRETED and device.type == "cpu":
        # Small tiles so that test sizes (N <= 256) span several blocks and partial last blocks.
        return 32, 32, 4, 1
    if budget is None:
        budget = gpu_shared_memory(device.index)
    return gpu_tiles(kind, head_dim, dtype, budget, _input_precision(dtype))


class Launch(NamedTuple):
    """One kernel launch: ``kernel[grid](*args, **meta)``; ``outputs`` are what the pass returns."""

    kernel: object
    grid: tuple
    args: tuple
    meta: dict
    outputs: tuple


def _neg_coef(sigma: Optional[Tensor], like: Tensor) -> Tensor:
    """``−log2e / (2σ²)`` per head (float32); a 1-element dummy when there is no prior."""
    if sigma is None:
        return torch.zeros(1, dtype=torch.float32, device=like.device)
    # σ ≥ SIGMA_MIN (kkattn._ops), so this is finite; a huge σ gives −0: G = 1.
    return (-0.5 * LOG2E) / (sigma * sigma)


def forward_launch(k: Tensor, v: Tensor, sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int,
                   scale: float, with_stats: bool, budget: Optional[int] = None) -> Launch:
    """The forward's launch; outputs ``out (B, H, N, D)`` (contiguous, k's dtype), ``lse (B, H, N)``
    float32 and, with ``with_stats``, ``out_off (B, H, N, D)`` and ``p_off (B, H, N)`` float32 (else None).
    ``budget``: shared memory per block to plan for (default: the device's)."""
    batch, heads, n_tokens, head_dim = k.shape
    out = empty_output(k.shape, like=k)
    lse = empty_output((batch, heads, n_tokens), like=k, dtype=torch.float32)
    out_off = empty_output(k.shape, like=k, dtype=torch.float32) if with_stats else None
    p_off = empty_output((batch, heads, n_tokens), like=k, dtype=torch.float32) if with_stats else None
    block_m, block_n, warps, stages = _tiles("forward", head_dim, k.dtype, k.device, budget)
    # fp16 inputs hold the weights (up to e^Δ) in fp16 for the P·V product: fp16's range (kkattn/_smoother.py).
    max_spread = _smoother.MAX_SPREAD_FP16 if k.dtype == torch.float16 else _smoother.MAX_SPREAD
    c, _, smooth = _smoother.plan(k, sigma is not None, num_prefix_tokens, scale, max_spread)
    args = (k, v, out, lse, out_off if with_stats else lse, p_off if with_stats else lse, _neg_coef(sigma, k), c, smooth,
            *k.stride(), *v.stride(), *out.stride(), heads, n_tokens, grid_w, num_prefix_tokens, float(scale))
    meta = dict(HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, HAS_PRIOR=sigma is not None,
                WITH_STATS=with_stats, DOT_UPCAST=_dot_upcast(k.dtype), INPUT_PRECISION=_input_precision(k.dtype),
                num_warps=warps, num_stages=stages)
    grid = (triton.cdiv(n_tokens, block_m), batch * heads)
    return Launch(kernels.nkk_fwd_kernel, grid, args, meta, (out, lse, out_off, p_off))


def backward_launch(dout: Tensor, k: Tensor, v: Tensor, lse: Tensor, delta: Tensor, delta_diag: Tensor,
                    p_diag: Tensor, sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int, scale: float,
                    need_dsigma: bool, budget: Optional[int] = None) -> Launch:
    """The backward's launch; outputs ``dk, dv`` (k's layout and dtype) and the per-program dσ partial
    sums ``(B, H, key blocks)`` float32 (a 1-element dummy unless ``need_dsigma``)."""
    batch, heads, n_tokens, head_dim = k.shape
    dk = empty_output_like(k)
    dv = empty_output_like(v)
    block_i, block_j, warps, stages = _tiles("backward", head_dim, k.dtype, k.device, budget)
    n_blocks_j = triton.cdiv(n_tokens, block_j)
    need_dsigma = need_dsigma and sigma is not None
    partial = torch.empty((batch, heads, n_blocks_j) if need_dsigma else (1,), dtype=torch.float32, device=k.device)
    # The backward's weights are fp32 until normalized: fp32's range for every dtype.
    smoother = _smoother.plan(k, sigma is not None, num_prefix_tokens, scale)
    args = (k, v, dout, lse, delta, delta_diag, p_diag, dk, dv, partial, _neg_coef(sigma, k), *smoother,
            *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
            heads, n_tokens, grid_w, num_prefix_tokens, float(scale))
    meta = dict(HEAD_DIM=head_dim, BLOCK_I=block_i, BLOCK_J=block_j, HAS_PRIOR=sigma is not None,
                NEED_DSIGMA=need_dsigma, DOT_UPCAST=_dot_upcast(k.dtype), INPUT_PRECISION=_input_precision(k.dtype),
                num_warps=warps, num_stages=stages)
    return Launch(kernels.nkk_bwd_kernel, (n_blocks_j, batch * heads), args, meta, (dk, dv, partial))


def forward(k: Tensor, v: Tensor, sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int,
            scale: float, with_stats: bool):
    """Returns ``(out, lse, out_off, p_off)``, see :func:`forward_launch`."""
    launch = forward_launch(k, v, sigma, grid_w, num_prefix_tokens, scale, with_stats)
    launch.kernel[launch.grid](*launch.args, **launch.meta)
    return launch.outputs


def backward(dout: Tensor, k: Tensor, v: Tensor, lse: Tensor, delta: Tensor, delta_diag: Tensor, p_diag: Tensor,
             sigma: Optional[Tensor], grid_w: int, num_prefix_tokens: int, scale: float,
             need_dsigma: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``dk, dv`` (k's dtype and layout) and ``(H,)`` ``Σ dS·G·d²`` (= dσ·σ³, float32; zeros unless asked)."""
    launch = backward_launch(dout, k, v, lse, delta, delta_diag, p_diag, sigma, grid_w, num_prefix_tokens, scale,
                             need_dsigma)
    launch.kernel[launch.grid](*launch.args, **launch.meta)
    dk, dv, partial = launch.outputs
    if need_dsigma and sigma is not None:
        dsigma = partial.sum(dim=(0, 2))  # fixed-shape reduction: deterministic
    else:
        dsigma = torch.zeros(k.shape[1], dtype=torch.float32, device=k.device)
    return dk, dv, dsigma

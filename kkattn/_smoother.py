"""Key–key attention as a symmetric kernel smoother: the shifts, and when they are safe to use.

With ``c_i = scale·‖k_i‖²/2 + g_i/2`` (g_i = 1 for grid tokens, 0 for prefix tokens and without a
prior), Cauchy–Schwarz and G ≤ 1 give ``S_ij − c_i − c_j = −scale·‖k_i − k_j‖²/2 + G_ij −
(g_i + g_j)/2 ≤ 0``.  So ``E_ij = exp(S_ij − c_i − c_j)`` is symmetric and lies in [0, 1], E_ii = 1,
and with ``W_j = exp(c_j − c_max)``::

    P_ij = E_ij W_j / l_i,   l_i = Σ_j E_ij W_j ≥ W_i ≥ e^−Δ,   lse_i = c_i + c_max + log l_i,

Δ = max c − min c.  The kernels use it three ways:

* **Backward: one exp per pair for P_ij and P_ji** (``P_ij = E_ij·W_j·r_i``, ``P_ji = E_ij·W_i·r_j``,
  ``r_i = 1/l_i``), with r's exponent taken as ``(c_max − c_i) − (lse_i − 2c_i)``: two small terms
  rather than ``c_i + c_max − lse_i``, whose rounding (eps·|c_i + c_max|) would bias a whole row.
* **Forward: a static shift.**  Row i's logits exceed its diagonal logit S_ii = 2c_i by at most
  c_max − c_i ≤ Δ (``S_ij ≤ c_i + c_j``), so the weights ``exp(S_ij − 2c_i)`` need no running max
  and the accumulators no rescaling; the diagonal weight is exactly 1, from the closed form (the
  tile product's S_ii equals 2c_i only to rounding).  Relative to the diagonal, the weights are as
  precise as the online softmax's in the peaked regime, where the diagonal is the row's max; the
  alternative shift c_i + c_max scales a row's weights down by W_i, which costs the tiny
  off-diagonal output O' its precision in fp16 (dk 0.15 against 0.008 in a peaked fp16 test).
* The C++ kernel's forward accumulates ``E_ij W_j`` (one exp per unordered pair for both rows, from
  the tile-pair schedule) and writes ``lse_i = 2c_i + log1p(l_i / W_i)``.

**Range.**

* Weights held in fp32 (the C++ kernel; the Triton backward; the Triton forward for fp32 and bf16,
  bf16 having fp32's exponent range): a term is lost only where ``E_ij W_j`` falls below fp32's
  normal range, e^−87.3, and a row holds at least ``W_i ≥ e^−Δ``, so a row loses under
  ``N·e^(Δ − 87.3)`` of itself: below fp32's half-ulp 2⁻²⁴ for Δ ≤ 48 and any N ≤ 7·10⁷.
  ``MAX_SPREAD``.  (The forward's weights ``exp(S_ij − 2c_i) ≤ e^Δ`` stay far from overflow.)
* fp16 weights (the Triton forward's P·V operand for fp16 inputs) reach e^Δ, and fp16 overflows at
  65504 ≈ e^11.1: ``MAX_SPREAD_FP16 = 8`` leaves a margin of 20×.

Beyond them (keys whose norms differ widely, saturated rows, non-finite keys) the kernels take the
online-softmax path, decided per (batch, head) on the device, without a host sync.  The compiled
kernels hold the same bound (``kSmootherMaxSpread`` in csrc/kkattn_cpu_tiles.h and
csrc/kkattn_cuda_kernels.cuh, whose backward applies it per tile pair; a test checks they agree).
"""
from __future__ import annotations

import torch
from torch import Tensor

MAX_SPREAD = 48.0
MAX_SPREAD_FP16 = 8.0


def shifts(k: Tensor, has_prior: bool, num_prefix_tokens: int, scale: float) -> Tensor:
    """``c (B, H, N)`` float32 for keys ``k (B, H, N, D)``."""
    c = 0.5 * scale * k.float().square().sum(-1)
    if has_prior:
        on_grid = torch.arange(k.shape[2], device=k.device) >= num_prefix_tokens
        c = c + 0.5 * on_grid
    return c


def plan(k: Tensor, has_prior: bool, num_prefix_tokens: int, scale: float,
         max_spread: float = MAX_SPREAD) -> tuple[Tensor, Tensor, Tensor]:
    """``(c (B, H, N), c_max (B, H), on (B, H))``: float32, float32, int32: on = 1 where the
    (batch, head)'s spread is at most ``max_spread`` (0 for NaN/inf keys).  All on k's device."""
    c = shifts(k, has_prior, num_prefix_tokens, scale)
    c_max = c.amax(-1)
    spread = c_max - c.amin(-1)
    on = (spread <= max_spread) & torch.isfinite(spread)
    return c.contiguous(), c_max.contiguous(), on.to(torch.int32).contiguous()

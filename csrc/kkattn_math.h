// The math of neighborhood key–key attention shared by the compiled kernels (CPU and CUDA):
// token index → grid position, the separable Gaussian prior and when it is negligible, the
// online-softmax update and the backward's logit gradient.  Mirrors kkattn/_prior.py and the
// Triton helpers in kkattn/backends/triton_kernels.py.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define KKATTN_HD __host__ __device__ __forceinline__
#else
#define KKATTN_HD inline
#endif

namespace kkattn {

// log2(e), for the kernels' exp2 forms (the CUDA weights, the CPU exp's range reduction).  Python's value:
// kkattn/_prior.py LOG2E.
constexpr float kLog2e = 1.4426950408889634f;

// A prior entry below 2^-24 changes no fp32 softmax weight: exp(s + g) = exp(s)·exp(g) and
// fl(exp(g)) == 1 for 0 <= g < 2^-24 (round to nearest), so tiles or grid rows whose *largest*
// G is below this bound skip the prior's work without changing the fp32 result.  (Only dσ, which
// needs G·d² everywhere, never skips.)  G < 2^-24 ⇔ d > σ·sqrt(48·ln 2) ≈ 5.77σ.
constexpr float kNegligiblePrior = 5.9604644775390625e-08f;  // 2^-24

struct GridPos {
  int64_t row;
  int64_t col;
  bool on_grid;  // false for prefix tokens (CLS, registers): no prior in their row or column
};

// Tokens num_prefix … N−1 lie row-major on a grid of width grid_w.
KKATTN_HD GridPos grid_pos(int64_t token, int64_t grid_w, int64_t num_prefix) {
  const int64_t p = token - num_prefix;
  if (p < 0) return {0, 0, false};
  return {p / grid_w, p % grid_w, true};
}

// One factor of the separable prior: G(i, j) = g(Δr)·g(Δc), g(t) = exp(−t²/(2σ²)).
KKATTN_HD float gauss_1d(int64_t t, float inv_two_var) {
  const float tf = static_cast<float>(t);
  return expf(-tf * tf * inv_two_var);
}

// Lower bound on the grid-row distance between the on-grid tokens of [i0, i1) and [j0, j1);
// returns -1 when either range has no on-grid token (then the tile has no prior at all).
KKATTN_HD int64_t min_row_gap(int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t grid_w,
                              int64_t num_prefix) {
  if (i1 - 1 < num_prefix || j1 - 1 < num_prefix) return -1;
  const int64_t ri0 = grid_pos(i0 < num_prefix ? num_prefix : i0, grid_w, num_prefix).row;
  const int64_t ri1 = grid_pos(i1 - 1, grid_w, num_prefix).row;
  const int64_t rj0 = grid_pos(j0 < num_prefix ? num_prefix : j0, grid_w, num_prefix).row;
  const int64_t rj1 = grid_pos(j1 - 1, grid_w, num_prefix).row;
  const int64_t gap = rj0 > ri1 ? rj0 - ri1 : (ri0 > rj1 ? ri0 - rj1 : 0);
  return gap;
}

// Online softmax: fold a block whose row maximum is block_max into the running (max, sum);
// returns the factor the running sum and accumulator are rescaled by.
KKATTN_HD float online_softmax_update(float& running_max, float block_max) {
  const float new_max = running_max > block_max ? running_max : block_max;
  const float alpha = expf(running_max - new_max);  // 0 on the first block (running_max = −inf)
  running_max = new_max;
  return alpha;
}

// Backward: the logit gradient dS = P ∘ (dP − δ), δ = rowsum(dO ∘ O); exactly 0 where P rounds to 1
// (within two ulps): the row is one-hot, and dP − δ taken in two summation orders would be rounding
// that dK multiplies by the other key (kkattn/_numerics.py; ONE_HOT_P is its value, checked by a test).
constexpr float ONE_HOT_P = 1.0f - 0x1p-23f;
KKATTN_HD float logit_grad(float p, float dp, float delta) { return p >= ONE_HOT_P ? 0.f : p * (dp - delta); }

}  // namespace kkattn

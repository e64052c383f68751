// CUDA kernels (device code only) for neighborhood key–key attention, O = softmax(scale·K Kᵀ + G) V, on tensor cores.
//
// fp16 / bf16 inputs, head dims 32, 64 and 128, fp32 accumulation, sm_80 and newer (WMMA 16×16×16).
// G is generated in-kernel from token indices through its separable form g(Δr)·g(Δc), read from a
// per-block table of g, so a logit costs one exp (the softmax's) and never a second one for the
// prior; tiles whose largest G is below fp32 resolution skip the prior (kkattn_math.h).
//
// Forward (FlashAttention-2 tiling): one block of 4 warps per (64 query rows, batch·head); each warp
// owns 16 rows and keeps their online-softmax state; O accumulates in shared memory in fp32 because
// WMMA's fragment layout is opaque and the running rescale is per row.  The row log-sum-exp is saved.
// Logits stay in natural units and the weights are exp2((s − m)·log2e), so a saturated row gives
// exactly 1 at its maximum and lse == m.  The diagonal weight P_ii is kept apart from the rest of
// the row; when asked, the off-diagonal output O' and weight p_off are written for the backward.
//
// Backward (symmetric single pass): one block per (64 keys J, batch·head) loops over all row blocks
// i.  S = K_i K_Jᵀ is computed once and gives both P_iJ = exp(S − L_i) and P_Jiᵀ = exp(S − L_J),
// from one exp of the smoother's E = exp(S − c_i − c_J) where the tile pair's range allows
// (smoother_factors; kkattn/_smoother.py), else from two;
// with dP_iJ = dO_i V_Jᵀ and dP_Jiᵀ = V_i dO_Jᵀ that is five matmuls per tile pair:
//   dV_J += P_iJᵀ dO_i,   dK_J += scale·(dS_iJ + dS_Jiᵀ)ᵀ K_i.
// On the diagonal P_ii is the forward's and dS_ii = −P_ii·δ'_i (kkattn/_ops.py: no cancellation).
// Every block owns its rows of dK and dV: no atomics, deterministic.  dσ·σ³ = Σ dS_iJ·G·d² is summed
// per block and reduced on the host side in a fixed order.
//
// This header is free of torch and of host code: csrc/kkattn_cuda.cu includes it for the launches
// and the op registration, and the host emulation test (tests/cuda_emu) compiles the very same
// source on the CPU after its CUDA shim.
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include <cstdint>

#include "kkattn_math.h"

// The block's dynamic shared memory; the host emulator (tests/cuda_emu) defines its own, one
// NaN-poisoned buffer per emulated block.
#ifndef KKATTN_SHARED_MEMORY
#define KKATTN_SHARED_MEMORY(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace kkattn {
namespace cuda {

using namespace nvcuda;

constexpr int kBM = 64;             // query rows per block (4 warps × 16)
constexpr int kBN = 64;             // keys per block
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTable = 256;         // g(t) for t < kTable from shared memory; beyond, computed

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<half>(half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ half from_f<half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// The prior for one (batch, head): g(t) = exp(−t²/(2σ²)) with a shared-memory table for small t.
struct Prior {
  bool on;             // σ given
  float inv_two_var;   // 1/(2σ²)
  int64_t grid_w, prefix;
  const float* table;  // shared memory, kTable entries

  __device__ __forceinline__ float g(int t) const {
    t = t < 0 ? -t : t;
    return t < kTable ? table[t] : gauss_1d(t, inv_two_var);
  }
  // G and ‖p_a − p_b‖² of two tokens at grid positions (row, col) from tile_positions (row −1:
  // a prefix token or past N, which has no prior).  32-bit math: no int64 division per logit.
  __device__ __forceinline__ float at(int row_a, int col_a, int row_b, int col_b, float* dist2 = nullptr) const {
    if (row_a < 0 || row_b < 0) {
      if (dist2) *dist2 = 0.f;
      return 0.f;
    }
    const int dr = row_a - row_b, dc = col_a - col_b;
    if (dist2) *dist2 = static_cast<float>(dr) * static_cast<float>(dr) + static_cast<float>(dc) * static_cast<float>(dc);
    return g(dr) * g(dc);
  }
  // Whether any G in rows [i0, i1) × keys [j0, j1) reaches fp32 resolution.
  __device__ __forceinline__ bool matters(int64_t i0, int64_t i1, int64_t j0, int64_t j1) const {
    if (!on) return false;
    const int64_t gap = min_row_gap(i0, i1, j0, j1, grid_w, prefix);
    return gap >= 0 && (gap >= kTable ? gauss_1d(gap, inv_two_var) : table[gap]) >= kNegligiblePrior;
  }
};

__device__ __forceinline__ Prior make_prior(const float* sigma, int h, int64_t grid_w, int64_t prefix, float* table) {
  Prior p{sigma != nullptr, 0.f, grid_w, prefix, table};
  if (p.on) {
    const float s = sigma[h];
    p.inv_two_var = 1.f / (2.f * s * s);
    for (int t = threadIdx.x; t < kTable; t += blockDim.x) table[t] = gauss_1d(t, p.inv_two_var);
  }
  return p;
}

// Grid positions of tokens [t0, t0 + count) into shared memory: rows[r] = −1 for a prefix token or one
// past N (no prior), else its grid row; cols[r] its grid column.  One division per token and tile.
__device__ __forceinline__ void tile_positions(int* rows, int* cols, int64_t t0, int count, int64_t N, int64_t grid_w,
                                               int64_t prefix) {
  for (int r = threadIdx.x; r < count; r += blockDim.x) {
    const GridPos p = grid_pos(t0 + r, grid_w, prefix);
    rows[r] = t0 + r < N && p.on_grid ? static_cast<int>(p.row) : -1;
    cols[r] = static_cast<int>(p.col);
  }
}

// rows × D tile of a contiguous (N, D) matrix into shared memory, zero past row N (16-byte chunks).
template <typename T, int D>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t row0, int rows, int64_t N) {
  constexpr int kChunks = D * sizeof(T) / 16;
  for (int c = threadIdx.x; c < rows * kChunks; c += blockDim.x) {
    const int r = c / kChunks, q = c % kChunks;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (row0 + r < N) val = reinterpret_cast<const uint4*>(src + (row0 + r) * D)[q];
    reinterpret_cast<uint4*>(dst + r * D)[q] = val;
  }
}

// C (16 × 16·n_tiles, fp32, row-major, ldc) (+)= A (16 × K, row-major) · B, where B is either Xᵀ for a
// row-major (16·n_tiles × K) X (b_transposed) or a row-major (K × 16·n_tiles) matrix; one warp.
template <typename T, int K>
__device__ __forceinline__ void warp_gemm(const T* a, int lda, const T* b, int ldb, bool b_transposed, float* c,
                                          int ldc, int n_tiles, bool accumulate) {
  for (int n = 0; n < n_tiles; ++n) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    if (accumulate)
      wmma::load_matrix_sync(acc, c + n * 16, ldc, wmma::mem_row_major);
    else
      wmma::fill_fragment(acc, 0.f);
    for (int k = 0; k < K; k += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, a + k, lda);
      if (b_transposed) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
        wmma::load_matrix_sync(fb, b + n * 16 * ldb + k, ldb);
        wmma::mma_sync(acc, fa, fb, acc);
      } else {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, b + k * ldb + n * 16, ldb);
        wmma::mma_sync(acc, fa, fb, acc);
      }
    }
    wmma::store_matrix_sync(c + n * 16, acc, ldc, wmma::mem_row_major);
  }
}

// Launch geometry (shared with the host emulator): blocks along x for one (batch·head) along y,
// kThreads threads each, with forward_smem / backward_smem bytes of dynamic shared memory.
constexpr int64_t forward_blocks(int64_t N) { return (N + kBM - 1) / kBM; }
constexpr int64_t backward_blocks(int64_t N) { return (N + kBN - 1) / kBN; }

template <typename T, int D>
constexpr size_t forward_smem() {
  return (kBM * D + 2 * kBN * D + kBM * kBN) * sizeof(T) + (kBM * kBN + kBM * D + 4 * kBM + kTable) * sizeof(float) +
         2 * kBN * sizeof(int);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) forward_kernel(const T* __restrict__ K, const T* __restrict__ V,
                                                           T* __restrict__ O, float* __restrict__ LSE,
                                                           float* __restrict__ O_off, float* __restrict__ P_off,
                                                           const float* __restrict__ sigma, int64_t N, int H,
                                                           int64_t grid_w, int64_t prefix, float scale) {
  KKATTN_SHARED_MEMORY(smem);
  T* sKi = reinterpret_cast<T*>(smem);
  T* sKj = sKi + kBM * D;
  T* sVj = sKj + kBN * D;
  T* sP = sVj + kBN * D;
  float* sS = reinterpret_cast<float*>(sP + kBM * kBN);
  float* sO = sS + kBM * kBN;
  float* sM = sO + kBM * D;
  float* sL = sM + kBM;
  float* sAlpha = sL + kBM;
  float* sD = sAlpha + kBM;  // diagonal weight (sL holds the off-diagonal sum)
  float* table = sD + kBM;
  int* sRowJ = reinterpret_cast<int*>(table + kTable);  // grid positions of the key tile
  int* sColJ = sRowJ + kBN;

  const int64_t bh = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* k = K + bh * N * D;
  const T* v = V + bh * N * D;
  const Prior prior = make_prior(sigma, static_cast<int>(bh % H), grid_w, prefix, table);
  load_tile<T, D>(sKi, k, i0, kBM, N);
  for (int e = threadIdx.x; e < kBM * D; e += blockDim.x) sO[e] = 0.f;
  for (int r = threadIdx.x; r < kBM; r += blockDim.x) {
    sM[r] = -INFINITY;
    sL[r] = 0.f;
    sD[r] = 0.f;
  }
  const int64_t i1 = i0 + kBM < N ? i0 + kBM : N;
  // Each lane handles half a row (32 keys) of its warp's 16 rows.
  const int row = warp * 16 + lane / 2, col0 = (lane % 2) * (kBN / 2);
  const int64_t i = i0 + row;
  const GridPos pos_i = grid_pos(i, grid_w, prefix);
  const int row_i = i < N && pos_i.on_grid ? static_cast<int>(pos_i.row) : -1, col_i = static_cast<int>(pos_i.col);

  for (int64_t j0 = 0; j0 < N; j0 += kBN) {
    __syncthreads();  // the previous tile's P·V is done with sKj/sVj
    load_tile<T, D>(sKj, k, j0, kBN, N);
    load_tile<T, D>(sVj, v, j0, kBN, N);
    if (prior.on) tile_positions(sRowJ, sColJ, j0, kBN, N, grid_w, prefix);
    __syncthreads();
    warp_gemm<T, D>(sKi + warp * 16 * D, D, sKj, D, true, sS + warp * 16 * kBN, kBN, kBN / 16,
                                     false);
    __syncwarp();
    const bool with_prior = prior.matters(i0, i1, j0, j0 + kBN < N ? j0 + kBN : N);
    float* s_row = sS + row * kBN;
    float tile_max = -INFINITY;
    // Lanes walk their half-rows in a staggered order (t + lane) mod 32: rows lie 64 floats apart, so
    // in lockstep all 32 lanes would hit one shared-memory bank; staggered, each hits its own.
    for (int t = 0; t < kBN / 2; ++t) {
      const int c = col0 + ((t + lane) & (kBN / 2 - 1));
      const int64_t j = j0 + c;
      float s = -INFINITY;
      if (j < N) {
        s = s_row[c] * scale;
        if (with_prior) s += prior.at(row_i, col_i, sRowJ[c], sColJ[c]);
      }
      s_row[c] = s;
      tile_max = fmaxf(tile_max, s);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    float running = sM[row];
    const float new_max = fmaxf(running, tile_max);  // finite: key j0 < N is valid
    const float alpha = exp2f((running - new_max) * kLog2e);   // 0 on the first tile (running = −inf)
    float sum = 0.f, diag = 0.f;
    T* p_row = sP + row * kBN;
    for (int t = 0; t < kBN / 2; ++t) {
      const int c = col0 + ((t + lane) & (kBN / 2 - 1));  // staggered, as above
      float p = exp2f((s_row[c] - new_max) * kLog2e);
      if (j0 + c == i) {  // the diagonal: kept out of the off-diagonal sum and P·V
        diag = p;
        p = 0.f;
      }
      p_row[c] = from_f<T>(p);
      sum += p;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    diag += __shfl_xor_sync(0xffffffffu, diag, 1);
    __syncwarp();
    if (lane % 2 == 0) {
      sM[row] = new_max;
      sL[row] = sL[row] * alpha + sum;
      sD[row] = sD[row] * alpha + diag;
      sAlpha[row] = alpha;
    }
    __syncwarp();
    for (int e = lane; e < 16 * D; e += 32) sO[(warp * 16) * D + e] *= sAlpha[warp * 16 + e / D];
    __syncwarp();
    warp_gemm<T, kBN>(sP + warp * 16 * kBN, kBN, sVj, D, false, sO + warp * 16 * D, D, D / 16, true);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < kBM * D; e += blockDim.x) {
    const int r = e / D;
    if (i0 + r >= N) continue;
    const int64_t at = (bh * N + i0 + r) * D + e % D;
    const float inv = 1.f / (sL[r] + sD[r]);
    O[at] = from_f<T>((sO[e] + sD[r] * to_f(v[(i0 + r) * D + e % D])) * inv);
    if (O_off) O_off[at] = sO[e] * inv;
  }
  for (int r = threadIdx.x; r < kBM; r += blockDim.x) {
    if (i0 + r >= N) continue;
    const float total = sL[r] + sD[r];
    LSE[bh * N + i0 + r] = sM[r] + logf(total);
    if (P_off) P_off[bh * N + i0 + r] = sL[r] / total;
  }
}

// The backward's smoother state per tile pair (see smoother_factors): c of both sides, two factors
// per row of each side, and the flag.
constexpr int kSmootherFloats = 3 * kBM + 3 * kBN + 1;
constexpr float kSmootherMaxSpread = 48.f;  // kkattn/_smoother.py MAX_SPREAD (fp32 weights)

// c_r = scale·‖k_r‖²/2 + g_r/2 (g = 1 on the grid) of rows [t0, t0 + 64), from global memory: −1 past N.
template <typename T, int D>
__device__ __forceinline__ void smoother_shifts(float* c, const T* k, int64_t t0, int64_t N, float scale,
                                                bool prior, int64_t prefix) {
  for (int r = threadIdx.x; r < kBN; r += blockDim.x) {
    const int64_t t = t0 + r;
    float sq = 0.f;
    if (t < N)
      for (int x = 0; x < D; ++x) {
        const float v = to_f(k[t * D + x]);
        sq += v * v;
      }
    c[r] = t < N ? 0.5f * scale * sq + (prior && t >= prefix ? 0.5f : 0.f) : -1.f;
  }
}

// One warp: for the tile pair (rows i, keys J) whether the smoother applies and its factors.  With
// t_J = max c over J and t_i = max c over i (kkattn/_smoother.py, shifted per tile pair instead of by
// the global max): P_iJ = E·fi[r]·fJ[c] with fi[r] = exp((t_J − c_i) − (L_i − 2c_i)), fJ[c] = exp(c_j − t_J),
// and P_Jiᵀ = E·fi[kBM + r]·fJ[kBN + c] with fi[kBM + r] = exp(c_i − t_i), fJ[kBN + c] = exp((t_i − c_j) − (L_j − 2c_j)).
// Every factor is ≤ e^48 when the pair's spreads are within kSmootherMaxSpread; else *flag = 0.
__device__ __forceinline__ void smoother_factors(const float* ci, const float* cJ, const float* Li, const float* LJ,
                                                 float* fi, float* fJ, float* flag, int lane) {
  float ti = -1.f, tJ = -1.f, mi = 3.4e38f, mJ = 3.4e38f;  // c ≥ 0 on valid rows, −1 past N
  float bad = 0.f;                                          // 1: a NaN c (non-finite keys)
  for (int r = lane; r < kBM; r += 32) {
    if (ci[r] >= 0.f) {
      ti = fmaxf(ti, ci[r]);
      mi = fminf(mi, ci[r]);
    } else if (ci[r] != -1.f) {
      bad = 1.f;
    }
    if (cJ[r] >= 0.f) {
      tJ = fmaxf(tJ, cJ[r]);
      mJ = fminf(mJ, cJ[r]);
    } else if (cJ[r] != -1.f) {
      bad = 1.f;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    ti = fmaxf(ti, __shfl_xor_sync(0xffffffffu, ti, o));
    tJ = fmaxf(tJ, __shfl_xor_sync(0xffffffffu, tJ, o));
    mi = fminf(mi, __shfl_xor_sync(0xffffffffu, mi, o));
    mJ = fminf(mJ, __shfl_xor_sync(0xffffffffu, mJ, o));
    bad = fmaxf(bad, __shfl_xor_sync(0xffffffffu, bad, o));
  }
  // inf − x is inf: infinite keys fail the bound as well
  const bool on = bad == 0.f && tJ - mi <= kSmootherMaxSpread && ti - mJ <= kSmootherMaxSpread;
  if (lane == 0) *flag = on ? 1.f : 0.f;
  if (!on) return;
  for (int r = lane; r < kBM; r += 32) {
    fi[r] = ci[r] >= 0.f ? __expf((tJ - ci[r]) - (Li[r] - 2.f * ci[r])) : 0.f;
    fi[kBM + r] = ci[r] >= 0.f ? __expf(ci[r] - ti) : 0.f;
    fJ[r] = cJ[r] >= 0.f ? __expf(cJ[r] - tJ) : 0.f;
    fJ[kBN + r] = cJ[r] >= 0.f ? __expf((ti - cJ[r]) - (LJ[r] - 2.f * cJ[r])) : 0.f;
  }
}

template <typename T, int D>
constexpr size_t backward_smem() {
  return (6 * kBM * D + 3 * kBM * kBN) * sizeof(T) +
         (2 * kBM * kBN + 2 * kBM + 2 * kBN + kTable + kWarps + kSmootherFloats) * sizeof(float) +
         2 * (kBM + kBN) * sizeof(int);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    const T* __restrict__ K, const T* __restrict__ V, const T* __restrict__ dO, const float* __restrict__ LSE,
    const float* __restrict__ Delta, const float* __restrict__ Delta_diag, const float* __restrict__ P_diag,
    const float* __restrict__ sigma, T* __restrict__ dK, T* __restrict__ dV,
    float* __restrict__ dsigma_part, int64_t N, int H, int64_t grid_w, int64_t prefix, float scale, bool need_dsigma) {
  static_assert(kBM == kBN, "the symmetric pass pairs equal blocks");
  KKATTN_SHARED_MEMORY(smem);
  T* sKJ = reinterpret_cast<T*>(smem);
  T* sVJ = sKJ + kBN * D;
  T* sdOJ = sVJ + kBN * D;
  T* sKi = sdOJ + kBN * D;
  T* sVi = sKi + kBM * D;
  T* sdOi = sVi + kBM * D;
  T* sP = sdOi + kBM * D;     // P_iJ           (BM × BN)
  T* sPt = sP + kBM * kBN;    // P_Jiᵀ          (BM × BN)
  T* sT = sPt + kBM * kBN;    // dS_iJ + dS_Jiᵀ (BM × BN)
  float* sA = reinterpret_cast<float*>(sT + kBM * kBN);  // S, then dP_Jiᵀ
  float* sB = sA + kBM * kBN;                            // dP_iJ
  float* sLi = sB + kBM * kBN;
  float* sDi = sLi + kBM;
  float* sLJ = sDi + kBM;
  float* sDJ = sLJ + kBN;
  float* table = sDJ + kBN;
  float* sRed = table + kTable;
  float* sCi = sRed + kWarps;  // the smoother's c of both sides, factors (2 per row) and flag
  float* sCJ = sCi + kBM;
  float* sFi = sCJ + kBN;
  float* sFJ = sFi + 2 * kBM;
  float* sSmooth = sFJ + 2 * kBN;
  int* sRowI = reinterpret_cast<int*>(sSmooth + 1);  // grid positions of the row tile and the key tile
  int* sColI = sRowI + kBM;
  int* sRowJ = sColI + kBM;
  int* sColJ = sRowJ + kBN;

  const int64_t bh = blockIdx.y, j0 = static_cast<int64_t>(blockIdx.x) * kBN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t off = bh * N * D;
  const Prior prior = make_prior(sigma, static_cast<int>(bh % H), grid_w, prefix, table);
  const float* lse = LSE + bh * N;
  const float* delta = Delta + bh * N;
  const float* delta_diag = Delta_diag + bh * N;
  const float* p_diag = P_diag + bh * N;
  // One side of a tile pair, rows [t0, t0 + 64): K, V, dO, their lse and δ, and (with a prior) grid positions.
  const auto load_side = [&](T* sK, T* sV, T* sdO, float* sL, float* sDelta, float* sC, int* rows, int* cols,
                             int64_t t0) {
    load_tile<T, D>(sK, K + off, t0, kBN, N);
    smoother_shifts<T, D>(sC, K + off, t0, N, scale, prior.on, prefix);
    load_tile<T, D>(sV, V + off, t0, kBN, N);
    load_tile<T, D>(sdO, dO + off, t0, kBN, N);
    if (prior.on) tile_positions(rows, cols, t0, kBN, N, grid_w, prefix);
    for (int r = threadIdx.x; r < kBN; r += blockDim.x) {
      sL[r] = t0 + r < N ? lse[t0 + r] : 0.f;
      sDelta[r] = t0 + r < N ? delta[t0 + r] : 0.f;
    }
  };
  load_side(sKJ, sVJ, sdOJ, sLJ, sDJ, sCJ, sRowJ, sColJ, j0);
  const int64_t j1 = j0 + kBN < N ? j0 + kBN : N;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_dk[D / 16], acc_dv[D / 16];
  for (int n = 0; n < D / 16; ++n) {
    wmma::fill_fragment(acc_dk[n], 0.f);
    wmma::fill_fragment(acc_dv[n], 0.f);
  }
  float dsig = 0.f;

  for (int64_t i0 = 0; i0 < N; i0 += kBM) {
    __syncthreads();  // the previous pair's products are done with the i-side tiles
    load_side(sKi, sVi, sdOi, sLi, sDi, sCi, sRowI, sColI, i0);
    __syncthreads();
    if (warp == 0) smoother_factors(sCi, sCJ, sLi, sLJ, sFi, sFJ, sSmooth, lane);  // read after the next barrier
    // 1. S_iJ = K_i K_Jᵀ → sA;  2. dP_iJ = dO_i V_Jᵀ → sB (before the softmax, so that dσ takes
    // dS_iJ = P_iJ (dP_iJ − δ_i) from the fp32 P: the tiny off-diagonal P of a peaked row vanish in fp16)
    warp_gemm<T, D>(sKi + warp * 16 * D, D, sKJ, D, true, sA + warp * 16 * kBN, kBN, kBN / 16, false);
    warp_gemm<T, D>(sdOi + warp * 16 * D, D, sVJ, D, true, sB + warp * 16 * kBN, kBN, kBN / 16, false);
    __syncthreads();
    const int64_t i1 = i0 + kBM < N ? i0 + kBM : N;
    const bool with_prior = need_dsigma ? prior.on : prior.matters(i0, i1, j0, j1);
    const bool smooth = *sSmooth != 0.f;
    for (int e = threadIdx.x; e < kBM * kBN; e += blockDim.x) {
      const int r = e / kBN, c = e % kBN;
      const int64_t i = i0 + r, j = j0 + c;
      float p = 0.f, pt = 0.f;
      if (i < N && j < N) {
        float d2 = 0.f;
        const float g = with_prior ? prior.at(sRowI[r], sColI[r], sRowJ[c], sColJ[c], &d2) : 0.f;
        const float s = sA[e] * scale + g;
        if (smooth) {  // one exp for both (smoother_factors)
          const float e_ij = __expf(s - sCi[r] - sCJ[c]);
          p = e_ij * (sFi[r] * sFJ[c]);
          pt = e_ij * (sFi[kBM + r] * sFJ[kBN + c]);
        } else {
          p = __expf(s - sLi[r]);   // P_iJ
          pt = __expf(s - sLJ[c]);  // P_Ji[c][r], since S_Ji = S_iJᵀ
        }
        if (i == j) p = pt = p_diag[i];  // the forward's P_ii
        // each (i, j) pair is counted once: in dS_iJ of key block J; the diagonal has d² = 0
        if (need_dsigma && i != j) dsig += logit_grad(p, sB[e], sDi[r]) * g * d2;
      }
      sP[e] = from_f<T>(p);
      sPt[e] = from_f<T>(pt);
    }
    __syncthreads();
    // 3. dP_Jiᵀ = V_i dO_Jᵀ → sA
    warp_gemm<T, D>(sVi + warp * 16 * D, D, sdOJ, D, true, sA + warp * 16 * kBN, kBN, kBN / 16, false);
    __syncthreads();
    for (int e = threadIdx.x; e < kBM * kBN; e += blockDim.x) {
      const int r = e / kBN, c = e % kBN;
      const int64_t i = i0 + r, j = j0 + c;
      float t = 0.f;
      if (i < N && j < N) {
        float ds = logit_grad(to_f(sP[e]), sB[e], sDi[r]);    // dS_iJ[r][c]
        float dst = logit_grad(to_f(sPt[e]), sA[e], sDJ[c]);  // dS_Ji[c][r]
        if (i == j) ds = dst = -to_f(sP[e]) * delta_diag[i];  // dS_ii = −P_ii·δ'_i
        t = ds + dst;
      }
      sT[e] = from_f<T>(t);
    }
    __syncthreads();
    // 4. dV_J += P_iJᵀ dO_i;  5. dK_J += (dS_iJ + dS_Jiᵀ)ᵀ K_i   (warp w owns keys j0 + 16w …)
    for (int n = 0; n < D / 16; ++n) {
      for (int k = 0; k < kBM; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> fp, ft;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fdo, fk;
        wmma::load_matrix_sync(fp, sP + k * kBN + warp * 16, kBN);
        wmma::load_matrix_sync(ft, sT + k * kBN + warp * 16, kBN);
        wmma::load_matrix_sync(fdo, sdOi + k * D + n * 16, D);
        wmma::load_matrix_sync(fk, sKi + k * D + n * 16, D);
        wmma::mma_sync(acc_dv[n], fp, fdo, acc_dv[n]);
        wmma::mma_sync(acc_dk[n], ft, fk, acc_dk[n]);
      }
    }
  }
  __syncthreads();
  // Write dK_J (× scale) and dV_J through shared memory (sA/sB: 2·BM·BN floats ≥ BN·D for D ≤ 128).
  float* stage = sA;
  for (int pass = 0; pass < 2; ++pass) {
    for (int n = 0; n < D / 16; ++n)
      wmma::store_matrix_sync(stage + warp * 16 * D + n * 16, pass == 0 ? acc_dk[n] : acc_dv[n], D, wmma::mem_row_major);
    __syncthreads();
    T* dst = (pass == 0 ? dK : dV) + off;
    const float mult = pass == 0 ? scale : 1.f;
    for (int e = threadIdx.x; e < kBN * D; e += blockDim.x) {
      const int r = e / D;
      if (j0 + r < N) dst[(j0 + r) * D + e % D] = from_f<T>(stage[e] * mult);
    }
    __syncthreads();
  }
  if (need_dsigma) {  // fixed-order block reduction: deterministic
    for (int o = 16; o > 0; o >>= 1) dsig += __shfl_xor_sync(0xffffffffu, dsig, o);
    if (lane == 0) sRed[warp] = dsig;
    __syncthreads();
    if (threadIdx.x == 0) {
      float total = 0.f;
      for (int w = 0; w < kWarps; ++w) total += sRed[w];
      dsigma_part[bh * gridDim.x + blockIdx.x] = total;
    }
  }
}

}  // namespace cuda
}  // namespace kkattn

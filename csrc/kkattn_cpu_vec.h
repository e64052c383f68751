// The CPU kernel's vectorized row kernels: exp, the softmax and smoother passes, fp32 → bf16/fp16
// conversion and register transposes.  Internal to csrc/kkattn_cpu.cpp (one translation unit).
//
// Hot loops are compiled for AVX-512F, AVX2 and baseline x86-64; the loader picks one by CPU feature
// ("arch=" clones would dispatch on the CPU model and leave e.g. AMD EPYC on the baseline copy).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) || defined(__SSE__)
#include <xmmintrin.h>
#endif

#include "kkattn_math.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KKATTN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KKATTN_CLONES
#endif

namespace kkattn {
namespace cpu {
namespace {

// exp(x), branch-free (Cephes' expf polynomial, ~1 ulp), written on GCC vectors so that every
// target_clones copy vectorizes it.  The row loops take 16 lanes (AVX-512: one zmm; AVX2: two ymm):
// on Zen 4 that halved the smoother's exp pass against 8 lanes (11.5% → 4.8% of a 32×32 forward).  Inputs below
// −87.3 give exactly 0 (no denormals): a saturated softmax row must be exactly one-hot, or its
// ~1e-38 leftovers, times keys of 1e4, show up in dK where the true gradient is 0.
// Flushes denormal results to zero and reads denormal inputs as zero (MXCSR's FTZ and DAZ bits) for one kernel
// thread's work, and restores the caller's mode.  Every denormal the kernels could form is a weight, a prior
// entry or a product of them below 2^-126: far under the rounding of the sums they enter (each row's diagonal
// weight is ≥ e^-48), so the results do not change; but each denormal operand costs a microcode assist of
// ~100 cycles, and the far prior entries and e·W products of the peaked regime formed them by the thousand per tile
// (the smoother's epilogue ran 4× slower for it).
struct FlushDenormals {
#if defined(__x86_64__) || defined(__SSE__)
  unsigned int saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040u); }  // FTZ (bit 15) | DAZ (bit 6)
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

template <typename V>
__attribute__((always_inline)) inline V load(const float* p) {  // unaligned vector load
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V>
__attribute__((always_inline)) inline void store(float* p, V v) { std::memcpy(p, &v, sizeof v); }

// Cephes' expf, once for every vector code here and in kkattn_cpu_epilogue.h: exp(x) = 2^n·p(r), n = round(x·log2 e),
// r = x − n·ln 2 in two parts (ln2_hi exact in 9 bits), p a degree-5 polynomial; 0 below kExpUnderflow.
namespace cephes_exp {
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;  // kLog2e: kkattn_math.h
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
constexpr float kExpUnderflow = -87.3f, kExpOverflow = 88.3f;
}  // namespace cephes_exp

template <typename F, typename I>
__attribute__((always_inline)) inline F exp_poly(F x) {
  using namespace cephes_exp;
  constexpr float kRound = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  const auto underflow = x < kExpUnderflow;
  x = underflow ? F{} + kExpUnderflow : x;
  x = x > kExpOverflow ? F{} + kExpOverflow : x;
  const F t = x * kLog2e + kRound;
  const F n = t - kRound;
  F r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  F p = r * kP0 + kP1;
  p = p * r + kP2;
  p = p * r + kP3;
  p = p * r + kP4;
  p = p * r + kP5;
  p = p * r * r + r + 1.0f;
  I ti, ki;
  const F round_v = F{} + kRound;
  std::memcpy(&ti, &t, sizeof ti);
  std::memcpy(&ki, &round_v, sizeof ki);
  const I bits = (ti - ki + 127) << 23;  // 2^n
  F scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return underflow ? F{} : p * scale;
}

__attribute__((always_inline)) inline v8f exp8(v8f x) { return exp_poly<v8f, v8i>(x); }

// 16 lanes for the smoother's exp pass: one zmm on AVX-512, two ymm on AVX2.
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16u16 __attribute__((vector_size(32)));

// The scalar tail uses the same polynomial on one lane, so results do not depend on alignment.
__attribute__((always_inline)) inline float exp_approx(float x) {
  v8f v = {x};
  return exp8(v)[0];
}

KKATTN_CLONES float row_max(const float* s, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd simdlen(8) reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

// s[j] = exp(s[j] − shift); returns the sum.
KKATTN_CLONES float exp_shift_sum(float* s, int64_t n, float shift) {
  v16f acc = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const v16f e = exp_poly<v16f, v16i>(load<v16f>(s + j) - shift);
    store<v16f>(s + j, e);
    acc += e;
  }
  float sum = 0.f;
  for (int lane = 0; lane < 16; ++lane) sum += acc[lane];
  for (; j < n; ++j) {
    s[j] = exp_approx(s[j] - shift);
    sum += s[j];
  }
  return sum;
}

// dst[j] = exp(s[j] − shift[j]).
KKATTN_CLONES void exp_shift_vec(float* __restrict dst, const float* __restrict s, const float* __restrict shift,
                                 int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) store<v16f>(dst + j, exp_poly<v16f, v16i>(load<v16f>(s + j) - load<v16f>(shift + j)));
  for (; j < n; ++j) dst[j] = exp_approx(s[j] - shift[j]);
}

KKATTN_CLONES void axpy(float* __restrict y, const float* __restrict x, float a, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] += a * x[j];
}

KKATTN_CLONES void scale_row(float* y, float a, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] *= a;
}

// t[j] = p[j]·(dp[j] − delta) + pt[j]·(dpt[j] − delta_j[j]) = dS_iJ + dS_Jiᵀ for one row; ds[j] keeps dS_iJ.
KKATTN_CLONES void logit_grads(float* __restrict ds, float* __restrict t, const float* __restrict p,
                               const float* __restrict dp, float delta, const float* __restrict pt,
                               const float* __restrict dpt, const float* __restrict delta_j, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float a = logit_grad(p[j], dp[j], delta);
    ds[j] = a;
    t[j] = a + logit_grad(pt[j], dpt[j], delta_j[j]);
  }
}

// Two-input shuffle of 8-lane vectors with constant indices: GCC's __builtin_shuffle (GCC ≥ 10), clang's
// __builtin_shufflevector.
#if defined(__clang__)
#define KKATTN_SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define KKATTN_SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, v8i{__VA_ARGS__})
#endif

// dst (cols × ldd) = srcᵀ of src (rows × lds) (kAdd: dst += srcᵀ), rows and cols multiples of 8, in 8×8 blocks of
// register shuffles (unpack, shuffle, lane permute on AVX2/AVX-512).
template <bool kAdd>
__attribute__((always_inline)) inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  v8f r[8], t[8], u[8];
  for (int q = 0; q < 8; ++q) r[q] = load<v8f>(src + q * lds);
  for (int q = 0; q < 8; q += 2) {
    t[q] = KKATTN_SHUFFLE8(r[q], r[q + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[q + 1] = KKATTN_SHUFFLE8(r[q], r[q + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int q = 0; q < 8; q += 4)
    for (int o = 0; o < 2; ++o) {
      u[q + 2 * o] = KKATTN_SHUFFLE8(t[q + o], t[q + o + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[q + 2 * o + 1] = KKATTN_SHUFFLE8(t[q + o], t[q + o + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  // u[0..3]: columns {0,1}, {2,3}... of rows 0–3 in low/high halves; u[4..7] the same for rows 4–7.
  for (int q = 0; q < 4; ++q) {  // u[q] and u[q + 4] hold columns q and q + 4
    v8f lo = KKATTN_SHUFFLE8(u[q], u[q + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    v8f hi = KKATTN_SHUFFLE8(u[q], u[q + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    if constexpr (kAdd) {
      lo += load<v8f>(dst + q * ldd);
      hi += load<v8f>(dst + (q + 4) * ldd);
    }
    store<v8f>(dst + q * ldd, lo);
    store<v8f>(dst + (q + 4) * ldd, hi);
  }
}

// dst (cols × ldd) = srcᵀ of 32-bit src (rows × lds), moved bit for bit: cols a multiple of 8, any rows (the last
// ones one by one).
KKATTN_CLONES void transpose32(const uint32_t* src, int64_t rows, int64_t cols, int64_t lds, uint32_t* dst,
                               int64_t ldd) {
  const int64_t whole = rows / 8 * 8;
  for (int64_t a = 0; a < whole; a += 8)
    for (int64_t b = 0; b < cols; b += 8)
      transpose8x8<false>(reinterpret_cast<const float*>(src + a * lds + b), lds,
                          reinterpret_cast<float*>(dst + b * ldd + a), ldd);
  for (int64_t a = whole; a < rows; ++a)
    for (int64_t b = 0; b < cols; ++b) dst[b * ldd + a] = src[a * lds + b];
}

// VNNI pairs of rows: dst[c] = even[c] | odd[c] << 16 for n (a multiple of 16) 16-bit columns; odd null: zeros.
KKATTN_CLONES void interleave_rows(const uint16_t* even, const uint16_t* odd, int64_t n, uint32_t* dst) {
  for (int64_t c = 0; c < n; c += 16) {
    v16u16 e, o = {};
    std::memcpy(&e, even + c, sizeof e);
    if (odd) std::memcpy(&o, odd + c, sizeof o);
    const v16u w = __builtin_convertvector(e, v16u) | (__builtin_convertvector(o, v16u) << 16);
    std::memcpy(dst + c, &w, sizeof w);
  }
}

// The two halves of n (a multiple of 16) 32-bit slots: lo[c] = src[c] & 0xFFFF, hi[c] = src[c] >> 16.
KKATTN_CLONES void split_halves(const uint32_t* src, int64_t n, uint16_t* lo, uint16_t* hi) {
  for (int64_t c = 0; c < n; c += 16) {
    v16u w;
    std::memcpy(&w, src + c, sizeof w);
    const v16u16 l = __builtin_convertvector(w & 0xFFFFu, v16u16), h = __builtin_convertvector(w >> 16, v16u16);
    std::memcpy(lo + c, &l, sizeof l);
    std::memcpy(hi + c, &h, sizeof h);
  }
}

// dst (cols × ldd) += srcᵀ of src (rows × lds): rows a multiple of 8, any cols (the last columns one by one).
KKATTN_CLONES void transpose_add(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd) {
  const int64_t whole = cols / 8 * 8;
  for (int64_t a = 0; a < rows; a += 8)
    for (int64_t b = 0; b < whole; b += 8) transpose8x8<true>(src + a * lds + b, lds, dst + b * ldd + a, ldd);
  for (int64_t b = whole; b < cols; ++b)
    for (int64_t a = 0; a < rows; ++a) dst[b * ldd + a] += src[a * lds + b];
}

}  // namespace
}  // namespace cpu
}  // namespace kkattn

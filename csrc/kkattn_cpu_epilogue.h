// The smoother forward's epilogue: all the elementwise work of one tile between its two products, in one
// pass over the logits.  Internal to csrc/kkattn_cpu.cpp.
//
// For the tile's logits s = K_i K_Jᵀ (unscaled, fp32) it forms E_ab = exp(scale·s_ab + G_ab − c_a − c_b), one exp
// per pair (kkattn_cpu_tiles.h, "the smoother"), with the prior G_ab built per row from the strip's key runs
// (kkattn_cpu_prior.h), and writes what the second products read:
//  * fp32: E over s, row_sum[a] += Σ_b E_ab W_b and, both sides, col_sum[b] += Σ_a E_ab W_a.
//  * fp16/bf16: A_ab = T(E_ab W_b), the weights of acc_i += A·V_J (ri × lda, zero past rj), row_sum[a] += Σ_b A_ab
//    before rounding; both sides also M_ab = T(E_ab W_a), the B operand of acc_Jᵀ += V_iᵀ·M, straight into the
//    VNNI layout cpublas::pack gives (element (a, b) at 16-bit slot ((a/2)·ldm + b)·2 + a%2: vnni_layout_ok,
//    kkattn_cpu_products.h), and col_sum[b] += Σ_a M_ab before rounding.  fp16 row-scales both (A by 1/W_a, M by
//    1/W_b: Operands::kRowScaled) to stay within its range.
// So the scale, the prior's axpy runs, the exps, the rounding and the transposed operand are one read of s: they
// were five passes and a transpose.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "kkattn_cpu_prior.h"
#include "kkattn_cpu_vec.h"

namespace kkattn {
namespace cpu {
namespace {

struct Epilogue {
  bool avx512;  // take the AVX-512-BF16 pass (vector_isa_avx512)
  float* s;  // ri × rj logits, leading dimension ld; the diagonal tile's (a, a) entries are set to −inf here
  int64_t ld, i0, ri, j0, rj;
  bool diagonal, both_sides;
  float scale;
  const Prior* prior;  // null: no prior
  int64_t h;
  const KeyRun* runs;  // the strip's key runs (strip_runs), n_runs of them
  int64_t n_runs;
  float* g;                  // scratch, rj: one row of the prior
  const float *c, *w, *iw;   // the head's c, W = exp(c − c_max) and (fp16) 1/W, indexed by token
  float *row_sum, *col_sum;  // ri and rj
  void* a;                   // half: A, ri × lda
  int64_t lda;
  uint32_t* m;  // half, both sides: M in VNNI pairs of rows, ceil(ri/2) × ldm 32-bit slots
  int64_t ldm;
};

typedef uint32_t v16u __attribute__((vector_size(64)));

// x rounded to bf16 (nearest even; finite x), its bits in the high half of each 32-bit lane, the low half zero.
__attribute__((always_inline)) inline v16u bf16_high(v16f x) {
  v16u bits;
  std::memcpy(&bits, &x, sizeof bits);
  return (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
}

template <typename T>
__attribute__((always_inline)) inline uint16_t half_bits(float x) {
  const T t(x);
  uint16_t bits;
  std::memcpy(&bits, &t, sizeof bits);
  return bits;
}

// Before row a: leaves the diagonal out (E_aa = 0, added apart) and builds the row's prior in g; false when it has
// none.
inline bool start_row(const Epilogue& t, int64_t a) {
  if (t.diagonal) t.s[a * t.ld + a] = -std::numeric_limits<float>::infinity();
  return t.prior && prior_row(*t.prior, t.h, t.i0 + a, t.runs, t.n_runs, t.rj, t.g);
}

// With an odd row count, M's last pair has no second row: zeros in its high halves.
inline void zero_missing_partner(const Epilogue& t) {
  if (t.ri % 2 == 0) return;
  uint32_t* mrow = t.m + (t.ri / 2) * t.ldm;
  for (int64_t b = 0; b < t.ldm; ++b) mrow[b] &= 0xFFFFu;
}

// Row a of the tile; kPrior: g holds its prior row.
template <typename T, bool kPrior, bool kBoth>
__attribute__((always_inline)) inline void epilogue_row(const Epilogue& t, int64_t a) {
  constexpr bool kHalf = !std::is_same_v<T, float>, kRowScaled = std::is_same_v<T, at::Half>;
  float* s = t.s + a * t.ld;
  const float* g = t.g;
  const float c_a = t.c[t.i0 + a], w_a = t.w[t.i0 + a];
  const float iw_a = kRowScaled ? t.iw[t.i0 + a] : 1.f;
  const float *c_j = t.c + t.j0, *w_j = t.w + t.j0, *iw_j = kRowScaled ? t.iw + t.j0 : nullptr;
  T* arow = kHalf ? static_cast<T*>(t.a) + a * t.lda : nullptr;
  uint32_t* mrow = kHalf && kBoth ? t.m + (a / 2) * t.ldm : nullptr;
  const bool odd = a % 2 == 1;
  float* col = t.col_sum;
  v16f acc = {};
  int64_t b = 0;
  for (; b + 16 <= t.rj; b += 16) {
    v16f x = load<v16f>(s + b) * t.scale;
    if constexpr (kPrior) x += load<v16f>(g + b);
    const v16f e = exp_poly<v16f, v16i>(x - c_a - load<v16f>(c_j + b));
    const v16f ew = e * load<v16f>(w_j + b);
    acc += ew;
    if constexpr (!kHalf) {
      store<v16f>(s + b, e);
      if constexpr (kBoth) store<v16f>(col + b, load<v16f>(col + b) + e * w_a);
    } else {
      const v16f av = kRowScaled ? ew * iw_a : ew;
      if constexpr (std::is_same_v<T, at::BFloat16>) {
        const v16u16 bits = __builtin_convertvector(bf16_high(av) >> 16, v16u16);
        std::memcpy(arow + b, &bits, sizeof bits);
      } else {
        for (int q = 0; q < 16; ++q) arow[b + q] = T(av[q]);
      }
      if constexpr (kBoth) {
        const v16f mv = kRowScaled ? e * w_a * load<v16f>(iw_j + b) : e * w_a;
        store<v16f>(col + b, load<v16f>(col + b) + mv);
        v16u hi;
        if constexpr (std::is_same_v<T, at::BFloat16>) {
          hi = bf16_high(mv);
        } else {
          for (int q = 0; q < 16; ++q) hi[q] = static_cast<uint32_t>(half_bits<T>(mv[q])) << 16;
        }
        uint32_t* dst = mrow + b;
        if (odd) {
          v16u old;
          std::memcpy(&old, dst, sizeof old);
          hi |= old;
        } else {
          hi >>= 16;
        }
        std::memcpy(dst, &hi, sizeof hi);
      }
    }
  }
  float sum = 0.f;
  for (int lane = 0; lane < 16; ++lane) sum += acc[lane];
  for (; b < t.rj; ++b) {  // the tail, with the same polynomial
    float x = s[b] * t.scale;
    if constexpr (kPrior) x += g[b];
    const float e = exp_approx(x - c_a - c_j[b]), ew = e * w_j[b];
    sum += ew;
    if constexpr (!kHalf) {
      s[b] = e;
      if constexpr (kBoth) col[b] += e * w_a;
    } else {
      arow[b] = T(ew * iw_a);
      if constexpr (kBoth) {
        const float mv = kRowScaled ? e * w_a * iw_j[b] : e * w_a;
        col[b] += mv;
        const uint32_t bits = half_bits<T>(mv);
        mrow[b] = odd ? (mrow[b] | (bits << 16)) : bits;
      }
    }
  }
  if constexpr (kHalf) {
    std::fill(arow + t.rj, arow + t.lda, T(0.f));
    if constexpr (kBoth)
      if (!odd) std::fill(mrow + t.rj, mrow + t.ldm, 0u);
  }
  t.row_sum[a] += sum * iw_a;
}

template <typename T, bool kBoth>
__attribute__((always_inline)) inline void epilogue_body(const Epilogue& t) {
  for (int64_t a = 0; a < t.ri; ++a)
    start_row(t, a) ? epilogue_row<T, true, kBoth>(t, a) : epilogue_row<T, false, kBoth>(t, a);
  if constexpr (!std::is_same_v<T, float> && kBoth) zero_missing_partner(t);
}

KKATTN_CLONES void epilogue_generic_fp32(const Epilogue& t) {
  t.both_sides ? epilogue_body<float, true>(t) : epilogue_body<float, false>(t);
}
KKATTN_CLONES void epilogue_generic_bf16(const Epilogue& t) {
  t.both_sides ? epilogue_body<at::BFloat16, true>(t) : epilogue_body<at::BFloat16, false>(t);
}
KKATTN_CLONES void epilogue_fp16(const Epilogue& t) {
  t.both_sides ? epilogue_body<at::Half, true>(t) : epilogue_body<at::Half, false>(t);
}

// ------------------------------------------------------------------------ AVX-512 with BF16 (x86-64, GCC)
// The same pass in AVX-512 intrinsics, for CPUs with AVX-512-BF16 (Sapphire Rapids and later, Zen 4 and later),
// where the generic vectors above compile to about twice the instructions: the exp ends in one vscalefps instead
// of integer exponent arithmetic and a select, bf16 rounding is one vcvtneps2bf16 instead of eleven integer
// operations, and the row tail is a masked step instead of scalar code.  The exp is the same Cephes polynomial.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KKATTN_AVX512_EPILOGUE 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")

// exp(x) for the 16 lanes of mask k; exactly 0 below −87.3 (the generic exp_poly's contract) and in lanes off k.
__attribute__((always_inline)) inline __m512 exp_avx512(__m512 x, __mmask16 k) {
  k = _mm512_mask_cmp_ps_mask(k, x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(1.9875691500e-4f), _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.f));
  return _mm512_maskz_scalef_ps(k, p, n);
}

// Row a for T = float (E over s) or bf16, in 16-column steps; the last step is masked.
template <typename T, bool kPrior, bool kBoth>
__attribute__((always_inline)) inline void epilogue_row_avx512(const Epilogue& t, int64_t a) {
  constexpr bool kHalf = std::is_same_v<T, at::BFloat16>;
  float* s = t.s + a * t.ld;
  const float* g = t.g;
  const __m512 scale = _mm512_set1_ps(t.scale), c_a = _mm512_set1_ps(t.c[t.i0 + a]), w_a = _mm512_set1_ps(t.w[t.i0 + a]);
  const float *c_j = t.c + t.j0, *w_j = t.w + t.j0;
  uint16_t* arow = kHalf ? static_cast<uint16_t*>(t.a) + a * t.lda : nullptr;
  uint32_t* mrow = kHalf && kBoth ? t.m + (a / 2) * t.ldm : nullptr;
  const bool odd = a % 2 == 1;
  float* col = t.col_sum;
  __m512 acc = _mm512_setzero_ps();
  for (int64_t b = 0; b < t.rj; b += 16) {
    const __mmask16 k = t.rj - b >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (t.rj - b)) - 1);
    __m512 x = _mm512_maskz_loadu_ps(k, s + b);
    x = kPrior ? _mm512_fmadd_ps(x, scale, _mm512_maskz_loadu_ps(k, g + b)) : _mm512_mul_ps(x, scale);
    x = _mm512_sub_ps(_mm512_sub_ps(x, c_a), _mm512_maskz_loadu_ps(k, c_j + b));
    const __m512 e = exp_avx512(x, k);  // 0 off k
    const __m512 ew = _mm512_mul_ps(e, _mm512_maskz_loadu_ps(k, w_j + b));
    acc = _mm512_add_ps(acc, ew);
    if constexpr (!kHalf) {
      _mm512_mask_storeu_ps(s + b, k, e);
      if constexpr (kBoth)
        _mm512_mask_storeu_ps(col + b, k, _mm512_fmadd_ps(e, w_a, _mm512_maskz_loadu_ps(k, col + b)));
    } else {
      // A's row is zero-padded to lda, a multiple of 16: whole steps are stored (0 off k).
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(arow + b), (__m256i)_mm512_cvtneps_pbh(ew));
      if constexpr (kBoth) {
        const __m512 mv = _mm512_mul_ps(e, w_a);
        _mm512_mask_storeu_ps(col + b, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, col + b), mv));
        __m512i bits = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(mv));  // low halves; M is padded like A
        if (odd) bits = _mm512_or_si512(_mm512_slli_epi32(bits, 16), _mm512_loadu_si512(mrow + b));
        _mm512_storeu_si512(mrow + b, bits);
      }
    }
  }
  if constexpr (kHalf) {
    const int64_t done = (t.rj + 15) / 16 * 16;
    std::fill(arow + done, arow + t.lda, uint16_t(0));
    if constexpr (kBoth)
      if (!odd) std::fill(mrow + done, mrow + t.ldm, 0u);
  }
  t.row_sum[a] += _mm512_reduce_add_ps(acc);
}

template <typename T, bool kBoth>
inline void epilogue_body_avx512(const Epilogue& t) {
  for (int64_t a = 0; a < t.ri; ++a)
    start_row(t, a) ? epilogue_row_avx512<T, true, kBoth>(t, a) : epilogue_row_avx512<T, false, kBoth>(t, a);
  if constexpr (std::is_same_v<T, at::BFloat16> && kBoth) zero_missing_partner(t);
}

void epilogue_fp32_avx512(const Epilogue& t) {
  t.both_sides ? epilogue_body_avx512<float, true>(t) : epilogue_body_avx512<float, false>(t);
}
void epilogue_bf16_avx512(const Epilogue& t) {
  t.both_sides ? epilogue_body_avx512<at::BFloat16, true>(t) : epilogue_body_avx512<at::BFloat16, false>(t);
}

#pragma GCC pop_options
#endif

// Whether a call takes the AVX-512-BF16 epilogue: where the CPU has it (checked once), unless
// KKATTN_CPU_ISA=generic asks for the generic vectors (what other CPUs run; the tests run both).
inline bool vector_isa_avx512() {
#ifdef KKATTN_AVX512_EPILOGUE
  static const bool cpu_has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                              __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                              __builtin_cpu_supports("avx512bf16");
  const char* isa = std::getenv("KKATTN_CPU_ISA");
  return cpu_has && (isa == nullptr || std::string(isa) != "generic");
#else
  return false;
#endif
}

inline void epilogue(float, const Epilogue& t) {
#ifdef KKATTN_AVX512_EPILOGUE
  if (t.avx512) return epilogue_fp32_avx512(t);
#endif
  epilogue_generic_fp32(t);
}
inline void epilogue(at::BFloat16, const Epilogue& t) {
#ifdef KKATTN_AVX512_EPILOGUE
  if (t.avx512) return epilogue_bf16_avx512(t);
#endif
  epilogue_generic_bf16(t);
}
inline void epilogue(at::Half, const Epilogue& t) { epilogue_fp16(t); }

}  // namespace
}  // namespace cpu
}  // namespace kkattn

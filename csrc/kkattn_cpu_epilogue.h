// The smoother's epilogues: all the elementwise work of one tile between its products, in one pass over the
// logits, forward and backward.  Internal to csrc/kkattn_cpu.cpp.
//
// Forward.
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
//
// Backward.  From s, dP = dO_i V_Jᵀ and dP_Jiᵀ = V_i dO_Jᵀ it forms P_iJ, P_Jiᵀ (one exp for both), dS and
// T = dS_iJ + dS_Jiᵀ, and writes fp32 P (and P_Jiᵀ) and T over s, or for fp16/bf16 P and scale·T as the VNNI B
// operands of dV_Jᵀ += dO_iᵀ·P and dK_Jᵀ += K_iᵀ·(scale·T), with both sides also P_Jiᵀ and scale·T as the A rows of
// dV_i += P_Jiᵀ·dO_J and dK_i += (scale·T)·K_J; dσ's operand in fp32 when asked.  On the diagonal tile P_ii is the
// forward's and dS_ii = −P_ii·δ'_i (patch_diagonal).
//
// The rows are written once (kkattn_cpu_epilogue_body.h) over two vector policies: portable GCC vectors
// (target_clones: AVX-512F, AVX2, x86-64) and AVX-512-BF16 intrinsics, where the CPU has them, with the exp
// ending in one vscalefps instead of integer exponent arithmetic and a select, bf16 rounding in one vcvtneps2bf16
// instead of eleven integer operations, and masked row tails.
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

// What both epilogues take from their tile (set_tile, kkattn_cpu_tiles.h).
struct EpilogueTile {
  bool avx512;  // take the AVX-512-BF16 pass (vector_isa_avx512)
  float* s;     // ri × rj logits, leading dimension ld; the diagonal tile's (a, a) entries are set to −inf here
  int64_t ld, i0, ri, j0, rj;
  bool diagonal, both_sides;
  float scale;
  const Prior* prior;  // null: no prior
  int64_t h;
  const KeyRun* runs;  // the strip's key runs (strip_runs), n_runs of them
  int64_t n_runs;
  float* g;  // scratch, rj: one row of the prior
};

struct Epilogue : EpilogueTile {
  const float *c, *w, *iw;   // the head's c, W = exp(c − c_max) and (fp16) 1/W, indexed by token
  float *row_sum, *col_sum;  // ri and rj
  void* a;                   // half: A, ri × lda
  int64_t lda;
  uint32_t* m;  // half, both sides: M in VNNI pairs of rows, ceil(ri/2) × ldm 32-bit slots
  int64_t ldm;
};

struct BackwardEpilogue : EpilogueTile {  // s becomes T (fp32)
  const float *c, *w, *r;                      // the head's c, W and r = exp(c + c_max − lse), by token
  const float *delta, *delta_diag, *p_diag;    // δ, δ' and the forward's P_ii, by token
  const float *dp, *dpt;                       // dP_iJ and dP_Jiᵀ, ri × rj (ld)
  float* sig;                                  // dσ wanted: T (both sides) or dS_iJ, fp32 (ld); else null
  float *p, *pt;                               // fp32: P_iJ and (both sides) P_Jiᵀ (ld)
  uint32_t *p_vnni, *t_vnni;                   // half: P and scale·T in VNNI pairs of rows (ldm)
  int64_t ldm;
  void *pt_rows, *t_rows;                      // half, both sides: P_Jiᵀ and scale·T as A rows (lda)
  int64_t lda;
};


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

// Before row a: leaves the diagonal out (E_aa = 0: the forward adds it apart, the backward patches it) and builds
// the row's prior in g; false when it has none.
inline bool start_row(const EpilogueTile& t, int64_t a) {
  if (t.diagonal) t.s[a * t.ld + a] = -std::numeric_limits<float>::infinity();
  return t.prior && prior_row(*t.prior, t.h, t.i0 + a, t.runs, t.n_runs, t.rj, t.g);
}

// The rows were written in whole 16-lane steps (zeros past rj): zeros from there to the padded widths, for an A row
// (row, may be null) and, on even rows, a VNNI row pair (pairs, may be null).
template <typename T>
inline void pad_row(T* row, int64_t lda, uint32_t* pairs, int64_t ldm, bool odd, int64_t rj) {
  const int64_t done = (rj + 15) / 16 * 16;
  if (row) std::fill(row + std::min(done, lda), row + lda, T(0.f));
  if (pairs && !odd) std::fill(pairs + std::min(done, ldm), pairs + ldm, 0u);
}

// With an odd row count, a VNNI operand's last pair has no second row: zeros in its high halves.
inline void zero_missing_partner(uint32_t* m, int64_t ri, int64_t ldm) {
  if (ri % 2 == 0) return;
  uint32_t* mrow = m + (ri / 2) * ldm;
  for (int64_t b = 0; b < ldm; ++b) mrow[b] &= 0xFFFFu;
}

// The backward's diagonal entry (a, a) of a diagonal tile: P_ii from the forward (exact where the softmax
// saturates) and dS_ii = −P_ii·δ'_i, free of the cancellation in dP_ii − δ_i; T_ii = 2·dS_ii.
template <typename T>
inline void patch_diagonal(const BackwardEpilogue& t, int64_t a) {
  const int64_t i = t.i0 + a, e = a * t.ld + a;
  const float p = t.p_diag[i], ds = -p * t.delta_diag[i];
  if (t.sig) t.sig[e] = ds;  // one-sided
  if constexpr (std::is_same_v<T, float>) {
    t.p[e] = p;
    t.s[e] = 2.f * ds;
  } else {
    const int64_t slot = (a / 2) * t.ldm + a;
    const int shift = a % 2 == 1 ? 16 : 0;
    const auto put = [&](uint32_t* m, float x) {
      m[slot] = (m[slot] & ~(0xFFFFu << shift)) | (static_cast<uint32_t>(half_bits<T>(x)) << shift);
    };
    put(t.p_vnni, p);
    put(t.t_vnni, t.scale * 2.f * ds);
  }
}

// ------------------------------------------------------------------------------------ portable vectors
namespace generic_isa {
struct V {
  using F = v16f;
  __attribute__((always_inline)) static F set1(float x) { return F{} + x; }
  __attribute__((always_inline)) static F load(const float* p, int64_t n) {
    if (n >= 16) return cpu::load<v16f>(p);
    F x = {};
    std::memcpy(&x, p, n * sizeof(float));
    return x;
  }
  __attribute__((always_inline)) static void store(float* p, int64_t n, F x) {
    if (n >= 16)
      cpu::store<v16f>(p, x);
    else
      std::memcpy(p, &x, n * sizeof(float));
  }
  __attribute__((always_inline)) static F exp(F x, int64_t n) {
    F e = exp_poly<v16f, v16i>(x);
    for (int64_t q = n; q < 16; ++q) e[q] = 0.f;
    return e;
  }
  __attribute__((always_inline)) static F keep_below(F x, F p, float bound) { return p < bound ? x : F{}; }
  __attribute__((always_inline)) static float sum(F x) {
    float total = 0.f;
    for (int q = 0; q < 16; ++q) total += x[q];
    return total;
  }
  template <typename T>
  __attribute__((always_inline)) static void store_half(T* dst, F x) {
    if constexpr (std::is_same_v<T, at::BFloat16>) {
      const v16u16 bits = __builtin_convertvector(bf16_high(x) >> 16, v16u16);
      std::memcpy(dst, &bits, sizeof bits);
    } else {
      for (int q = 0; q < 16; ++q) dst[q] = T(x[q]);
    }
  }
  template <typename T>
  __attribute__((always_inline)) static void store_vnni(uint32_t* dst, F x, bool odd) {
    v16u hi;
    if constexpr (std::is_same_v<T, at::BFloat16>) {
      hi = bf16_high(x);
    } else {
      for (int q = 0; q < 16; ++q) hi[q] = static_cast<uint32_t>(half_bits<T>(x[q])) << 16;
    }
    if (odd) {
      v16u old;
      std::memcpy(&old, dst, sizeof old);
      hi |= old;
    } else {
      hi >>= 16;
    }
    std::memcpy(dst, &hi, sizeof hi);
  }
};

#include "kkattn_cpu_epilogue_body.h"

template <typename T>
void forward(const Epilogue& t) {
  t.both_sides ? forward_rows<T, true>(t) : forward_rows<T, false>(t);
}
template <typename T>
void backward(const BackwardEpilogue& t) {
  t.both_sides ? backward_rows<T, true>(t) : backward_rows<T, false>(t);
}
KKATTN_CLONES void forward_fp32(const Epilogue& t) { forward<float>(t); }
KKATTN_CLONES void forward_bf16(const Epilogue& t) { forward<at::BFloat16>(t); }
KKATTN_CLONES void forward_fp16(const Epilogue& t) { forward<at::Half>(t); }
KKATTN_CLONES void backward_fp32(const BackwardEpilogue& t) { backward<float>(t); }
KKATTN_CLONES void backward_bf16(const BackwardEpilogue& t) { backward<at::BFloat16>(t); }
KKATTN_CLONES void backward_fp16(const BackwardEpilogue& t) { backward<at::Half>(t); }
}  // namespace generic_isa

// ------------------------------------------------------------------------ AVX-512 with BF16 (x86-64, GCC)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KKATTN_AVX512_EPILOGUE 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")
namespace avx512_isa {
struct V {
  using F = __m512;
  __attribute__((always_inline)) static __mmask16 mask(int64_t n) {
    return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
  }
  __attribute__((always_inline)) static F set1(float x) { return _mm512_set1_ps(x); }
  __attribute__((always_inline)) static F load(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  __attribute__((always_inline)) static void store(float* p, int64_t n, F x) { _mm512_mask_storeu_ps(p, mask(n), x); }
  // The same Cephes polynomial as exp_poly (cephes_exp); 0 below −87.3 and off the first n lanes.
  __attribute__((always_inline)) static F exp(F x, int64_t n) {
    using namespace cephes_exp;
    const __mmask16 k = _mm512_mask_cmp_ps_mask(mask(n), x, _mm512_set1_ps(kExpUnderflow), _CMP_GE_OQ);
    const __m512 m = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(m, _mm512_set1_ps(kLn2Hi), x);
    r = _mm512_fnmadd_ps(m, _mm512_set1_ps(kLn2Lo), r);
    __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(kP0), _mm512_set1_ps(kP1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP5));
    p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.f));
    return _mm512_maskz_scalef_ps(k, p, m);
  }
  __attribute__((always_inline)) static F keep_below(F x, F p, float bound) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(p, _mm512_set1_ps(bound), _CMP_LT_OQ), x);
  }
  __attribute__((always_inline)) static float sum(F x) { return _mm512_reduce_add_ps(x); }
  template <typename T>
  __attribute__((always_inline)) static void store_half(T* dst, F x) {
    static_assert(std::is_same_v<T, at::BFloat16>, "the AVX-512 epilogue rounds to bf16 only");
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(x));
  }
  template <typename T>
  __attribute__((always_inline)) static void store_vnni(uint32_t* dst, F x, bool odd) {
    static_assert(std::is_same_v<T, at::BFloat16>, "the AVX-512 epilogue rounds to bf16 only");
    __m512i bits = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x));
    if (odd) bits = _mm512_or_si512(_mm512_slli_epi32(bits, 16), _mm512_loadu_si512(dst));
    _mm512_storeu_si512(dst, bits);
  }
};

#include "kkattn_cpu_epilogue_body.h"

void forward_fp32(const Epilogue& t) { t.both_sides ? forward_rows<float, true>(t) : forward_rows<float, false>(t); }
void forward_bf16(const Epilogue& t) {
  t.both_sides ? forward_rows<at::BFloat16, true>(t) : forward_rows<at::BFloat16, false>(t);
}
void backward_fp32(const BackwardEpilogue& t) {
  t.both_sides ? backward_rows<float, true>(t) : backward_rows<float, false>(t);
}
void backward_bf16(const BackwardEpilogue& t) {
  t.both_sides ? backward_rows<at::BFloat16, true>(t) : backward_rows<at::BFloat16, false>(t);
}
}  // namespace avx512_isa
#pragma GCC pop_options
#endif

// Whether a call takes the AVX-512-BF16 epilogue: where the CPU has it (checked once), unless
// KKATTN_CPU_ISA=generic asks for the portable vectors (what other CPUs run; the tests run both).
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

#ifdef KKATTN_AVX512_EPILOGUE
#define KKATTN_EPILOGUE(name, t) (t.avx512 ? avx512_isa::name(t) : generic_isa::name(t))
#else
#define KKATTN_EPILOGUE(name, t) generic_isa::name(t)
#endif
inline void epilogue(float, const Epilogue& t) { KKATTN_EPILOGUE(forward_fp32, t); }
inline void epilogue(at::BFloat16, const Epilogue& t) { KKATTN_EPILOGUE(forward_bf16, t); }
inline void epilogue(at::Half, const Epilogue& t) { generic_isa::forward_fp16(t); }
inline void epilogue(float, const BackwardEpilogue& t) { KKATTN_EPILOGUE(backward_fp32, t); }
inline void epilogue(at::BFloat16, const BackwardEpilogue& t) { KKATTN_EPILOGUE(backward_bf16, t); }
inline void epilogue(at::Half, const BackwardEpilogue& t) { generic_isa::backward_fp16(t); }
#undef KKATTN_EPILOGUE

}  // namespace
}  // namespace cpu
}  // namespace kkattn

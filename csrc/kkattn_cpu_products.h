// The CPU kernel's tile products, by input dtype: the one thing the tiles do differently per dtype.
//
//  * fp32 (and fp16/bf16 where the CPU has no half-precision brgemm): the BLAS sgemm_ libtorch links
//    (MKL on x86 wheels, OpenBLAS elsewhere) on row-major fp32 operands.
//  * fp16/bf16: ATen's cpublas::brgemm in the input dtype with fp32 accumulation (oneDNN ukernels: AMX
//    tiles, or AVX-512-BF16/FP16), B operands packed once per (batch, head) into the VNNI layout the
//    ukernels read (cpublas::pack).  c, W, the row sums, δ and every reduction stay fp32 (the tiles');
//    weights and dS are rounded to the input dtype only where they enter a product, as on GPUs.
//
// Operands<T> holds one (batch, head)'s inputs for T = float, at::BFloat16 or at::Half; the product
// functions below are overloaded on it, so the tiles (kkattn_cpu_tiles.h) are written once.
// Internal to csrc/kkattn_cpu.cpp.
#pragma once

#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kkattn_cpu_vec.h"

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc);

namespace kkattn {
namespace cpu {
namespace {

constexpr int64_t kTile = 64;   // rows and keys per tile (forward and backward)
constexpr int64_t kStrip = 256;  // partners per off-diagonal strip (a multiple of kTile)

// A tile's leading dimension: its column count rounded up to kTile (brgemm's K runs over whole packed blocks).
inline int64_t padded(int64_t n) { return (n + kTile - 1) / kTile * kTile; }

// Row-major C[M×N] = alpha·op(A)·op(B) + beta·C with the column-major BLAS: Cᵀ = op(B)ᵀ·op(A)ᵀ.
// Calls the Fortran sgemm_ that libtorch_cpu exports (MKL in x86 wheels, OpenBLAS elsewhere):
// at::native::cpublas::gemm's float overload, which wraps it, is not exported from libtorch.
void mm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
        const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
}

// ------------------------------------------------------------------ which path half precision takes
// fp16/bf16 inputs run the smoother's tile products (forward and backward) in their own dtype through ATen's
// cpublas::brgemm (oneDNN ukernels: AMX tiles or AVX-512-BF16/FP16 where the CPU has them), with fp32
// accumulation; c, W, the row sums and every reduction stay fp32.  The weights are rounded to the input
// dtype only where they enter a product, as the GPU kernels do.  B operands are packed once per
// (batch, head) into the VNNI layout the ukernels read (cpublas::pack), in blocks of kTile tokens; the
// operands that change per tile are written in that layout by the epilogues (kkattn_cpu_epilogue.h).
//
// Range.  bf16 has fp32's range, so it takes this path for Δ ≤ 48 like fp32, with the fp32 path's weights
// E_ab·W_b.  fp16 (largest 65504) row-scales the forward's weights so that each row's diagonal weight is 1,
// A_ab = E_ab·W_b / W_a = exp(S_ab − 2c_a) ≤ e^Δ, and takes the path for Δ ≤ 8, as the Triton forward's fp16
// weights (kkattn/_smoother.py MAX_SPREAD_FP16); other heads take the upcast path.  Its accumulators are then
// acc'_i = acc_i / W_i and l'_i = l_i / W_i, so O_i = (acc'_i + V_i)/(l'_i + 1), lse_i = 2c_i + log1p(l'_i).
constexpr float kHalfFp16MaxSpread = 8.f;

// "native": the half-precision products where the CPU's brgemm packs the dtype; "upcast": always fp32.
bool half_native_wanted() {
  const char* mode = std::getenv("KKATTN_CPU_HALF");
  return mode == nullptr || std::string(mode) != "upcast";
}

// The kinds of call the half path makes, once, on small exact operands: pack a 64 × 64 and a 128 × 64 B,
// multiply 64 × 64 × 64 and 256 × 64 × 128 (K over two packed blocks), and compare with the exact
// product. A CPU whose ukernels cannot take one of them (could_pack promises more than a shape gives, or
// the first JIT fails) then runs fp32 instead of failing at the first call.
template <typename T>
bool brgemm_self_test() {
  try {
    const auto dt = c10::CppTypeToScalarType<T>::value;
    for (const auto& [M, K] : {std::pair<int64_t, int64_t>{64, 64}, {256, 128}}) {
      const int64_t N = 64;
      std::vector<T> a(M * K), b(K * N), packed(K * N);
      for (int64_t i = 0; i < M * K; ++i) a[i] = T(static_cast<float>(i % 7) - 3.f);
      for (int64_t i = 0; i < K * N; ++i) b[i] = T(static_cast<float>(i % 5) - 2.f);
      at::native::cpublas::pack(K, N, N, N, dt, dt, b.data(), packed.data());
      std::vector<float> c(M * N, 0.f);
      at::native::cpublas::brgemm(M, N, K, K, N, N, false, a.data(), packed.data(), c.data(), true);
      at::native::cpublas::brgemm_release();
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          float want = 0.f;  // small integers: exact in fp32 whatever the order
          for (int64_t x = 0; x < K; ++x) want += static_cast<float>(a[i * K + x]) * static_cast<float>(b[x * N + j]);
          if (c[i * N + j] != want) return false;
        }
    }
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// Whether element (k, n) of a packed K × N B lies at 16-bit slot ((k/2)·N + n)·2 + k%2 (VNNI pairs of rows), the
// layout the smoother's epilogue writes its transposed operand in directly (kkattn_cpu_epilogue.h): packs a
// K = 64 B of distinct values, 16 to 64 wide, and compares slot by slot.  A CPU whose pack lays B out otherwise runs fp32.
template <typename T>
bool vnni_layout_ok() {
  try {
    const auto dt = c10::CppTypeToScalarType<T>::value;
    constexpr int64_t K = 64;
    for (const int64_t N : {16, 32, 48, 64}) {  // the widths PackedB and the epilogues write
      std::vector<T> b(K * N), packed(K * N);
      for (int64_t i = 0; i < K * N; ++i) b[i] = T(static_cast<float>(i % 251));
      at::native::cpublas::pack(K, N, N, N, dt, dt, b.data(), packed.data());
      for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n)
          if (static_cast<float>(packed[((k / 2) * N + n) * 2 + k % 2]) != static_cast<float>(b[k * N + n]))
            return false;
    }
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

bool half_native_supported(at::ScalarType dt) {
  if (dt != at::kBFloat16 && dt != at::kHalf) return false;
  static const bool bf16 = at::native::cpublas::could_pack(at::kBFloat16) && brgemm_self_test<at::BFloat16>() &&
                           vnni_layout_ok<at::BFloat16>();
  static const bool fp16 =
      at::native::cpublas::could_pack(at::kHalf) && brgemm_self_test<at::Half>() && vnni_layout_ok<at::Half>();
  return dt == at::kBFloat16 ? bf16 : fp16;
}

// Which path fp16/bf16 inputs of head dim D take: "native" (their products through brgemm) or "upcast"
// (fp32, as fp32 inputs); fp32 inputs: "fp32".
std::string half_path(at::ScalarType dt, int64_t D) {
  if (dt == at::kFloat) return "fp32";
  if (!half_native_wanted()) return "upcast";
  if (!half_native_supported(dt) || D % 16 != 0) return "upcast";
  return "native";
}

// One (batch, head)'s N × D operand x (16-bit T, D a multiple of 16), VNNI-packed as the B of a brgemm, padded to
// Np = N rounded up to kTile tokens (zeros past N), in one of two forms:
//  * by_tokens: the B of products over the head dim, X_Jᵀ (D × kTile per block of kTile tokens) — S = K_i K_Jᵀ,
//    dP = dO_i V_Jᵀ: 32-bit slot (c/2)·kTile + n of block m holds channels c, c+1 of token m·kTile + n, so a
//    block is a transpose of x's rows read as pairs of channels;
//  * by_rows: the B of products over tokens, X (Np × wc per column block of ≤ 64) — A·V, Pᵀ·dO, T·K: 32-bit slot
//    (j/2)·wc + c holds channel c of tokens j, j + 1 (j even).
// Written here in the layout cpublas::pack gives (vnni_layout_ok checks it before the native path is taken):
// pack itself takes ≤ 64 columns per call and went through an unpacked copy.
template <typename T>
struct PackedB {
  std::vector<T> data;
  int64_t Np = 0, D = 0;
  bool by_rows = false;

  void pack(const T* x, int64_t N, int64_t D_, bool rows) {
    static_assert(sizeof(T) == 2, "VNNI pairs of 16-bit values");
    D = D_, by_rows = rows, Np = (N + kTile - 1) / kTile * kTile;
    data.assign(Np * D, T(0.f));
    uint32_t* out = reinterpret_cast<uint32_t*>(data.data());
    if (!rows) {
      const uint32_t* in = reinterpret_cast<const uint32_t*>(x);
      for (int64_t m = 0; m * kTile < N; ++m)
        transpose32(in + m * kTile * (D / 2), std::min(kTile, N - m * kTile), D / 2, D / 2, out + m * kTile * (D / 2),
                    kTile);
      return;
    }
    const uint16_t* in = reinterpret_cast<const uint16_t*>(x);
    for (int64_t cb = 0; cb * 64 < D; ++cb) {
      const int64_t wc = std::min<int64_t>(64, D - cb * 64);
      uint32_t* block = out + cb * 32 * Np;
      for (int64_t j = 0; j < N; j += 2)
        interleave_rows(in + j * D + cb * 64, j + 1 < N ? in + (j + 1) * D + cb * 64 : nullptr, wc,
                        block + (j / 2) * wc);
    }
  }
  // by_tokens only: out (D × ldt, ldt ≥ Np, zeros past N) = Xᵀ, each block's 32-bit slots split into the two
  // channels' rows: the A operand of the smoother's transposed products, from the transpose pack already did.
  void split_rows(std::vector<T>& out, int64_t ldt) const {
    out.assign(D * ldt, T(0.f));
    const uint32_t* in = reinterpret_cast<const uint32_t*>(data.data());
    uint16_t* o = reinterpret_cast<uint16_t*>(out.data());
    for (int64_t m = 0; m < Np / kTile; ++m)
      for (int64_t c2 = 0; c2 < D / 2; ++c2)
        split_halves(in + (m * (D / 2) + c2) * kTile, kTile, o + 2 * c2 * ldt + m * kTile,
                     o + (2 * c2 + 1) * ldt + m * kTile);
  }
  // by_tokens: block m (tokens m·kTile ..).  by_rows: column block cb from token j0 on (j0 a multiple of kTile).
  const T* block(int64_t m) const { return data.data() + m * D * kTile; }
  const T* rows_from(int64_t cb, int64_t j0) const {
    return data.data() + cb * 64 * Np + j0 * std::min<int64_t>(64, D - cb * 64);
  }
};

// C (M × D, ld D) += A (M × K, ld K) · X[j0 .. j0 + K] for a by_rows X, column block by column block.
template <typename T>
void brgemm_rows(int64_t M, int64_t K, const T* a, const PackedB<T>& x, int64_t j0, float* c) {
  for (int64_t cb = 0; cb * 64 < x.D; ++cb)
    at::native::cpublas::brgemm(M, std::min<int64_t>(64, x.D - cb * 64), K, K, std::min<int64_t>(64, x.D - cb * 64),
                                x.D, true, a, x.rows_from(cb, j0), c + cb * 64, true);
}

// C (M × ldc) = A (M × D, ld D) · X_Jᵀ for the cols tokens from j0 of a by_tokens X (block by block).
template <typename T>
void brgemm_tokens(int64_t M, const T* a, const PackedB<T>& x, int64_t j0, int64_t cols, float* c, int64_t ldc) {
  for (int64_t m = 0; m * kTile < cols; ++m)
    at::native::cpublas::brgemm(M, kTile, x.D, x.D, kTile, ldc, false, a, x.block(j0 / kTile + m), c + m * kTile, true);
}

// Which of a (batch, head)'s inputs a product reads.
enum class Role { k, v, dout };

// The tile products' inputs of one (batch, head).  fp32: row-major N × D pointers (plus vt = W·V for the
// smoother's forward, whose weights are E).  fp16/bf16: the input-dtype rows (A operands) and the packed
// B operands.  The smoother forward's weights are E_ab·W_b for bf16; for fp16 they are row-scaled,
// A_ab = E_ab·W_b/W_a = exp(S_ab − 2c_a) ≤ e^Δ, so that each row's diagonal weight is 1 and fits fp16's range
// (the accumulators are then acc/W_i).
template <typename T>
struct Operands {
  static constexpr bool kHalf = true;
  // fp16's weights are row-scaled (E·W_j/W_i ≤ e^Δ, see kHalfFp16MaxSpread); bf16 has fp32's range and takes the
  // fp32 path's E·W_j as they are.
  static constexpr bool kRowScaled = std::is_same_v<T, at::Half>;
  const T *k = nullptr, *v = nullptr, *dout = nullptr;
  PackedB<T> k_tokens, k_rows, v_tokens, v_rows, dout_tokens, dout_rows;
  // Transposed rows (D × ldt, zeros past N), the A operands of the smoother's transposed products (Cᵀ += Xᵀ·M with
  // M the epilogue's VNNI operand): Vᵀ in the forward, Kᵀ and dOᵀ in the backward, split from the by-tokens packs
  // (PackedB::split_rows).  ldt = N rounded up to kTile,
  // plus 16: a power-of-two stride would put a C tile's rows in one cache set.
  std::vector<T> v_t, k_t, dout_t;
  int64_t D = 0, ldt = 0;

  void prepare_forward(const T* k_, const T* v_, int64_t N, int64_t D_) {
    k = k_, v = v_, D = D_;
    k_tokens.pack(k, N, D, false);
    v_rows.pack(v, N, D, true);
    v_tokens.pack(v, N, D, false);  // for Vᵀ only
    v_tokens.split_rows(v_t, ldt = padded(N) + 16);
  }
  void prepare_backward(const T* k_, const T* v_, const T* dout_, int64_t N, int64_t D_) {
    k = k_, v = v_, dout = dout_, D = D_;
    k_tokens.pack(k, N, D, false);
    k_rows.pack(k, N, D, true);
    v_tokens.pack(v, N, D, false);
    dout_tokens.pack(dout, N, D, false);
    dout_rows.pack(dout, N, D, true);
    ldt = padded(N) + 16;
    k_tokens.split_rows(k_t, ldt);
    dout_tokens.split_rows(dout_t, ldt);
  }
  const T* transposed(Role r) const { return (r == Role::k ? k_t : r == Role::v ? v_t : dout_t).data(); }
  const T* rows(Role r) const { return r == Role::k ? k : r == Role::v ? v : dout; }
  const PackedB<T>& tokens(Role r) const { return r == Role::k ? k_tokens : r == Role::v ? v_tokens : dout_tokens; }
  const PackedB<T>& packed_rows(Role r) const { return r == Role::k ? k_rows : r == Role::v ? v_rows : dout_rows; }
};

template <>
struct Operands<float> {
  static constexpr bool kHalf = false;
  static constexpr bool kRowScaled = false;
  const float *k = nullptr, *v = nullptr, *dout = nullptr, *vt = nullptr;
  int64_t D = 0;
  const float* rows(Role r) const { return r == Role::k ? k : r == Role::v ? v : dout; }
};

// Per-thread scratch of the half path's second products: the epilogues' A operands (rows × padded K) and VNNI
// operands.
template <typename T>
struct ProductScratch {
  std::vector<T> a;
  std::vector<T> a2;                // the backward's second A operand
  std::vector<uint32_t> m, m2;      // the smoother epilogues' VNNI operands: kTile·kStrip / 2 slots each
  ProductScratch() {
    if (!Operands<T>::kHalf) return;
    a.resize(kTile * kStrip), a2.resize(kTile * kStrip), m.resize(kTile * kStrip / 2), m2.resize(kTile * kStrip / 2);
  }
};

// C (M × ldc) = alpha·A_i X_Jᵀ: A = role a's M rows from i0, X = role x's cols tokens from j0.
inline void product_nt(const Operands<float>& o, Role a, Role x, int64_t i0, int64_t M, int64_t j0, int64_t cols,
                       float alpha, float* c, int64_t ldc) {
  mm(false, true, M, cols, o.D, alpha, o.rows(a) + i0 * o.D, o.D, o.rows(x) + j0 * o.D, o.D, 0.f, c, ldc);
}

template <typename T>
void product_nt(const Operands<T>& o, Role a, Role x, int64_t i0, int64_t M, int64_t j0, int64_t cols, float alpha,
                float* c, int64_t ldc) {
  brgemm_tokens(M, o.rows(a) + i0 * o.D, o.tokens(x), j0, cols, c, ldc);
  if (alpha != 1.f)
    for (int64_t r = 0; r < M; ++r) scale_row(c + r * ldc, alpha, cols);
}

// fp32: C (M × D) += alpha·tile·X, tile M × K (ld), X = role x's K rows from j0, or `b`'s (e.g. vt).  (The half
// path's second products are brgemm_rows and accumulate_t_vnni on operands the epilogues write.)
inline void accumulate_nn(const Operands<float>& o, const float* b, const float* tile, int64_t ld, int64_t M, int64_t K,
                          int64_t j0, float alpha, float* c, ProductScratch<float>&) {
  mm(false, false, M, o.D, K, alpha, tile, ld, b + j0 * o.D, o.D, 1.f, c, o.D);
}

inline void accumulate_nn(const Operands<float>& o, Role x, const float* tile, int64_t ld, int64_t M, int64_t K,
                          int64_t j0, float alpha, float* c, ProductScratch<float>& ps) {
  accumulate_nn(o, o.rows(x), tile, ld, M, K, j0, alpha, c, ps);
}

// fp32: C (K × D) += alpha·tileᵀ·X, the transposed product, tile M × K (ld), X = role x's M rows from i0.
inline void accumulate_tn(const Operands<float>& o, const float* b, const float* tile, int64_t ld, int64_t M,
                          int64_t K, int64_t i0, float alpha, float* c, ProductScratch<float>&) {
  mm(true, false, K, o.D, M, alpha, tile, ld, b + i0 * o.D, o.D, 1.f, c, o.D);
}

inline void accumulate_tn(const Operands<float>& o, Role x, const float* tile, int64_t ld, int64_t M, int64_t K,
                          int64_t i0, float alpha, float* c, ProductScratch<float>& ps) {
  accumulate_tn(o, o.rows(x), tile, ld, M, K, i0, alpha, c, ps);
}

// Cᵀ (D × ldt) columns [j0, j0 + ldm) += X_iᵀ · M: X_iᵀ role x's transposed rows from token i0 (D × K, K = rows
// rounded up to a pair), M the K × ldm VNNI operand a smoother epilogue writes (pairs of rows in 32-bit slots).
template <typename T>
void accumulate_t_vnni(const Operands<T>& o, Role x, int64_t i0, int64_t rows, const uint32_t* m, int64_t ldm,
                       float* ct, int64_t j0) {
  const int64_t K = (rows + 1) / 2 * 2;
  at::native::cpublas::brgemm(o.D, ldm, K, o.ldt, ldm, o.ldt, true, o.transposed(x) + i0,
                              reinterpret_cast<const T*>(m), ct + j0, true);
}

}  // namespace
}  // namespace cpu
}  // namespace kkattn

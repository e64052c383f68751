// Fused CPU kernels for neighborhood key–key attention: O = softmax(scale·K Kᵀ + G) V.
//
// FlashAttention-style tiling: tile products go through the BLAS GEMM PyTorch links (sgemm_:
// MKL/OpenBLAS), with the prior and the softmax fused between them in vectorized loops.  Memory is
// O(B·H·N·D) plus per-thread tiles: never an N×N buffer.
//
//  * Prior: separable, G(i, j) = g_r(Δr)·g_c(Δc), from per-call tables of exp(−t²/(2σ²)) — no exp
//    per element.  For a query row, a run of keys on one grid row adds g_r(Δr)·profile[c..] (a
//    contiguous axpy).  Runs and whole tiles whose largest G is below 2^-24 are skipped: exact to
//    fp32 rounding (kNegligiblePrior in kkattn_math.h).
//  * Forward, two paths per (batch, head):
//     - the symmetric smoother (see "the smoother" below): E_ij = exp(S_ij − c_i − c_j) is symmetric
//       and ≤ 1, so one exp per unordered pair serves both rows, and the softmax needs no running max
//       and no rescaling;
//     - where the keys' range is too wide for it (Δ > 48), the online softmax over key tiles.
//    Both save the log-sum-exp, accumulate the diagonal weight P_ii apart from the rest of the row,
//    and write the off-diagonal output O' and weight p_off for the backward (kkattn/_ops.py: δ'
//    without cancellation).
//  * Backward: Q = K, so the logit tile S_iJ serves both P_iJ and P_Jiᵀ (from one exp of E on the
//    smoother's path, two exps of S − lse otherwise): five GEMMs per ordered tile pair, from which
//    dK_J and dV_J follow.  On the diagonal P_ii is the forward's and dS_ii = −P_ii·δ'_i.
//  * Two schedules (see use_pairs): a work item per (batch·head, row block) over all ordered pairs,
//    or — with ≥ 2 (batch, head) items per thread — a work item per batch·head over each unordered
//    pair once, updating both sides (a quarter fewer forward GEMMs, 7 instead of 10 backward GEMMs
//    per pair).  Partners come in strips of up to 256 tokens so the GEMMs are large.  Every item owns
//    the rows it writes: no atomics, a fixed order, bit-identical reruns.
//  * Parallel with at::parallel_for (OpenMP in PyTorch builds): honours torch.get_num_threads().
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kkattn_math.h"

// Hot loops are compiled for AVX-512F, AVX2 and baseline x86-64; the loader picks one by CPU feature
// ("arch=" clones would dispatch on the CPU model and leave e.g. AMD EPYC on the baseline copy).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KKATTN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KKATTN_CLONES
#endif

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc);

namespace kkattn {
namespace cpu {
namespace {


constexpr int64_t kTile = 64;  // rows and keys per tile (forward and backward)

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

// exp(x), branch-free (Cephes' expf polynomial, ~1 ulp), written on GCC vectors so that every
// target_clones copy vectorizes it.  The row loops take 16 lanes (AVX-512: one zmm; AVX2: two ymm):
// on Zen 4 that halved the smoother's exp pass against 8 lanes (11.5% → 4.8% of a 32×32 forward).  Inputs below
// −87.3 give exactly 0 (no denormals): a saturated softmax row must be exactly one-hot, or its
// ~1e-38 leftovers, times keys of 1e4, show up in dK where the true gradient is 0.
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

template <typename F, typename I>
__attribute__((always_inline)) inline F exp_poly(F x) {
  constexpr float kRound = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  const auto underflow = x < -87.3f;
  x = underflow ? F{} - 87.3f : x;
  x = x > 88.3f ? F{} + 88.3f : x;
  const F t = x * 1.44269504088896341f + kRound;
  const F n = t - kRound;
  F r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  F p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
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

// The prior's tables for one call: per head, g_r(t) for t < grid_h and g_c(t) for t < grid_w.
struct Prior {
  int64_t grid_h = 0, grid_w = 1, num_prefix = 0;
  std::vector<float> g_row, g_col;  // [H][grid_h], [H][grid_w]
  // [H][2·grid_w − 1]: g_c(|t|) at t + grid_w − 1, so a run's column profile g_c(|c − col|), c in [c0, c1),
  // is the contiguous slice from c0 − col + grid_w − 1: no gather per run.
  std::vector<float> g_col_sym;
  const float* rows(int64_t h) const { return g_row.data() + h * grid_h; }
  const float* cols(int64_t h) const { return g_col.data() + h * grid_w; }
  const float* profile(int64_t h, int64_t c0, int64_t col) const {
    return g_col_sym.data() + h * (2 * grid_w - 1) + (c0 - col + grid_w - 1);
  }
};

Prior make_prior(const at::Tensor& sigma, int64_t n_tokens, int64_t grid_w, int64_t num_prefix) {
  Prior prior;
  prior.grid_w = grid_w;
  prior.num_prefix = num_prefix;
  prior.grid_h = (n_tokens - num_prefix) / grid_w;
  auto s = sigma.to(at::kFloat).contiguous();
  const float* sp = s.data_ptr<float>();
  const int64_t heads = s.numel();
  prior.g_row.resize(heads * prior.grid_h);
  prior.g_col.resize(heads * grid_w);
  for (int64_t h = 0; h < heads; ++h) {
    const float inv_two_var = 0.5f / (sp[h] * sp[h]);
    for (int64_t t = 0; t < prior.grid_h; ++t) prior.g_row[h * prior.grid_h + t] = gauss_1d(t, inv_two_var);
    for (int64_t t = 0; t < grid_w; ++t) prior.g_col[h * grid_w + t] = gauss_1d(t, inv_two_var);
  }
  prior.g_col_sym.resize(heads * (2 * grid_w - 1));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t t = -(grid_w - 1); t < grid_w; ++t)
      prior.g_col_sym[h * (2 * grid_w - 1) + t + grid_w - 1] = prior.g_col[h * grid_w + (t < 0 ? -t : t)];
  return prior;
}

// Calls fn(a, b0, b1, dr, weight, run_profile) for each run of keys [b0, b1) (tile-local columns) on
// one grid row whose largest prior entry g_r(dr)·g_c(nearest Δc) is not negligible (every run when
// keep_negligible); run_profile[b − b0] = g_c(Δc) of key b, a slice of Prior::g_col_sym.
// Skipping by the nearest column as well as by the row gap is what keeps wide grids (1×N) as cheap as
// square ones: there every tile is on grid row 0, and only the column distance makes G vanish.
template <typename Fn>
void for_each_prior_run(const Prior& prior, int64_t h, int64_t i0, int64_t rows, int64_t j0, int64_t cols,
                        bool keep_negligible, Fn&& fn) {
  const int64_t gap = min_row_gap(i0, i0 + rows, j0, j0 + cols, prior.grid_w, prior.num_prefix);
  if (gap < 0) return;
  const float* g_row = prior.rows(h);
  const float* g_col = prior.cols(h);
  if (!keep_negligible && g_row[gap] < kNegligiblePrior) return;  // the whole tile is negligible
  for (int64_t a = 0; a < rows; ++a) {
    const GridPos pa = grid_pos(i0 + a, prior.grid_w, prior.num_prefix);
    if (!pa.on_grid) continue;
    int64_t j = std::max(j0, prior.num_prefix);
    while (j < j0 + cols) {
      const GridPos pj = grid_pos(j, prior.grid_w, prior.num_prefix);
      const int64_t end = std::min(j0 + cols, j + (prior.grid_w - pj.col));
      const int64_t c0 = pj.col, c1 = pj.col + (end - j);  // the run's grid columns [c0, c1)
      const int64_t dr = pa.row > pj.row ? pa.row - pj.row : pj.row - pa.row;
      const int64_t nearest = pa.col < c0 ? c0 - pa.col : (pa.col >= c1 ? pa.col - (c1 - 1) : 0);
      const float w = g_row[dr];
      if (keep_negligible || w * g_col[nearest] >= kNegligiblePrior) fn(a, j - j0, end - j0, dr, w, prior.profile(h, c0, pa.col));
      j = end;
    }
  }
}

// S[a][b] += G(i0 + a, j0 + b) over the tile.
void add_prior(float* s, int64_t lds, const Prior& prior, int64_t h, int64_t i0, int64_t rows, int64_t j0,
               int64_t cols) {
  for_each_prior_run(prior, h, i0, rows, j0, cols, false,
                     [&](int64_t a, int64_t b0, int64_t b1, int64_t, float w, const float* run_profile) {
                       axpy(s + a * lds + b0, run_profile, w, b1 - b0);
                     });
}

// Σ_ab dS[a][b]·G·d² over the tile (dσ·σ³ share); every pair counts, however small its G.
double prior_grad_sum(const float* ds, int64_t lds, const Prior& prior, int64_t h, int64_t i0, int64_t rows,
                      int64_t j0, int64_t cols) {
  double total = 0.0;
  for_each_prior_run(prior, h, i0, rows, j0, cols, true,
                     [&](int64_t a, int64_t b0, int64_t b1, int64_t dr, float w, const float* run_profile) {
                       const GridPos pa = grid_pos(i0 + a, prior.grid_w, prior.num_prefix);
                       const int64_t c0 = grid_pos(j0 + b0, prior.grid_w, prior.num_prefix).col;
                       float run = 0.f;
                       for (int64_t b = b0; b < b1; ++b) {
                         const float dc = static_cast<float>(c0 + (b - b0) - pa.col);
                         run += ds[a * lds + b] * run_profile[b - b0] * (static_cast<float>(dr * dr) + dc * dc);
                       }
                       total += static_cast<double>(w) * run;
                     });
  return total;
}

void check_inputs(const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& sigma, int64_t grid_w,
                  int64_t num_prefix) {
  TORCH_CHECK(k.device().is_cpu() && v.device().is_cpu(), "kkattn cpu kernel: k and v must be CPU tensors");
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes(), "kkattn cpu kernel: k and v must have the same (B, H, N, D) shape");
  TORCH_CHECK(k.scalar_type() == v.scalar_type(), "kkattn cpu kernel: k and v must have the same dtype");
  TORCH_CHECK(at::isFloatingType(k.scalar_type()) && k.scalar_type() != at::kDouble,
              "kkattn cpu kernel: k and v must be float16, bfloat16 or float32");
  const int64_t n = k.size(2);
  TORCH_CHECK(grid_w >= 1 && num_prefix >= 0 && num_prefix < n && (n - num_prefix) % grid_w == 0,
              "kkattn cpu kernel: grid width ", grid_w, " and ", num_prefix, " prefix tokens do not tile N = ", n);
  if (sigma.has_value()) {
    TORCH_CHECK(sigma->dim() == 1 && sigma->size(0) == k.size(1) && sigma->device().is_cpu(),
                "kkattn cpu kernel: sigma must be a CPU tensor of shape (H,)");
  }
}

void check_output(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.sizes() == shape,
              "kkattn cpu kernel: ", name, " must be a contiguous float32 CPU tensor of shape ", shape);
}

// Two schedules:
//  * rows: a work item per (batch·head, block of kTile rows), against every key (all ordered pairs).
//    Enough items to keep every thread busy even for one head.
//  * pairs: a work item per batch·head, visiting each unordered pair of tokens once and updating
//    both sides from one logit tile — S = KKᵀ is symmetric, so this saves a quarter of the
//    forward's GEMM work and 30% of the backward's (7 GEMMs per pair instead of 10).  Used when
//    there are at least two (batch, head) items per thread.
// Both cut a block's partners into the diagonal tile (kTile × kTile, one-sided: it holds both
// orders of its pairs) and strips of up to kStrip tokens: wide strips make the GEMMs large enough
// to run near the BLAS's peak.
bool use_pairs(int64_t batch_heads) { return batch_heads >= 2 * at::get_num_threads(); }

constexpr int64_t kStrip = 256;  // partners per off-diagonal strip (a multiple of kTile)

// Calls fn(j0, cols) for the partners of block [i0, i0 + rows): the diagonal tile, then strips of at
// most kStrip over [from, i0) and [i0 + rows, N).  from = 0 visits every partner (all ordered pairs);
// from = i0 only those after the block (each unordered pair once).
template <typename Fn>
void for_each_strip(int64_t i0, int64_t rows, int64_t from, int64_t N, Fn&& fn) {
  fn(i0, rows);
  for (int64_t j0 = from; j0 < i0; j0 += kStrip) fn(j0, std::min(kStrip, i0 - j0));
  for (int64_t j0 = i0 + rows; j0 < N; j0 += kStrip) fn(j0, std::min(kStrip, N - j0));
}

// Per-thread scratch for one tile of at most kTile × kStrip (or kStrip × kTile), stored compactly
// (leading dimension = the tile's column count).
struct Scratch {
  std::vector<float> s, st, p, pt, dp, dpt, ds;
  Scratch()
      : s(kTile * kStrip), st(kTile * kStrip), p(kTile * kStrip), pt(kTile * kStrip), dp(kTile * kStrip),
        dpt(kTile * kStrip), ds(kTile * kStrip) {}
};

void transpose(float* dst, const float* src, int64_t rows, int64_t cols) {  // src rows × cols → dst cols × rows
  for (int64_t a = 0; a < rows; ++a)
    for (int64_t b = 0; b < cols; ++b) dst[b * rows + a] = src[a * cols + b];
}

struct Problem {
  int64_t N, D;
  float scale;
  const Prior* prior;  // null: no prior
};

// S[ri × rj] = scale·K_i K_jᵀ + G_ij, compact.
void logits(const Problem& pb, int64_t h, const float* k, int64_t i0, int64_t ri, int64_t j0, int64_t rj, float* s) {
  mm(false, true, ri, rj, pb.D, pb.scale, k + i0 * pb.D, pb.D, k + j0 * pb.D, pb.D, 0.f, s, rj);
  if (pb.prior) add_prior(s, rj, *pb.prior, h, i0, ri, j0, rj);
}

// ------------------------------------------------------------------------------------ the smoother
// Key–key attention is a symmetric kernel smoother.  With c_i = scale·‖k_i‖²/2 + g_i/2 (g_i = 1 on
// the grid, 0 for prefix tokens), Cauchy–Schwarz and G ≤ 1 give S_ij − c_i − c_j =
// −scale·‖k_i − k_j‖²/2 + G_ij − (g_i + g_j)/2 ≤ 0, so E_ij = exp(S_ij − c_i − c_j) is symmetric,
// lies in [0, 1] and E_ii = 1, and with W_j = exp(c_j − c_max):
//     softmax(S)_ij = E_ij W_j / l_i,   l_i = Σ_j E_ij W_j,   lse_i = c_i + c_max + log l_i.
// So one exp per unordered pair serves both rows, the normaliser's shift is known before the loop
// (no running max, no rescaled accumulator): acc_i = Σ_j E_ij Ṽ_j with Ṽ_j = W_j V_j, and l_i, l_j
// are summed in the exp pass.  In the backward, P_ij = E_ij·W_j·r_i and P_ji = E_ij·W_i·r_j
// with r_i = 1/l_i = exp(c_i + c_max − lse_i): one exp for both tiles instead of two.
//
// Range.  l_i ≥ E_ii W_i = W_i ≥ e^−Δ, Δ = max c − min c, and a term is lost only where E_ij W_j
// falls below fp32's normal range, e^−87.3; so what a row loses is below N·e^(Δ − 87.3) of it.
// For Δ ≤ kSmootherMaxSpread = 48 that is < 2^−24 (fp32's half-ulp) for any N ≤ 2^16·e^7 ≈ 7e7:
// exact to fp32 rounding.  Beyond it (keys whose norms differ widely, saturated rows) the kernel
// takes the online-softmax path, per (batch, head).  fp16/bf16 inputs are upcast to fp32 first,
// so the bound is fp32's for every input dtype.
constexpr float kSmootherMaxSpread = 48.f;

// c_i = scale·‖k_i‖²/2 + g_i/2 for one (batch, head) into c[N]; returns the spread max c − min c
// (NaN or +inf for non-finite keys, which then take the online path).
// first_on_grid: the first token with a prior (N when there is none).
float smoother_shifts(const float* k, int64_t N, int64_t D, float scale, int64_t first_on_grid, float* c) {
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  for (int64_t i = 0; i < N; ++i) {
    const float* ki = k + i * D;
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t x = 0; x < D; ++x) sq += ki[x] * ki[x];
    c[i] = 0.5f * scale * sq + (i >= first_on_grid ? 0.5f : 0.f);
    lo = std::min(lo, c[i]);
    hi = std::max(hi, c[i]);
    if (!std::isfinite(c[i])) return std::numeric_limits<float>::quiet_NaN();
  }
  return hi - lo;
}

bool smoother_applies(float spread) { return spread <= kSmootherMaxSpread; }  // false for NaN

// One (batch, head)'s smoother state: c (N), W = exp(c − c_max) (N), and either Ṽ = W·V (N × D,
// forward) or r = exp(c + c_max − lse) (N, backward).
struct Smoother {
  std::vector<float> c, w, vt, r;
  float c_max = 0.f, spread = 0.f;
  bool on = false;

  // Sets `on` and, when it is, c, W and c_max.
  void prepare(const Problem& pb, const float* k) {
    c.resize(pb.N);
    w.resize(pb.N);
    const int64_t first_on_grid = pb.prior ? pb.prior->num_prefix : pb.N;
    spread = smoother_shifts(k, pb.N, pb.D, pb.scale, first_on_grid, c.data());
    on = pb.scale > 0.f && smoother_applies(spread);
    if (!on) return;
    c_max = *std::max_element(c.begin(), c.end());
    for (int64_t j = 0; j < pb.N; ++j) w[j] = std::exp(c[j] - c_max);
  }
  void prepare_forward(const Problem& pb, const float* k, const float* v, bool weighted_v = true) {
    prepare(pb, k);
    if (!on || !weighted_v) return;
    vt.resize(pb.N * pb.D);
    for (int64_t j = 0; j < pb.N; ++j)
      for (int64_t x = 0; x < pb.D; ++x) vt[j * pb.D + x] = w[j] * v[j * pb.D + x];
  }
  void prepare_backward(const Problem& pb, const float* k, const float* lse) {
    prepare(pb, k);
    if (!on) return;
    r.resize(pb.N);
    // r = exp(c + c_max − lse) with its exponent as (c_max − c) − (lse − 2c): two small terms.
    for (int64_t i = 0; i < pb.N; ++i) r[i] = std::exp((c_max - c[i]) - (lse[i] - 2.f * c[i]));
  }
};

// e[b] = exp(s[b] − c_a − c_j[b]): one row of E (the backward's).
KKATTN_CLONES void exp_centered(float* __restrict e, const float* __restrict s, float c_a,
                                const float* __restrict c_j, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) store<v16f>(e + j, exp_poly<v16f, v16i>(load<v16f>(s + j) - c_a - load<v16f>(c_j + j)));
  for (; j < n; ++j) e[j] = exp_approx(s[j] - c_a - c_j[j]);
}

// The same for the forward, in place over one row of logits e: returns the row's Σ_b e[b]·w_j[b]
// (its share of l_a) and, with kCols, adds e[b]·w_a to colsum[b] (the columns' shares of their l).
template <bool kCols>
__attribute__((always_inline)) inline float exp_pair_body(float* e, float c_a, const float* __restrict c_j,
                                                          const float* __restrict w_j, float w_a,
                                                          float* __restrict colsum, int64_t n) {
  v16f acc = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const v16f x = exp_poly<v16f, v16i>(load<v16f>(e + j) - c_a - load<v16f>(c_j + j));
    store<v16f>(e + j, x);
    acc += x * load<v16f>(w_j + j);
    if constexpr (kCols) store<v16f>(colsum + j, load<v16f>(colsum + j) + x * w_a);
  }
  float sum = 0.f;
  for (int lane = 0; lane < 16; ++lane) sum += acc[lane];
  for (; j < n; ++j) {
    e[j] = exp_approx(e[j] - c_a - c_j[j]);
    sum += e[j] * w_j[j];
    if constexpr (kCols) colsum[j] += e[j] * w_a;
  }
  return sum;
}

KKATTN_CLONES float exp_pair_row(float* e, float c_a, const float* __restrict c_j, const float* __restrict w_j,
                                 int64_t n) {
  return exp_pair_body<false>(e, c_a, c_j, w_j, 0.f, nullptr, n);
}

KKATTN_CLONES float exp_pair_both(float* e, float c_a, const float* __restrict c_j, const float* __restrict w_j,
                                  float w_a, float* __restrict colsum, int64_t n) {
  return exp_pair_body<true>(e, c_a, c_j, w_j, w_a, colsum, n);
}

// p[b] = e[b]·(r_a·W[b]) and pt[b] = e[b]·(W_a·r[b]): P_iJ and P_Jiᵀ from one row of E.
KKATTN_CLONES void scale_pair(float* __restrict p, float* __restrict pt, const float* __restrict e, float r_a,
                              float w_a, const float* __restrict w, const float* __restrict r, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    p[j] = e[j] * (r_a * w[j]);
    pt[j] = e[j] * (w_a * r[j]);
  }
}

// Smoother forward tile: rows i's off-diagonal sums l_i += E_ij W_j and acc_i (ri × D) += E_ij Ṽ_j,
// and with both_sides l_j += E_ijᵀ W_i and acc_j += E_ijᵀ Ṽ_i.  On the diagonal tile E_ii is left out:
// the caller adds the diagonal term W_i apart (for O' and p_off).
void smoother_forward_tile(const Problem& pb, int64_t h, const float* k, const Smoother& sm, int64_t i0, int64_t ri,
                           int64_t j0, int64_t rj, bool both_sides, float* l_i, float* acc_i, float* l_j,
                           float* acc_j, Scratch& w) {
  const int64_t D = pb.D;
  float* e = w.s.data();
  logits(pb, h, k, i0, ri, j0, rj, e);
  if (i0 == j0)
    for (int64_t a = 0; a < ri; ++a) e[a * rj + a] = -std::numeric_limits<float>::infinity();  // exp → 0
  for (int64_t a = 0; a < ri; ++a) {
    float* row = e + a * rj;
    l_i[a] += both_sides ? exp_pair_both(row, sm.c[i0 + a], sm.c.data() + j0, sm.w.data() + j0, sm.w[i0 + a], l_j, rj)
                         : exp_pair_row(row, sm.c[i0 + a], sm.c.data() + j0, sm.w.data() + j0, rj);
  }
  mm(false, false, ri, D, rj, 1.f, e, rj, sm.vt.data() + j0 * D, D, 1.f, acc_i, D);
  if (both_sides) mm(true, false, rj, D, ri, 1.f, e, rj, sm.vt.data() + i0 * D, D, 1.f, acc_j, D);
}

// ------------------------------------------------------------------ half precision through brgemm
// fp16/bf16 inputs run the smoother forward's tile products in their own dtype through ATen's
// cpublas::brgemm (oneDNN ukernels: AMX tiles or AVX-512-BF16/FP16 where the CPU has them), with fp32
// accumulation; c, W, the row sums and every reduction stay fp32.  The weights are rounded to the input
// dtype only where they enter a product, as the GPU kernels do.  B operands are packed once per
// (batch, head) into the VNNI layout the ukernels read (cpublas::pack), in blocks of kTile tokens.
//
// Scaling.  The weights entering E·V are row-scaled so that each row's diagonal weight is 1:
// A_ab = E_ab·W_b / W_a = exp(S_ab − 2c_a) ≤ e^Δ.  bf16 has fp32's range, so it takes this path for
// Δ ≤ 48 like fp32; fp16 (largest 65504) for Δ ≤ 8, as the Triton forward's fp16 weights
// (kkattn/_smoother.py MAX_SPREAD_FP16); other heads take the upcast path.  The accumulators are then
// acc'_i = acc_i / W_i and l'_i = l_i / W_i, so O_i = (acc'_i + V_i)/(l'_i + 1), lse_i = 2c_i + log1p(l'_i).
constexpr float kHalfFp16MaxSpread = 8.f;

// "native": the half-precision products where the CPU's brgemm packs the dtype; "upcast": always fp32.
bool half_native_wanted() {
  const char* mode = std::getenv("KKATTN_CPU_HALF");
  return mode == nullptr || std::string(mode) != "upcast";
}

bool half_native_supported(at::ScalarType dt) {
  if (dt != at::kBFloat16 && dt != at::kHalf) return false;
  static const bool bf16 = at::native::cpublas::could_pack(at::kBFloat16);
  static const bool fp16 = at::native::cpublas::could_pack(at::kHalf);
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

// One (batch, head)'s N × D operand x, VNNI-packed as the B of a brgemm, padded to Np = N rounded up to
// kTile tokens (zeros past N), in one of two forms:
//  * by_tokens: the B of products over the head dim, X_Jᵀ (D × kTile per block of kTile tokens) — S = K_i K_Jᵀ,
//    dP = dO_i V_Jᵀ;
//  * by_rows: the B of products over tokens, X (Np × wc per column block of ≤ 64) — A·V, Pᵀ·dO, dSᵀ·K.
// pack() is given ≤ 64 columns at a time (wider B failed to pack on the probed CPU).
template <typename T>
struct PackedB {
  std::vector<T> data;
  int64_t Np = 0, D = 0;
  bool by_rows = false;

  void pack(const T* x, int64_t N, int64_t D_, bool rows, std::vector<T>& tmp) {
    D = D_, by_rows = rows, Np = (N + kTile - 1) / kTile * kTile;
    const auto dt = c10::CppTypeToScalarType<T>::value;
    data.assign(Np * D, T(0.f));
    tmp.resize(std::max<int64_t>(D, 64) * kTile);
    if (!rows) {
      for (int64_t m = 0; m < Np / kTile; ++m) {
        for (int64_t c = 0; c < D; ++c)
          for (int64_t n = 0; n < kTile; ++n) {
            const int64_t j = m * kTile + n;
            tmp[c * kTile + n] = j < N ? x[j * D + c] : T(0.f);
          }
        at::native::cpublas::pack(D, kTile, kTile, kTile, dt, dt, tmp.data(), data.data() + m * D * kTile);
      }
      return;
    }
    for (int64_t cb = 0; cb * 64 < D; ++cb) {
      const int64_t wc = std::min<int64_t>(64, D - cb * 64);
      for (int64_t m = 0; m < Np / kTile; ++m) {
        for (int64_t n = 0; n < kTile; ++n) {
          const int64_t j = m * kTile + n;
          for (int64_t c = 0; c < wc; ++c) tmp[n * wc + c] = j < N ? x[j * D + cb * 64 + c] : T(0.f);
        }
        at::native::cpublas::pack(kTile, wc, wc, wc, dt, dt, tmp.data(), data.data() + cb * 64 * Np + m * kTile * wc);
      }
    }
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

// The forward's operands of one (batch, head): Kᵀ for S, V for the weights' product.
template <typename T>
struct HalfOperands {
  PackedB<T> kt, v;
  std::vector<T> tmp;
  void prepare(const T* k, const T* vin, int64_t N, int64_t D) {
    kt.pack(k, N, D, false, tmp);
    v.pack(vin, N, D, true, tmp);
  }
};

// Per-thread scratch of the half path: the weights in the input dtype, row-major A (ri × rj_pad) and
// its transposed, column-scaled twin At (rj × ri_pad).
template <typename T>
struct HalfScratch {
  std::vector<T> a, at;
  HalfScratch() : a(kTile * kStrip), at(kStrip * kTile) {}
};

// S = scale·K_i K_Jᵀ (+ G) into s (ri × ldc, ldc = rj rounded up to kTile) through brgemm.
template <typename T>
void half_logits(const Problem& pb, int64_t h, const T* k, const PackedB<T>& kt, int64_t i0, int64_t ri, int64_t j0,
                 int64_t rj, float* s, int64_t ldc) {
  brgemm_tokens(ri, k + i0 * pb.D, kt, j0, rj, s, ldc);
  for (int64_t a = 0; a < ri; ++a) scale_row(s + a * ldc, pb.scale, rj);
  if (pb.prior) add_prior(s, ldc, *pb.prior, h, i0, ri, j0, rj);
}

// dst[b] = bf16(e[b]·w[b]·f) (w null: e[b]·f), rounded to nearest even (finite inputs), zero on [n, n_pad):
// 16 lanes of integer rounding, so every target_clones copy vectorizes it (no AVX-512-BF16 instruction needed).
typedef uint16_t v16u16 __attribute__((vector_size(32)));
KKATTN_CLONES void scaled_bf16_row(at::BFloat16* __restrict dst, const float* __restrict e, const float* __restrict w,
                                   float f, int64_t n, int64_t n_pad) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const v16f x = w ? load<v16f>(e + j) * (load<v16f>(w + j) * f) : load<v16f>(e + j) * f;
    v16i bits;
    std::memcpy(&bits, &x, sizeof bits);
    const v16i rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;
    const v16u16 half = __builtin_convertvector(rounded, v16u16);
    std::memcpy(dst + j, &half, sizeof half);
  }
  for (; j < n; ++j) dst[j] = at::BFloat16(w ? e[j] * (w[j] * f) : e[j] * f);
  for (; j < n_pad; ++j) dst[j] = at::BFloat16(0.f);
}

void scaled_half_row(at::BFloat16* dst, const float* e, const float* w, float f, int64_t n, int64_t n_pad) {
  scaled_bf16_row(dst, e, w, f, n, n_pad);
}

void scaled_half_row(at::Half* __restrict dst, const float* __restrict e, const float* __restrict w, float f,
                     int64_t n, int64_t n_pad) {
  for (int64_t j = 0; j < n; ++j) dst[j] = at::Half(w ? e[j] * (w[j] * f) : e[j] * f);
  for (int64_t j = n; j < n_pad; ++j) dst[j] = at::Half(0.f);
}

// The rows × cols fp32 tile src (ld lds) as dst (rows × ldd) in the input dtype, times f: dst = T(f·src).
template <typename T>
void to_half(T* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows, int64_t cols, float f) {
  for (int64_t a = 0; a < rows; ++a) scaled_half_row(dst + a * ldd, src + a * lds, nullptr, f, cols, ldd);
}

// dst (cols × ldd) = srcᵀ of src (rows × lds), rows and cols multiples of 8, in 8×8 blocks of register
// shuffles (unpack, shuffle, lane permute on AVX2/AVX-512).
__attribute__((always_inline)) inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  v8f r[8], t[8], u[8];
  for (int q = 0; q < 8; ++q) r[q] = load<v8f>(src + q * lds);
  for (int q = 0; q < 8; q += 2) {
    t[q] = __builtin_shuffle(r[q], r[q + 1], v8i{0, 8, 1, 9, 4, 12, 5, 13});
    t[q + 1] = __builtin_shuffle(r[q], r[q + 1], v8i{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int q = 0; q < 8; q += 4)
    for (int o = 0; o < 2; ++o) {
      u[q + 2 * o] = __builtin_shuffle(t[q + o], t[q + o + 2], v8i{0, 1, 8, 9, 4, 5, 12, 13});
      u[q + 2 * o + 1] = __builtin_shuffle(t[q + o], t[q + o + 2], v8i{2, 3, 10, 11, 6, 7, 14, 15});
    }
  // u[0..3]: columns {0,1}, {2,3}... of rows 0–3 in low/high halves; u[4..7] the same for rows 4–7.
  for (int q = 0; q < 4; ++q) {  // u[q] and u[q + 4] hold columns q and q + 4
    store<v8f>(dst + q * ldd, __builtin_shuffle(u[q], u[q + 4], v8i{0, 1, 2, 3, 8, 9, 10, 11}));
    store<v8f>(dst + (q + 4) * ldd, __builtin_shuffle(u[q], u[q + 4], v8i{4, 5, 6, 7, 12, 13, 14, 15}));
  }
}

KKATTN_CLONES void transpose_tile(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst, int64_t ldd) {
  for (int64_t a = 0; a < rows; a += 8)
    for (int64_t b = 0; b < cols; b += 8) transpose8x8(src + a * lds + b, lds, dst + b * ldd + a, ldd);
}

// Half-precision smoother forward tile: as smoother_forward_tile, with acc' and l' (row-scaled, see above).
template <typename T>
void half_forward_tile(const Problem& pb, int64_t h, const T* k, const HalfOperands<T>& ops, const Smoother& sm,
                       const std::vector<float>& iw, int64_t i0, int64_t ri, int64_t j0, int64_t rj, bool both_sides,
                       float* l_i, float* acc_i, float* l_j, float* acc_j, Scratch& w, HalfScratch<T>& hw) {
  const int64_t D = pb.D, ldc = (rj + kTile - 1) / kTile * kTile, ldt = (ri + kTile - 1) / kTile * kTile;
  float* e = w.s.data();
  half_logits(pb, h, k, ops.kt, i0, ri, j0, rj, e, ldc);
  if (i0 == j0)
    for (int64_t a = 0; a < ri; ++a) e[a * ldc + a] = -std::numeric_limits<float>::infinity();  // exp → 0
  float* colsum = w.p.data();  // rows j's Σ_a E_ab W_a (unscaled), then scaled into l_j
  if (both_sides) std::fill(colsum, colsum + rj, 0.f);
  for (int64_t a = 0; a < ri; ++a) {
    float* row = e + a * ldc;
    const float sum = both_sides ? exp_pair_both(row, sm.c[i0 + a], sm.c.data() + j0, sm.w.data() + j0,
                                                 sm.w[i0 + a], colsum, rj)
                                 : exp_pair_row(row, sm.c[i0 + a], sm.c.data() + j0, sm.w.data() + j0, rj);
    l_i[a] += sum * iw[i0 + a];
    scaled_half_row(hw.a.data() + a * ldc, row, sm.w.data() + j0, iw[i0 + a], rj, ldc);
  }
  brgemm_rows(ri, ldc, hw.a.data(), ops.v, j0, acc_i);
  if (!both_sides) return;
  // Eᵀ for rows j: an 8×8-blocked transpose of E (rows past ri and columns past rj are ignored below).
  float* et = w.st.data();
  transpose_tile(e, (ri + 7) / 8 * 8, (rj + 7) / 8 * 8, ldc, et, ldt);
  for (int64_t b = 0; b < rj; ++b) {
    l_j[b] += colsum[b] * iw[j0 + b];
    scaled_half_row(hw.at.data() + b * ldt, et + b * ldt, sm.w.data() + i0, iw[j0 + b], ri, ldt);
  }
  brgemm_rows(rj, ldt, hw.at.data(), ops.v, i0, acc_j);
}

// One work item of the half-precision smoother forward: rows [first_row, last_row) (every row with
// `pairs`, each unordered tile pair once), accumulating l' and acc' (row-scaled, see above).
template <typename T>
void half_forward_item(const Problem& pb, int64_t h, const T* k, const T* v, const Smoother& sm, bool pairs,
                       int64_t first_row, int64_t last_row, float* l, float* acc, Scratch& w, HalfScratch<T>& hw,
                       HalfOperands<T>& ops, std::vector<float>& iw, bool prepare) {
  const int64_t N = pb.N, D = pb.D;
  if (prepare) {
    ops.prepare(k, v, N, D);
    iw.resize(N);
    for (int64_t j = 0; j < N; ++j) iw[j] = std::exp(sm.c_max - sm.c[j]);
  }
  if (pairs) {
    for (int64_t i0 = 0; i0 < N; i0 += kTile) {
      const int64_t ri = std::min(kTile, N - i0);
      for_each_strip(i0, ri, i0, N, [&](int64_t j0, int64_t rj) {
        half_forward_tile(pb, h, k, ops, sm, iw, i0, ri, j0, rj, j0 != i0, l + i0, acc + i0 * D, l + j0, acc + j0 * D,
                          w, hw);
      });
    }
  } else {
    for_each_strip(first_row, last_row - first_row, 0, N, [&](int64_t j0, int64_t rj) {
      half_forward_tile(pb, h, k, ops, sm, iw, first_row, last_row - first_row, j0, rj, false, l, acc, nullptr, nullptr,
                        w, hw);
    });
  }
}

// --------------------------------------------------------------------------- online-softmax path
// Online-softmax step for `rows` query rows against `cols` keys: s (compact) holds their logits and
// becomes P; m, l, d, acc are those rows' running max, off-diagonal sum, diagonal weight and
// off-diagonal P·V accumulator.  With `diagonal` (the keys are the rows' own tokens) entry (a, a) goes
// to d instead of l and acc.
void softmax_step(float* s, int64_t rows, int64_t cols, bool diagonal, float* m, float* l, float* d, float* acc,
                  const float* v, int64_t D) {
  for (int64_t a = 0; a < rows; ++a) {
    float* sa = s + a * cols;
    const float alpha = online_softmax_update(m[a], row_max(sa, cols));
    float s_diag = 0.f;
    if (diagonal) {
      s_diag = sa[a];
      sa[a] = -std::numeric_limits<float>::infinity();
    }
    l[a] = l[a] * alpha + exp_shift_sum(sa, cols, m[a]);
    d[a] *= alpha;
    if (diagonal) {
      sa[a] = 0.f;  // not in the P·V product below
      d[a] += std::exp(s_diag - m[a]);
    }
    if (alpha != 1.f) scale_row(acc + a * D, alpha, D);
  }
  mm(false, false, rows, D, cols, 1.f, s, cols, v, D, 1.f, acc, D);
}

// Running softmax state (max, off-diagonal sum, diagonal weight, off-diagonal P·V accumulator) of a
// range of rows, starting at its first row.
struct RowState {
  float* m;
  float* l;
  float* d;
  float* acc;
  RowState rows_from(int64_t offset, int64_t D) const { return {m + offset, l + offset, d + offset, acc + offset * D}; }
};

// Online forward tile (i, j): rows i (state si) attend to keys j; with both_sides (state sj) also
// rows j attend to keys i.
void forward_tile(const Problem& pb, int64_t h, const float* k, const float* v, int64_t i0, int64_t ri, int64_t j0,
                  int64_t rj, bool both_sides, const RowState& si, const RowState& sj, Scratch& w) {
  const int64_t D = pb.D;
  logits(pb, h, k, i0, ri, j0, rj, w.s.data());
  if (both_sides) transpose(w.st.data(), w.s.data(), ri, rj);
  softmax_step(w.s.data(), ri, rj, i0 == j0, si.m, si.l, si.d, si.acc, v + j0 * D, D);
  if (both_sides) softmax_step(w.st.data(), rj, ri, false, sj.m, sj.l, sj.d, sj.acc, v + i0 * D, D);
}

// ------------------------------------------------------------------------------------- backward
// Per-row statistics of one (batch, head) for the backward (kkattn/_ops.py): the forward's lse,
// δ, δ' = δ − dP_ii and the forward's P_ii.
struct RowStats {
  const float* lse;
  const float* delta;
  const float* delta_diag;
  const float* p_diag;
};

// Backward tile (i, J), ri × rj: adds rows i's share to dK_J, dV_J (and with both_sides rows J's
// share to dK_i, dV_i); returns this tile's Σ dS·G·d² (dσ·σ³) when need_dsigma.  P comes from the
// smoother when sm.on (one exp for P_iJ and P_Jiᵀ), else from the lse (two).
double backward_tile(const Problem& pb, int64_t h, const float* k, const float* v, const float* dout,
                     const RowStats& st, const Smoother& sm, int64_t i0, int64_t ri, int64_t j0, int64_t rj,
                     bool both_sides, bool need_dsigma, float* dk, float* dv, Scratch& w) {
  const float *lse = st.lse, *delta = st.delta;
  const int64_t D = pb.D, ld = rj;
  float *s = w.s.data(), *p = w.p.data(), *pt = w.pt.data(), *dp = w.dp.data(), *dpt = w.dpt.data(), *ds = w.ds.data();
  logits(pb, h, k, i0, ri, j0, rj, s);  // once for both P_iJ and P_Jiᵀ
  for (int64_t a = 0; a < ri; ++a) {
    const int64_t o = a * ld;
    if (sm.on) {
      exp_centered(ds + o, s + o, sm.c[i0 + a], sm.c.data() + j0, rj);  // E (ds is free until below)
      scale_pair(p + o, pt + o, ds + o, sm.r[i0 + a], sm.w[i0 + a], sm.w.data() + j0, sm.r.data() + j0, rj);
    } else {
      std::copy(s + o, s + o + rj, p + o);
      exp_shift_sum(p + o, rj, lse[i0 + a]);                 // P_iJ
      exp_shift_vec(pt + o, s + o, lse + j0, rj);            // P_Jiᵀ
    }
  }
  if (i0 == j0)  // the diagonal: the forward's P_ii (exact where the softmax saturates)
    for (int64_t a = 0; a < ri; ++a) p[a * ld + a] = pt[a * ld + a] = st.p_diag[i0 + a];
  mm(true, false, rj, D, ri, 1.f, p, ld, dout + i0 * D, D, 1.f, dv + j0 * D, D);    // dV_J += P_iJᵀ dO_i
  if (both_sides) mm(false, false, ri, D, rj, 1.f, pt, ld, dout + j0 * D, D, 1.f, dv + i0 * D, D);  // dV_i += P_Jiᵀ dO_J
  mm(false, true, ri, rj, D, 1.f, dout + i0 * D, D, v + j0 * D, D, 0.f, dp, ld);    // dP_iJ
  mm(false, true, ri, rj, D, 1.f, v + i0 * D, D, dout + j0 * D, D, 0.f, dpt, ld);   // dP_Jiᵀ
  for (int64_t a = 0; a < ri; ++a) {
    const int64_t o = a * ld;
    // dS_iJ into ds; dS_iJ + dS_Jiᵀ into s (the logits are no longer needed).
    logit_grads(ds + o, s + o, p + o, dp + o, delta[i0 + a], pt + o, dpt + o, delta + j0, rj);
  }
  if (i0 == j0)  // dS_ii = −P_ii·δ'_i, free of the cancellation in dP_ii − δ_i
    for (int64_t a = 0; a < ri; ++a) {
      const int64_t e = a * ld + a;
      ds[e] = -p[e] * st.delta_diag[i0 + a];
      s[e] = 2.f * ds[e];  // dS_ii + dS_iiᵀ
    }
  mm(true, false, rj, D, ri, pb.scale, s, ld, k + i0 * D, D, 1.f, dk + j0 * D, D);  // dK_J += scale·Tᵀ K_i
  if (both_sides) mm(false, false, ri, D, rj, pb.scale, s, ld, k + j0 * D, D, 1.f, dk + i0 * D, D);  // dK_i
  if (!need_dsigma) return 0.0;
  // Ordered pairs (i, J) and, with both_sides, (J, i): Σ (dS_iJ + dS_Jiᵀ)·G·d² since G, d² are symmetric.
  return prior_grad_sum(both_sides ? s : ds, ld, *pb.prior, h, i0, ri, j0, rj);
}

// ------------------------------------------------------------------ half-precision backward
// The backward's operands of one (batch, head): Kᵀ (S), K (dK), Vᵀ (dP), dO (dV), dOᵀ (dPᵀ).
template <typename T>
struct HalfBackOperands {
  PackedB<T> kt, k, vt, dout, doutt;
  std::vector<T> tmp;
  void prepare(const T* k_in, const T* v_in, const T* dout_in, int64_t N, int64_t D) {
    kt.pack(k_in, N, D, false, tmp);
    k.pack(k_in, N, D, true, tmp);
    vt.pack(v_in, N, D, false, tmp);
    dout.pack(dout_in, N, D, true, tmp);
    doutt.pack(dout_in, N, D, false, tmp);
  }
};

// backward_tile on the smoother's path with the five (seven with both_sides) products in the input dtype:
// P and dS are computed in fp32 exactly as there and rounded to T only as they enter a product.
template <typename T>
double half_backward_tile(const Problem& pb, int64_t h, const T* k, const T* v, const T* dout,
                          const HalfBackOperands<T>& ops, const RowStats& st, const Smoother& sm, int64_t i0, int64_t ri,
                          int64_t j0, int64_t rj, bool both_sides, bool need_dsigma, float* dk, float* dv, Scratch& w,
                          HalfScratch<T>& hw) {
  const int64_t D = pb.D, ld = (rj + kTile - 1) / kTile * kTile, ldt = (ri + kTile - 1) / kTile * kTile;
  const int64_t ri8 = (ri + 7) / 8 * 8, rj8 = (rj + 7) / 8 * 8;
  float *s = w.s.data(), *p = w.p.data(), *pt = w.pt.data(), *dp = w.dp.data(), *dpt = w.dpt.data(), *ds = w.ds.data();
  float* tr = w.st.data();
  T *a = hw.a.data(), *at = hw.at.data();
  half_logits(pb, h, k, ops.kt, i0, ri, j0, rj, s, ld);  // once for both P_iJ and P_Jiᵀ
  for (int64_t r = 0; r < ri; ++r) {
    const int64_t o = r * ld;
    exp_centered(ds + o, s + o, sm.c[i0 + r], sm.c.data() + j0, rj);  // E (ds is free until below)
    scale_pair(p + o, pt + o, ds + o, sm.r[i0 + r], sm.w[i0 + r], sm.w.data() + j0, sm.r.data() + j0, rj);
  }
  if (i0 == j0)  // the diagonal: the forward's P_ii
    for (int64_t r = 0; r < ri; ++r) p[r * ld + r] = pt[r * ld + r] = st.p_diag[i0 + r];
  transpose_tile(p, ri8, rj8, ld, tr, ldt);  // P_iJᵀ
  to_half(at, ldt, tr, ldt, rj, ri, 1.f);
  brgemm_rows(rj, ldt, at, ops.dout, i0, dv + j0 * D);  // dV_J += P_iJᵀ dO_i
  if (both_sides) {
    to_half(a, ld, pt, ld, ri, rj, 1.f);
    brgemm_rows(ri, ld, a, ops.dout, j0, dv + i0 * D);  // dV_i += P_Jiᵀ dO_J
  }
  brgemm_tokens(ri, dout + i0 * D, ops.vt, j0, rj, dp, ld);    // dP_iJ
  brgemm_tokens(ri, v + i0 * D, ops.doutt, j0, rj, dpt, ld);   // dP_Jiᵀ
  for (int64_t r = 0; r < ri; ++r) {
    const int64_t o = r * ld;
    logit_grads(ds + o, s + o, p + o, dp + o, st.delta[i0 + r], pt + o, dpt + o, st.delta + j0, rj);
  }
  if (i0 == j0)
    for (int64_t r = 0; r < ri; ++r) {
      const int64_t e = r * ld + r;
      ds[e] = -p[e] * st.delta_diag[i0 + r];
      s[e] = 2.f * ds[e];
    }
  transpose_tile(s, ri8, rj8, ld, tr, ldt);  // (dS_iJ + dS_Jiᵀ)ᵀ
  to_half(at, ldt, tr, ldt, rj, ri, pb.scale);
  brgemm_rows(rj, ldt, at, ops.k, i0, dk + j0 * D);  // dK_J += scale·Tᵀ K_i
  if (both_sides) {
    to_half(a, ld, s, ld, ri, rj, pb.scale);
    brgemm_rows(ri, ld, a, ops.k, j0, dk + i0 * D);  // dK_i += scale·T K_J
  }
  if (!need_dsigma) return 0.0;
  return prior_grad_sum(both_sides ? s : ds, ld, *pb.prior, h, i0, ri, j0, rj);
}

}  // namespace

// Writes out (B, H, N, D) and lse (B, H, N), both float32 and contiguous, and when given the
// off-diagonal output out_off (B, H, N, D) and weight p_off (B, H, N); k, v in any float dtype.
void forward(const at::Tensor& k_in, const at::Tensor& v_in, const c10::optional<at::Tensor>& sigma, int64_t grid_w,
             int64_t num_prefix, double scale_d, at::Tensor& out, at::Tensor& lse,
             const c10::optional<at::Tensor>& out_off, const c10::optional<at::Tensor>& p_off) {
  check_inputs(k_in, v_in, sigma, grid_w, num_prefix);
  const auto k = k_in.to(at::kFloat).contiguous();
  const auto v = v_in.to(at::kFloat).contiguous();
  const int64_t B = k.size(0), H = k.size(1), N = k.size(2), D = k.size(3);
  const auto dtype = k_in.scalar_type();
  // The half-precision products (see "half precision through brgemm"): VNNI packs pairs of rows.
  const bool half = half_path(dtype, D) == "native";
  const auto kh = half ? k_in.contiguous() : at::Tensor(), vh = half ? v_in.contiguous() : at::Tensor();
  check_output(out, k.sizes(), "out");
  check_output(lse, {B, H, N}, "lse");
  TORCH_CHECK(out_off.has_value() == p_off.has_value(), "kkattn cpu kernel: out_off and p_off go together");
  if (out_off.has_value()) {
    check_output(*out_off, k.sizes(), "out_off");
    check_output(*p_off, {B, H, N}, "p_off");
  }
  const Prior prior = sigma.has_value() ? make_prior(*sigma, N, grid_w, num_prefix) : Prior{};
  const Problem pb{N, D, static_cast<float>(scale_d), sigma.has_value() ? &prior : nullptr};
  const float *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *op = out.data_ptr<float>(), *lp = lse.data_ptr<float>();
  float* oop = out_off.has_value() ? out_off->data_ptr<float>() : nullptr;
  float* pop = p_off.has_value() ? p_off->data_ptr<float>() : nullptr;
  const int64_t n_blocks = (N + kTile - 1) / kTile;
  const bool pairs = use_pairs(B * H);
  const int64_t items = pairs ? B * H : B * H * n_blocks;

  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    Scratch w;
    Smoother sm;
    HalfScratch<at::BFloat16> hw_bf16;
    HalfScratch<at::Half> hw_fp16;
    HalfOperands<at::BFloat16> ops_bf16;
    HalfOperands<at::Half> ops_fp16;
    std::vector<float> iw;
    int64_t prepared = -1;  // the (batch, head) sm holds: a thread's row-block items come in head order
    const int64_t span = pairs ? N : kTile;  // rows whose running state one item holds
    std::vector<float> m(span), l(span), d(span), acc(span * D);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = pairs ? item : item / n_blocks, h = bh % H;
      const float *kbh = kp + bh * N * D, *vbh = vp + bh * N * D;
      const int64_t first_row = pairs ? 0 : (item % n_blocks) * kTile;
      const int64_t last_row = pairs ? N : std::min(first_row + kTile, N);
      const auto write_row = [&](int64_t row, const float* acc_row, float diag, float off, float row_lse) {
        const float total = off + diag, inv = 1.f / total;
        const float* v_row = vbh + row * D;
        float* dst = op + (bh * N + row) * D;
        for (int64_t x = 0; x < D; ++x) dst[x] = (acc_row[x] + diag * v_row[x]) * inv;
        lp[bh * N + row] = row_lse;
        if (oop) {
          float* dst_off = oop + (bh * N + row) * D;
          for (int64_t x = 0; x < D; ++x) dst_off[x] = acc_row[x] * inv;
          pop[bh * N + row] = off * inv;
        }
      };
      const bool fresh = bh != prepared;
      if (fresh) sm.prepare_forward(pb, kbh, vbh, !half);
      prepared = bh;
      // fp16 weights hold e^Δ: within fp16's range for Δ ≤ 8; wider heads take the upcast smoother.
      const bool half_on = half && sm.on && (dtype == at::kBFloat16 || sm.spread <= kHalfFp16MaxSpread);
      if (fresh && half && sm.on && !half_on) sm.prepare_forward(pb, kbh, vbh, true);
      if (half_on) {
        std::fill(l.begin(), l.end(), 0.f);
        std::fill(acc.begin(), acc.end(), 0.f);
        if (dtype == at::kBFloat16) {
          const auto* kb = kh.data_ptr<at::BFloat16>() + bh * N * D;
          half_forward_item(pb, h, kb, vh.data_ptr<at::BFloat16>() + bh * N * D, sm, pairs, first_row, last_row,
                            l.data(), acc.data(), w, hw_bf16, ops_bf16, iw, fresh);
        } else {
          const auto* kb = kh.data_ptr<at::Half>() + bh * N * D;
          half_forward_item(pb, h, kb, vh.data_ptr<at::Half>() + bh * N * D, sm, pairs, first_row, last_row, l.data(),
                            acc.data(), w, hw_fp16, ops_fp16, iw, fresh);
        }
        for (int64_t row = first_row; row < last_row; ++row) {
          const int64_t a = row - first_row;  // row-scaled: diagonal weight 1, off-diagonal l'
          write_row(row, acc.data() + a * D, 1.f, l[a], 2.f * sm.c[row] + std::log1p(l[a]));
        }
        continue;
      }
      if (sm.on) {
        std::fill(l.begin(), l.end(), 0.f);
        std::fill(acc.begin(), acc.end(), 0.f);
        if (pairs) {
          for (int64_t i0 = 0; i0 < N; i0 += kTile) {
            const int64_t ri = std::min(kTile, N - i0);
            for_each_strip(i0, ri, i0, N, [&](int64_t j0, int64_t rj) {
              smoother_forward_tile(pb, h, kbh, sm, i0, ri, j0, rj, j0 != i0, l.data() + i0, acc.data() + i0 * D,
                                    l.data() + j0, acc.data() + j0 * D, w);
            });
          }
        } else {
          for_each_strip(first_row, last_row - first_row, 0, N, [&](int64_t j0, int64_t rj) {
            smoother_forward_tile(pb, h, kbh, sm, first_row, last_row - first_row, j0, rj, false, l.data(),
                                  acc.data(), nullptr, nullptr, w);
          });
        }
        for (int64_t row = first_row; row < last_row; ++row) {
          const int64_t a = row - first_row;
          // lse = c + c_max + log(W + l) = S_ii + log1p(l/W): without c_max's magnitude in it.
          write_row(row, acc.data() + a * D, sm.w[row], l[a], 2.f * sm.c[row] + std::log1p(l[a] / sm.w[row]));
        }
        continue;
      }
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      std::fill(d.begin(), d.end(), 0.f);
      std::fill(acc.begin(), acc.end(), 0.f);
      const RowState state{m.data(), l.data(), d.data(), acc.data()};  // rows first_row .. last_row − 1
      if (pairs) {
        for (int64_t i0 = 0; i0 < N; i0 += kTile) {
          const int64_t ri = std::min(kTile, N - i0);
          for_each_strip(i0, ri, i0, N, [&](int64_t j0, int64_t rj) {
            forward_tile(pb, h, kbh, vbh, i0, ri, j0, rj, j0 != i0, state.rows_from(i0, D), state.rows_from(j0, D), w);
          });
        }
      } else {
        for_each_strip(first_row, last_row - first_row, 0, N, [&](int64_t j0, int64_t rj) {
          forward_tile(pb, h, kbh, vbh, first_row, last_row - first_row, j0, rj, false, state, state, w);
        });
      }
      for (int64_t row = first_row; row < last_row; ++row) {
        const int64_t a = row - first_row;
        write_row(row, acc.data() + a * D, d[a], l[a], m[a] + std::log(l[a] + d[a]));
      }
    }
    if (half) at::native::cpublas::brgemm_release();  // this thread's AMX tile state
  });
}

// Writes dk, dv (B, H, N, D) and dsigma (H,) = Σ dS·G·d² (dσ·σ³), float32 and contiguous; dsigma is
// zeroed unless needed.  lse, delta, delta_diag, p_diag: (B, H, N) row statistics (kkattn/_ops.py).
void backward(const at::Tensor& dout_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& lse_in,
              const at::Tensor& delta_in, const at::Tensor& delta_diag_in, const at::Tensor& p_diag_in,
              const c10::optional<at::Tensor>& sigma, int64_t grid_w, int64_t num_prefix,
              double scale_d, bool need_dsigma, at::Tensor& dk, at::Tensor& dv, at::Tensor& dsigma) {
  check_inputs(k_in, v_in, sigma, grid_w, num_prefix);
  TORCH_CHECK(dout_in.sizes() == k_in.sizes(), "kkattn cpu kernel: dout must have k's shape");
  const auto k = k_in.to(at::kFloat).contiguous();
  const auto v = v_in.to(at::kFloat).contiguous();
  const auto dout = dout_in.to(at::kFloat).contiguous();
  const auto dtype = k_in.scalar_type();
  const bool half = dout_in.scalar_type() == dtype && half_path(dtype, k_in.size(3)) == "native";
  const auto kh = half ? k_in.contiguous() : at::Tensor(), vh = half ? v_in.contiguous() : at::Tensor();
  const auto doh = half ? dout_in.contiguous() : at::Tensor();
  const auto row_stat = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.sizes() == k_in.sizes().slice(0, 3), "kkattn cpu kernel: ", name, " must be (B, H, N)");
    return t.to(at::kFloat).contiguous();
  };
  const auto lse = row_stat(lse_in, "lse"), delta = row_stat(delta_in, "delta");
  const auto delta_diag = row_stat(delta_diag_in, "delta_diag"), p_diag = row_stat(p_diag_in, "p_diag");
  const int64_t B = k.size(0), H = k.size(1), N = k.size(2), D = k.size(3);
  check_output(dk, k.sizes(), "dk");
  check_output(dv, k.sizes(), "dv");
  check_output(dsigma, {H}, "dsigma");
  need_dsigma = need_dsigma && sigma.has_value();
  const Prior prior = sigma.has_value() ? make_prior(*sigma, N, grid_w, num_prefix) : Prior{};
  const Problem pb{N, D, static_cast<float>(scale_d), sigma.has_value() ? &prior : nullptr};
  const int64_t n_blocks = (N + kTile - 1) / kTile;
  const bool pairs = use_pairs(B * H);
  const int64_t items = pairs ? B * H : B * H * n_blocks;
  std::vector<double> dsigma_part(need_dsigma ? items : 0, 0.0);
  const float *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>(), *dop = dout.data_ptr<float>();
  const float *lp = lse.data_ptr<float>(), *deltap = delta.data_ptr<float>();
  const float *ddp = delta_diag.data_ptr<float>(), *pdp = p_diag.data_ptr<float>();
  float *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();

  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    Scratch w;
    Smoother sm;
    HalfScratch<at::BFloat16> hw_bf16;
    HalfScratch<at::Half> hw_fp16;
    HalfBackOperands<at::BFloat16> ops_bf16;
    HalfBackOperands<at::Half> ops_fp16;
    int64_t prepared = -1;  // as in the forward
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = pairs ? item : item / n_blocks, h = bh % H;
      const int64_t off = bh * N * D;
      const RowStats st{lp + bh * N, deltap + bh * N, ddp + bh * N, pdp + bh * N};
      const bool fresh = bh != prepared;
      if (fresh) sm.prepare_backward(pb, kp + off, st.lse);
      prepared = bh;
      // The backward's weights are fp32 until they enter a product (P ≤ 1): every dtype within the smoother's range.
      const bool half_on = half && sm.on;
      if (half_on && fresh) {
        if (dtype == at::kBFloat16)
          ops_bf16.prepare(kh.data_ptr<at::BFloat16>() + off, vh.data_ptr<at::BFloat16>() + off,
                           doh.data_ptr<at::BFloat16>() + off, N, D);
        else
          ops_fp16.prepare(kh.data_ptr<at::Half>() + off, vh.data_ptr<at::Half>() + off, doh.data_ptr<at::Half>() + off,
                           N, D);
      }
      double dsig = 0.0;
      const auto tile = [&](int64_t i0, int64_t ri, int64_t j0, int64_t rj, bool both_sides) {
        if (half_on && dtype == at::kBFloat16)
          dsig += half_backward_tile(pb, h, kh.data_ptr<at::BFloat16>() + off, vh.data_ptr<at::BFloat16>() + off,
                                     doh.data_ptr<at::BFloat16>() + off, ops_bf16, st, sm, i0, ri, j0, rj, both_sides,
                                     need_dsigma, dkp + off, dvp + off, w, hw_bf16);
        else if (half_on)
          dsig += half_backward_tile(pb, h, kh.data_ptr<at::Half>() + off, vh.data_ptr<at::Half>() + off,
                                     doh.data_ptr<at::Half>() + off, ops_fp16, st, sm, i0, ri, j0, rj, both_sides,
                                     need_dsigma, dkp + off, dvp + off, w, hw_fp16);
        else
          dsig += backward_tile(pb, h, kp + off, vp + off, dop + off, st, sm, i0, ri, j0, rj, both_sides, need_dsigma,
                                dkp + off, dvp + off, w);
      };
      if (pairs) {  // this item owns all of (b, h)'s dK and dV
        std::fill(dkp + off, dkp + off + N * D, 0.f);
        std::fill(dvp + off, dvp + off + N * D, 0.f);
        for (int64_t i0 = 0; i0 < N; i0 += kTile) {
          const int64_t ri = std::min(kTile, N - i0);
          for_each_strip(i0, ri, i0, N, [&](int64_t j0, int64_t rj) { tile(i0, ri, j0, rj, j0 != i0); });
        }
      } else {  // this item owns key block J's rows of dK and dV, against strips of rows i
        const int64_t j0 = (item % n_blocks) * kTile, rj = std::min(kTile, N - j0);
        std::fill(dkp + off + j0 * D, dkp + off + (j0 + rj) * D, 0.f);
        std::fill(dvp + off + j0 * D, dvp + off + (j0 + rj) * D, 0.f);
        for_each_strip(j0, rj, 0, N, [&](int64_t i0, int64_t ri) { tile(i0, ri, j0, rj, false); });
      }
      if (need_dsigma) dsigma_part[item] = dsig;
    }
    if (half) at::native::cpublas::brgemm_release();
  });

  dsigma.zero_();
  if (need_dsigma) {
    float* dsp = dsigma.data_ptr<float>();
    const int64_t per_bh = pairs ? 1 : n_blocks;
    for (int64_t h = 0; h < H; ++h) {  // fixed order: deterministic
      double total = 0.0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t blk = 0; blk < per_bh; ++blk) total += dsigma_part[(b * H + h) * per_bh + blk];
      dsp[h] = static_cast<float>(total);  // Σ dS·G·d² = dσ·σ³; the caller divides by σ³
    }
  }
}

// The smoother's range check per (batch, head): (B, H) float32 spreads max c − min c (NaN for
// non-finite keys).  The kernels take the smoother where spread <= smoother_max_spread().  For
// benchmarks and tests that report or steer the path; the kernels compute it themselves.
at::Tensor smoother_spread(const at::Tensor& k_in, bool prior, int64_t num_prefix, double scale) {
  TORCH_CHECK(k_in.device().is_cpu() && k_in.dim() == 4, "kkattn cpu kernel: k must be a (B, H, N, D) CPU tensor");
  const auto k = k_in.to(at::kFloat).contiguous();
  const int64_t B = k.size(0), H = k.size(1), N = k.size(2), D = k.size(3);
  auto spread = at::empty({B, H}, k.options());
  float* out = spread.data_ptr<float>();
  std::vector<float> c(N);
  for (int64_t bh = 0; bh < B * H; ++bh)
    out[bh] = smoother_shifts(k.data_ptr<float>() + bh * N * D, N, D, static_cast<float>(scale),
                              prior ? num_prefix : N, c.data());
  return spread;
}

double smoother_max_spread() { return kSmootherMaxSpread; }

// The path fp16/bf16 inputs of head dim D take here: "native", "upcast" or, for float32, "fp32".
std::string half_precision_path(const std::string& dtype, int64_t head_dim) {
  const auto dt = dtype == "bfloat16" ? at::kBFloat16 : dtype == "float16" ? at::kHalf : at::kFloat;
  return half_path(dt, head_dim);
}

}  // namespace cpu
}  // namespace kkattn

// What this build holds: "cpu", or "cpu+cuda" when csrc/kkattn_cuda.cu was compiled in (setup.py
// defines KKATTN_WITH_CUDA then).  kkattn.available_backends() reads it.
std::string build_info() {
#ifdef KKATTN_WITH_CUDA
  return "cpu+cuda";
#else
  return "cpu";
#endif
}

TORCH_LIBRARY(kkattn_C, m) {
  m.def("build_info() -> str", &build_info);
  m.def("smoother_max_spread() -> float", &kkattn::cpu::smoother_max_spread);
  m.def("half_precision_path(str dtype, int head_dim) -> str", &kkattn::cpu::half_precision_path);
  m.def("smoother_spread(Tensor k, bool prior, int num_prefix_tokens, float scale) -> Tensor");
  m.def(
      "forward(Tensor k, Tensor v, Tensor? sigma, int grid_w, int num_prefix_tokens, float scale, "
      "Tensor(a!) out, Tensor(b!) lse, Tensor(c!)? out_off, Tensor(d!)? p_off) -> ()");
  m.def(
      "backward(Tensor dout, Tensor k, Tensor v, Tensor lse, Tensor delta, Tensor delta_diag, Tensor p_diag, "
      "Tensor? sigma, int grid_w, "
      "int num_prefix_tokens, float scale, bool need_dsigma, Tensor(a!) dk, Tensor(b!) dv, Tensor(c!) dsigma) -> ()");
}

TORCH_LIBRARY_IMPL(kkattn_C, CPU, m) {
  m.impl("forward", &kkattn::cpu::forward);
  m.impl("backward", &kkattn::cpu::backward);
  m.impl("smoother_spread", &kkattn::cpu::smoother_spread);
}

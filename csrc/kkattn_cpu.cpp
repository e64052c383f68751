// Fused CPU kernels for neighborhood key–key attention: O = softmax(scale·K Kᵀ + G) V.
//
// FlashAttention-style tiling: tile products go through the BLAS GEMM PyTorch links (sgemm_:
// MKL/OpenBLAS), with the prior and the online softmax fused between them in vectorized loops.  Memory is O(B·H·N·D) plus per-thread tiles: never an N×N buffer.
//
//  * Prior: separable, G(i, j) = g_r(Δr)·g_c(Δc), from per-call tables of exp(−t²/(2σ²)) — no exp
//    per element.  For a query row, a run of keys on one grid row adds g_r(Δr)·profile[c..] (a
//    contiguous axpy).  Runs and whole tiles whose largest G is below 2^-24 are skipped: exact to
//    fp32 rounding (kNegligiblePrior in kkattn_math.h).
//  * Forward: one work item per (batch, head, query block); online softmax; log-sum-exp saved.
//  * Backward: one work item per (batch, head, key block J) looping over all row blocks i.  Q = K,
//    so the logit tile S_iJ serves both P_iJ = exp(S_iJ − L_i) and P_Jiᵀ = exp(S_iJ − L_J); five
//    GEMMs per tile pair, each item owns its rows of dK and dV: no atomics, deterministic.
//  * Parallel with at::parallel_for (OpenMP in PyTorch builds): honours torch.get_num_threads().
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
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


constexpr int64_t kFwdRows = 64;    // query rows per forward work item
constexpr int64_t kFwdCols = 256;   // keys per forward tile
constexpr int64_t kBwdRows = 64;    // rows i per backward tile
constexpr int64_t kBwdCols = 64;    // keys J per backward work item

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

// exp(x), branch-free (Cephes' expf polynomial, ~1 ulp), written on 8-lane GCC vectors so that
// every target_clones copy vectorizes it (SSE: two halves; AVX2/AVX-512: one ymm).  Inputs below
// −87.3 give ~1e-38 instead of a denormal or 0: softmax terms that small vanish against a row sum
// >= 1.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

__attribute__((always_inline)) inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

__attribute__((always_inline)) inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

template <typename F, typename I>
__attribute__((always_inline)) inline F exp_poly(F x) {
  constexpr float kRound = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  x = x < -87.3f ? F{} - 87.3f : x;
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
  return p * scale;
}

__attribute__((always_inline)) inline v8f exp8(v8f x) { return exp_poly<v8f, v8i>(x); }

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
  v8f acc = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const v8f e = exp8(load8(s + j) - shift);
    store8(s + j, e);
    acc += e;
  }
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
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
  for (; j + 8 <= n; j += 8) store8(dst + j, exp8(load8(s + j) - load8(shift + j)));
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
  const float* rows(int64_t h) const { return g_row.data() + h * grid_h; }
  const float* cols(int64_t h) const { return g_col.data() + h * grid_w; }
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
  return prior;
}

// Column profile of a query at column c: profile[c'] = g_c(|c − c'|), c' < grid_w.
void column_profile(float* profile, const float* g_col, int64_t c, int64_t grid_w) {
  for (int64_t x = 0; x < grid_w; ++x) profile[x] = g_col[x > c ? x - c : c - x];
}

// Calls fn(a, b0, b1, dr, weight, run_profile) for each run of keys [b0, b1) (tile-local columns) on
// one grid row whose row factor g_r(dr) is not negligible; run_profile[b − b0] = g_c(Δc) of key b.
template <typename Fn>
void for_each_prior_run(const Prior& prior, int64_t h, int64_t i0, int64_t rows, int64_t j0, int64_t cols,
                        float* profile, bool keep_negligible, Fn&& fn) {
  const int64_t gap = min_row_gap(i0, i0 + rows, j0, j0 + cols, prior.grid_w, prior.num_prefix);
  if (gap < 0) return;
  const float* g_row = prior.rows(h);
  if (!keep_negligible && g_row[gap] < kNegligiblePrior) return;  // the whole tile is negligible
  for (int64_t a = 0; a < rows; ++a) {
    const GridPos pa = grid_pos(i0 + a, prior.grid_w, prior.num_prefix);
    if (!pa.on_grid) continue;
    column_profile(profile, prior.cols(h), pa.col, prior.grid_w);
    int64_t j = std::max(j0, prior.num_prefix);
    while (j < j0 + cols) {
      const GridPos pj = grid_pos(j, prior.grid_w, prior.num_prefix);
      const int64_t end = std::min(j0 + cols, j + (prior.grid_w - pj.col));
      const int64_t dr = pa.row > pj.row ? pa.row - pj.row : pj.row - pa.row;
      const float w = g_row[dr];
      if (keep_negligible || w >= kNegligiblePrior) fn(a, j - j0, end - j0, dr, w, profile + pj.col);
      j = end;
    }
  }
}

// S[a][b] += G(i0 + a, j0 + b) over the tile.
void add_prior(float* s, int64_t lds, const Prior& prior, int64_t h, int64_t i0, int64_t rows, int64_t j0,
               int64_t cols, float* profile) {
  for_each_prior_run(prior, h, i0, rows, j0, cols, profile, false,
                     [&](int64_t a, int64_t b0, int64_t b1, int64_t, float w, const float* run_profile) {
                       axpy(s + a * lds + b0, run_profile, w, b1 - b0);
                     });
}

// Σ_ab dS[a][b]·G·d² over the tile (dσ·σ³ share); every pair counts, however small its G.
double prior_grad_sum(const float* ds, int64_t lds, const Prior& prior, int64_t h, int64_t i0, int64_t rows,
                      int64_t j0, int64_t cols, float* profile) {
  double total = 0.0;
  for_each_prior_run(prior, h, i0, rows, j0, cols, profile, true,
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

}  // namespace

void check_output(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.sizes() == shape,
              "kkattn cpu kernel: ", name, " must be a contiguous float32 CPU tensor of shape ", shape);
}

// Writes out (B, H, N, D) and lse (B, H, N), both float32 and contiguous; k, v in any float dtype.
void forward(const at::Tensor& k_in, const at::Tensor& v_in, const c10::optional<at::Tensor>& sigma, int64_t grid_w,
             int64_t num_prefix, double scale_d, at::Tensor& out, at::Tensor& lse) {
  check_inputs(k_in, v_in, sigma, grid_w, num_prefix);
  const auto k = k_in.to(at::kFloat).contiguous();
  const auto v = v_in.to(at::kFloat).contiguous();
  const int64_t B = k.size(0), H = k.size(1), N = k.size(2), D = k.size(3);
  const float scale = static_cast<float>(scale_d);
  check_output(out, k.sizes(), "out");
  check_output(lse, {B, H, N}, "lse");
  const bool has_prior = sigma.has_value();
  const Prior prior = has_prior ? make_prior(*sigma, N, grid_w, num_prefix) : Prior{};
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  const int64_t n_blocks = (N + kFwdRows - 1) / kFwdRows;

  at::parallel_for(0, B * H * n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(kFwdRows * kFwdCols), acc(kFwdRows * D), row_m(kFwdRows), row_l(kFwdRows),
        profile(std::max<int64_t>(prior.grid_w, 1));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / n_blocks, h = bh % H;
      const int64_t i0 = (item % n_blocks) * kFwdRows, rows = std::min(kFwdRows, N - i0);
      const float* kbh = kp + bh * N * D;
      const float* vbh = vp + bh * N * D;
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(row_m.begin(), row_m.end(), -std::numeric_limits<float>::infinity());
      std::fill(row_l.begin(), row_l.end(), 0.f);
      for (int64_t j0 = 0; j0 < N; j0 += kFwdCols) {
        const int64_t cols = std::min(kFwdCols, N - j0);
        mm(false, true, rows, cols, D, scale, kbh + i0 * D, D, kbh + j0 * D, D, 0.f, s.data(), kFwdCols);
        if (has_prior) add_prior(s.data(), kFwdCols, prior, h, i0, rows, j0, cols, profile.data());
        for (int64_t a = 0; a < rows; ++a) {
          float* sa = s.data() + a * kFwdCols;
          const float alpha = online_softmax_update(row_m[a], row_max(sa, cols));
          row_l[a] = row_l[a] * alpha + exp_shift_sum(sa, cols, row_m[a]);
          if (alpha != 1.f) scale_row(acc.data() + a * D, alpha, D);
        }
        mm(false, false, rows, D, cols, 1.f, s.data(), kFwdCols, vbh + j0 * D, D, 1.f, acc.data(), D);
      }
      for (int64_t a = 0; a < rows; ++a) {
        const float inv = 1.f / row_l[a];
        float* dst = op + (bh * N + i0 + a) * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = acc[a * D + d] * inv;
        lp[bh * N + i0 + a] = row_m[a] + std::log(row_l[a]);
      }
    }
  });
}

// Writes dk, dv (B, H, N, D) and dsigma (H,), float32 and contiguous; dsigma is zeroed unless needed.
void backward(const at::Tensor& dout_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& out_in,
              const at::Tensor& lse_in, const c10::optional<at::Tensor>& sigma, int64_t grid_w, int64_t num_prefix,
              double scale_d, bool need_dsigma, at::Tensor& dk, at::Tensor& dv, at::Tensor& dsigma) {
  check_inputs(k_in, v_in, sigma, grid_w, num_prefix);
  TORCH_CHECK(dout_in.sizes() == k_in.sizes() && out_in.sizes() == k_in.sizes(),
              "kkattn cpu kernel: dout and out must have k's shape");
  const auto k = k_in.to(at::kFloat).contiguous();
  const auto v = v_in.to(at::kFloat).contiguous();
  const auto dout = dout_in.to(at::kFloat).contiguous();
  const auto lse = lse_in.to(at::kFloat).contiguous();
  // δ = rowsum(dO ∘ O) = rowsum(dP ∘ P): O(B·H·N).
  const auto delta = (dout * out_in.to(at::kFloat)).sum(-1).contiguous();
  const int64_t B = k.size(0), H = k.size(1), N = k.size(2), D = k.size(3);
  const float scale = static_cast<float>(scale_d);
  check_output(dk, k.sizes(), "dk");
  check_output(dv, k.sizes(), "dv");
  check_output(dsigma, {H}, "dsigma");
  const bool has_prior = sigma.has_value();
  need_dsigma = need_dsigma && has_prior;
  const Prior prior = has_prior ? make_prior(*sigma, N, grid_w, num_prefix) : Prior{};
  const int64_t n_blocks = (N + kBwdCols - 1) / kBwdCols;
  std::vector<double> dsigma_part(need_dsigma ? B * H * n_blocks : 0, 0.0);
  const float *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>(), *dop = dout.data_ptr<float>();
  const float *lp = lse.data_ptr<float>(), *deltap = delta.data_ptr<float>();
  float *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();

  at::parallel_for(0, B * H * n_blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t tile = kBwdRows * kBwdCols;
    std::vector<float> s(tile), p(tile), pt(tile), dp(tile), dpt(tile), ds(tile), dk_acc(kBwdCols * D),
        dv_acc(kBwdCols * D), profile(std::max<int64_t>(prior.grid_w, 1));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / n_blocks, h = bh % H;
      const int64_t j0 = (item % n_blocks) * kBwdCols, cols = std::min(kBwdCols, N - j0);
      const float *kbh = kp + bh * N * D, *vbh = vp + bh * N * D, *dobh = dop + bh * N * D;
      const float *lse_bh = lp + bh * N, *delta_bh = deltap + bh * N;
      std::fill(dk_acc.begin(), dk_acc.end(), 0.f);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.f);
      double dsig = 0.0;
      for (int64_t i0 = 0; i0 < N; i0 += kBwdRows) {
        const int64_t rows = std::min(kBwdRows, N - i0);
        // S_iJ = scale·K_i K_Jᵀ + G_iJ, once for both P_iJ and P_Jiᵀ.
        mm(false, true, rows, cols, D, scale, kbh + i0 * D, D, kbh + j0 * D, D, 0.f, s.data(), kBwdCols);
        if (has_prior) add_prior(s.data(), kBwdCols, prior, h, i0, rows, j0, cols, profile.data());
        for (int64_t a = 0; a < rows; ++a) {
          const float* sa = s.data() + a * kBwdCols;
          std::copy(sa, sa + cols, p.data() + a * kBwdCols);
          exp_shift_sum(p.data() + a * kBwdCols, cols, lse_bh[i0 + a]);         // P_iJ
          exp_shift_vec(pt.data() + a * kBwdCols, sa, lse_bh + j0, cols);       // P_Jiᵀ
        }
        mm(true, false, cols, D, rows, 1.f, p.data(), kBwdCols, dobh + i0 * D, D, 1.f, dv_acc.data(), D);
        mm(false, true, rows, cols, D, 1.f, dobh + i0 * D, D, vbh + j0 * D, D, 0.f, dp.data(), kBwdCols);
        mm(false, true, rows, cols, D, 1.f, vbh + i0 * D, D, dobh + j0 * D, D, 0.f, dpt.data(), kBwdCols);
        for (int64_t a = 0; a < rows; ++a) {
          const int64_t o = a * kBwdCols;
          // dS_iJ into ds; dS_iJ + dS_Jiᵀ into s (the logits are no longer needed).
          logit_grads(ds.data() + o, s.data() + o, p.data() + o, dp.data() + o, delta_bh[i0 + a], pt.data() + o,
                      dpt.data() + o, delta_bh + j0, cols);
        }
        mm(true, false, cols, D, rows, scale, s.data(), kBwdCols, kbh + i0 * D, D, 1.f, dk_acc.data(), D);
        if (need_dsigma) dsig += prior_grad_sum(ds.data(), kBwdCols, prior, h, i0, rows, j0, cols, profile.data());
      }
      std::copy(dk_acc.begin(), dk_acc.begin() + cols * D, dkp + (bh * N + j0) * D);
      std::copy(dv_acc.begin(), dv_acc.begin() + cols * D, dvp + (bh * N + j0) * D);
      if (need_dsigma) dsigma_part[item] = dsig;
    }
  });

  dsigma.zero_();
  if (need_dsigma) {
    auto s = sigma->to(at::kDouble).contiguous();
    const double* sp = s.data_ptr<double>();
    float* dsp = dsigma.data_ptr<float>();
    for (int64_t h = 0; h < H; ++h) {  // fixed order: deterministic
      double total = 0.0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t blk = 0; blk < n_blocks; ++blk) total += dsigma_part[(b * H + h) * n_blocks + blk];
      dsp[h] = static_cast<float>(total / (sp[h] * sp[h] * sp[h]));
    }
  }
}

}  // namespace cpu
}  // namespace kkattn

TORCH_LIBRARY(kkattn_C, m) {
  m.def(
      "forward(Tensor k, Tensor v, Tensor? sigma, int grid_w, int num_prefix_tokens, float scale, "
      "Tensor(a!) out, Tensor(b!) lse) -> ()");
  m.def(
      "backward(Tensor dout, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? sigma, int grid_w, "
      "int num_prefix_tokens, float scale, bool need_dsigma, Tensor(a!) dk, Tensor(b!) dv, Tensor(c!) dsigma) -> ()");
}

TORCH_LIBRARY_IMPL(kkattn_C, CPU, m) {
  m.impl("forward", &kkattn::cpu::forward);
  m.impl("backward", &kkattn::cpu::backward);
}

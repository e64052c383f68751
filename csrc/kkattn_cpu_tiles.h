// The CPU kernel's tiles, written once for every input dtype: the logits with the prior, the smoother's
// forward and backward, and the online-softmax fallback.  The tile products are the dtype's
// (kkattn_cpu_products.h); everything between them is fp32.  Internal to csrc/kkattn_cpu.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kkattn_cpu_epilogue.h"
#include "kkattn_cpu_prior.h"
#include "kkattn_cpu_products.h"
#include "kkattn_cpu_vec.h"

namespace kkattn {
namespace cpu {
namespace {

struct Problem {
  int64_t N, D;
  float scale;
  const Prior* prior;  // null: no prior
  bool avx512 = vector_isa_avx512();  // the smoother epilogue's instruction set, fixed per call
};

// Per-thread fp32 scratch for one tile of at most kTile × kStrip (or kStrip × kTile), leading dimension
// padded(columns).
struct Scratch {
  std::vector<float> s, st, p, pt, dp, dpt, ds, g;
  std::vector<KeyRun> runs;  // a strip's key runs (strip_runs): at most kStrip / grid_w + 2
  Scratch()
      : s(kTile * kStrip), st(kTile * kStrip), p(kTile * kStrip), pt(kTile * kStrip), dp(kTile * kStrip),
        dpt(kTile * kStrip), ds(kTile * kStrip), g(kStrip), runs(kStrip + 2) {}
};

void transpose(float* dst, const float* src, int64_t rows, int64_t cols) {  // src rows × cols → dst cols × rows
  for (int64_t a = 0; a < rows; ++a)
    for (int64_t b = 0; b < cols; ++b) dst[b * rows + a] = src[a * cols + b];
}

// S[ri × rj] (ld) = scale·K_i K_jᵀ + G_ij.
template <typename T>
void logits(const Problem& pb, int64_t h, const Operands<T>& ops, int64_t i0, int64_t ri, int64_t j0, int64_t rj,
            float* s, int64_t ld) {
  product_nt(ops, Role::k, Role::k, i0, ri, j0, rj, pb.scale, s, ld);
  if (pb.prior) add_prior(s, ld, *pb.prior, h, i0, ri, j0, rj);
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
// takes the online-softmax path, per (batch, head).  fp16/bf16 inputs keep c, W and every sum in
// fp32 (their weights are rounded only where they enter a product), so the bound is fp32's for every
// input dtype (fp16's forward adds its own range limit: kHalfFp16MaxSpread).
constexpr float kSmootherMaxSpread = 48.f;

// c_i = scale·‖k_i‖²/2 + g_i/2 for one (batch, head) into c[N]; returns the spread max c − min c
// (NaN or +inf for non-finite keys, which then take the online path).
// first_on_grid: the first token with a prior (N when there is none).
// Keys in any input dtype (the half path reads them as given: their fp32 values are exact).
template <typename T>
float smoother_shifts(const T* k, int64_t N, int64_t D, float scale, int64_t first_on_grid, float* c) {
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  for (int64_t i = 0; i < N; ++i) {
    const T* ki = k + i * D;
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t x = 0; x < D; ++x) sq += static_cast<float>(ki[x]) * static_cast<float>(ki[x]);
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
  std::vector<float> c, w, vt, r, iw;  // iw = 1/W (fp16's row scaling)
  float c_max = 0.f, spread = 0.f;
  bool on = false;

  // Sets `on` and, when it is, c, W and c_max.
  template <typename T>
  void prepare(const Problem& pb, const T* k) {
    c.resize(pb.N);
    w.resize(pb.N);
    const int64_t first_on_grid = pb.prior ? pb.prior->num_prefix : pb.N;
    spread = smoother_shifts(k, pb.N, pb.D, pb.scale, first_on_grid, c.data());
    on = pb.scale > 0.f && smoother_applies(spread);
    if (!on) return;
    c_max = *std::max_element(c.begin(), c.end());
    for (int64_t j = 0; j < pb.N; ++j) w[j] = std::exp(c[j] - c_max);
  }
  // After prepare, when on: the forward's weights.  row_scaled (fp16): 1/W (iw) for E·W_b/W_a; else with v (fp32)
  // Ṽ = W·V (vt); bf16 needs neither.
  void prepare_weights(const Problem& pb, const float* v, bool row_scaled) {
    if (!on) return;
    if (row_scaled) {
      iw.resize(pb.N);
      for (int64_t j = 0; j < pb.N; ++j) iw[j] = std::exp(c_max - c[j]);
      return;
    }
    if (v == nullptr) return;
    vt.resize(pb.N * pb.D);
    for (int64_t j = 0; j < pb.N; ++j)
      for (int64_t x = 0; x < pb.D; ++x) vt[j * pb.D + x] = w[j] * v[j * pb.D + x];
  }
  template <typename T>
  void prepare_backward(const Problem& pb, const T* k, const float* lse) {
    prepare(pb, k);
    if (!on) return;
    r.resize(pb.N);
    // r = exp(c + c_max − lse) with its exponent as (c_max − c) − (lse − 2c): two small terms.
    for (int64_t i = 0; i < pb.N; ++i) r[i] = std::exp((c_max - c[i]) - (lse[i] - 2.f * c[i]));
  }
};

// The fields a smoother epilogue takes from the tile (EpilogueTile): its place, the scale, and the
// prior's runs when any entry of the tile is not negligible.
inline void set_tile(EpilogueTile& t, const Problem& pb, int64_t h, int64_t i0, int64_t ri, int64_t j0, int64_t rj,
                     bool both_sides, Scratch& w) {
  t.avx512 = pb.avx512;
  t.ld = padded(rj), t.i0 = i0, t.ri = ri, t.j0 = j0, t.rj = rj;
  t.diagonal = i0 == j0, t.both_sides = both_sides, t.scale = pb.scale, t.h = h;
  if (!pb.prior) return;
  const int64_t gap = min_row_gap(i0, i0 + ri, j0, j0 + rj, pb.prior->grid_w, pb.prior->num_prefix);
  if (gap < 0 || pb.prior->rows(h)[gap] < kNegligiblePrior) return;  // the whole tile has no prior
  t.prior = pb.prior;
  t.runs = w.runs.data();
  t.n_runs = strip_runs(*pb.prior, j0, rj, w.runs.data());
  t.g = w.g.data();
}

// Smoother forward tile: rows i's off-diagonal sums l_i += E_ij W_j and acc_i (ri × D) += E_ij W_j V_j, and
// with both_sides l_j += E_ijᵀ W_i and the j-side's acc += E_ijᵀ W_i V_i.  On the diagonal tile E_ii is left out:
// the caller adds the diagonal term apart (for O' and p_off).  fp32 multiplies E by Ṽ = W·V, and acc_j is rows
// j's accumulator (rj × D); fp16/bf16 multiply their weights by V (fp16's row-scaled, E·W_j/W_i, so that its l and
// acc are divided by W_i: Operands, kkattn_cpu_products.h), and acc_j is the transposed accumulator of all N rows
// (D × ldt, Operands::ldt), which the j-side product writes without a transpose.  The elementwise work between
// the products is one pass (kkattn_cpu_epilogue.h).
template <typename T>
void smoother_forward_tile(const Problem& pb, int64_t h, const Operands<T>& ops, const Smoother& sm, int64_t i0,
                           int64_t ri, int64_t j0, int64_t rj, bool both_sides, float* l_i, float* acc_i, float* l_j,
                           float* acc_j, Scratch& w, ProductScratch<T>& ps) {
  constexpr bool half = Operands<T>::kHalf, row_scaled = Operands<T>::kRowScaled;
  const int64_t ld = padded(rj);
  float* s = w.s.data();
  product_nt(ops, Role::k, Role::k, i0, ri, j0, rj, 1.f, s, ld);  // K_i K_Jᵀ; the epilogue scales it
  Epilogue t{};
  t.s = s;
  set_tile(t, pb, h, i0, ri, j0, rj, both_sides, w);
  t.c = sm.c.data(), t.w = sm.w.data(), t.iw = row_scaled ? sm.iw.data() : nullptr;
  t.row_sum = l_i, t.col_sum = l_j;
  if constexpr (half) {
    t.a = ps.a.data(), t.lda = ld, t.m = ps.m.data(), t.ldm = ld;
    epilogue(T{}, t);
    brgemm_rows(ri, ld, ps.a.data(), ops.packed_rows(Role::v), j0, acc_i);
    if (both_sides) accumulate_t_vnni(ops, Role::v, i0, ri, ps.m.data(), ld, acc_j, j0);
  } else {
    epilogue(T{}, t);
    accumulate_nn(ops, sm.vt.data(), s, ld, ri, rj, j0, 1.f, acc_i, ps);
    if (both_sides) accumulate_tn(ops, sm.vt.data(), s, ld, ri, rj, i0, 1.f, acc_j, ps);
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
void forward_tile(const Problem& pb, int64_t h, const Operands<float>& ops, int64_t i0, int64_t ri, int64_t j0,
                  int64_t rj, bool both_sides, const RowState& si, const RowState& sj, Scratch& w) {
  const int64_t D = pb.D;
  const float* v = ops.v;
  logits(pb, h, ops, i0, ri, j0, rj, w.s.data(), rj);
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

// Online backward tile (i, J), fp32, for heads outside the smoother's range: P_iJ and P_Jiᵀ from the lse (two
// exps).  Adds rows i's share to dK_J, dV_J (and with both_sides rows J's share to dK_i, dV_i); returns this tile's
// Σ dS·G·d² (dσ·σ³) when need_dsigma.  Five products per ordered pair (seven with both_sides).
inline double online_backward_tile(const Problem& pb, int64_t h, const Operands<float>& ops, const RowStats& st,
                                   int64_t i0, int64_t ri, int64_t j0, int64_t rj, bool both_sides, bool need_dsigma,
                                   float* dk, float* dv, Scratch& w, ProductScratch<float>& ps) {
  const float *lse = st.lse, *delta = st.delta;
  const int64_t D = pb.D, ld = padded(rj);
  float *s = w.s.data(), *p = w.p.data(), *pt = w.pt.data(), *dp = w.dp.data(), *dpt = w.dpt.data(), *ds = w.ds.data();
  logits(pb, h, ops, i0, ri, j0, rj, s, ld);  // once for both P_iJ and P_Jiᵀ
  for (int64_t a = 0; a < ri; ++a) {
    const int64_t o = a * ld;
    std::copy(s + o, s + o + rj, p + o);
    exp_shift_sum(p + o, rj, lse[i0 + a]);       // P_iJ
    exp_shift_vec(pt + o, s + o, lse + j0, rj);  // P_Jiᵀ
  }
  if (i0 == j0)  // the diagonal: the forward's P_ii (exact where the softmax saturates)
    for (int64_t a = 0; a < ri; ++a) p[a * ld + a] = pt[a * ld + a] = st.p_diag[i0 + a];
  accumulate_tn(ops, Role::dout, p, ld, ri, rj, i0, 1.f, dv + j0 * D, ps);                 // dV_J += P_iJᵀ dO_i
  if (both_sides) accumulate_nn(ops, Role::dout, pt, ld, ri, rj, j0, 1.f, dv + i0 * D, ps);  // dV_i += P_Jiᵀ dO_J
  product_nt(ops, Role::dout, Role::v, i0, ri, j0, rj, 1.f, dp, ld);   // dP_iJ
  product_nt(ops, Role::v, Role::dout, i0, ri, j0, rj, 1.f, dpt, ld);  // dP_Jiᵀ
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
  accumulate_tn(ops, Role::k, s, ld, ri, rj, i0, pb.scale, dk + j0 * D, ps);                 // dK_J += scale·Tᵀ K_i
  if (both_sides) accumulate_nn(ops, Role::k, s, ld, ri, rj, j0, pb.scale, dk + i0 * D, ps);  // dK_i += scale·T K_J
  if (!need_dsigma) return 0.0;
  // Ordered pairs (i, J) and, with both_sides, (J, i): Σ (dS_iJ + dS_Jiᵀ)·G·d² since G, d² are symmetric.
  return prior_grad_sum(both_sides ? s : ds, ld, *pb.prior, h, i0, ri, j0, rj);
}

// Smoother backward tile (i, J), ri × rj: the three products that need no P (S, dP_iJ, dP_Jiᵀ), the one-pass
// epilogue (kkattn_cpu_epilogue.h: one exp for P_iJ and P_Jiᵀ), then the four that do.  Adds rows i's share to
// dK_J, dV_J and with both_sides rows J's share to dK_i, dV_i (rows of dk, dv); fp16/bf16 add the J side to the
// transposed accumulators dk_t, dv_t (D × ldt) instead, which the transposed products write without a transpose.
// Returns this tile's Σ dS·G·d² (dσ·σ³) when need_dsigma.
template <typename T>
double backward_tile(const Problem& pb, int64_t h, const Operands<T>& ops, const RowStats& st, const Smoother& sm,
                     int64_t i0, int64_t ri, int64_t j0, int64_t rj, bool both_sides, bool need_dsigma, float* dk,
                     float* dv, float* dk_t, float* dv_t, Scratch& w, ProductScratch<T>& ps) {
  const int64_t D = pb.D, ld = padded(rj);
  float *s = w.s.data(), *dp = w.dp.data(), *dpt = w.dpt.data();
  product_nt(ops, Role::k, Role::k, i0, ri, j0, rj, 1.f, s, ld);       // K_i K_Jᵀ; the epilogue scales it
  product_nt(ops, Role::dout, Role::v, i0, ri, j0, rj, 1.f, dp, ld);   // dP_iJ
  product_nt(ops, Role::v, Role::dout, i0, ri, j0, rj, 1.f, dpt, ld);  // dP_Jiᵀ
  BackwardEpilogue t{};
  t.s = s, t.dp = dp, t.dpt = dpt;
  set_tile(t, pb, h, i0, ri, j0, rj, both_sides, w);
  t.c = sm.c.data(), t.w = sm.w.data(), t.r = sm.r.data();
  t.delta = st.delta, t.delta_diag = st.delta_diag, t.p_diag = st.p_diag;
  t.sig = need_dsigma ? w.ds.data() : nullptr;
  if constexpr (Operands<T>::kHalf) {
    t.p_vnni = ps.m.data(), t.t_vnni = ps.m2.data(), t.ldm = ld;
    t.pt_rows = ps.a.data(), t.t_rows = ps.a2.data(), t.lda = ld;
    epilogue(T{}, t);
    accumulate_t_vnni(ops, Role::dout, i0, ri, ps.m.data(), ld, dv_t, j0);  // dV_Jᵀ += dO_iᵀ P_iJ
    accumulate_t_vnni(ops, Role::k, i0, ri, ps.m2.data(), ld, dk_t, j0);    // dK_Jᵀ += K_iᵀ (scale·T)
    if (both_sides) {
      brgemm_rows(ri, ld, ps.a.data(), ops.packed_rows(Role::dout), j0, dv + i0 * D);  // dV_i += P_Jiᵀ dO_J
      brgemm_rows(ri, ld, ps.a2.data(), ops.packed_rows(Role::k), j0, dk + i0 * D);    // dK_i += (scale·T) K_J
    }
  } else {
    t.p = w.p.data(), t.pt = w.pt.data();
    epilogue(T{}, t);
    accumulate_tn(ops, Role::dout, w.p.data(), ld, ri, rj, i0, 1.f, dv + j0 * D, ps);  // dV_J += P_iJᵀ dO_i
    if (both_sides) accumulate_nn(ops, Role::dout, w.pt.data(), ld, ri, rj, j0, 1.f, dv + i0 * D, ps);
    accumulate_tn(ops, Role::k, s, ld, ri, rj, i0, pb.scale, dk + j0 * D, ps);  // dK_J += scale·Tᵀ K_i
    if (both_sides) accumulate_nn(ops, Role::k, s, ld, ri, rj, j0, pb.scale, dk + i0 * D, ps);
  }
  if (!need_dsigma) return 0.0;
  // Ordered pairs (i, J) and, with both_sides, (J, i): Σ (dS_iJ + dS_Jiᵀ)·G·d² since G, d² are symmetric.
  return prior_grad_sum(w.ds.data(), ld, *pb.prior, h, i0, ri, j0, rj);
}

}  // namespace
}  // namespace cpu
}  // namespace kkattn

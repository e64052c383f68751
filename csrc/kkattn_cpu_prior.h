// The Gaussian prior on the CPU: per-call tables of its separable form and the runs of keys it touches.
// Internal to csrc/kkattn_cpu.cpp.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "kkattn_cpu_vec.h"
#include "kkattn_math.h"

namespace kkattn {
namespace cpu {
namespace {

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

// A strip's keys [j0, j0 + cols) cut at grid-row ends: the runs of keys on one grid row, the same for every
// query row of a tile, so a tile finds them once (prior_row then needs no division per run).
struct KeyRun {
  int64_t b0, b1;    // tile-local columns [b0, b1)
  int64_t row, col;  // the grid row and the grid column of key b0
};

// The strip's runs into runs (capacity cols / grid_w + 2); returns how many.  Prefix keys are in none.
inline int64_t strip_runs(const Prior& prior, int64_t j0, int64_t cols, KeyRun* runs) {
  int64_t j = std::max(j0, prior.num_prefix), n = 0;
  if (j >= j0 + cols) return 0;
  GridPos pj = grid_pos(j, prior.grid_w, prior.num_prefix);
  while (j < j0 + cols) {
    const int64_t end = std::min(j0 + cols, j + (prior.grid_w - pj.col));
    runs[n++] = {j - j0, end - j0, pj.row, pj.col};
    j = end;
    pj = {pj.row + 1, 0, true};
  }
  return n;
}

// g[b] = G(i, j0 + b) for the tile's columns b < cols, with runs whose largest entry is negligible (as in
// for_each_prior_run) and prefix keys as 0.  Returns false, g untouched, when the whole row is negligible
// (i a prefix token, or every run too far): the caller then adds no prior.
inline bool prior_row(const Prior& prior, int64_t h, int64_t i, const KeyRun* runs, int64_t n_runs, int64_t cols,
                      float* g) {
  if (n_runs == 0) return false;
  const GridPos pa = grid_pos(i, prior.grid_w, prior.num_prefix);
  if (!pa.on_grid) return false;
  const float* g_row = prior.rows(h);
  const float* g_col = prior.cols(h);
  const int64_t lo = runs[0].row, hi = runs[n_runs - 1].row;
  const int64_t gap = pa.row < lo ? lo - pa.row : (pa.row > hi ? pa.row - hi : 0);
  if (g_row[gap] < kNegligiblePrior) return false;
  bool any = false;
  std::fill(g, g + runs[0].b0, 0.f);
  for (int64_t r = 0; r < n_runs; ++r) {
    const KeyRun& run = runs[r];
    const int64_t c1 = run.col + (run.b1 - run.b0);
    const int64_t dr = pa.row > run.row ? pa.row - run.row : run.row - pa.row;
    const int64_t nearest = pa.col < run.col ? run.col - pa.col : (pa.col >= c1 ? pa.col - (c1 - 1) : 0);
    const float w = g_row[dr];
    float* dst = g + run.b0;
    if (w * g_col[nearest] < kNegligiblePrior) {
      std::fill(dst, dst + (run.b1 - run.b0), 0.f);
      continue;
    }
    any = true;
    const float* profile = prior.profile(h, run.col, pa.col);
    for (int64_t b = 0; b < run.b1 - run.b0; ++b) dst[b] = w * profile[b];
  }
  std::fill(g + runs[n_runs - 1].b1, g + cols, 0.f);
  return any;
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

}  // namespace
}  // namespace cpu
}  // namespace kkattn

// Fused CPU kernels for neighborhood key–key attention: O = softmax(scale·K Kᵀ + G) V.
//
// FlashAttention-style tiling: tile products (kkattn_cpu_products.h) go through the BLAS sgemm_ PyTorch
// links for fp32, and through ATen's brgemm in the input dtype for fp16/bf16 where the CPU has it, with
// the prior and the softmax fused between them in vectorized fp32 loops (kkattn_cpu_vec.h,
// kkattn_cpu_prior.h; the smoother forward's in one pass, kkattn_cpu_epilogue.h).  Memory is O(B·H·N·D)
// plus per-thread tiles: never an N×N buffer.  Denormals are flushed in the kernel threads (FlushDenormals).
//
// This file is the schedule: which tiles run, in which order, on which thread, and what each output row
// gets.  The tiles themselves are kkattn_cpu_tiles.h; the op registration kkattn_cpu_bindings.cpp.
//
//  * Prior: separable, G(i, j) = g_r(Δr)·g_c(Δc), from per-call tables of exp(−t²/(2σ²)) — no exp
//    per element.  For a query row, a run of keys on one grid row adds g_r(Δr)·profile[c..] (a
//    contiguous axpy, or in the smoother forward one row of G built from the strip's runs).  Runs and
//    whole tiles whose largest G is below 2^-24 are skipped: exact to fp32 rounding (kNegligiblePrior
//    in kkattn_math.h).
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
#include "kkattn_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "kkattn_cpu_tiles.h"

namespace kkattn {
namespace cpu {
namespace {

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

// Calls fn(j0, cols) for the partners of block [i0, i0 + rows): the diagonal tile, then strips of at
// most kStrip over [from, i0) and [i0 + rows, N).  from = 0 visits every partner (all ordered pairs);
// from = i0 only those after the block (each unordered pair once).
template <typename Fn>
void for_each_strip(int64_t i0, int64_t rows, int64_t from, int64_t N, Fn&& fn) {
  fn(i0, rows);
  for (int64_t j0 = from; j0 < i0; j0 += kStrip) fn(j0, std::min(kStrip, i0 - j0));
  for (int64_t j0 = i0 + rows; j0 < N; j0 += kStrip) fn(j0, std::min(kStrip, N - j0));
}

}  // namespace

// Calls fn(T{}) with T the half-precision type of dt (bf16 or fp16).
template <typename Fn>
void with_half_type(at::ScalarType dt, Fn&& fn) {
  if (dt == at::kBFloat16)
    fn(at::BFloat16{});
  else
    fn(at::Half{});
}

// Writes out (B, H, N, D) and lse (B, H, N), both float32 and contiguous, and when given the
// off-diagonal output out_off (B, H, N, D) and weight p_off (B, H, N); k, v in any float dtype.
void forward(const at::Tensor& k_in, const at::Tensor& v_in, const c10::optional<at::Tensor>& sigma, int64_t grid_w,
             int64_t num_prefix, double scale_d, at::Tensor& out, at::Tensor& lse,
             const c10::optional<at::Tensor>& out_off, const c10::optional<at::Tensor>& p_off) {
  check_inputs(k_in, v_in, sigma, grid_w, num_prefix);
  const int64_t B = k_in.size(0), H = k_in.size(1), N = k_in.size(2), D = k_in.size(3);
  const auto dtype = k_in.scalar_type();
  // native: the products in fp16/bf16 (kkattn_cpu_products.h), k and v read as given; a head the half path
  // cannot take is converted to fp32 by the thread that runs it.  Otherwise everything is fp32 from the start.
  const bool native = half_path(dtype, D) == "native";
  const auto k = native ? k_in.contiguous() : k_in.to(at::kFloat).contiguous();
  const auto v = native ? v_in.contiguous() : v_in.to(at::kFloat).contiguous();
  check_output(out, k_in.sizes(), "out");
  check_output(lse, {B, H, N}, "lse");
  TORCH_CHECK(out_off.has_value() == p_off.has_value(), "kkattn cpu kernel: out_off and p_off go together");
  if (out_off.has_value()) {
    check_output(*out_off, k_in.sizes(), "out_off");
    check_output(*p_off, {B, H, N}, "p_off");
  }
  const Prior prior = sigma.has_value() ? make_prior(*sigma, N, grid_w, num_prefix) : Prior{};
  const Problem pb{N, D, static_cast<float>(scale_d), sigma.has_value() ? &prior : nullptr};
  const char *kraw = static_cast<const char*>(k.data_ptr()), *vraw = static_cast<const char*>(v.data_ptr());
  const int64_t head_bytes = N * D * k.element_size();
  float *op = out.data_ptr<float>(), *lp = lse.data_ptr<float>();
  float* oop = out_off.has_value() ? out_off->data_ptr<float>() : nullptr;
  float* pop = p_off.has_value() ? p_off->data_ptr<float>() : nullptr;
  const int64_t n_blocks = (N + kTile - 1) / kTile;
  const bool pairs = use_pairs(B * H);
  const int64_t items = pairs ? B * H : B * H * n_blocks;

  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    Scratch w;
    Smoother sm;
    ProductScratch<float> ps_fp32;
    std::tuple<ProductScratch<at::BFloat16>, ProductScratch<at::Half>> ps_half;
    std::tuple<Operands<at::BFloat16>, Operands<at::Half>> ops_half;
    std::vector<float> k32, v32;  // native: fp32 copies of a head the half path cannot take
    int64_t prepared = -1;        // the (batch, head) sm holds: a thread's row-block items come in head order
    bool half_on = false;         // that (batch, head)'s smoother runs its products in fp16/bf16
    const float *kbh = nullptr, *vbh = nullptr;  // its fp32 keys and values (unless half_on)
    const int64_t span = pairs ? N : kTile;  // rows whose running state one item holds
    std::vector<float> m(span), l(span), d(span), acc(span * D), acc_t;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = pairs ? item : item / n_blocks, h = bh % H;
      const void *kh = kraw + bh * head_bytes, *vh = vraw + bh * head_bytes;
      const int64_t first_row = pairs ? 0 : (item % n_blocks) * kTile;
      const int64_t last_row = pairs ? N : std::min(first_row + kTile, N);
      const auto write_row = [&](int64_t row, const float* acc_row, float diag, float off, float row_lse,
                                 const auto* v_row) {
        const float total = off + diag, inv = 1.f / total;
        float* dst = op + (bh * N + row) * D;
        for (int64_t x = 0; x < D; ++x) dst[x] = (acc_row[x] + diag * static_cast<float>(v_row[x])) * inv;
        lp[bh * N + row] = row_lse;
        if (oop) {
          float* dst_off = oop + (bh * N + row) * D;
          for (int64_t x = 0; x < D; ++x) dst_off[x] = acc_row[x] * inv;
          pop[bh * N + row] = off * inv;
        }
      };
      if (bh != prepared) {
        if (native) {
          with_half_type(dtype, [&]<typename T>(T) {
            sm.prepare(pb, static_cast<const T*>(kh));
            // fp16 weights hold e^Δ: within fp16's range for Δ ≤ 8; wider heads take the fp32 products.
            half_on = sm.on && (dtype == at::kBFloat16 || sm.spread <= kHalfFp16MaxSpread);
            if (half_on) {
              std::get<Operands<T>>(ops_half).prepare_forward(static_cast<const T*>(kh), static_cast<const T*>(vh), N,
                                                              D);
              return;
            }
            k32.resize(N * D), v32.resize(N * D);
            std::copy(static_cast<const T*>(kh), static_cast<const T*>(kh) + N * D, k32.begin());
            std::copy(static_cast<const T*>(vh), static_cast<const T*>(vh) + N * D, v32.begin());
            kbh = k32.data(), vbh = v32.data();
          });
        } else {
          kbh = static_cast<const float*>(kh), vbh = static_cast<const float*>(vh);
          sm.prepare(pb, kbh);
          half_on = false;
        }
        sm.prepare_weights(pb, half_on ? nullptr : vbh, half_on && dtype == at::kHalf);
        prepared = bh;
      }
      if (sm.on) {
        std::fill(l.begin(), l.end(), 0.f);
        std::fill(acc.begin(), acc.end(), 0.f);
        // fp32: the j-sides accumulate into acc's rows; fp16/bf16: into the transposed acc_t (D × ldt), added at the end
        const auto run = [&]<typename T>(const Operands<T>& ops, ProductScratch<T>& ps) {
          float* acc_j = acc.data();
          if constexpr (Operands<T>::kHalf) {
            if (pairs) {
              acc_t.assign(D * ops.ldt, 0.f);
              acc_j = acc_t.data();
            }
          }
          if (pairs) {
            for (int64_t i0 = 0; i0 < N; i0 += kTile) {
              const int64_t ri = std::min(kTile, N - i0);
              for_each_strip(i0, ri, i0, N, [&](int64_t j0, int64_t rj) {
                smoother_forward_tile(pb, h, ops, sm, i0, ri, j0, rj, j0 != i0, l.data() + i0, acc.data() + i0 * D,
                                      l.data() + j0, Operands<T>::kHalf ? acc_j : acc_j + j0 * D, w, ps);
              });
            }
            if constexpr (Operands<T>::kHalf)  // acc += acc_tᵀ, in 8 × 8 blocks (acc has padded(N) rows)
              transpose_add(acc_t.data(), ops.ldt, D, N, acc.data(), D);
          } else {
            for_each_strip(first_row, last_row - first_row, 0, N, [&](int64_t j0, int64_t rj) {
              smoother_forward_tile(pb, h, ops, sm, first_row, last_row - first_row, j0, rj, false, l.data(),
                                    acc.data(), nullptr, nullptr, w, ps);
            });
          }
        };
        const auto finish = [&](const auto* v_head) {
          for (int64_t row = first_row; row < last_row; ++row) {
            const int64_t a = row - first_row;
            // The diagonal weight: W_i, or 1 for fp16's row-scaled sums.  lse = c + c_max + log(W + l)
            // = S_ii + log1p(l/W): without c_max's magnitude in it.
            const float diag = half_on && dtype == at::kHalf ? 1.f : sm.w[row];
            write_row(row, acc.data() + a * D, diag, l[a], 2.f * sm.c[row] + std::log1p(l[a] / diag),
                      v_head + row * D);
          }
        };
        if (half_on) {
          with_half_type(dtype, [&]<typename T>(T) {
            run(std::get<Operands<T>>(ops_half), std::get<ProductScratch<T>>(ps_half));
            finish(static_cast<const T*>(vh));
          });
        } else {
          run(Operands<float>{kbh, vbh, nullptr, sm.vt.data(), D}, ps_fp32);
          finish(vbh);
        }
        continue;
      }
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      std::fill(d.begin(), d.end(), 0.f);
      std::fill(acc.begin(), acc.end(), 0.f);
      const RowState state{m.data(), l.data(), d.data(), acc.data()};  // rows first_row .. last_row − 1
      const Operands<float> ops{kbh, vbh, nullptr, nullptr, D};
      if (pairs) {
        for (int64_t i0 = 0; i0 < N; i0 += kTile) {
          const int64_t ri = std::min(kTile, N - i0);
          for_each_strip(i0, ri, i0, N, [&](int64_t j0, int64_t rj) {
            forward_tile(pb, h, ops, i0, ri, j0, rj, j0 != i0, state.rows_from(i0, D), state.rows_from(j0, D), w);
          });
        }
      } else {
        for_each_strip(first_row, last_row - first_row, 0, N, [&](int64_t j0, int64_t rj) {
          forward_tile(pb, h, ops, first_row, last_row - first_row, j0, rj, false, state, state, w);
        });
      }
      for (int64_t row = first_row; row < last_row; ++row) {
        const int64_t a = row - first_row;
        write_row(row, acc.data() + a * D, d[a], l[a], m[a] + std::log(l[a] + d[a]), vbh + row * D);
      }
    }
    if (native) at::native::cpublas::brgemm_release();  // this thread's AMX tile state
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
  const int64_t B = k_in.size(0), H = k_in.size(1), N = k_in.size(2), D = k_in.size(3);
  const auto dtype = k_in.scalar_type();
  // As in the forward: native reads k, v, dout as given and converts a head to fp32 only where it leaves the smoother.
  const bool native = dout_in.scalar_type() == dtype && half_path(dtype, D) == "native";
  const auto as_input = [&](const at::Tensor& t) { return native ? t.contiguous() : t.to(at::kFloat).contiguous(); };
  const auto k = as_input(k_in), v = as_input(v_in), dout = as_input(dout_in);
  const auto row_stat = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.sizes() == k_in.sizes().slice(0, 3), "kkattn cpu kernel: ", name, " must be (B, H, N)");
    return t.to(at::kFloat).contiguous();
  };
  const auto lse = row_stat(lse_in, "lse"), delta = row_stat(delta_in, "delta");
  const auto delta_diag = row_stat(delta_diag_in, "delta_diag"), p_diag = row_stat(p_diag_in, "p_diag");
  check_output(dk, k_in.sizes(), "dk");
  check_output(dv, k_in.sizes(), "dv");
  check_output(dsigma, {H}, "dsigma");
  need_dsigma = need_dsigma && sigma.has_value();
  const Prior prior = sigma.has_value() ? make_prior(*sigma, N, grid_w, num_prefix) : Prior{};
  const Problem pb{N, D, static_cast<float>(scale_d), sigma.has_value() ? &prior : nullptr};
  const int64_t n_blocks = (N + kTile - 1) / kTile;
  const bool pairs = use_pairs(B * H);
  const int64_t items = pairs ? B * H : B * H * n_blocks;
  std::vector<double> dsigma_part(need_dsigma ? items : 0, 0.0);
  const int64_t head_bytes = N * D * k.element_size();
  const char *kraw = static_cast<const char*>(k.data_ptr()), *vraw = static_cast<const char*>(v.data_ptr());
  const char* draw = static_cast<const char*>(dout.data_ptr());
  const float *lp = lse.data_ptr<float>(), *deltap = delta.data_ptr<float>();
  const float *ddp = delta_diag.data_ptr<float>(), *pdp = p_diag.data_ptr<float>();
  float *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();

  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    Scratch w;
    Smoother sm;
    ProductScratch<float> ps_fp32;
    std::tuple<ProductScratch<at::BFloat16>, ProductScratch<at::Half>> ps_half;
    std::tuple<Operands<at::BFloat16>, Operands<at::Half>> ops_half;
    std::vector<float> k32, v32, d32;  // native: fp32 copies of a head outside the smoother
    std::vector<float> dk_t, dv_t;     // native: the J sides' dK, dV transposed (D × ldt)
    int64_t prepared = -1;             // as in the forward
    bool half_on = false;
    const float *kbh = nullptr, *vbh = nullptr, *dbh = nullptr;  // the head's fp32 inputs (unless half_on)
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = pairs ? item : item / n_blocks, h = bh % H;
      const int64_t off = bh * N * D;
      const void *kh = kraw + bh * head_bytes, *vh = vraw + bh * head_bytes, *dh = draw + bh * head_bytes;
      const RowStats st{lp + bh * N, deltap + bh * N, ddp + bh * N, pdp + bh * N};
      if (bh != prepared) {
        if (native) {
          with_half_type(dtype, [&]<typename T>(T) {
            sm.prepare_backward(pb, static_cast<const T*>(kh), st.lse);
            // The backward's weights are fp32 until they enter a product (P ≤ 1): every dtype within the smoother's
            // range.
            half_on = sm.on;
            if (half_on) {
              std::get<Operands<T>>(ops_half).prepare_backward(static_cast<const T*>(kh), static_cast<const T*>(vh),
                                                               static_cast<const T*>(dh), N, D);
              return;
            }
            for (auto [src, dst] : {std::pair{kh, &k32}, {vh, &v32}, {dh, &d32}}) {
              dst->resize(N * D);
              std::copy(static_cast<const T*>(src), static_cast<const T*>(src) + N * D, dst->begin());
            }
            kbh = k32.data(), vbh = v32.data(), dbh = d32.data();
          });
        } else {
          kbh = static_cast<const float*>(kh), vbh = static_cast<const float*>(vh), dbh = static_cast<const float*>(dh);
          sm.prepare_backward(pb, kbh, st.lse);
          half_on = false;
        }
        prepared = bh;
      }
      double dsig = 0.0;
      // pairs: this item owns all of (b, h)'s dK and dV; rows: key block J's rows, against strips of rows i.
      const int64_t j_first = pairs ? 0 : (item % n_blocks) * kTile, j_rows = pairs ? N : std::min(kTile, N - j_first);
      std::fill(dkp + off + j_first * D, dkp + off + (j_first + j_rows) * D, 0.f);
      std::fill(dvp + off + j_first * D, dvp + off + (j_first + j_rows) * D, 0.f);
      const auto schedule = [&](auto&& tile) {
        if (pairs) {
          for (int64_t i0 = 0; i0 < N; i0 += kTile) {
            const int64_t ri = std::min(kTile, N - i0);
            for_each_strip(i0, ri, i0, N, [&](int64_t j0, int64_t rj) { tile(i0, ri, j0, rj, j0 != i0); });
          }
        } else {
          for_each_strip(j_first, j_rows, 0, N, [&](int64_t i0, int64_t ri) { tile(i0, ri, j_first, j_rows, false); });
        }
      };
      if (half_on) {
        with_half_type(dtype, [&]<typename T>(T) {
          const Operands<T>& ops = std::get<Operands<T>>(ops_half);
          ProductScratch<T>& ps = std::get<ProductScratch<T>>(ps_half);
          // Zeroed where this item writes: all columns (pairs) or block J's.
          dk_t.resize(std::max<size_t>(dk_t.size(), D * ops.ldt));
          dv_t.resize(dk_t.size());
          const int64_t cols = pairs ? ops.ldt : padded(j_rows);
          for (int64_t x = 0; x < D; ++x) {
            std::fill_n(dk_t.data() + x * ops.ldt + j_first, cols, 0.f);
            std::fill_n(dv_t.data() + x * ops.ldt + j_first, cols, 0.f);
          }
          schedule([&](int64_t i0, int64_t ri, int64_t j0, int64_t rj, bool both_sides) {
            dsig += backward_tile(pb, h, ops, st, sm, i0, ri, j0, rj, both_sides, need_dsigma, dkp + off, dvp + off,
                                  dk_t.data(), dv_t.data(), w, ps);
          });
          // The J sides, transposed back: rows j_first .. j_first + j_rows.
          transpose_add(dk_t.data() + j_first, ops.ldt, D, j_rows, dkp + off + j_first * D, D);
          transpose_add(dv_t.data() + j_first, ops.ldt, D, j_rows, dvp + off + j_first * D, D);
        });
      } else {
        const Operands<float> ops{kbh, vbh, dbh, nullptr, D};
        schedule([&](int64_t i0, int64_t ri, int64_t j0, int64_t rj, bool both_sides) {
          dsig += sm.on ? backward_tile(pb, h, ops, st, sm, i0, ri, j0, rj, both_sides, need_dsigma, dkp + off,
                                        dvp + off, nullptr, nullptr, w, ps_fp32)
                        : online_backward_tile(pb, h, ops, st, i0, ri, j0, rj, both_sides, need_dsigma, dkp + off,
                                               dvp + off, w, ps_fp32);
        });
      }
      if (need_dsigma) dsigma_part[item] = dsig;
    }
    if (native) at::native::cpublas::brgemm_release();
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

// The smoother epilogue's instruction set this call would take: "avx512-bf16" or "generic" (kkattn_cpu_epilogue.h).
std::string vector_isa() { return vector_isa_avx512() ? "avx512-bf16" : "generic"; }

}  // namespace cpu
}  // namespace kkattn

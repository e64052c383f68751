// The smoother epilogues' rows, written once over a vector policy V (16 fp32 lanes): kkattn_cpu_epilogue.h includes
// this file twice, inside namespace generic_isa (GCC vectors, target_clones) and inside namespace avx512_isa
// (AVX-512-BF16 intrinsics, under a target pragma), each defining V first.  No include guard, on purpose.
//
// V provides: F (the vector type, with + − * operators), set1, load(p, n) and store(p, n, x) for the first
// min(n, 16) lanes (zeros past them on load), exp(x, n) (0 past n and below −87.3), keep_below(x, p, bound) (x
// where p < bound, else 0), sum(x), store_half<T>(dst, x) (16 lanes rounded to T) and store_vnni<T>(dst, x, odd)
// (16 lanes into the low (even row) or high (odd row) halves of VNNI slots).

// --------------------------------------------------------------------------------------------- forward
// Row a of a forward tile (Epilogue); kPrior: g holds its prior row.
template <typename T, bool kPrior, bool kBoth>
__attribute__((always_inline)) inline void forward_row(const Epilogue& t, int64_t a) {
  using F = typename V::F;
  constexpr bool kHalf = !std::is_same_v<T, float>, kRowScaled = std::is_same_v<T, at::Half>;
  float* s = t.s + a * t.ld;
  const F scale = V::set1(t.scale), c_a = V::set1(t.c[t.i0 + a]), w_a = V::set1(t.w[t.i0 + a]);
  const F iw_a = V::set1(kRowScaled ? t.iw[t.i0 + a] : 1.f);
  const float *c_j = t.c + t.j0, *w_j = t.w + t.j0, *iw_j = kRowScaled ? t.iw + t.j0 : nullptr;
  T* arow = kHalf ? static_cast<T*>(t.a) + a * t.lda : nullptr;
  uint32_t* mrow = kHalf && kBoth ? t.m + (a / 2) * t.ldm : nullptr;
  const bool odd = a % 2 == 1;
  F acc = V::set1(0.f);
  for (int64_t b = 0; b < t.rj; b += 16) {
    const int64_t n = t.rj - b;
    F x = V::load(s + b, n) * scale;
    if constexpr (kPrior) x = x + V::load(t.g + b, n);
    const F e = V::exp(x - c_a - V::load(c_j + b, n), n);
    F ew = e * V::load(w_j + b, n);
    if constexpr (kRowScaled) ew = ew * iw_a;
    acc = acc + ew;
    if constexpr (!kHalf) {
      V::store(s + b, n, e);
      if constexpr (kBoth) V::store(t.col_sum + b, n, V::load(t.col_sum + b, n) + e * w_a);
    } else {
      V::template store_half<T>(arow + b, ew);  // A is zero-padded to lda, a multiple of 16: whole steps
      if constexpr (kBoth) {
        F mv = e * w_a;
        if constexpr (kRowScaled) mv = mv * V::load(iw_j + b, n);
        V::store(t.col_sum + b, n, V::load(t.col_sum + b, n) + mv);
        V::template store_vnni<T>(mrow + b, mv, odd);
      }
    }
  }
  if constexpr (kHalf) pad_row(arow, t.lda, kBoth ? mrow : nullptr, t.ldm, odd, t.rj);
  t.row_sum[a] += V::sum(acc);
}

template <typename T, bool kBoth>
__attribute__((always_inline)) inline void forward_rows(const Epilogue& t) {
  for (int64_t a = 0; a < t.ri; ++a)
    start_row(t, a) ? forward_row<T, true, kBoth>(t, a) : forward_row<T, false, kBoth>(t, a);
  if constexpr (!std::is_same_v<T, float> && kBoth) zero_missing_partner(t.m, t.ri, t.ldm);
}

// -------------------------------------------------------------------------------------------- backward
// Row a of a backward tile (BackwardEpilogue): P_aJ = E·r_a·W_b, P_Jaᵀ = E·W_a·r_b, dS_aJ = P_aJ∘(dP_aJ − δ_a),
// dS_Jaᵀ likewise, T = dS_aJ + dS_Jaᵀ (each exactly 0 where its P rounds to 1: logit_grad, kkattn_math.h).
template <typename T, bool kPrior, bool kBoth>
__attribute__((always_inline)) inline void backward_row(const BackwardEpilogue& t, int64_t a) {
  using F = typename V::F;
  constexpr bool kHalf = !std::is_same_v<T, float>;
  float* s = t.s + a * t.ld;
  const float *dp = t.dp + a * t.ld, *dpt = t.dpt + a * t.ld;
  const int64_t i = t.i0 + a;
  const F scale = V::set1(t.scale), c_a = V::set1(t.c[i]), r_a = V::set1(t.r[i]), w_a = V::set1(t.w[i]);
  const F delta_a = V::set1(t.delta[i]), t_scale = V::set1(kHalf ? t.scale : 1.f);
  const float *c_j = t.c + t.j0, *w_j = t.w + t.j0, *r_j = t.r + t.j0, *delta_j = t.delta + t.j0;
  float* sig = t.sig ? t.sig + a * t.ld : nullptr;
  const bool odd = a % 2 == 1;
  uint32_t* p_pairs = kHalf ? t.p_vnni + (a / 2) * t.ldm : nullptr;
  uint32_t* t_pairs = kHalf ? t.t_vnni + (a / 2) * t.ldm : nullptr;
  T* pt_row = kHalf && kBoth ? static_cast<T*>(t.pt_rows) + a * t.lda : nullptr;
  T* t_row = kHalf && kBoth ? static_cast<T*>(t.t_rows) + a * t.lda : nullptr;
  for (int64_t b = 0; b < t.rj; b += 16) {
    const int64_t n = t.rj - b;
    F x = V::load(s + b, n) * scale;
    if constexpr (kPrior) x = x + V::load(t.g + b, n);
    const F e = V::exp(x - c_a - V::load(c_j + b, n), n);
    const F p = e * r_a * V::load(w_j + b, n), pt = e * w_a * V::load(r_j + b, n);
    const F ds = V::keep_below(p * (V::load(dp + b, n) - delta_a), p, ONE_HOT_P);
    const F tt = ds + V::keep_below(pt * (V::load(dpt + b, n) - V::load(delta_j + b, n)), pt, ONE_HOT_P);
    if (sig) V::store(sig + b, n, kBoth ? tt : ds);  // dσ's Σ dS·G·d² (kkattn_cpu_prior.h)
    if constexpr (!kHalf) {
      V::store(t.p + a * t.ld + b, n, p);
      if constexpr (kBoth) V::store(t.pt + a * t.ld + b, n, pt);
      V::store(s + b, n, tt);
    } else {
      V::template store_vnni<T>(p_pairs + b, p, odd);
      const F tts = tt * t_scale;
      V::template store_vnni<T>(t_pairs + b, tts, odd);
      if constexpr (kBoth) {
        V::template store_half<T>(pt_row + b, pt);
        V::template store_half<T>(t_row + b, tts);
      }
    }
  }
  if constexpr (kHalf) {
    pad_row(pt_row, t.lda, p_pairs, t.ldm, odd, t.rj);
    pad_row(t_row, t.lda, t_pairs, t.ldm, odd, t.rj);
  }
}

template <typename T, bool kBoth>
__attribute__((always_inline)) inline void backward_rows(const BackwardEpilogue& t) {
  for (int64_t a = 0; a < t.ri; ++a) {
    start_row(t, a) ? backward_row<T, true, kBoth>(t, a) : backward_row<T, false, kBoth>(t, a);
    if (t.diagonal) patch_diagonal<T>(t, a);
  }
  if constexpr (!std::is_same_v<T, float>) {
    zero_missing_partner(t.p_vnni, t.ri, t.ldm);
    zero_missing_partner(t.t_vnni, t.ri, t.ldm);
  }
}

"""Triton kernels for neighborhood key–key attention (forward and the symmetric backward).

Only ``@triton.jit`` code lives here; launching, block sizes and dtype handling are in
``triton_launch.py``.  Plain pointer arithmetic throughout (no ``tl.make_block_ptr``, which
triton 3.9 removed) so the same source runs on triton 3.6–3.9, on GPUs, and on CPU tensors under
``TRITON_INTERPRET=1``.

Logits are kept in natural units and the softmax weights are ``exp2((s − m)·log2e)``: the
subtraction comes first, so a row whose softmax saturates (one weight 1, the rest 0) gives exactly
1 where ``s == m`` and the saved ``lse = m + log(l)`` equals ``m`` bit for bit; the backward,
recomputing the same ``s``, gets the same P (log2-unit logits round ``m·log2e·ln2`` away from
``m``, which at |s| ~ 1e7 is a factor 2 in P).  The prior is generated from token indices inside
the kernels, mirroring ``kkattn/_prior.py``: index → (row, col) → squared distance →
``exp2(d² · neg_coef)`` with ``neg_coef = −log2e / (2σ²)`` (per head, read from a small ``(H,)``
table).

The forward accumulates the diagonal weight ``P_ii`` apart from the rest of the row and, with
WITH_STATS, writes the off-diagonal output and weight; the backward takes ``dS_ii = −P_ii·δ'_i``
on the diagonal (kkattn/_ops.py says why).
"""
import triton
import triton.language as tl

from .._numerics import ONE_HOT_P as _ONE_HOT_P
from .._prior import LOG2E as _LOG2E

LOG2E = tl.constexpr(_LOG2E)  # kkattn._prior's constant, as a compile-time constant for the kernels
ONE_HOT_P = tl.constexpr(_ONE_HOT_P)  # kkattn._numerics: a weight this close to 1 holds its whole row


@triton.jit
def _grid_coords(idx, grid_w, num_prefix):
    pos = idx - num_prefix
    on_grid = pos >= 0
    pos = tl.maximum(pos, 0)
    return pos // grid_w, pos % grid_w, on_grid


@triton.jit
def _prior_tile(offs_i, offs_j, grid_w, num_prefix, neg_coef):
    """G (natural units) and d² of the tile ``offs_i × offs_j``; 0 where a token is a prefix."""
    r_i, c_i, on_i = _grid_coords(offs_i, grid_w, num_prefix)
    r_j, c_j, on_j = _grid_coords(offs_j, grid_w, num_prefix)
    dr = (r_i[:, None] - r_j[None, :]).to(tl.float32)
    dc = (c_i[:, None] - c_j[None, :]).to(tl.float32)
    d2 = dr * dr + dc * dc
    g = tl.where(on_i[:, None] & on_j[None, :], tl.exp2(d2 * neg_coef), 0.0)
    return g, d2


@triton.jit
def _tile_has_prior(start_i, start_j, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, n_tokens, grid_w,
                    num_prefix, neg_coef):
    """False when the whole tile has G < 2**-24 or is off the grid.

    Then fl(exp(s + G)) == fl(exp(s)) for every entry (see NEGLIGIBLE_PRIOR_LOG2 in _prior.py),
    so skipping the prior is exact to fp32 rounding.  Uses the row gap between the two token
    ranges, a lower bound on every pair's distance.
    """
    first_i = tl.maximum(start_i - num_prefix, 0)
    first_j = tl.maximum(start_j - num_prefix, 0)
    last_i = tl.minimum(start_i + BLOCK_I, n_tokens) - 1 - num_prefix
    last_j = tl.minimum(start_j + BLOCK_J, n_tokens) - 1 - num_prefix
    on_grid = (last_i >= 0) & (last_j >= 0)
    last_i = tl.maximum(last_i, 0)
    last_j = tl.maximum(last_j, 0)
    gap = tl.maximum(tl.maximum(first_j // grid_w - last_i // grid_w, first_i // grid_w - last_j // grid_w), 0)
    gap2 = (gap * gap).to(tl.float32)
    return on_grid & (gap2 * neg_coef >= -24.0)


@triton.jit
def _load_rows(base, offs_n, offs_d, stride_n, stride_d, n_tokens, TRANSPOSE: tl.constexpr, UPCAST: tl.constexpr):
    """Rows ``offs_n`` of an ``(N, D)`` head as ``(len, D)``, or ``(D, len)`` with TRANSPOSE (a right-hand
    matmul operand); rows past ``n_tokens`` read as 0; fp32 with UPCAST (the interpreter's bf16 dot)."""
    mask = offs_n < n_tokens
    if TRANSPOSE:
        x = tl.load(base + offs_n[None, :] * stride_n + offs_d[:, None] * stride_d, mask=mask[None, :], other=0.0)
    else:
        x = tl.load(base + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d, mask=mask[:, None], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _program_head(K, V, NEG_COEF, stride_kb, stride_kh, stride_vb, stride_vh, heads, HAS_PRIOR: tl.constexpr):
    """This program's (batch·head index, batch, head), its K and V head pointers and −1/(2σ²) (0 without prior).

    Both kernels put the batch·head on grid axis 1; the head offset is int64 because B·H·N·D can pass 2³¹.
    """
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    h = pid_bh % heads
    k_base = K + b * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b * stride_vb + h.to(tl.int64) * stride_vh
    neg_coef = 0.0
    if HAS_PRIOR:
        neg_coef = tl.load(NEG_COEF + h)
    return pid_bh, b, h, k_base, v_base, neg_coef


@triton.jit
def _fwd_inner(acc, l_i, d_i, m_i, q, k_base, v_base, start_m, offs_m, offs_d, stride_kn, stride_kd, stride_vn, stride_vd,
               n_tokens, grid_w, num_prefix, neg_coef, sm_scale,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_PRIOR: tl.constexpr, DOT_UPCAST: tl.constexpr,
               INPUT_PRECISION: tl.constexpr, STATIC: tl.constexpr):
    """Row block ``offs_m`` against every key block.  STATIC: ``m_i`` is row i's diagonal logit
    S_ii = 2c_i, which row i's logits exceed by at most Δ (kkattn/_smoother.py), so the weights need
    no running max and the accumulators no rescaling, and ``d_i`` comes in as the diagonal weight, 1;
    else the online softmax.  Returns the updated ``(acc, l_i, d_i, m_i)``."""
    for start_n in range(0, n_tokens, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_tokens
        kt = _load_rows(k_base, offs_n, offs_d, stride_kn, stride_kd, n_tokens, True, DOT_UPCAST)
        vv = _load_rows(v_base, offs_n, offs_d, stride_vn, stride_vd, n_tokens, False, DOT_UPCAST)
        s = tl.dot(q, kt, input_precision=INPUT_PRECISION) * sm_scale
        if HAS_PRIOR:
            if _tile_has_prior(start_m, start_n, BLOCK_M, BLOCK_N, n_tokens, grid_w, num_prefix, neg_coef):
                g, _ = _prior_tile(offs_m, offs_n, grid_w, num_prefix, neg_coef)
                s += g
        s = tl.where(mask_n[None, :], s, float("-inf"))
        if STATIC:
            # Relative to the diagonal, as the online softmax's weights are in the peaked regime (its
            # max is the diagonal there): the same precision, also for fp16 weights and for O'.
            p = tl.exp2((s - m_i[:, None]) * LOG2E)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2((m_i - m_new) * LOG2E)
            p = tl.exp2((s - m_new[:, None]) * LOG2E)
            d_i = d_i * alpha
            l_i = l_i * alpha
            acc = acc * alpha[:, None]
            m_i = m_new
        diag = offs_m[:, None] == offs_n[None, :]
        if not STATIC:  # STATIC: d_i is exactly 1 already (the dot's s_ii is 2c_i only to rounding)
            d_i += tl.sum(tl.where(diag, p, 0.0), 1)
        p = tl.where(diag, 0.0, p)
        l_i += tl.sum(p, 1)
        acc += tl.dot(p.to(vv.dtype), vv, input_precision=INPUT_PRECISION)
    return acc, l_i, d_i, m_i


@triton.jit
def nkk_fwd_kernel(
    K, V, O, LSE, O_OFF, P_OFF, NEG_COEF, C, SMOOTH,  # noqa: E741 (the Triton tutorial's names)
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    heads, n_tokens, grid_w, num_prefix, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_PRIOR: tl.constexpr, WITH_STATS: tl.constexpr, DOT_UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """One program per (query block, batch·head) over all key blocks: with a static shift where this
    (batch, head)'s ``SMOOTH`` flag is set (C: the shifts c ``(B·H, N)``; the shift is the diagonal
    logit 2c_i), else an online softmax.

    Writes O ``(B, H, N, D)`` and the natural-log log-sum-exp ``(B, H, N)``; with WITH_STATS also
    ``O_OFF = Σ_{k≠i} P_ik V_k`` (fp32, contiguous ``(B, H, N, D)``) and ``P_OFF = Σ_{k≠i} P_ik``.
    """
    pid_m = tl.program_id(0)
    pid_bh, b, h, k_base, v_base, neg_coef = _program_head(K, V, NEG_COEF, stride_kb, stride_kh, stride_vb, stride_vh,
                                                           heads, HAS_PRIOR)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < n_tokens
    q = _load_rows(k_base, offs_m, offs_d, stride_kn, stride_kd, n_tokens, False, DOT_UPCAST)
    stats = pid_bh.to(tl.int64) * n_tokens + offs_m

    l_i = tl.zeros([BLOCK_M], tl.float32)    # off-diagonal weight
    d_i = tl.zeros([BLOCK_M], tl.float32)    # diagonal weight
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)  # off-diagonal P·V
    if tl.load(SMOOTH + pid_bh) != 0:
        m_i = 2.0 * tl.load(C + stats, mask=mask_m, other=0.0)  # S_ii = 2c_i exactly
        d_i = tl.full([BLOCK_M], 1.0, tl.float32)  # exp(S_ii − m_i), in closed form
        acc, l_i, d_i, m_i = _fwd_inner(acc, l_i, d_i, m_i, q, k_base, v_base, start_m, offs_m, offs_d, stride_kn, stride_kd,
                                        stride_vn, stride_vd, n_tokens, grid_w, num_prefix, neg_coef, sm_scale,
                                        BLOCK_M, BLOCK_N, HAS_PRIOR, DOT_UPCAST, INPUT_PRECISION, True)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        acc, l_i, d_i, m_i = _fwd_inner(acc, l_i, d_i, m_i, q, k_base, v_base, start_m, offs_m, offs_d, stride_kn, stride_kd,
                                        stride_vn, stride_vd, n_tokens, grid_w, num_prefix, neg_coef, sm_scale,
                                        BLOCK_M, BLOCK_N, HAS_PRIOR, DOT_UPCAST, INPUT_PRECISION, False)

    l_all = l_i + d_i
    v_m = _load_rows(v_base, offs_m, offs_d, stride_vn, stride_vd, n_tokens, False, DOT_UPCAST)
    out = (acc + d_i[:, None] * v_m.to(tl.float32)) / l_all[:, None]
    o_base = O + b * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od,
             out.to(O.dtype.element_ty), mask=mask_m[:, None])
    tl.store(LSE + stats, m_i + tl.log(l_all), mask=mask_m)
    if WITH_STATS:
        tl.store(O_OFF + stats[:, None] * HEAD_DIM + offs_d[None, :], acc / l_all[:, None], mask=mask_m[:, None])
        tl.store(P_OFF + stats, l_i / l_all, mask=mask_m)


@triton.jit
def nkk_bwd_kernel(
    K, V, DO, LSE, DELTA, DELTA_DIAG, P_DIAG, DK, DV, DSIGMA_PART, NEG_COEF, C, CMAX, SMOOTH,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    heads, n_tokens, grid_w, num_prefix, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
    HAS_PRIOR: tl.constexpr, NEED_DSIGMA: tl.constexpr, DOT_UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """One program per (key block J, batch·head), looping over every row block i.

    Because Q = K the logit tile ``S_iJ = scale·K_i K_Jᵀ + G_iJ`` is also ``S_Jiᵀ``: computed once,
    it gives ``P_iJ = exp(S_iJ − L_i)`` and ``P_Jiᵀ = exp(S_iJ − L_J)``; where this (batch, head)'s
    ``SMOOTH`` flag is set, from one exp: ``E = exp(S_iJ − c_i − c_J)``, ``P_iJ = E·r_i·W_J`` and
    ``P_Jiᵀ = E·W_i·r_J`` (kkattn/_smoother.py).  Per tile pair five matmuls:
    S, ``dV_J += P_iJᵀ dO_i``, ``dP_iJ = dO_i V_Jᵀ``, ``dP_Jiᵀ = V_i dO_Jᵀ`` and
    ``dK_J += scale·(dS_iJ + dS_Jiᵀ)ᵀ K_i``.  Each program owns its rows of dK and dV: no atomics,
    a fixed loop order, bit-identical reruns.  With NEED_DSIGMA it also writes
    ``Σ_i Σ dS_iJ·G_iJ·d²_iJ`` (this program's share of dσ·σ³) to ``DSIGMA_PART[bh, J]``.
    """
    pid_j = tl.program_id(0)
    pid_bh, b, h, k_base, v_base, neg_coef = _program_head(K, V, NEG_COEF, stride_kb, stride_kh, stride_vb, stride_vh,
                                                           heads, HAS_PRIOR)
    do_base = DO + b * stride_dob + h.to(tl.int64) * stride_doh
    stats_base = pid_bh.to(tl.int64) * n_tokens

    start_j = pid_j * BLOCK_J
    offs_j = start_j + tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_j = offs_j < n_tokens
    # Key block J, loaded transposed (D, BLOCK_J) where it is a right-hand matmul operand.
    kt_j = _load_rows(k_base, offs_j, offs_d, stride_kn, stride_kd, n_tokens, True, DOT_UPCAST)
    vt_j = _load_rows(v_base, offs_j, offs_d, stride_vn, stride_vd, n_tokens, True, DOT_UPCAST)
    dot_j = _load_rows(do_base, offs_j, offs_d, stride_don, stride_dod, n_tokens, True, DOT_UPCAST)
    lse_j = tl.load(LSE + stats_base + offs_j, mask=mask_j, other=0.0)
    delta_j = tl.load(DELTA + stats_base + offs_j, mask=mask_j, other=0.0)
    ddiag_j = tl.load(DELTA_DIAG + stats_base + offs_j, mask=mask_j, other=0.0)
    pdiag_j = tl.load(P_DIAG + stats_base + offs_j, mask=mask_j, other=0.0)
    # The smoother's factors (unused where SMOOTH is 0): W = exp(c − c_max), r = exp(c + c_max − lse).
    smooth = tl.load(SMOOTH + pid_bh) != 0
    c_max = tl.load(CMAX + pid_bh)
    c_j = tl.load(C + stats_base + offs_j, mask=mask_j, other=0.0)
    # (Exponents zeroed where SMOOTH is 0: there the keys' range may overflow them.)
    w_j = tl.exp2(tl.where(smooth, c_j - c_max, 0.0) * LOG2E)
    # r = 1/l: its exponent as (c_max − c) − (lse − 2c), two small terms, not c + c_max − lse.
    r_j = tl.exp2(tl.where(smooth, (c_max - c_j) - (lse_j - 2.0 * c_j), 0.0) * LOG2E)

    dk_acc = tl.zeros([BLOCK_J, HEAD_DIM], tl.float32)
    dv_acc = tl.zeros([BLOCK_J, HEAD_DIM], tl.float32)
    dsig_acc = tl.zeros([BLOCK_I, BLOCK_J], tl.float32)
    for start_i in range(0, n_tokens, BLOCK_I):
        offs_i = start_i + tl.arange(0, BLOCK_I)
        mask_i = offs_i < n_tokens
        k_i = _load_rows(k_base, offs_i, offs_d, stride_kn, stride_kd, n_tokens, False, DOT_UPCAST)
        v_i = _load_rows(v_base, offs_i, offs_d, stride_vn, stride_vd, n_tokens, False, DOT_UPCAST)
        do_i = _load_rows(do_base, offs_i, offs_d, stride_don, stride_dod, n_tokens, False, DOT_UPCAST)
        lse_i = tl.load(LSE + stats_base + offs_i, mask=mask_i, other=0.0)
        delta_i = tl.load(DELTA + stats_base + offs_i, mask=mask_i, other=0.0)

        s = tl.dot(k_i, kt_j, input_precision=INPUT_PRECISION) * sm_scale
        if HAS_PRIOR:
            if NEED_DSIGMA:
                # dσ needs every pair's G·d², however small: no tile skipping here.
                g, d2 = _prior_tile(offs_i, offs_j, grid_w, num_prefix, neg_coef)
                s += g
            else:
                if _tile_has_prior(start_i, start_j, BLOCK_I, BLOCK_J, n_tokens, grid_w, num_prefix, neg_coef):
                    g, _ = _prior_tile(offs_i, offs_j, grid_w, num_prefix, neg_coef)
                    s += g
        valid = mask_i[:, None] & mask_j[None, :]
        diag = offs_i[:, None] == offs_j[None, :]
        if smooth:  # one exp for both
            c_i = tl.load(C + stats_base + offs_i, mask=mask_i, other=0.0)
            e = tl.where(valid, tl.exp2((s - c_i[:, None] - c_j[None, :]) * LOG2E), 0.0)
            r_i = tl.exp2(((c_max - c_i) - (lse_i - 2.0 * c_i)) * LOG2E)
            p = e * (r_i[:, None] * w_j[None, :])                                  # P_iJ
            pt = e * (tl.exp2((c_i - c_max) * LOG2E)[:, None] * r_j[None, :])           # P_Jiᵀ
        else:
            p = tl.where(valid, tl.exp2((s - lse_i[:, None]) * LOG2E), 0.0)    # P_iJ
            pt = tl.where(valid, tl.exp2((s - lse_j[None, :]) * LOG2E), 0.0)   # P_Jiᵀ
        p = tl.where(diag, pdiag_j[None, :], p)    # on the diagonal i = j: the forward's P_ii
        pt = tl.where(diag, pdiag_j[None, :], pt)

        dv_acc += tl.dot(tl.trans(p.to(do_i.dtype)), do_i, input_precision=INPUT_PRECISION)
        dp = tl.dot(do_i, vt_j, input_precision=INPUT_PRECISION)    # dP_iJ
        dpt = tl.dot(v_i, dot_j, input_precision=INPUT_PRECISION)   # dP_Jiᵀ
        # A one-hot row held by another token: dS = 0 exactly (kkattn/_numerics.py).
        ds = tl.where(diag, -p * ddiag_j[None, :], tl.where(p >= ONE_HOT_P, 0.0, p * (dp - delta_i[:, None])))
        dst = tl.where(diag, -pt * ddiag_j[None, :], tl.where(pt >= ONE_HOT_P, 0.0, pt * (dpt - delta_j[None, :])))
        dk_acc += tl.dot(tl.trans((ds + dst).to(k_i.dtype)), k_i, input_precision=INPUT_PRECISION)
        if HAS_PRIOR:
            if NEED_DSIGMA:
                dsig_acc += ds * g * d2

    dk_base = DK + b * stride_dkb + h.to(tl.int64) * stride_dkh
    dv_base = DV + b * stride_dvb + h.to(tl.int64) * stride_dvh
    tl.store(dk_base + offs_j[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             (dk_acc * sm_scale).to(DK.dtype.element_ty), mask=mask_j[:, None])
    tl.store(dv_base + offs_j[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
             dv_acc.to(DV.dtype.element_ty), mask=mask_j[:, None])
    if NEED_DSIGMA:
        tl.store(DSIGMA_PART + pid_bh * tl.num_programs(0) + pid_j, tl.sum(tl.sum(dsig_acc, 1), 0))

"""Shared test helpers: random problems, the float64 oracle, errors and per-dtype tolerances."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

import kkattn

# (forward, gradients): max error relative to the oracle's largest magnitude, against the float64
# reference run on the same dtype-rounded inputs.  They fit each dtype's rounding (fp16 eps 9.8e-4,
# bf16 eps 7.8e-3) with a margin; the gradients are as tight as the forward since the backward takes
# δ without cancellation (kkattn/_ops.py), also in the peaked regime.  The Triton interpreter
# truncates fp32 → bf16 stores instead of rounding, which the bf16 forward budget covers.  Where
# even PyTorch cannot do this well (fp16 gradients below fp16's smallest subnormal, 6e-8, at
# D = 128 in the peaked regime) the 3× rule of assert_matches takes over.
TOLERANCES = {
    torch.float64: (1e-12, 1e-11),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 3e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


@dataclass
class Case:
    batch: int
    heads: int
    grid: tuple[int, int]
    head_dim: int
    num_prefix_tokens: int = 0
    sigma: str = "float"  # "float", "tensor" (per head, learnable), "none"
    sigma_value: float = 2.0
    key_scale: float = 1.0  # > 1: the "peaked" regime (the diagonal logit k_i·k_i dominates each row)
    scale: Optional[float] = None  # the logit scale; None = 1/√D

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + self.num_prefix_tokens

    def __str__(self) -> str:
        extra = (f"-k{self.key_scale:g}" if self.key_scale != 1 else "") + (f"-s{self.scale:g}" if self.scale else "")
        return (f"B{self.batch}H{self.heads}-{self.grid[0]}x{self.grid[1]}+{self.num_prefix_tokens}"
                f"-D{self.head_dim}-sigma_{self.sigma}{extra}")


def make_inputs(case: Case, dtype: torch.dtype, device: str = "cpu"):
    """Fresh random k, v, dout (rounded to ``dtype``) and σ; never zeros."""
    shape = (case.batch, case.heads, case.n_tokens, case.head_dim)
    k = (torch.randn(shape, dtype=torch.float64) * case.key_scale).to(dtype)
    v = torch.randn(shape, dtype=torch.float64).to(dtype)
    dout = torch.randn(shape, dtype=torch.float64).to(dtype)
    if case.sigma == "tensor":
        sigma = torch.rand(case.heads, dtype=torch.float64) * 2.0 + 0.5
    elif case.sigma == "float":
        sigma = case.sigma_value
    else:
        sigma = None
    return k.to(device), v.to(device), dout.to(device), sigma


def keys_with_spread(case: Case, spread: float, low: float, dtype: torch.dtype) -> torch.Tensor:
    """Keys whose c_i (with the prior's g_i) run evenly over [low, low + spread] in a shuffled order."""
    b, h, n, d = case.batch, case.heads, case.n_tokens, case.head_dim
    scale = d ** -0.5
    g = torch.ones(n, dtype=torch.float64)
    g[:case.num_prefix_tokens] = 0
    c = low + spread * torch.linspace(0, 1, n, dtype=torch.float64)[torch.randperm(n)]
    norm = ((2 * (c - g / 2) / scale).clamp_min(0)).sqrt()
    u = torch.randn(b, h, n, d, dtype=torch.float64)
    return (u / u.norm(dim=-1, keepdim=True) * norm[:, None]).to(dtype)


def run_with_grads(fn, k, v, dout, sigma, dtype: Optional[torch.dtype] = None):
    """Forward + backward of ``fn(k, v, sigma)``; returns ``(out, dk, dv, dsigma)`` as float64 CPU."""
    dtype = dtype or k.dtype
    k = k.detach().to(dtype).requires_grad_()
    v = v.detach().to(dtype).requires_grad_()
    s = sigma
    if isinstance(sigma, torch.Tensor):
        s = sigma.detach().to(device=k.device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        s.requires_grad_()
    out = fn(k, v, s)
    out.backward(dout.to(dtype))
    dsigma = s.grad if isinstance(s, torch.Tensor) else None
    return tuple(None if t is None else t.detach().double().cpu() for t in (out, k.grad, v.grad, dsigma))


def oracle(case: Case, k, v, dout, sigma):
    """The float64 reference on the given (already dtype-rounded) inputs."""
    return run_with_grads(backend_fn(case, "reference"), k.cpu(), v.cpu(), dout.cpu(), sigma, dtype=torch.float64)


def backend_fn(case: Case, backend: str):
    return lambda k_, v_, s_: kkattn.neighborhood_kk_attention(
        k_, v_, s_, grid=case.grid, scale=case.scale, num_prefix_tokens=case.num_prefix_tokens, backend=backend)


def off_diagonal_stats(k, v, sigma, grid, num_prefix_tokens, scale):
    """Float64 ``(Σ_{k≠i} P_ik V_k, Σ_{k≠i} P_ik)`` from the materialized P: what the forward's
    statistics for the backward must equal (kkattn/_ops.py)."""
    k, v = k.double(), v.double()
    logits = scale * (k @ k.transpose(-1, -2))
    if sigma is not None:
        s = sigma.double() if isinstance(sigma, torch.Tensor) else sigma
        g = kkattn.gaussian_prior(grid, s, num_prefix_tokens, dtype=torch.float64)
        logits = logits + (g if g.dim() == 3 else g[None])
    p = torch.softmax(logits, dim=-1)
    p = p * (1 - torch.eye(k.shape[2], dtype=p.dtype))
    return p @ v, p.sum(-1)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max abs error over the reference's max magnitude (the absolute error where the reference is
    exactly 0, e.g. dk of a saturated softmax); NaN anywhere counts as infinite."""
    if not torch.isfinite(got).all():
        return float("inf")
    scale = want.abs().max().item()
    return (got - want).abs().max().item() / (scale if scale > 0 else 1.0)


def assert_matches(got, want, dtype: torch.dtype, what: str = "", baseline=None):
    """Each of (out, dk, dv, dσ) within the dtype's tolerance of ``want``.

    ``baseline``: the same quantities from the materialized reference run in ``dtype``.  As in
    FlashAttention's tests, a kernel may also be up to 3× as far off as that baseline: with large
    head dims P is nearly one-hot (the K·K diagonal grows like √D) and the gradients cancel, so
    even PyTorch's own fp32 implementation drifts past a fixed tolerance.
    """
    fwd_tol, grad_tol = TOLERANCES[dtype]
    names = ("out", "dk", "dv", "dsigma")
    baseline = baseline or (None,) * 4
    for name, g, w, b in zip(names, got, want, baseline):
        if w is None:
            assert g is None, f"{what}: {name} should be None"
            continue
        assert g is not None, f"{what}: {name} missing"
        assert g.shape == w.shape, f"{what}: {name} shape {tuple(g.shape)} != {tuple(w.shape)}"
        tol = fwd_tol if name == "out" else grad_tol
        if b is not None:
            tol = max(tol, 3 * rel_err(b, w))
        err = rel_err(g, w)
        assert err <= tol, f"{what}: {name} relative error {err:.3e} > {tol:.1e} ({dtype})"


def require(backend: str, dtype: torch.dtype, head_dim: int) -> None:
    """Skip when ``backend``'s declared limits (its registry record) exclude ``dtype`` or ``head_dim``:
    the shared matrix runs every backend, and e.g. the CUDA kernels take fp16/bf16 at D 32/64/128."""
    import pytest

    from kkattn.backends import _REGISTRY
    record = _REGISTRY.get(backend)
    if record is not None and (dtype not in record.dtypes or (record.head_dims and head_dim not in record.head_dims)):
        pytest.skip(f"backend {backend!r} does not take {dtype} at D = {head_dim} (its declared limits)")


def check_backend(case: Case, backend: str, device: str, dtype: torch.dtype, inputs=None):
    """Run ``backend`` with poisoned outputs and compare forward and all gradients to the oracle."""
    from kkattn.testing import poisoned_outputs
    require(backend, dtype, case.head_dim)
    k, v, dout, sigma = inputs or make_inputs(case, dtype, device)
    want = oracle(case, k, v, dout, sigma)
    baseline = run_with_grads(backend_fn(case, "reference"), k.cpu(), v.cpu(), dout.cpu(), sigma)
    with poisoned_outputs():
        got = run_with_grads(backend_fn(case, backend), k, v, dout, sigma)
    assert_matches(got, want, dtype, f"{backend} {dtype} {case}", baseline)

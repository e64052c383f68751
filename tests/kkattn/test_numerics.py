"""Numerics that only key–key attention has, and the edges of σ and of the softmax.

* **Peaked regime.**  By Cauchy–Schwarz the diagonal logit k_i·k_i dominates its row, so for keys of
  realistic norm P is nearly one-hot: the operator's normal regime.  There ``dP_ii − δ_i`` is a
  difference of nearly equal numbers; the backends take it from the forward's off-diagonal
  statistics instead (kkattn/_ops.py).  Judged by the README's rule against PyTorch's own
  materialized autograd in the same dtype.
* **Saturated softmax** (keys of magnitude 1e3–1e4, or scale = 1e6): exactly one-hot rows, where
  fp32 autograd is exact; dk must be 0 and dv = dO.
* **σ at the edges**: tiny σ (G = 1 on the diagonal, 0 elsewhere, dσ = 0), huge σ (G = 1, dσ = 0),
  and a float σ with float64 inputs (built in float64).
* **torch.compile** with every backend name, and with ``dynamic=True``.
"""
import pytest
import torch

import kkattn
from kkattn._prior import SIGMA_MIN

from conftest import backend_targets
from helpers import Case, backend_fn, check_backend, make_inputs, oracle, rel_err, require, run_with_grads

TARGETS, IDS = backend_targets()
DTYPES = [torch.float16, torch.bfloat16, torch.float32]

# Keys ×1.5: at D = 64 the diagonal logit is ~18 against off-diagonal ~N(0, 2.25²), so 1 − P_ii ~ 1e-5;
# at D = 128, ~1e-8 (below fp32 resolution).  N = 7 fits one block; N = 100 spans several (32 in the
# Triton interpreter, 64 in the C++ kernel) with a partial last one.  CLS token, learnable per-head σ.
PEAKED = [
    Case(1, 2, (2, 3), d, num_prefix_tokens=1, sigma="tensor", key_scale=1.5) for d in (64, 128)
] + [
    Case(1, 2, (9, 11), d, num_prefix_tokens=1, sigma="tensor", key_scale=1.5) for d in (64, 128)
]


@pytest.mark.parametrize("backend,device", TARGETS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PEAKED, ids=str)
def test_peaked_regime(backend, device, dtype, case):
    check_backend(case, backend, device, dtype)


# Saturated rows: logit gaps of 1e5 and more, exactly one-hot in float64 and in fp32 autograd.
SATURATED = [
    Case(1, 2, (5, 6), 64, num_prefix_tokens=1, sigma="tensor", key_scale=1e3),
    Case(1, 2, (5, 6), 32, sigma="float", key_scale=1e4),
    Case(1, 2, (4, 9), 64, num_prefix_tokens=2, sigma="none", scale=1e6),
]


@pytest.mark.parametrize("backend,device", TARGETS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SATURATED, ids=str)
def test_saturated_softmax(backend, device, dtype, case):
    k, v, dout, sigma = make_inputs(case, dtype, device)
    check_backend(case, backend, device, dtype, inputs=(k, v, dout, sigma))
    _, dk, dv, _ = run_with_grads(backend_fn(case, backend), k, v, dout, sigma)
    # One-hot rows on the diagonal: O = V, so dV = dO, and dS = 0, so dK = 0 — exactly.
    assert torch.equal(dv, dout.double().cpu())
    assert dk.abs().max().item() == 0.0


# Saturated rows held by another token: key 5 is 3× key 2 and key 20 is 2× key 9, so rows 2 and 9 are one-hot
# on columns 5 and 20 (logit gaps ~1e7); every other row is one-hot on its diagonal. The exact dS is 0 everywhere,
# and so is fp32 autograd's; dP − δ from two summation orders would be rounding times |k| ~ 1e4 (1.1e-3 in dk).
HELD = Case(1, 2, (5, 6), 64, num_prefix_tokens=1, sigma="tensor", key_scale=1e3)


@pytest.mark.parametrize("backend,device", TARGETS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_saturated_rows_held_by_another_token(backend, device, dtype):
    k, v, dout, sigma = make_inputs(HELD, dtype, device)
    k[:, :, 5], k[:, :, 20] = 3 * k[:, :, 2], 2 * k[:, :, 9]
    check_backend(HELD, backend, device, dtype, inputs=(k, v, dout, sigma))
    _, dk, _, _ = run_with_grads(backend_fn(HELD, backend), k, v, dout, sigma)
    assert dk.abs().max().item() == 0.0


def test_the_one_hot_threshold_is_one_number_in_python_and_cpp():
    import re
    from pathlib import Path

    from kkattn._numerics import ONE_HOT_P

    header = (Path(__file__).parents[2] / "csrc" / "kkattn_math.h").read_text()
    found = re.search(r"ONE_HOT_P = 1\.0f - 0x1p-(\d+)f;", header)
    assert found and 1.0 - 2.0 ** -int(found.group(1)) == ONE_HOT_P


# ----------------------------------------------------------------------------------------- σ edges
def _identity_prior(grid, num_prefix_tokens):
    n = grid[0] * grid[1] + num_prefix_tokens
    g = torch.eye(n, dtype=torch.float64)
    g[:num_prefix_tokens] = 0
    return g


@pytest.mark.parametrize("sigma", [1e-3, 1e-20, 1e-30, 1e-200, 5e-324])
def test_tiny_sigma_prior_is_the_identity(sigma):
    # What the float64 formula gives: exp(−0) = 1 on the diagonal, exp(−d²/(2σ²)) = 0 elsewhere.
    want = _identity_prior((3, 4), 1)
    assert torch.equal(kkattn.gaussian_prior((3, 4), sigma, 1, dtype=torch.float64), want)
    assert torch.equal(kkattn.gaussian_prior((3, 4), sigma, 1, dtype=torch.float32).double(), want)
    s = torch.tensor([sigma, 0.5], dtype=torch.float64, requires_grad=True)
    g = kkattn.gaussian_prior((3, 4), s, 1)
    assert torch.equal(g[0], want)
    g.sum().backward()
    assert s.grad[0].item() == 0.0 and torch.isfinite(s.grad).all()


def test_huge_sigma_prior_is_one_on_the_grid():
    want = torch.ones(13, 13, dtype=torch.float64)
    want[0] = want[:, 0] = 0
    for sigma in (1e20, 1e300):
        assert torch.equal(kkattn.gaussian_prior((3, 4), sigma, 1, dtype=torch.float64), want)
        assert torch.equal(kkattn.gaussian_prior((3, 4), sigma, 1, dtype=torch.float32).double(), want)


@pytest.mark.parametrize("backend,device", TARGETS, ids=IDS)
@pytest.mark.parametrize("sigma", [1e-20, 1e-30, 1e300, "tensor-tiny", "tensor-huge"])
def test_sigma_edges_match_the_float64_formula(backend, device, sigma):
    # Prefix tokens make a huge σ matter (G = 1 on the grid, 0 on the CLS row and column).
    case = Case(1, 2, (5, 6), 32, num_prefix_tokens=1, sigma="float")
    k, v, dout, _ = make_inputs(case, torch.float32, device)
    if sigma == "tensor-tiny":
        sigma = torch.tensor([1e-30, 1e-3], dtype=torch.float64)
    elif sigma == "tensor-huge":
        sigma = torch.tensor([1e30, 3e38], dtype=torch.float64)
    check_backend(case, backend, device, torch.float32, inputs=(k, v, dout, sigma))
    got = run_with_grads(backend_fn(case, backend), k, v, dout, sigma)
    want = oracle(case, k, v, dout, sigma)
    if isinstance(sigma, torch.Tensor):
        assert torch.isfinite(got[3]).all() and torch.isfinite(want[3]).all()
        assert got[3].abs().max().item() < 1e-20 and want[3].abs().max().item() < 1e-20  # dσ → 0 at both ends


def test_sigma_below_the_floor_gives_the_floors_prior():
    # SIGMA_MIN is where the prior already is the identity: the clamp changes no value.
    assert torch.equal(kkattn.gaussian_prior((4, 4), SIGMA_MIN, dtype=torch.float64), _identity_prior((4, 4), 0))


def test_float64_inputs_build_sigma_in_float64():
    case = Case(2, 2, (7, 9), 24, num_prefix_tokens=2, sigma="float", sigma_value=1.3)
    k, v, dout, sigma = make_inputs(case, torch.float64)
    got = run_with_grads(backend_fn(case, "chunked"), k, v, dout, sigma)
    want = oracle(case, k, v, dout, sigma)
    for g, w in zip(got[:3], want[:3]):
        assert rel_err(g, w) < 1e-13  # an fp32 σ = 1.3 alone gives ~1e-8


# ------------------------------------------------------------------------------------ torch.compile
def _compiled_matches_eager(backend, device, dynamic, grid=(5, 6)):
    torch._dynamo.reset()
    n = 7 * 7 + 1 if grid is None else grid[0] * grid[1] + 1
    k = torch.randn(1, 2, n, 32, device=device, requires_grad=True)
    v = torch.randn(1, 2, n, 32, device=device, requires_grad=True)
    sigma = torch.tensor([1.5, 2.5], device=device, requires_grad=True)

    def f(k, v, sigma):
        return kkattn.neighborhood_kk_attention(k, v, sigma, grid=grid, num_prefix_tokens=1, backend=backend)

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    out = compiled(k, v, sigma)
    grads = torch.autograd.grad(out.square().sum(), (k, v, sigma))
    out_e = f(k, v, sigma)
    grads_e = torch.autograd.grad(out_e.square().sum(), (k, v, sigma))
    torch.testing.assert_close(out, out_e, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, grads_e):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-4)  # inductor reorders the reference's reductions


@pytest.mark.parametrize("backend,device", [("auto", "cpu"), ("reference", "cpu")] + TARGETS,
                         ids=["auto", "reference"] + IDS)
def test_torch_compile_every_backend(backend, device):
    require(backend, torch.float32, 32)
    _compiled_matches_eager(backend, device, dynamic=False)


@pytest.mark.parametrize("backend", ["auto", "reference", "chunked"])
def test_torch_compile_dynamic(backend):
    _compiled_matches_eager(backend, "cpu", dynamic=True)
    _compiled_matches_eager(backend, "cpu", dynamic=True, grid=(6, 7))  # a second size, same compiled code
    _compiled_matches_eager(backend, "cpu", dynamic=True, grid=None)  # square, from N

"""The C++ kernel's two paths: the symmetric smoother and its online-softmax fallback.

The kernel takes the smoother for a (batch, head) when the spread Δ = max c − min c of
c_i = scale·‖k_i‖²/2 + g_i/2 is at most 48 (csrc/kkattn_cpu.cpp: what a row can lose to underflow
is below N·e^(Δ − 87.3) of it), else the online softmax.  These cases set Δ exactly, on both
sides of the bound, with c from 2 (rows spread over many keys) to 2 + Δ (rows one-hot to fp32
resolution: the peaked regime), for every dtype, D = 64 and 128, over several strips and tiles (N = 668: a CLS token and a 23×29
grid), in both schedules, and check forward and all gradients against the float64 oracle.
"""
import pytest
import torch

from helpers import Case, check_backend
from kkattn.backends import _REGISTRY

CPU = _REGISTRY["cpu"].status()
pytestmark = pytest.mark.skipif(not CPU.available, reason=str(CPU))

CASE = Case(1, 2, (23, 29), 64, num_prefix_tokens=1, sigma="tensor")


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


def path(case: Case, k: torch.Tensor) -> str:
    from kkattn.backends.cpu import smoother_path
    return smoother_path(k, case.sigma != "none", case.num_prefix_tokens, case.head_dim ** -0.5)


@pytest.mark.parametrize("threads", [1, 4], ids=["pairs", "rows"])  # B·H = 2: see use_pairs
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("spread,want", [(1.0, "smoother"), (46.0, "smoother"), (52.0, "online"), (150.0, "online")])
def test_both_paths_match_the_oracle(spread, want, head_dim, dtype, threads):
    case = Case(CASE.batch, CASE.heads, CASE.grid, head_dim, CASE.num_prefix_tokens, CASE.sigma)
    k = keys_with_spread(case, spread, low=2.0, dtype=dtype)
    assert path(case, k) == want
    v = torch.randn(k.shape, dtype=torch.float64).to(dtype)
    dout = torch.randn(k.shape, dtype=torch.float64).to(dtype)
    sigma = torch.rand(case.heads, dtype=torch.float64) * 2.0 + 0.5
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        check_backend(case, "cpu", "cpu", dtype, inputs=(k, v, dout, sigma))
    finally:
        torch.set_num_threads(saved)


def test_each_batch_and_head_takes_its_own_path():
    # Head 0 within range, head 1 beyond it: one call, both paths.
    case = Case(2, 2, (9, 11), 32, num_prefix_tokens=1, sigma="tensor")
    k = keys_with_spread(case, 5.0, low=2.0, dtype=torch.float32)
    k[:, 1] = keys_with_spread(case, 120.0, low=2.0, dtype=torch.float32)[:, 1]
    assert path(case, k) == "mixed"
    assert path(case, k[:, :1]) == "smoother" and path(case, k[:, 1:]) == "online"
    v, dout = torch.randn(k.shape), torch.randn(k.shape)
    check_backend(case, "cpu", "cpu", torch.float32, inputs=(k, v, dout, torch.rand(2, dtype=torch.float64) + 0.5))


def test_non_finite_keys_take_the_online_path():
    k = torch.randn(1, 1, 10, 8)
    k[0, 0, 3, 2] = float("inf")
    assert path(Case(1, 1, (3, 3), 8, num_prefix_tokens=1), k) == "online"

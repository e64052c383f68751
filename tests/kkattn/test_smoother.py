"""The symmetric smoother (kkattn/_smoother.py) and its online-softmax fallback, in the C++ and
Triton kernels.

The kernels take the smoother for a (batch, head) when the spread Δ = max c − min c of
c_i = scale·‖k_i‖²/2 + g_i/2 is within the range of the number format the weights are held in
(48 for fp32 weights; 8 for the Triton forward's fp16 weights), else the online softmax.  These
cases set Δ exactly, on both sides of the bounds, with c from 2 (rows spread over many keys) to
2 + Δ (rows one-hot to fp32 resolution: the peaked regime), for every dtype and D = 64 and 128,
over several tiles and strips, and check forward and all gradients against the float64 oracle.
The C++ kernel runs N = 668 (a CLS token and a 23×29 grid: several 256-token strips) in both of
its schedules; the Triton interpreter N = 100 (four 32-token blocks, a partial last one).
"""
import pytest
import torch

from conftest import TRITON_DEVICE
from helpers import Case, check_backend, keys_with_spread
from kkattn import _smoother
from kkattn.backends import _REGISTRY

CPU = _REGISTRY["cpu"].status()
TRITON = _REGISTRY["triton"].status()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SPREADS = [1.0, 6.0, 46.0, 52.0, 150.0]


def cpu_path(case: Case, k: torch.Tensor) -> str:
    from kkattn.backends.cpu import smoother_path
    return smoother_path(k, case.sigma != "none", case.num_prefix_tokens, case.head_dim ** -0.5)


def check(case: Case, spread: float, dtype: torch.dtype, backend: str, device: str):
    k = keys_with_spread(case, spread, low=2.0, dtype=dtype)
    v = torch.randn(k.shape, dtype=torch.float64).to(dtype)
    dout = torch.randn(k.shape, dtype=torch.float64).to(dtype)
    sigma = torch.rand(case.heads, dtype=torch.float64) * 2.0 + 0.5
    check_backend(case, backend, device, dtype, inputs=(k.to(device), v.to(device), dout.to(device), sigma))
    return k


@pytest.mark.skipif(not CPU.available, reason=str(CPU))
@pytest.mark.parametrize("threads", [1, 4], ids=["pairs", "rows"])  # B·H = 2: see use_pairs
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("spread", SPREADS)
def test_cpu_kernel_both_paths(spread, head_dim, dtype, threads):
    case = Case(1, 2, (23, 29), head_dim, num_prefix_tokens=1, sigma="tensor")
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        k = check(case, spread, dtype, "cpu", "cpu")
    finally:
        torch.set_num_threads(saved)
    assert cpu_path(case, k) == ("smoother" if spread <= _smoother.MAX_SPREAD else "online")


@pytest.mark.skipif(not TRITON.available, reason=str(TRITON))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("spread", SPREADS)
def test_triton_kernels_both_paths(spread, head_dim, dtype):
    case = Case(1, 2, (9, 11), head_dim, num_prefix_tokens=1, sigma="tensor")
    k = check(case, spread, dtype, "triton", TRITON_DEVICE)
    fwd_bound = _smoother.MAX_SPREAD_FP16 if dtype == torch.float16 else _smoother.MAX_SPREAD
    for bound in (fwd_bound, _smoother.MAX_SPREAD):  # the forward's flags, the backward's
        on = _smoother.plan(k, True, case.num_prefix_tokens, head_dim ** -0.5, bound)[2]
        assert on.tolist() == [[int(spread <= bound)] * case.heads]


@pytest.mark.skipif(not CPU.available, reason=str(CPU))
def test_each_batch_and_head_takes_its_own_path():
    # Head 0 within range, head 1 beyond it: one call, both paths.
    case = Case(2, 2, (9, 11), 32, num_prefix_tokens=1, sigma="tensor")
    k = keys_with_spread(case, 5.0, low=2.0, dtype=torch.float32)
    k[:, 1] = keys_with_spread(case, 120.0, low=2.0, dtype=torch.float32)[:, 1]
    assert cpu_path(case, k) == "mixed"
    assert cpu_path(case, k[:, :1]) == "smoother" and cpu_path(case, k[:, 1:]) == "online"
    assert _smoother.plan(k, True, 1, 32 ** -0.5)[2].tolist() == [[1, 0], [1, 0]]
    v, dout = torch.randn(k.shape), torch.randn(k.shape)
    sigma = torch.rand(2, dtype=torch.float64) + 0.5
    for backend, device in (("cpu", "cpu"), ("triton", TRITON_DEVICE)):
        if _REGISTRY[backend].status().available:
            check_backend(case, backend, device, torch.float32,
                          inputs=(k.to(device), v.to(device), dout.to(device), sigma))


def test_non_finite_keys_take_the_online_path():
    k = torch.randn(1, 1, 10, 8)
    k[0, 0, 3, 2] = float("inf")
    assert _smoother.plan(k, True, 1, 8 ** -0.5)[2].item() == 0
    if CPU.available:
        assert cpu_path(Case(1, 1, (3, 3), 8, num_prefix_tokens=1), k) == "online"


def test_the_compiled_kernels_hold_the_same_bound():
    import re
    from pathlib import Path
    cuda = (Path(__file__).parents[2] / "csrc" / "kkattn_cuda_kernels.cuh").read_text()
    assert float(re.search(r"kSmootherMaxSpread = ([0-9.]+)f;", cuda).group(1)) == _smoother.MAX_SPREAD
    if CPU.available:
        assert torch.ops.kkattn_C.smoother_max_spread() == _smoother.MAX_SPREAD

"""Every backend against the float64 reference: forward, dk, dv, dσ, for every dtype it claims."""
import pytest
import torch

import kkattn
from kkattn.testing import poisoned_outputs

from conftest import backend_targets
from helpers import Case, backend_fn, check_backend, make_inputs, off_diagonal_stats, rel_err, require, run_with_grads

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The compiled CPU kernel is part of every install that built kkattn._C (CI does); a pure-Python
# install skips its cases rather than pretending.
_CPU_KERNEL = kkattn.available_backends()["cpu"]
TARGETS, IDS = backend_targets()

# Odd sizes on purpose: N not a multiple of the blocks (32 in the interpreter, 64 in the C++ kernel),
# rectangular grids, prefix tokens, single-row and single-column grids, N smaller than one block.
# B·H = 6 takes the C++ kernel's tile-pair schedule on ≤ 3 threads; B·H ≤ 2 its row-block schedule.
CASES = [
    Case(2, 3, (8, 8), 32, sigma="float"),                          # N = 64: exactly two blocks
    Case(2, 3, (9, 11), 32, num_prefix_tokens=1, sigma="tensor"),   # N = 100, CLS token, learnable σ
    Case(1, 2, (5, 13), 16, num_prefix_tokens=3, sigma="none"),     # N = 68, registers, no prior
    Case(1, 2, (1, 50), 32, sigma="tensor"),                        # a single row
    Case(1, 2, (1, 200), 16, num_prefix_tokens=1, sigma="tensor"),  # a row across several blocks: G skipped by column
    Case(1, 1, (37, 1), 16, num_prefix_tokens=2, sigma="float"),    # a single column, N = 39
    Case(1, 2, (2, 2), 16, num_prefix_tokens=1, sigma="tensor"),    # N = 5 < one block
]


@pytest.mark.parametrize("backend,device", TARGETS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(backend, device, dtype, case):
    check_backend(case, backend, device, dtype)


@pytest.mark.parametrize("backend,device", TARGETS, ids=IDS)
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
def test_head_dims(backend, device, head_dim):
    check_backend(Case(1, 2, (6, 7), head_dim, num_prefix_tokens=1, sigma="tensor"), backend, device, torch.float32)


@pytest.mark.parametrize("backend,device", TARGETS, ids=IDS)
@pytest.mark.parametrize("sigma", ["float", "tensor"])
def test_far_tiles_skip_the_prior_exactly(backend, device, sigma):
    # σ = 0.5 on a 16x16 grid: most 32-token tile pairs lie beyond 5.8σ, so the Triton kernels skip
    # their prior (forward; backward without dσ), while dσ needs every pair.
    case = Case(1, 2, (16, 16), 32, sigma=sigma, sigma_value=0.5)
    k, v, dout, sigma_v = make_inputs(case, torch.float32, device)
    if isinstance(sigma_v, torch.Tensor):
        sigma_v = sigma_v * 0.25
    check_backend(case, backend, device, torch.float32, inputs=(k, v, dout, sigma_v))


def test_chunked_float64():
    # D = 24: chunked takes any head dim
    check_backend(Case(2, 2, (7, 9), 24, num_prefix_tokens=2, sigma="tensor"), "chunked", "cpu", torch.float64)


@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
def test_chunked_block_sizes(rows):
    from kkattn.backends import chunked
    case = Case(1, 2, (9, 9), 16, num_prefix_tokens=1, sigma="tensor")
    k, v, dout, sigma = make_inputs(case, torch.float64)
    sig = sigma.float()
    out, lse, out_off, p_off = chunked.forward(k, v, sig.double(), 9, 1, 0.25, True, rows=rows)
    ref_out, ref_lse = kkattn.reference.neighborhood_kk_attention(k, v, sig.double(), grid=(9, 9), scale=0.25,
                                                                num_prefix_tokens=1, return_lse=True)
    want_off, want_p_off = off_diagonal_stats(k, v, sig.double(), (9, 9), 1, 0.25)
    assert rel_err(out, ref_out) < 1e-12 and rel_err(lse, ref_lse) < 1e-12
    assert rel_err(out_off, want_off) < 1e-12 and rel_err(p_off, want_p_off) < 1e-12


@pytest.mark.parametrize("backend,device", TARGETS, ids=IDS)
def test_lse_is_the_row_logsumexp(backend, device):
    require(backend, torch.float32, 32)
    from kkattn._ops import forward_op
    case = Case(2, 2, (9, 11), 32, num_prefix_tokens=1, sigma="tensor")
    k, v, _, sigma = make_inputs(case, torch.float32, device)
    with poisoned_outputs():
        _, lse, out_off, p_off = forward_op(k, v, sigma.float().to(device), 11, 1, 32 ** -0.5, backend, True)
    _, want = kkattn.reference.neighborhood_kk_attention(k.double().cpu(), v.double().cpu(), sigma, grid=(9, 11),
                                                        num_prefix_tokens=1, return_lse=True)
    assert rel_err(lse.double().cpu(), want) < 1e-6
    # The backward's statistics: the output and the weight without the diagonal term (kkattn/_ops.py).
    want_off, want_p_off = off_diagonal_stats(k.double().cpu(), v.double().cpu(), sigma, (9, 11), 1, 32 ** -0.5)
    assert out_off.dtype == p_off.dtype == torch.float32
    assert rel_err(out_off.double().cpu(), want_off) < 1e-5 and rel_err(p_off.double().cpu(), want_p_off) < 1e-5


@pytest.mark.parametrize("backend,device", TARGETS, ids=IDS)
def test_inference_skips_the_statistics(backend, device):
    require(backend, torch.float32, 16)
    from kkattn._ops import forward_op
    k, v, _, _ = make_inputs(Case(1, 2, (5, 5), 16), torch.float32, device)
    out, _, out_off, p_off = forward_op(k, v, None, 5, 0, 0.25, backend, False)
    assert out_off.numel() == 0 and p_off.numel() == 0
    torch.testing.assert_close(out, forward_op(k, v, None, 5, 0, 0.25, backend, True)[0], rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", TARGETS, ids=IDS)
def test_backward_is_deterministic(backend, device):
    require(backend, torch.float32, 32)
    case = Case(2, 2, (9, 11), 32, num_prefix_tokens=1, sigma="tensor")
    k, v, dout, sigma = make_inputs(case, torch.float32, device)
    first = run_with_grads(backend_fn(case, backend), k, v, dout, sigma)
    second = run_with_grads(backend_fn(case, backend), k, v, dout, sigma)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend,device", TARGETS, ids=IDS)
def test_non_contiguous_inputs(backend, device):
    # (B, N, H, D) storage seen as (B, H, N, D), as a ViT's projections produce; dout sliced.
    case = Case(2, 3, (9, 11), 32, num_prefix_tokens=1, sigma="float")
    shape = (case.batch, case.n_tokens, case.heads, case.head_dim)
    k = torch.randn(shape, device=device).transpose(1, 2)
    v = torch.randn(shape, device=device).transpose(1, 2)
    dout = torch.randn(case.batch, case.heads, case.n_tokens, 2 * case.head_dim, device=device)[..., ::2]
    assert not k.is_contiguous() and not dout.is_contiguous()
    check_backend(case, backend, device, torch.float32, inputs=(k, v, dout, 2.0))


@pytest.mark.parametrize("backend,device", TARGETS, ids=IDS)
def test_custom_scale_and_sigma_grad_only(backend, device):
    require(backend, torch.float32, 16)
    # Only σ requires grad: the op must still return dσ (and no k/v grads).
    case = Case(1, 2, (6, 6), 16, sigma="tensor")
    k, v, _, sigma = make_inputs(case, torch.float32, device)
    s = sigma.float().to(device).requires_grad_()
    out = kkattn.neighborhood_kk_attention(k, v, s, scale=0.3, backend=backend)
    (out.double() ** 2).sum().backward()
    s64 = sigma.clone().requires_grad_()
    ref = kkattn.reference.neighborhood_kk_attention(k.double().cpu(), v.double().cpu(), s64, scale=0.3)
    (ref ** 2).sum().backward()
    assert rel_err(out.double().cpu(), ref.detach()) < 2e-5
    assert rel_err(s.grad.double().cpu(), s64.grad) < 5e-5


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "chunked"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_larger_grids(backend, dtype):
    # Real GPU sizes: several 128/64-token blocks, a CLS token, per-head σ.
    check_backend(Case(2, 4, (31, 33), 64, num_prefix_tokens=1, sigma="tensor"), backend, "cuda", dtype)


@pytest.mark.skipif(not _CPU_KERNEL.available, reason=str(_CPU_KERNEL))
def test_cpu_kernel_any_head_dim_and_thread_count():
    # The C++ kernel takes any head dim, and its result does not depend on the thread count.
    case = Case(2, 3, (7, 9), 24, num_prefix_tokens=2, sigma="tensor")
    check_backend(case, "cpu", "cpu", torch.float32)
    k, v, dout, sigma = make_inputs(case, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_with_grads(backend_fn(case, "cpu"), k, v, dout, sigma)
    finally:
        torch.set_num_threads(threads)
    many = run_with_grads(backend_fn(case, "cpu"), k, v, dout, sigma)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


@pytest.mark.skipif(not _CPU_KERNEL.available, reason=str(_CPU_KERNEL))
@pytest.mark.parametrize("threads", [1, 4])
def test_cpu_kernel_both_schedules(threads):
    # B·H = 2: one thread takes the tile-pair schedule (B·H >= 2·threads), four the row-block one.
    case = Case(1, 2, (9, 11), 32, num_prefix_tokens=1, sigma="tensor")
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        check_backend(case, "cpu", "cpu", torch.float32)
    finally:
        torch.set_num_threads(saved)

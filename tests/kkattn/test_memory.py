"""Bounded memory: no N×N tensor in the chunked or Triton paths, O(B·H·N) saved for backward."""
import pytest
import torch

import kkattn
from kkattn.backends import chunked
from kkattn.testing import AllocationTracker


@pytest.mark.parametrize("rows", [None, 64])
def test_chunked_never_allocates_n_by_n(rows):
    b, h, n, d = 1, 2, 4096, 16  # grid 64×64: an N×N fp32 matrix per head would be 64 MiB
    k, v, dout = (torch.randn(b, h, n, d) for _ in range(3))
    sigma = torch.tensor([2.0, 3.0])
    with AllocationTracker() as fwd:
        out, lse, _, _ = chunked.forward(k, v, sigma, 64, 0, d ** -0.5, True, rows=rows)
    with AllocationTracker() as bwd:
        chunked.backward(dout, k, v, lse, lse, lse, lse, sigma, 64, 0, d ** -0.5, need_dsigma=True, rows=rows)
    rows = rows or chunked.block_rows(b, h, n)
    per_row_block = b * h * rows * n
    for tracker in (fwd, bwd):
        assert tracker.max_numel <= per_row_block < n * n
        # Peak: a handful of (B, H, rows, N) temporaries plus O(B·H·N·D) accumulators, whereas
        # the reference holds logits, probabilities and G, ≥ 3·B·H·N²·4 bytes.
        assert tracker.peak_bytes <= 12 * per_row_block * 4 + 8 * b * h * n * d * 4


def test_reference_does_allocate_n_by_n():
    # The tracker is not blind: the materialized oracle shows up as N×N.
    k = torch.randn(1, 2, 256, 16)
    with AllocationTracker() as tracker:
        kkattn.reference.neighborhood_kk_attention(k, k, 2.0)
    assert tracker.max_numel >= 256 * 256


def test_triton_allocates_only_outputs_and_row_statistics():
    from kkattn.backends import triton_launch
    b, h, n, d = 1, 2, 256, 16
    k, v, dout = (torch.randn(b, h, n, d, device="cuda" if torch.cuda.is_available() else "cpu") for _ in range(3))
    sigma = torch.tensor([2.0, 3.0], device=k.device)
    with AllocationTracker() as fwd:
        out, lse, _, _ = triton_launch.forward(k, v, sigma, 16, 0, 0.25, True)
    with AllocationTracker() as bwd:
        triton_launch.backward(dout, k, v, lse, lse, lse, lse, sigma, 16, 0, 0.25, need_dsigma=True)
    for tracker in (fwd, bwd):
        assert tracker.max_numel <= b * h * n * d


@pytest.mark.parametrize("sigma", [2.0, "tensor", None])
def test_saves_only_inputs_and_row_statistics(sigma):
    b, h, n, d = 2, 3, 49, 16
    k = torch.randn(b, h, n, d, requires_grad=True)
    v = torch.randn(b, h, n, d, requires_grad=True)
    if sigma == "tensor":
        sigma = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        kkattn.neighborhood_kk_attention(k, v, sigma, backend="chunked")
    total = sum(t.numel() for t in saved)
    # k, v, the off-diagonal output (B, H, N, D) + lse and the off-diagonal weight (B, H, N) (+ σ)
    assert total <= 3 * b * h * n * d + 2 * b * h * n + h


def test_no_grad_saves_nothing():
    k = torch.randn(1, 2, 16, 16, requires_grad=True)
    saved = []
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = kkattn.neighborhood_kk_attention(k, k, 2.0)
    assert out.grad_fn is None and not out.requires_grad and saved == []


@pytest.mark.skipif(not kkattn.available_backends()["cpu"].available, reason="kkattn._C not compiled")
def test_cpu_kernel_runs_a_128x128_grid_in_bounded_memory():
    # N = 16384: one N×N fp32 matrix is 1 GiB.  Measured as the process's peak RSS growth, in a
    # fresh interpreter so earlier tests' peaks do not hide it.
    import subprocess
    import sys
    code = (
        "import resource, torch, kkattn\n"
        "k = torch.randn(1, 1, 16384, 16, requires_grad=True)\n"
        "v = torch.randn(1, 1, 16384, 16, requires_grad=True)\n"
        "do = torch.randn(1, 1, 16384, 16)\n"
        "kkattn.neighborhood_kk_attention(k[:, :, :64], v[:, :, :64], 2.0, grid=(8, 8), backend='cpu')\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "kkattn.neighborhood_kk_attention(k, v, 2.0, grid=(128, 128), backend='cpu').backward(do)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )
    growth_kib = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.split()[-1])
    assert growth_kib < 64 * 1024, f"peak RSS grew by {growth_kib / 1024:.0f} MiB"


def test_row_deltas_in_chunks_equal_one_block(monkeypatch):
    # The backward's row statistics are formed in bounded chunks in eager mode (an expanded dO stays a
    # view): the same numbers as one block.
    from kkattn import _ops
    b, h, n, d = 2, 3, 50, 16
    dout = torch.randn(1, 1, 1, d).expand(b, h, n, d)
    v, out_off = torch.randn(b, h, n, d), torch.randn(b, h, n, d)
    p_off = torch.rand(b, h, n)
    whole = _ops._row_deltas(dout, v, out_off, p_off)
    monkeypatch.setattr(_ops, "_DELTA_CHUNK_ELEMENTS", 7 * b * h * d)  # 8 chunks, the last partial
    chunked_ = _ops._row_deltas(dout, v, out_off, p_off)
    for a, c in zip(whole, chunked_):
        assert torch.equal(a, c)

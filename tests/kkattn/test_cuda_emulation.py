"""The CUDA kernels, executed without a GPU: the unchanged device code of csrc/kkattn_cuda_kernels.cuh
runs on the host emulator of tests/cuda_emu (one OS thread per CUDA thread, barriers, NaN-poisoned
shared memory, warp-collective shuffles and WMMA with the hardware's alignment rules) behind the
public operator, and is checked like every backend: forward, dk, dv, dσ against the float64 reference
with poisoned outputs, over the CUDA test matrix and the peaked regime.  One ThreadSanitizer build
must report no race, and mutated kernels (a removed __syncwarp, a removed key mask, a swapped factor
in the backward's smoother) must be caught.  The backward's smoother is also run on both sides of its
bound.
"""
import re

import pytest
import torch

import kkattn.backends
from cuda_emulator import EmulatedCUDA, EmulationError, build, compiler
from helpers import Case, backend_fn, check_backend, keys_with_spread, make_inputs, run_with_grads

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler (g++) for the CUDA emulator")
DTYPES = [torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return build("plain", cache=tmp_path_factory.getbasetemp() / "cuda-emu")


@pytest.fixture
def emulated_cuda(emulator, monkeypatch):
    """backend="cuda" runs the emulated kernels on CPU tensors."""
    backend = EmulatedCUDA(emulator)
    monkeypatch.setitem(kkattn.backends._REGISTRY, "cuda", backend)
    return backend


# The GPU matrix of test_cuda_backend.py without its N = 1024 case (minutes under emulation): N not a
# multiple of the 64-token blocks, rectangular grids, prefix tokens, one row / one column, N smaller
# than a block, every σ form, D 32/64/128; and the peaked regime (keys ×1.5, D = 64 and 128).
CASES = [
    Case(2, 3, (8, 8), 32, sigma="float"),
    Case(2, 3, (9, 11), 64, num_prefix_tokens=1, sigma="tensor"),
    Case(1, 2, (5, 13), 32, num_prefix_tokens=3, sigma="none"),
    Case(1, 2, (1, 150), 64, sigma="tensor"),
    Case(1, 1, (97, 1), 32, num_prefix_tokens=2, sigma="float"),
    Case(1, 2, (2, 2), 128, num_prefix_tokens=1, sigma="tensor"),
    Case(1, 2, (9, 11), 64, num_prefix_tokens=1, sigma="tensor", key_scale=1.5),
    Case(1, 2, (9, 11), 128, num_prefix_tokens=1, sigma="tensor", key_scale=1.5),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_emulated_kernels_match_reference(emulated_cuda, case, dtype):
    check_backend(case, "cuda", "cpu", dtype)


def test_emulated_far_tiles_and_saturated_rows(emulated_cuda):
    # σ = 0.5 on a 16×16 grid: most 64-token tile pairs lie beyond 5.8σ and skip the prior (not with dσ).
    check_backend(Case(1, 2, (16, 16), 64, sigma="tensor"), "cuda", "cpu", torch.float16,
                  inputs=(*make_inputs(Case(1, 2, (16, 16), 64, sigma="tensor"), torch.float16)[:3],
                          torch.tensor([0.5, 0.3], dtype=torch.float64)))
    # Saturated rows: exactly one-hot, so dV = dO and dK = 0.
    case = Case(1, 2, (5, 6), 64, num_prefix_tokens=1, sigma="tensor", key_scale=1e3)
    k, v, dout, sigma = make_inputs(case, torch.bfloat16)
    _, dk, dv, _ = run_with_grads(backend_fn(case, "cuda"), k, v, dout, sigma)
    assert torch.equal(dv, dout.double()) and dk.abs().max().item() == 0.0


@pytest.mark.parametrize("spread", [1.0, 46.0, 52.0, 150.0])
def test_emulated_smoother_both_sides_of_its_bound(emulated_cuda, spread):
    # The backward takes one exp for P_iJ and P_Jiᵀ where a tile pair's shifts c span at most 48
    # (smoother_factors), else two: keys whose c spread over exactly Δ, from spread rows to one-hot
    # ones (kkattn/_smoother.py), so that at 52 some tile pairs take each path.
    case = Case(1, 2, (9, 11), 64, num_prefix_tokens=1, sigma="tensor")
    k = keys_with_spread(case, spread, low=2.0, dtype=torch.bfloat16)
    v, dout = torch.randn(k.shape).to(torch.bfloat16), torch.randn(k.shape).to(torch.bfloat16)
    check_backend(case, "cuda", "cpu", torch.bfloat16, inputs=(k, v, dout, torch.rand(2, dtype=torch.float64) + 0.5))


def test_emulated_strided_inputs_and_determinism(emulated_cuda):
    case = Case(1, 2, (9, 11), 64, num_prefix_tokens=1, sigma="float")
    shape = (case.batch, case.n_tokens, case.heads, case.head_dim)
    k = torch.randn(shape, dtype=torch.float16).transpose(1, 2)
    v = torch.randn(shape, dtype=torch.float16).transpose(1, 2)
    dout = torch.randn(case.batch, case.heads, case.n_tokens, 2 * case.head_dim, dtype=torch.float16)[..., ::2]
    check_backend(case, "cuda", "cpu", torch.float16, inputs=(k, v, dout, 2.0))
    first = run_with_grads(backend_fn(case, "cuda"), k, v, dout, 2.0)
    again = run_with_grads(backend_fn(case, "cuda"), k, v, dout, 2.0)
    assert all(a is b is None or torch.equal(a, b) for a, b in zip(first, again))


# ------------------------------------------------------------------------------ races and mutations
_TSAN_CASE = Case(1, 1, (9, 9), 32, num_prefix_tokens=1, sigma="tensor")  # N = 82: two blocks, a partial one


def test_thread_sanitizer_finds_no_race(tmp_path_factory, monkeypatch):
    binary = build("tsan", cache=tmp_path_factory.getbasetemp() / "cuda-emu")
    backend = EmulatedCUDA(binary, concurrent_blocks=1)
    monkeypatch.setitem(kkattn.backends._REGISTRY, "cuda", backend)
    check_backend(_TSAN_CASE, "cuda", "cpu", torch.bfloat16)  # raises EmulationError on any TSan report
    assert "ThreadSanitizer" not in backend.stderr


MUTATIONS = {
    # The forward's rescale of sO reads sAlpha written by lane pairs of the same warp.
    "removed __syncwarp": ("    __syncwarp();\n    for (int e = lane; e < 16 * D; e += 32) sO",
                           "    for (int e = lane; e < 16 * D; e += 32) sO"),
    # Keys past N must get a −∞ logit; without the mask, the zero-padded rows of the last tile attend.
    # The smoother's P_iJ takes the row factor fi[r], not P_Jiᵀ's fi[kBM + r].
    "swapped smoother factor": ("p = e_ij * (sFi[r] * sFJ[c]);", "p = e_ij * (sFi[kBM + r] * sFJ[c]);"),
    "removed key mask": ("      if (j < N) {\n        s = s_row[c] * scale;", "      if (true) {\n        s = s_row[c] * scale;"),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_mutated_kernels_are_caught(mutation, tmp_path, tmp_path_factory, monkeypatch):
    before, after = MUTATIONS[mutation]
    source = (build.__globals__["CSRC"] / "kkattn_cuda_kernels.cuh").read_text()
    assert source.count(before) == 1, f"mutation {mutation!r} no longer applies: update MUTATIONS"
    mutated = tmp_path / "kkattn_cuda_kernels.cuh"
    mutated.write_text(source.replace(before, after))
    variant = "tsan" if "sync" in mutation else "plain"
    binary = build(variant, kernels=mutated, cache=tmp_path_factory.getbasetemp() / "cuda-emu")
    monkeypatch.setitem(kkattn.backends._REGISTRY, "cuda", EmulatedCUDA(binary, concurrent_blocks=1))
    with pytest.raises((EmulationError, AssertionError), match=re.compile("race|relative error|ThreadSanitizer", re.I)):
        check_backend(_TSAN_CASE, "cuda", "cpu", torch.bfloat16)

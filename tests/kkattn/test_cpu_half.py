"""The C++ kernel's two ways with fp16/bf16 inputs, both on every run: "native" (the forward's tile products in
the input dtype through ATen's brgemm, fp32 accumulation; where the CPU's brgemm packs the dtype: AMX or
AVX-512-BF16/FP16) and "upcast" (fp32, forced by KKATTN_CPU_HALF=upcast, and what a CPU without a
half-precision brgemm runs). Each is judged by the suite's rule against the float64 oracle and PyTorch's own
same-dtype materialized autograd, in the peaked regime too, with odd sizes (partial tiles, prefix tokens)."""
import pytest
import torch

import kkattn
from kkattn.backends import cpu

from helpers import Case, check_backend

pytestmark = pytest.mark.skipif(not kkattn.available_backends()["cpu"].available, reason="no compiled CPU kernel")

CASES = [
    Case(1, 2, (9, 11), 64, num_prefix_tokens=1, sigma="tensor", key_scale=1.5),   # peaked, N = 100
    Case(1, 2, (9, 11), 128, num_prefix_tokens=1, sigma="tensor", key_scale=1.5),  # peaked, D = 128
    Case(2, 3, (13, 21), 64, sigma="float"),                                       # N = 273: pairs schedule, strips
    Case(1, 1, (1, 300), 64, num_prefix_tokens=2, sigma="none", key_scale=0.3),    # one row, no prior, spread rows
]


def path_or_skip(mode, dtype, head_dim, monkeypatch):
    monkeypatch.setenv("KKATTN_CPU_HALF", mode)
    path = cpu.half_precision_path(dtype, head_dim)
    if mode == "native" and path != "native":
        pytest.skip(f"this CPU's brgemm does not pack {dtype} (the upcast path covers it)")
    assert path == mode
    return path


@pytest.mark.parametrize("mode", ["native", "upcast"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_half_precision_path_matches_the_oracle(mode, dtype, case, monkeypatch):
    path_or_skip(mode, dtype, case.head_dim, monkeypatch)
    check_backend(case, "cpu", "cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_generic_vector_code_matches_the_oracle(dtype, case, monkeypatch):
    """KKATTN_CPU_ISA=generic: the smoother's one-pass epilogue in portable vectors, what CPUs without AVX-512-BF16
    run (elsewhere the tests take the AVX-512 code where the CPU has it)."""
    monkeypatch.setenv("KKATTN_CPU_ISA", "generic")
    if dtype != torch.float32:
        path_or_skip("native", dtype, case.head_dim, monkeypatch)
    check_backend(case, "cpu", "cpu", dtype)


@pytest.mark.parametrize("isa", ["auto", "generic"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_the_native_forward_accumulates_in_fp32(dtype, isa, monkeypatch):
    """Nearly uniform rows over V = 1 (exact in every dtype): O = 1 exactly. The weights' own rounding averages
    out over the row (~eps/√N), but a running sum rounded to the dtype even once per tile is off by ~eps, so
    the fp32 accumulators (before the output's rounding) must stay within a twentieth of eps."""
    monkeypatch.setenv("KKATTN_CPU_ISA", isa)
    path_or_skip("native", dtype, 64, monkeypatch)
    k = (torch.randn(1, 4, 1024, 64) * 0.1).to(dtype)
    out32, *_ = cpu.forward(k, torch.ones_like(k), torch.full((4,), 2.0), 32, 0, 64 ** -0.5, False)
    err = (out32 - 1).abs().max().item()
    assert err < 0.05 * torch.finfo(dtype).eps, err


def test_paths_are_reported():
    assert cpu.half_precision_path(torch.float32, 64) == "fp32"
    assert cpu.half_precision_path(torch.bfloat16, 24) == "upcast"  # the native path takes D = 16, 32, 48, ...
    detail = str(kkattn.available_backends()["cpu"])
    assert "half precision: bf16 " in detail and "fp16 " in detail
    assert cpu.vector_isa() in ("avx512-bf16", "generic") and f"vector code: {cpu.vector_isa()}" in detail

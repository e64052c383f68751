"""A missing compiled kernel cannot go unnoticed: the build stops with the fix, and an install without
the kernel warns once on first use and says how to rebuild."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import kkattn
from kkattn import backends
from kkattn.backends import cpu

ROOT = Path(__file__).resolve().parents[2]


def test_build_without_torch_stops_naming_the_fix():
    """What a plain ``pip install .`` does: build isolation hides torch from setup.py."""
    code = "import runpy, sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--name']; runpy.run_path('setup.py')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--no-build-isolation" in lines[0]
    assert "KKATTN_BUILD_EXT=0" in lines[0]


@pytest.fixture
def without_extension(monkeypatch):
    """This process, as if kkattn had been installed without its compiled kernel."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kkattn._C" else real(name, *a))
    monkeypatch.setattr(cpu, "_loaded", False)
    monkeypatch.setattr(cpu, "_load_error", None)
    monkeypatch.setattr(backends, "_warned_fallback", set())


def test_missing_kernel_warns_once_and_says_how_to_rebuild(without_extension):
    status = kkattn.available_backends()["cpu"]
    assert not status.available and "--no-build-isolation" in status.detail
    k, v = torch.randn(1, 2, 12, 16), torch.randn(1, 2, 12, 16)
    with pytest.warns(kkattn.KernelNotBuiltWarning, match="no-build-isolation") as record:
        out = kkattn.neighborhood_kk_attention(k, v, 2.0, grid=(3, 4))
    assert len(record) == 1
    torch.testing.assert_close(out, kkattn.reference.neighborhood_kk_attention(k, v, 2.0, grid=(3, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        kkattn.neighborhood_kk_attention(k, v, 2.0, grid=(3, 4))
    with pytest.raises(ValueError, match="no-build-isolation"):
        kkattn.neighborhood_kk_attention(k, v, 2.0, grid=(3, 4), backend="cpu")


def test_no_warning_when_the_kernel_would_not_take_the_inputs(without_extension):
    """float64 goes to 'chunked' anyway (the C++ kernel does not take it): nothing to warn about."""
    k = torch.randn(1, 2, 12, 16, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kkattn.neighborhood_kk_attention(k, k, 2.0, grid=(3, 4))


def test_no_warning_with_the_kernel_built():
    if not kkattn.available_backends()["cpu"].available:
        pytest.skip("this install has no compiled CPU kernel")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kkattn.neighborhood_kk_attention(torch.randn(1, 2, 12, 16), torch.randn(1, 2, 12, 16), 2.0, grid=(3, 4))


@pytest.mark.parametrize("env,builds_cuda", [({}, False), ({"TORCH_CUDA_ARCH_LIST": "9.0"}, True),
                                             ({"KKATTN_BUILD_CUDA": "1"}, True)])
def test_the_cuda_kernels_are_built_only_when_asked_or_a_gpu_is_visible(env, builds_cuda):
    """A CPU-only install skips the CUDA kernels (most of the build) and says so in one line with the fix."""
    if torch.version.cuda is None or not (Path("/usr/local/cuda/bin/nvcc").exists() or shutil.which("nvcc")):
        pytest.skip("needs a CUDA torch and nvcc, as the decision is only asked then")
    base = {k: v for k, v in os.environ.items() if k not in ("KKATTN_BUILD_CUDA", "TORCH_CUDA_ARCH_LIST")}
    result = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**base, "CUDA_VISIBLE_DEVICES": "", **env})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("kkattn: building")]
    assert len(lines) == 1, result.stderr
    if builds_cuda:
        assert "CPU and CUDA kernels" in lines[0]
    else:
        assert "CPU kernel only" in lines[0] and "KKATTN_BUILD_CUDA=1" in lines[0]

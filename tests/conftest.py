"""Test configuration: Triton runs in its interpreter on CPU tensors when there is no GPU.

TRITON_INTERPRET must be set before kkattn's Triton kernels are first imported (triton picks the
interpreter when the kernels are decorated), so it is set here, before any test module loads.
"""
import os

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Where the Triton backend runs: the GPU when there is one, else CPU tensors in the interpreter.
TRITON_DEVICE = "cuda" if HAS_GPU else "cpu"


def backend_targets():
    """``(params, ids)`` for ``@pytest.mark.parametrize("backend,device", ...)``: every backend the shared
    matrix runs here — chunked, triton (GPU or interpreter) and the compiled CPU kernel when this install
    has it (a pure-Python install skips its cases rather than pretending)."""
    import kkattn

    cpu_kernel = kkattn.available_backends()["cpu"]
    params = [("chunked", "cpu"), ("triton", TRITON_DEVICE),
              pytest.param("cpu", "cpu", marks=pytest.mark.skipif(not cpu_kernel.available, reason=str(cpu_kernel)))]
    return params, ["chunked", "triton", "cpu"]


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on a lent GPU machine)")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

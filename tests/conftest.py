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
    """``(params, ids)`` for ``@pytest.mark.parametrize("backend,device", ...)``: every backend of the
    registry, on the device it runs on here (triton: the GPU or the interpreter); one this install
    cannot run (no compiled kernel, no GPU) is skipped with its reason rather than pretending."""
    import kkattn
    from kkattn.backends import _REGISTRY

    status = kkattn.available_backends()
    params, ids = [], []
    for name, record in _REGISTRY.items():
        device = TRITON_DEVICE if name == "triton" else record.devices[0]
        params.append(pytest.param(name, device, marks=pytest.mark.skipif(not status[name].available,
                                                                          reason=str(status[name]))))
        ids.append(name)
    return params, ids


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on a lent GPU machine)")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

"""What this process and its GPUs can run, asked once: the Triton interpreter, GPU shared memory.

Below the registry (``kkattn.backends``) and the launchers that use it (``triton_launch``, ``cuda``),
so every backend module imports downward only.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import torch

# Opt-in shared memory per thread block, bytes, by CUDA compute capability: the budgets the GPU kernels'
# tiles are planned for (A100, RTX 30xx, RTX 40xx, H100/H200).  At run time the device's own limit is
# asked; tests/kkattn/test_triton_aot.py compiles every Triton variant for each of these and checks it fits.
SHARED_MEMORY_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def interpreting() -> bool:
    """Whether Triton code runs in the interpreter in this process.

    Triton fixes the mode when a ``@triton.jit`` function is decorated, and importing torch's
    flop counter (which kkattn does) already imports ``triton.language``: so once that is loaded,
    its decorated functions say the truth, whatever the environment says now.
    """
    lang = sys.modules.get("triton.language")
    if lang is not None and hasattr(lang, "zeros"):
        return type(lang.zeros).__name__ == "InterpretedFunction"
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@torch.compiler.assume_constant_result
def interpreting_const() -> bool:
    # torch.compile evaluates this once while tracing instead of tracing sys.modules.
    return interpreting()


def interpreter_set_too_late() -> bool:
    """TRITON_INTERPRET=1 is set, but only after triton's functions were decorated for the GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and not interpreting()


@torch.compiler.assume_constant_result
def gpu_shared_memory(device_index: Optional[int]) -> int:
    """Opt-in shared memory per block of a CUDA device (None: the current one), bytes."""
    index = torch.cuda.current_device() if device_index is None else device_index
    return int(torch.cuda.get_device_properties(index).shared_memory_per_block_optin)

"""Helpers for checking kernels: poisoned outputs and an allocation tracker."""
from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import _alloc


@contextlib.contextmanager
def poisoned_outputs():
    """Within this block every kernel output buffer starts NaN-filled (an unwritten element shows)."""
    _alloc._poison_depth += 1
    try:
        yield
    finally:
        _alloc._poison_depth -= 1


class AllocationTracker(TorchDispatchMode):
    """Records the tensors PyTorch ops create while active.

    ``max_numel``/``max_bytes`` describe the largest single tensor; ``peak_bytes`` the most bytes held at once by
    tensors created inside the block (views and in-place results are not counted twice).  It sees
    the ops a Python function runs, not those inside a compiled kernel or a custom op's body —
    call a backend's functions directly to look inside them.
    """

    def __init__(self):
        super().__init__()
        self.max_numel = 0
        self.max_bytes = 0
        self.live_bytes = 0
        self.peak_bytes = 0
        self._seen: set[int] = set()

    def _track(self, t: torch.Tensor) -> None:
        if t._is_view():
            return
        ptr = t.untyped_storage().data_ptr()
        if ptr in self._seen or ptr == 0:
            return
        nbytes = t.untyped_storage().nbytes()
        self._seen.add(ptr)
        self.max_numel = max(self.max_numel, t.numel())
        self.max_bytes = max(self.max_bytes, nbytes)
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(t, self._release, ptr, nbytes)

    def _release(self, ptr: int, nbytes: int) -> None:
        if ptr in self._seen:
            self._seen.discard(ptr)
            self.live_bytes -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

"""Backend registry: what each backend can run, why not, and which one ``backend="auto"`` picks.

Each backend exposes ``status()`` (can this install run it at all), ``check(k)`` (can it take these
inputs — ``check(device_type, dtype, head_dim)`` raises a clear error otherwise) and ``forward``/``backward`` with one signature:

* ``forward(k, v, sigma, grid_w, num_prefix_tokens, scale) -> (out, lse)``
* ``backward(dout, k, v, out, lse, sigma, grid_w, num_prefix_tokens, scale, need_dsigma) -> (dk, dv, dsigma)``

with ``sigma`` the ``(H,)`` per-head σ tensor or ``None`` (no prior).  ``dsigma`` is the per-head
``Σ_ij dS·G·d²`` (= dσ·σ³): the autograd formula in ``_ops.py`` divides by σ³ once for every backend.  ``"reference"`` is not in
this registry: it is plain autograd and is called directly by the public operator.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from . import _probes, chunked
from ._probes import SHARED_MEMORY_PER_BLOCK  # noqa: F401  (re-exported: the budgets, for tests/triton_aot.py)

# What backend="auto" tries, in order, per device type: the one place this order is written (the
# benchmarks and the tests' backend matrix read it).
AUTO_ORDER = {"cuda": ("cuda", "triton", "chunked"), "cpu": ("cpu", "chunked")}


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run on this install, and why (not)."""

    name: str
    available: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


class _Backend:
    """One backend: its limits (dtypes, head dims, devices) as data, checked in one place.

    ``accepts`` and ``check`` are plain comparisons, so ``torch.compile`` traces them (a symbolic
    head dim only adds a guard); everything that imports or probes the install goes through
    :func:`_unavailable_reason`, which ``torch.compile`` evaluates once as a constant.
    """

    name = ""
    dtypes: tuple = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    head_dims: Optional[tuple] = None  # None: any
    devices: tuple = ("cpu", "cuda")

    def status(self) -> BackendStatus:
        raise NotImplementedError

    def report(self) -> BackendStatus:
        """What :func:`available_backends` shows: the status, with details dispatch does not need."""
        return self.status()

    def declares(self, device_type: str, dtype: torch.dtype, head_dim) -> bool:
        """Whether inputs are within the declared limits (device, dtype, head dim), whatever this install has."""
        return (device_type in self.devices and dtype in self.dtypes
                and (self.head_dims is None or head_dim in self.head_dims))

    def accepts(self, device_type: str, dtype: torch.dtype, head_dim, device_index: Optional[int] = None) -> bool:
        return self.declares(device_type, dtype, head_dim)

    def check(self, device_type: str, dtype: torch.dtype, head_dim, device_index: Optional[int] = None) -> None:
        """Raise a ValueError/TypeError naming what these inputs break."""
        if device_type not in self.devices:
            raise ValueError(f"backend '{self.name}' takes {' or '.join(d.upper() for d in self.devices)} tensors, "
                             f"got a {device_type} tensor")
        if dtype not in self.dtypes:
            names = [str(d).replace("torch.", "") for d in self.dtypes]
            names = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
            raise TypeError(f"backend '{self.name}' takes {names} k/v, got {dtype}{self.dtype_hint}")
        if self.head_dims is not None and head_dim not in self.head_dims:
            raise ValueError(f"backend '{self.name}' takes head dims {self.head_dims}, got D = {head_dim}")

    dtype_hint = ""


class _Chunked(_Backend):
    name = "chunked"
    forward = staticmethod(chunked.forward)
    backward = staticmethod(chunked.backward)

    def status(self) -> BackendStatus:
        return BackendStatus(self.name, True, "available (plain PyTorch, any device, O(block·N) memory)")

    def accepts(self, device_type: str, dtype: torch.dtype, head_dim, device_index: Optional[int] = None) -> bool:
        return True

    def check(self, device_type: str, dtype: torch.dtype, head_dim, device_index: Optional[int] = None) -> None:
        pass


class _Deferred(_Backend):
    """A backend whose kernels live in a submodule imported on first use (triton, the extension)."""

    module = ""

    def _impl(self):
        return importlib.import_module(f"{__name__}.{self.module}")

    def forward(self, *args):
        return self._impl().forward(*args)

    def backward(self, *args):
        return self._impl().backward(*args)


class _Triton(_Deferred):
    name = "triton"
    module = "triton_launch"  # imports triton and decorates the kernels
    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    head_dims = (16, 32, 64, 128)  # tl.arange needs a power of two; tl.dot needs >= 16

    def status(self) -> BackendStatus:
        if importlib.util.find_spec("triton") is None:
            return BackendStatus(self.name, False, "not installed (pip install triton)")
        if torch.cuda.is_available():
            return BackendStatus(self.name, True, "available (GPU)")
        if _probes.interpreting():
            return BackendStatus(self.name, True, "available (TRITON_INTERPRET=1: CPU tensors, slow)")
        if _probes.interpreter_set_too_late():
            return BackendStatus(self.name, False, "no GPU, and TRITON_INTERPRET=1 was set after triton was "
                                 "imported — set it before importing kkattn")
        return BackendStatus(self.name, False, "no GPU — set TRITON_INTERPRET=1 to run it on CPU tensors")

    # The smallest per-block shared memory its tiles are planned and checked for (sm_86/89).
    min_shared_memory = SHARED_MEMORY_PER_BLOCK[86]

    def accepts(self, device_type: str, dtype: torch.dtype, head_dim, device_index: Optional[int] = None) -> bool:
        return (super().accepts(device_type, dtype, head_dim) and (device_type == "cpu") == _probes.interpreting_const()
                and (device_type != "cuda" or _probes.gpu_shared_memory(device_index) >= self.min_shared_memory))

    def check(self, device_type: str, dtype: torch.dtype, head_dim, device_index: Optional[int] = None) -> None:
        if device_type not in self.devices:
            raise ValueError(f"backend 'triton' takes CUDA tensors (or CPU under TRITON_INTERPRET=1), "
                             f"got a {device_type} tensor")
        super().check(device_type, dtype, head_dim)
        if device_type == "cpu" and not _probes.interpreting_const():
            raise ValueError("backend 'triton' got CPU tensors without TRITON_INTERPRET=1 "
                             "(set it before importing kkattn)")
        if device_type == "cuda" and _probes.interpreting_const():
            raise ValueError("backend 'triton' runs in the interpreter (TRITON_INTERPRET=1), which takes "
                             "CPU tensors; unset it to run on the GPU")
        if device_type == "cuda" and _probes.gpu_shared_memory(device_index) < self.min_shared_memory:
            raise ValueError(f"backend 'triton' plans its tiles for at least {self.min_shared_memory // 1024} KB of "
                             f"shared memory per block; this GPU allows {_probes.gpu_shared_memory(device_index) // 1024} KB")


class _CompiledCPU(_Deferred):
    """The fused C++ kernel of ``kkattn._C`` (csrc/kkattn_cpu.cpp) for CPU tensors."""

    name = "cpu"
    module = "cpu"
    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    devices = ("cpu",)

    def status(self) -> BackendStatus:
        error = self._impl().load()
        if error:
            return BackendStatus(self.name, False, error)
        return BackendStatus(self.name, True, f"available (compiled C++, {torch.get_num_threads()} threads)")

    def report(self) -> BackendStatus:
        status = self.status()
        if not status.available:
            return status
        def half(name, dtype):
            path = self._impl().half_precision_path(dtype, 64)
            why = ("its tile products through ATen's brgemm" if path == "native" else
                   "KKATTN_CPU_HALF=upcast" if os.environ.get("KKATTN_CPU_HALF") == "upcast" else
                   f"this CPU's brgemm does not pack {name}: computed in fp32")
            return f"{name} {path} ({why})"

        halves = ", ".join(half(name, dt) for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)))
        isa = self._impl().vector_isa()
        return BackendStatus(self.name, True, f"{status.detail}; half precision: {halves}; vector code: {isa}")


class _CompiledCUDA(_Deferred):
    """The tensor-core kernels of ``kkattn._C`` (csrc/kkattn_cuda.cu) for fp16/bf16 CUDA tensors."""

    name = "cuda"
    module = "cuda"
    dtypes = (torch.float16, torch.bfloat16)
    head_dims = (32, 64, 128)  # the kernels are instantiated for these (csrc/kkattn_cuda.cu: dispatch)
    devices = ("cuda",)
    dtype_hint = " (float32: use backend='triton', which runs it in IEEE fp32 or TF32)"

    def status(self) -> BackendStatus:
        impl = self._impl()
        error = impl.load()
        if error:
            return BackendStatus(self.name, False, error)
        if not impl.compiled():
            return BackendStatus(self.name, False, "not compiled (this install's kkattn._C has no CUDA kernels: "
                                 "rebuild with nvcc, a CUDA-enabled torch and KKATTN_BUILD_CUDA=1)")
        if not torch.cuda.is_available():
            return BackendStatus(self.name, False, "compiled, no GPU")
        return BackendStatus(self.name, True, f"available (compiled CUDA, {torch.cuda.get_device_name()})")

    def report(self) -> BackendStatus:
        # Which head dims fit the current GPU's shared memory: for the user, not for each dispatch.
        status = self.status()
        if not status.available:
            return status
        index = torch.cuda.current_device()
        fit = [d for d in self.head_dims if not _cuda_misfit(d, index)]
        limit = self._impl().device_limit(index) // 1024
        if len(fit) == len(self.head_dims):
            where = f"head dims {', '.join(map(str, fit))} fit its {limit} KB of shared memory per block"
        else:
            rest = [d for d in self.head_dims if d not in fit]
            where = (f"head dims {', '.join(map(str, fit)) or 'none'} fit its {limit} KB of shared memory per block; "
                     f"{', '.join(map(str, rest))} need more and go to triton")
        return BackendStatus(self.name, True, f"available (compiled CUDA, {torch.cuda.get_device_name(index)}; {where})")

    def _misfit(self, head_dim, device_index: Optional[int]) -> str:
        for d in self.head_dims:  # compare first: a symbolic head dim (torch.compile) becomes a constant
            if head_dim == d:
                return _cuda_misfit(d, -1 if device_index is None else device_index)
        return ""

    def accepts(self, device_type: str, dtype: torch.dtype, head_dim, device_index: Optional[int] = None) -> bool:
        return super().accepts(device_type, dtype, head_dim) and not self._misfit(head_dim, device_index)

    def check(self, device_type: str, dtype: torch.dtype, head_dim, device_index: Optional[int] = None) -> None:
        super().check(device_type, dtype, head_dim)
        reason = self._misfit(head_dim, device_index)
        if reason:
            raise ValueError(f"backend 'cuda' cannot run head dim {head_dim} on this GPU: {reason}")


_REGISTRY = {b.name: b for b in (_Chunked(), _Triton(), _CompiledCPU(), _CompiledCUDA())}
# Every name backend= takes: "auto", the plain-autograd "reference", and the registry's backends.
BACKEND_NAMES = ("auto", "reference", *_REGISTRY)


@torch.compiler.assume_constant_result
def _unavailable_reason(name: str) -> str:
    """Why backend ``name`` cannot run on this install ("" when it can); a constant under torch.compile."""
    status = _REGISTRY[name].status()
    return "" if status.available else status.detail


@torch.compiler.assume_constant_result
def _cuda_misfit(head_dim: int, device_index: int) -> str:
    """Why the CUDA kernels for ``head_dim`` do not fit the shared memory of GPU ``device_index`` ("" if
    they do; -1: the current GPU), from the kernels' own sizes and the device's opt-in limit per block."""
    impl = _REGISTRY["cuda"]._impl()
    forward, backward = impl.shared_memory(head_dim)
    limit = impl.device_limit(None if device_index < 0 else device_index)
    if max(forward, backward) <= limit:
        return ""
    return (f"its kernels need {forward / 1024:.1f} KB (forward) and {backward / 1024:.1f} KB (backward) of shared "
            f"memory per block, the GPU allows {limit / 1024:.1f} KB")




def get_backend(name: str):
    return _REGISTRY[name]


def available_backends() -> dict[str, BackendStatus]:
    """What this install can run, and why not: ``{name: BackendStatus}``.

    ``str(status)`` reads like ``"triton: no GPU — set TRITON_INTERPRET=1 to run it on CPU tensors"``.
    """
    out = {"reference": BackendStatus("reference", True, "available (materialized PyTorch, O(N²) memory)")}
    out.update({name: b.report() for name, b in _REGISTRY.items()})
    return out


def _auto_choice(device_type: str, dtype: torch.dtype, head_dim, device_index: Optional[int] = None) -> str:
    """The first backend of the device's auto order that is available and takes these inputs.

    Falling back to ``chunked`` because this install lacks a kernel that would take the inputs (a
    ``pip install`` that skipped the build, no triton) warns once per device type, naming the fix.
    """
    order = AUTO_ORDER.get(device_type, ("chunked",))
    for name in order:
        if name == "chunked":
            break
        if not _unavailable_reason(name) and _REGISTRY[name].accepts(device_type, dtype, head_dim, device_index):
            return name
    missing = [f"{name}: {_unavailable_reason(name)}" for name in order
               if name != "chunked" and _unavailable_reason(name) and _REGISTRY[name].declares(device_type, dtype, head_dim)]
    if missing:
        _warn_slow_fallback(device_type, "; ".join(missing))
    return "chunked"


class KernelNotBuiltWarning(UserWarning):
    """``backend="auto"`` runs the slow ``chunked`` fallback because this install lacks a compiled kernel."""


_warned_fallback: set = set()


@torch.compiler.assume_constant_result
def _warn_slow_fallback(device_type: str, why: str) -> bool:
    # Once per device type and process (under torch.compile: once, while tracing).
    if device_type not in _warned_fallback:
        _warned_fallback.add(device_type)
        warnings.warn(f"kkattn: backend='auto' runs the 'chunked' fallback on {device_type} tensors, several times "
                      f"slower than the fused kernel this install lacks ({why}). kkattn.available_backends() lists "
                      "what runs.", KernelNotBuiltWarning, stacklevel=2)
    return True


def resolve(name: str, k: Tensor) -> str:
    """The backend that will run ``k``; raises ValueError/TypeError when ``name`` cannot.

    Traceable by ``torch.compile`` (also with ``dynamic=True``): no imports or probes on its path.
    """
    if not isinstance(name, str) or name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    if name == "auto":
        return _auto_choice(k.device.type, k.dtype, k.shape[-1], k.device.index)
    if name == "reference":
        return name
    reason = _unavailable_reason(name)
    if reason:
        raise ValueError(f"backend '{name}' is not available: {reason}")
    _REGISTRY[name].check(k.device.type, k.dtype, k.shape[-1], k.device.index)
    return name

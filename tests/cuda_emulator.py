"""Drive the host emulation of the CUDA kernels (tests/cuda_emu) as a kkattn backend.

:func:`build` compiles ``tests/cuda_emu/emulate.cpp`` — the shim plus the unchanged device code of
``csrc/kkattn_cuda_kernels.cuh`` — with g++ (plain, or with ThreadSanitizer), cached by the hash of
its sources.  :class:`EmulatedCUDA` is the ``cuda`` backend record with the emulator in place of the
GPU: it takes CPU tensors and runs the kernels as ``csrc/kkattn_cuda.cu`` launches them, so the
public operator, its autograd and the tests' helpers exercise the device code end to end.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from kkattn.backends import BackendStatus, _CompiledCUDA

HERE = Path(__file__).resolve().parent / "cuda_emu"
CSRC = Path(__file__).resolve().parent.parent / "csrc"
_FLAGS = {
    "plain": ["-O2"],
    "tsan": ["-O1", "-g", "-fsanitize=thread"],
}


def compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "g++"))


def build(variant: str = "plain", kernels: Optional[Path] = None, cache: Optional[Path] = None) -> Path:
    """Compile the emulator; ``kernels`` replaces csrc/kkattn_cuda_kernels.cuh (a mutated copy)."""
    kernel_dir = (kernels.parent if kernels else CSRC)
    sources = [HERE / "cuda_shim.h", HERE / "emulate.cpp", CSRC / "kkattn_math.h",
               kernel_dir / "kkattn_cuda_kernels.cuh"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + variant.encode()).hexdigest()[:16]
    cache = cache or Path(tempfile.gettempdir()) / "kkattn-cuda-emu"
    binary = cache / f"emulate-{variant}-{digest}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    cmd = [compiler(), "-std=c++20", "-fno-strict-aliasing", "-pthread", *_FLAGS[variant],
           f"-I{HERE}", f"-I{kernel_dir}", f"-I{CSRC}", str(HERE / "emulate.cpp"), "-o", str(tmp)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    os.replace(tmp, binary)
    return binary


_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


class EmulationError(RuntimeError):
    """The emulated kernels broke a CUDA rule, or ThreadSanitizer reported a race."""


class EmulatedCUDA(_CompiledCUDA):
    """The ``cuda`` backend with the host emulator as its device: CPU tensors in and out."""

    devices = ("cpu",)

    def __init__(self, binary: Path, concurrent_blocks: int = 2):
        self.binary, self.concurrent = binary, concurrent_blocks
        self.stderr = ""  # the last run's, e.g. ThreadSanitizer's report

    def status(self) -> BackendStatus:
        return BackendStatus(self.name, True, "available (host emulation of the CUDA kernels)")

    report = status  # no GPU to describe

    def _misfit(self, head_dim, device_index) -> str:
        return ""  # the emulator's shared memory is host memory: no per-block limit to check

    def _run(self, mode: str, k: torch.Tensor, scale: float, grid_w: int, prefix: int, sigma, flag: bool,
             inputs: dict, outputs: dict) -> dict:
        batch, heads, n, dim = k.shape
        with tempfile.TemporaryDirectory() as tmp:
            for name, t in inputs.items():
                t = t.detach().contiguous()
                (t.view(torch.int16) if t.dtype in _DTYPES else t.float()).numpy().tofile(f"{tmp}/{name}")
            if sigma is not None:
                sigma.detach().float().contiguous().numpy().tofile(f"{tmp}/sigma")
            cmd = [str(self.binary), mode, _DTYPES[k.dtype], *map(str, (batch, heads, n, dim, grid_w, prefix)),
                   repr(float(scale)), str(int(sigma is not None)), str(int(flag)), str(self.concurrent), tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            self.stderr = proc.stderr
            if proc.returncode != 0 or "WARNING: ThreadSanitizer" in proc.stderr:
                raise EmulationError(f"emulated {mode} failed ({proc.returncode}): {proc.stderr[-3000:]}")
            result = {}
            for name, (shape, dtype) in outputs.items():
                raw = np.fromfile(f"{tmp}/{name}", dtype=np.int16 if dtype in _DTYPES else np.float32)
                t = torch.from_numpy(raw.copy()).reshape(shape)
                result[name] = t.view(dtype) if dtype in _DTYPES else t
            return result

    def forward(self, k, v, sigma, grid_w, num_prefix_tokens, scale, with_stats):
        b, h, n, _ = k.shape
        outputs = {"out": (k.shape, k.dtype), "lse": ((b, h, n), torch.float32)}
        if with_stats:
            outputs.update(out_off=(k.shape, torch.float32), p_off=((b, h, n), torch.float32))
        r = self._run("forward", k, scale, grid_w, num_prefix_tokens, sigma, with_stats, {"k": k, "v": v}, outputs)
        return r["out"], r["lse"], r.get("out_off"), r.get("p_off")

    def backward(self, dout, k, v, lse, delta, delta_diag, p_diag, sigma, grid_w, num_prefix_tokens, scale,
                 need_dsigma):
        b, h, n, _ = k.shape
        inputs = {"k": k, "v": v, "dout": dout.to(k.dtype), "lse": lse, "delta": delta, "delta_diag": delta_diag,
                  "p_diag": p_diag}
        outputs = {"dk": (k.shape, k.dtype), "dv": (k.shape, k.dtype), "dsigma_part": ((b, h, -1), torch.float32)}
        r = self._run("backward", k, scale, grid_w, num_prefix_tokens, sigma, need_dsigma, inputs, outputs)
        dsigma = r["dsigma_part"].double().sum((0, 2)).float()  # the host code's fixed-order reduction
        dk = r["dk"] if k.is_contiguous() else torch.empty_like(k).copy_(r["dk"])
        dv = r["dv"] if v.is_contiguous() else torch.empty_like(v).copy_(r["dv"])
        return dk, dv, dsigma

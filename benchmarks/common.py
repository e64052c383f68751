"""What both benchmarks share: the machine's description, timing, peak memory, result files, plots."""
from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """CPU model and threads, or GPU name and driver, plus library versions."""
    info = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == (platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info["cpu"] = f"{cpu} ({os.cpu_count()} logical cores)"
    # The ISA the half-precision kernels can use (AMX tiles, AVX-512 BF16/FP16), and what kkattn-cpu chose.
    info["cpu_isa"] = [f for f in ISA_FLAGS if f in flags]
    try:
        from kkattn.backends import cpu as kkattn_cpu

        if kkattn_cpu.load() is None:
            info["kkattn_cpu_half"] = {str(dt).removeprefix("torch."): kkattn_cpu.half_precision_path(dt, 64)
                                       for dt in (torch.bfloat16, torch.float16)}
            info["kkattn_cpu_vector"] = kkattn_cpu.vector_isa()
    except Exception:  # noqa: BLE001  (a report, not a check)
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception:
            info["driver"] = None
    return info


ISA_FLAGS = ("amx_tile", "amx_bf16", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")


def device_slug(device: str) -> str:
    name = torch.cuda.get_device_name(0) if device == "cuda" else machine()["cpu"].split(" (")[0]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{device}-{slug}" if device == "cpu" else slug


def describe(info: dict) -> str:
    hw = f"{info['gpu']} ({info['gpu_memory_gb']} GB, driver {info.get('driver')}, CUDA {info.get('cuda')})" \
        if "gpu" in info else info["cpu"]
    if "gpu" not in info and info.get("cpu_isa") is not None:
        hw += f", ISA {' '.join(info['cpu_isa']) or 'baseline x86-64'}"
        if info.get("kkattn_cpu_half"):
            hw += ", kkattn-cpu half precision: " + ", ".join(f"{k} {v}" for k, v in info["kkattn_cpu_half"].items())
        if info.get("kkattn_cpu_vector"):
            hw += f", kkattn-cpu vector code: {info['kkattn_cpu_vector']}"
    return f"{hw}; {info['threads']} torch threads; torch {info['torch']}, triton {info['triton']}, Python {info['python']}"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_it(fn: Callable[[], object], device: str, reps: int, warmup: int = 1) -> dict:
    """Median / min / max wall time (ms) of ``fn`` over ``reps`` runs after ``warmup`` runs, device-synchronized."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return {"ms": statistics.median(times), "ms_min": min(times), "ms_max": max(times), "reps": reps}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


class PeakRSS:
    """Peak resident memory above the current one, for a block of CPU work (Linux).

    ``start()`` resets the kernel's high-water mark (``/proc/self/clear_refs``) and records the current
    RSS; ``growth_mb()`` is the high-water mark since then minus that. Without the reset, an earlier peak
    (imports, a previous pass) would hide smaller later ones.
    """

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass  # not Linux, or not allowed: the peak may then include earlier phases
        self.base = _status_mb("VmRSS")

    def growth_mb(self) -> float:
        return max(0.0, _status_mb("VmHWM") - self.base)


def write_text(path: Path, text: str) -> None:
    """Atomic: a partial results file never replaces a complete one."""
    from kkattn._io import atomic_write_text

    atomic_write_text(path, text)


def write_csv(path: Path, rows: list[dict]) -> None:
    import csv
    import io

    keys = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_json(path: Path, data) -> None:
    from kkattn._io import atomic_write_json

    atomic_write_json(path, data)


def ratio_text(mine: float, other: float) -> str:
    r = other / mine
    return f"{r:.2f}× faster" if r >= 1 else f"{1 / r:.2f}× slower"

"""Atomic file writes: a partial file never replaces a complete one (results, checkpoints, reports).

Shared by kkattn's demo, the benchmarks and lovlanet, so there is one implementation.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the result should look like any new file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text), mode="w")


def strict_json(value: Any) -> Any:
    """``value`` with non-finite floats as ``None``: JSON has no NaN (``json.dumps`` would write a bare ``NaN``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def atomic_write_json(path: PathLike, data: Any, indent: int | None = 2) -> Path:
    """Strict JSON (NaN/inf as null; other objects as their ``str``), written atomically."""
    return atomic_write_text(path, json.dumps(strict_json(data), indent=indent, allow_nan=False, default=str) + "\n")

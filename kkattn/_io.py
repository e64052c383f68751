"""Atomic file writes: a partial file never replaces a complete one (results, checkpoints, reports).

Shared by kkattn's demo, the benchmarks and lovlanet, so there is one implementation. A write that
fails (a full disk, a file-size limit, no permission) removes its temporary file and raises one
:class:`WriteError` naming the target and the system's reason, whatever the serializer made of it
(``torch.save`` turns a failed write into an opaque ``RuntimeError``).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


class WriteError(OSError):
    """A file could not be written; the message names it and says why (``error.__cause__`` is the OS error)."""

    def __str__(self) -> str:
        return str(self.strerror)


class _RecordingFile:
    """A file object that remembers the first ``OSError`` its writes raised (serializers may swallow it)."""

    def __init__(self, handle):
        self._handle, self.error = handle, None

    def write(self, data):
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name):
        return getattr(self._handle, name)


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``.

    Raises :class:`WriteError` (no partial file left) when the folder or the file cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
    recorder = None
    try:
        with os.fdopen(fd, mode) as handle:
            recorder = _RecordingFile(handle)
            write(recorder)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the result should look like any new file
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = recorder.error if recorder is not None and recorder.error is not None else exc
        if isinstance(cause, OSError) and not isinstance(cause, WriteError):
            raise WriteError(cause.errno, f"cannot write {path}: {cause.strerror or cause}") from cause
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

"""Reading state dicts safely and writing files atomically.

Every checkpoint is read with ``torch.load(..., weights_only=True)`` (a downloaded file must never
run code) and every write goes to a temporary file in the same folder that is then renamed over the
target, so a crash never leaves a half-written checkpoint behind. A file that is not a checkpoint
(a folder, a text file, a truncated download) is named as such, and weights that are NaN or infinite
are refused with the tensor's name: a broken model never runs silently.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

from kkattn._io import PathLike, atomic_write, atomic_write_text  # noqa: F401  (re-exported for lovlanet)

ZIP_MAGIC = b"PK\x03\x04"   # torch.save's format since 1.6
PICKLE_MAGIC = b"\x80"      # the legacy format: a pickle protocol-2+ stream


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or does not fit the model; the message names the file."""


def _not_a_checkpoint(path: Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint, from the file system and its first bytes; None if it may be one."""
    if path.is_dir():
        inside = next((p.name for p in (path / "best.pt", path / "last.pt") if p.is_file()), None)
        return f"{path} is a folder, not a checkpoint file" + (f" (did you mean {path / inside}?)" if inside else "")
    if not path.exists():
        return f"checkpoint not found: {path}"
    if not path.is_file():
        return f"{path} is not a regular file"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        return f"{path} is empty, not a checkpoint"
    if head == ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
        except zipfile.BadZipFile:
            return f"{path} is truncated or damaged (its archive has no complete index: an interrupted copy or download?)"
        return None
    if head[:1] == PICKLE_MAGIC:
        return None
    kind = "a text file" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "of an unknown format"
    return f"{path} is not a PyTorch checkpoint (it is {kind}; checkpoints are the .pt files torch.save writes)"


def safe_load(path: PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing, foreign or damaged file is a
    :class:`CheckpointError` that says which."""
    import torch

    path = Path(path)
    reason = _not_a_checkpoint(path)
    if reason:
        raise CheckpointError(reason)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests weights_only=False, i.e. running the file's code: never do that.
        if "weights only load failed" not in str(exc).lower() and "unsupported global" not in str(exc).lower():
            raise CheckpointError(f"{path} is truncated or damaged (its pickle stream does not parse)") from exc
        raise CheckpointError(f"{path} holds objects other than tensors and plain containers, so it was not "
                              f"loaded (only weights files are read)") from exc
    except Exception as exc:  # a damaged file: torch's first line says where
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is truncated or damaged: {first[:200]}") from exc


def check_finite(state: dict, path: PathLike) -> None:
    """Raise :class:`CheckpointError` naming the first floating-point tensor of ``state`` that holds NaN or inf."""
    import torch

    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex()):
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(f"{path}: weight {name!r} holds {bad:,} NaN/inf value(s) of {tensor.numel():,}: "
                                      f"the checkpoint is broken (a diverged or damaged run) and was not used")


def load_state_dict(path: PathLike) -> dict:
    """A plain state dict from ``path``: unwraps ``{"state_dict": ...}``/``{"model": ...}`` and ``module.`` prefixes;
    non-finite weights are refused (:func:`check_finite`)."""
    import torch

    obj = safe_load(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    check_finite(obj, path)
    return obj


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` that never leaves a partial file at ``path`` (a full disk is a :class:`kkattn._io.WriteError`)."""
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle))

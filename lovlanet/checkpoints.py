"""Reading state dicts safely and writing files atomically.

Every checkpoint is read with ``torch.load(..., weights_only=True)`` (a downloaded file must never
run code) and every write goes to a temporary file in the same folder that is then renamed over the
target, so a crash never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from kkattn._io import PathLike, atomic_write, atomic_write_text  # noqa: F401  (re-exported for lovlanet)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or does not fit the model; the message names the file."""


def safe_load(path: PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing or unreadable file is a
    :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests weights_only=False, i.e. running the file's code: never do that.
        raise CheckpointError(f"{path} holds objects other than tensors and plain containers, so it was not "
                              f"loaded (only weights files are read)") from exc
    except Exception as exc:  # a damaged or non-torch file: torch's first line says which
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (not a torch file, or damaged): {first[:200]}") from exc


def load_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """A plain state dict from ``path``: unwraps ``{"state_dict": ...}``/``{"model": ...}`` and ``module.`` prefixes."""
    obj = safe_load(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` that never leaves a partial file at ``path``."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))

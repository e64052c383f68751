"""Shared pieces of the console scripts: flags from a dataclass, config files, clean failures."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

from .checkpoints import CheckpointError
from .data.common import DataError


class Parser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one ``error:`` line (exit 2), like every other failure of the tools.

    The description and epilog come from module docstrings (reStructuredText): --help shows them without
    the markup."""

    def __init__(self, *args, description=None, epilog=None, **kwargs):
        plain = lambda text: text.replace("``", "") if text else text  # noqa: E731
        super().__init__(*args, description=plain(description), epilog=plain(epilog), **kwargs)

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def tile_size(text: str) -> int:
    """A sliding-window size: a positive multiple of the patch size (32)."""
    value = int(text)
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 32 (the patch size), got {text}")
    return value


def fraction(low: float, high: float, high_open: bool = False):
    """An argparse type for a float in [low, high] (or [low, high))."""
    def parse(text: str) -> float:
        value = float(text)
        if not (low <= value and (value < high if high_open else value <= high)):
            raise argparse.ArgumentTypeError(f"must lie in [{low}, {high}{')' if high_open else ']'}, got {text}")
        return value
    parse.__name__ = "number"  # what argparse names in "invalid number value"
    return parse


def max_pixels_flag(parser) -> None:
    """``--max-pixels N``: the limit for images decoded whole (see :func:`lovlanet.data.common.max_pixels`)."""
    from .data.common import MAX_PIXELS, MAX_PIXELS_ENV

    parser.add_argument("--max-pixels", type=positive_int, metavar="N",
                        help=f"largest PNG/JPEG (or TIFF without GDAL) decoded whole, in pixels, checked from the file's "
                             f"header before decoding (default: {MAX_PIXELS:,}, or ${MAX_PIXELS_ENV}); rasters GDAL "
                             f"reads go window by window and have no limit")


PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def precision_flag(parser) -> None:
    """``--precision``: the dtype the model runs in (autocast), on CPU and CUDA alike."""
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="run the model under autocast in bf16 or fp16, or in fp32; probabilities are summed in "
                             "fp32 either way (default auto: bf16 on CUDA, fp32 on CPU)")


def resolve_precision(precision: str, device) -> str:
    """``auto`` → ``bf16`` on CUDA, ``fp32`` elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def json_object(text: str) -> dict:
    """An argparse type for a JSON object (``--dataset-options``)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text}")
    return value


def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """Raise :class:`DataError` unless ``path`` is, or can be created as, a writable folder; creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{flag} {path} is a file, not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"{flag} {path} is under a file ({existing})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{flag} {path}: {existing} is not writable")
    return path


def add_dataclass_flags(parser, cls, help_texts: dict[str, str], *,
                        only=None, dest_prefix: str = "") -> None:
    """One ``--flag-name`` per field (or per field in ``only``), stored under ``dest_prefix + name``;
    defaults are SUPPRESSed so config files can sit underneath."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if only is not None and field.name not in only:
            continue
        flag, dest = "--" + field.name.replace("_", "-"), dest_prefix + field.name
        hint = hints[field.name]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        text = f"{help_texts.get(field.name, '')} (default: {default})".strip()
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if origin in (typing.Union, types.UnionType) and len(args) == 1 else hint
        if base is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=text)
        elif base in (int, float, str):
            parser.add_argument(flag, dest=dest, metavar=field.name.upper(), type=base, default=argparse.SUPPRESS,
                                help=text)
        else:  # dicts: JSON on the command line
            parser.add_argument(flag, dest=dest, metavar="JSON", type=json_object, default=argparse.SUPPRESS, help=text)


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:
        raise DataError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"config file {path} must hold a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def check_variant(model, expected: str | None, checkpoint) -> None:
    """With ``--variant``, refuse a checkpoint of another variant (names are canonicalized first)."""
    if expected is None:
        return
    from .config import parse_variant, variant_name

    wanted = variant_name(parse_variant(expected))  # raises on an unknown name
    if model.config.variant != wanted:
        raise CheckpointError(f"{checkpoint} holds a '{model.config.variant}' model, not '{wanted}'")


def resolve_device(name: str):
    """``auto`` → the first GPU if there is one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_cli(main: Callable[[list[str] | None], int], argv=None) -> int:
    """Run ``main``; expected failures print one ``error:`` line and exit 2 instead of a traceback."""
    try:
        return main(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error, already printed (2)
        return exc.code if isinstance(exc.code, int) else 2
    except (DataError, CheckpointError, ValueError, OSError) as exc:  # OSError: a full disk, no permission...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

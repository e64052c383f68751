"""Shared pieces of the console scripts: flags from a dataclass, config files, clean failures."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

from .checkpoints import CheckpointError
from .data.common import DataError


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
        else:  # dicts / tuples: JSON on the command line
            parser.add_argument(flag, dest=dest, metavar="JSON", type=json.loads, default=argparse.SUPPRESS, help=text)


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
    except (DataError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

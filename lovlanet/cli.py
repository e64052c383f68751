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


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, help_texts: dict[str, str]) -> None:
    """One ``--flag-name`` per field; defaults are SUPPRESSed so config files can sit underneath."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        text = f"{help_texts.get(field.name, '')} (default: {default})".strip()
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if origin in (typing.Union, types.UnionType) and len(args) == 1 else hint
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        elif base in (int, float, str):
            parser.add_argument(flag, type=base, default=argparse.SUPPRESS, help=text)
        else:  # dicts / tuples: JSON on the command line
            parser.add_argument(flag, type=json.loads, default=argparse.SUPPRESS, help=text + " [JSON]")


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


def build_config(cls, args: argparse.Namespace, config_file: str | None):
    values = load_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(cls)}})
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise DataError(f"unknown options in {config_file}: {', '.join(unknown)}")
    return cls(**values)


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

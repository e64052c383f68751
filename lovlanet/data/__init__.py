"""Datasets: LoveDA, GID-5, your own image folders, and a built-in synthetic land-cover set.

:func:`build_dataset` is the one entry point the tools use; every dataset yields
``{"image": uint8 (3, H, W), "mask": int64 (H, W), "name": str}`` with ignored pixels at 255.
"""
from __future__ import annotations

import inspect

from kkattn._lazy import lazy_attributes

from .common import IGNORE_INDEX, DataError, read_image

DATASETS = ("synthetic", "loveda", "gid", "folder")
# The dataset classes (and torch/torchvision with them) load on first use, so the tools' --help is instant.
__getattr__, __dir__ = lazy_attributes(__name__, {
    name: (module, name) for module, names in {
        ".folder": ("ImageFolder",), ".gid": ("GID", "GID_CLASSES", "GID_COLOURS"),
        ".loveda": ("LoveDA", "loveda_classes"), ".synthetic": ("SyntheticLandCover",),
        ".transforms": ("TrainAugment", "normalize"),
    }.items() for name in names})


def build_dataset(name: str, root=None, split: str = "train", **options):
    """A dataset by name. ``options`` go to its class (e.g. ``background=`` for LoveDA, ``tile=`` for GID)."""
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    cls = __getattr__({"synthetic": "SyntheticLandCover", "loveda": "LoveDA", "gid": "GID", "folder": "ImageFolder"}[key])
    takes = [n for n, p in inspect.signature(cls).parameters.items()
             if p.kind is p.KEYWORD_ONLY or (p.default is not p.empty and n not in ("root", "split"))]
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise DataError(f"unknown dataset option(s) for {key}: {', '.join(map(str, unknown))} "
                        f"(it takes {', '.join(takes) or 'none'})")
    if key == "synthetic":
        return cls(split, **options)
    if root is None:
        raise ValueError(f"dataset {name!r} needs a root folder (--data-root)")
    if key in ("loveda", "gid"):
        return cls(root, split, **options)
    folder = root if split in (None, "", "all") else _split_folder(root, split)
    return cls(folder, **options)


def _split_folder(root, split):
    from pathlib import Path

    path = Path(root) / split
    return path if path.is_dir() else Path(root)


def dataset_classes(dataset) -> tuple[str, ...]:
    classes = getattr(dataset, "classes", None)
    if not classes:
        raise DataError("this dataset has no class list (an image folder without masks/classes.json)")
    return tuple(classes)


__all__ = ["DATASETS", "GID", "GID_CLASSES", "GID_COLOURS", "IGNORE_INDEX", "DataError", "ImageFolder", "LoveDA",
           "SyntheticLandCover", "TrainAugment", "build_dataset", "dataset_classes", "loveda_classes", "normalize",
           "read_image"]

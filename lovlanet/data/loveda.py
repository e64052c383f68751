"""LoveDA (Wang et al., NeurIPS 2021 Datasets): the official folder layout.

    ROOT/{Train,Val,Test}/{Urban,Rural}/images_png/<id>.png
                                        masks_png/<id>.png     (Train and Val)

Raw mask values: 0 no-data, 1 background, 2 building, 3 road, 4 water, 5 barren, 6 forest,
7 agriculture. No-data is always ignored. ``background`` chooses what raw 1 becomes:

* ``"ignore"`` (default, the paper's protocol): six foreground classes, background ignored;
* ``"class"``: seven classes with background first, as most public LoveDA numbers are averaged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import LOVEDA_CLASSES
from .common import IGNORE_INDEX, DataError, PathLike, list_images, lookup, read_image, read_label, sample

SPLITS = {"train": "Train", "val": "Val", "test": "Test"}
DOMAINS = {"urban": ("Urban",), "rural": ("Rural",), "both": ("Urban", "Rural")}
BACKGROUND = ("ignore", "class")


def loveda_classes(background: str = "ignore") -> tuple[str, ...]:
    if background not in BACKGROUND:
        raise ValueError(f"background must be one of {BACKGROUND}, got {background!r}")
    return LOVEDA_CLASSES if background == "ignore" else ("background", *LOVEDA_CLASSES)


def loveda_table(background: str = "ignore") -> np.ndarray:
    """Raw value → training label, for values 0..7."""
    keep = background == "class"
    table = np.full(8, IGNORE_INDEX, np.int64)
    if keep:
        table[1] = 0
    table[2:8] = np.arange(6) + int(keep)
    return table


class LoveDA(torch.utils.data.Dataset):
    """LoveDA split as samples (see :mod:`lovlanet.data.common`).

    Args:
        root: the folder holding ``Train``/``Val``/``Test``.
        split: ``train``, ``val`` or ``test`` (any case).
        domain: ``urban``, ``rural`` or ``both``.
        background: ``ignore`` (paper) or ``class`` (see module docstring).
        masks: read masks (``False`` for the test split, whose masks are not public).
    """

    def __init__(self, root: PathLike, split: str = "train", domain: str = "both", background: str = "ignore",
                 masks: bool | None = None):
        split_key = split.lower()
        if split_key not in SPLITS:
            raise ValueError(f"LoveDA split must be one of {', '.join(SPLITS)}, got {split!r}")
        if domain.lower() not in DOMAINS:
            raise ValueError(f"LoveDA domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
        self.classes = loveda_classes(background)
        self.table = loveda_table(background)
        self.masks = split_key != "test" if masks is None else masks
        root = Path(root)
        self.items: list[tuple[Path, Path | None]] = []
        for dom in DOMAINS[domain.lower()]:
            folder = root / SPLITS[split_key] / dom
            images = folder / "images_png"
            if not images.is_dir():
                raise DataError(f"not a LoveDA folder: {images} is missing (expected ROOT/{SPLITS[split_key]}/"
                                f"{{Urban,Rural}}/images_png; ROOT was {root})")
            for image in list_images(images):
                mask = folder / "masks_png" / (image.stem + ".png")
                if self.masks and not mask.is_file():
                    raise DataError(f"LoveDA image {image} has no mask (expected {mask})")
                self.items.append((image, mask if self.masks else None))
        if not self.items:
            raise DataError(f"no LoveDA images under {root / SPLITS[split_key]}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image_path, mask_path = self.items[index]
        image = read_image(image_path)
        mask = None
        if mask_path is not None:
            mask = lookup(read_label(mask_path), self.table, mask_path)
            if mask.shape != image.shape[:2]:
                raise DataError(f"{mask_path}: mask {mask.shape} and image {image.shape[:2]} differ in size")
        return sample(image, mask, f"{image_path.parent.parent.name}_{image_path.stem}")

"""Your own imagery: a folder of RGB PNG/JPEG/TIFF images, with optional index masks.

    ROOT/images/<name>.{png,jpg,jpeg,tif,tiff}
    ROOT/masks/<name>.png                      (optional; pixel value = class index)
    ROOT/classes.json                          (needed with masks)

``classes.json``: ``{"classes": ["building", "road", ...], "ignore_index": 255}``; mask value i is
``classes[i]``, the ignore value is excluded, any other value is an error naming the file.
Without ``images/`` the folder itself is read as images.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .common import IGNORE_INDEX, DataError, PathLike, list_images, lookup, read_image, read_label, sample


def read_class_map(path: PathLike) -> tuple[tuple[str, ...], int]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        classes = tuple(data["classes"])
        ignore = int(data.get("ignore_index", IGNORE_INDEX))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: expected {{\"classes\": [names...], \"ignore_index\": 255}} ({exc})") from exc
    if not classes or not all(isinstance(c, str) and c for c in classes):
        raise DataError(f"{path}: 'classes' must be a non-empty list of names")
    return classes, ignore


class ImageFolder(torch.utils.data.Dataset):
    """Images (and masks, when ``masks=True`` or a ``masks/`` folder exists) from ``root``."""

    def __init__(self, root: PathLike, masks: bool | None = None, classes: tuple[str, ...] | None = None):
        root = Path(root)
        if root.is_file():
            self.images = [root]
            root = root.parent
        else:
            if not root.is_dir():
                raise DataError(f"image folder not found: {root}")
            folder = root / "images" if (root / "images").is_dir() else root
            self.images = list_images(folder)
        if not self.images:
            raise DataError(f"no PNG/JPEG/TIFF images in {root}")
        self.mask_dir = root / "masks"
        self.masks = self.mask_dir.is_dir() if masks is None else masks
        self.classes, self.ignore_index = classes, IGNORE_INDEX
        if self.masks:
            class_file = root / "classes.json"
            if not class_file.is_file():
                raise DataError(f"masks need a class map: {class_file} is missing")
            self.classes, self.ignore_index = read_class_map(class_file)
            table = np.full(256, -1, np.int64)
            table[: len(self.classes)] = np.arange(len(self.classes))
            table[self.ignore_index] = IGNORE_INDEX
            self.table = table
            for image in self.images:
                if not (self.mask_dir / f"{image.stem}.png").is_file():
                    raise DataError(f"image {image} has no mask (expected {self.mask_dir / (image.stem + '.png')})")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        path = self.images[index]
        image = read_image(path)
        mask = None
        if self.masks:
            mask_path = self.mask_dir / f"{path.stem}.png"
            mask = lookup(read_label(mask_path), self.table, mask_path)
            if mask.shape != image.shape[:2]:
                raise DataError(f"{mask_path}: mask {mask.shape} and image {image.shape[:2]} differ in size")
        return sample(image, mask, path.stem)

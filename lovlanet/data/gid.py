"""GID-5 (Tong et al., RSE 2020): large GF-2 scenes with colour-coded labels, served as tiles.

Layout (the official ``Large-scale Classification_5classes`` folder):

    ROOT/image_RGB/<name>.tif            (or image_NirRGB/<name>.tif with --bands)
    ROOT/label_5classes/<name>_label.tif (RGB colours; .png also accepted)

Colours: built-up (255,0,0), farmland (0,255,0), forest (0,255,255), meadow (255,255,0),
water (0,0,255); unlabeled (0,0,0) is ignored; any other colour is an error naming the file and
the colour. Labels are read with tifffile/Pillow, which return RGB (cv2 would return BGR and
swap built-up and water).

Splits: ``ROOT/splits/{train,val,test}.txt`` (one image name per line) when present, or lists
given directly; otherwise a fixed shuffle of the sorted names (seed 0) gives 120 train / 30 val
scenes, the last 6 of val held out as test (``val`` is the other 24), scaled down for other
folder sizes (80% / 20%, a fifth of val held out).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .common import (IGNORE_INDEX, DataError, PathLike, colours_to_labels, list_images, read_image, read_label, sample,
                     window_starts)

GID_CLASSES = ("built-up", "farmland", "forest", "meadow", "water")
GID_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 255, 255), (255, 255, 0), (0, 0, 255))
UNLABELED = (0, 0, 0)


def colour_to_label(rgb: np.ndarray, path: PathLike) -> np.ndarray:
    """``(H, W, 3)`` colour-coded GID label → ``(H, W)`` class indices (unlabeled → ignore)."""
    return colours_to_labels(rgb, GID_COLOURS, path, unlabeled=UNLABELED, scheme="GID-5")


def default_split(names: Sequence[str], split: str) -> list[str]:
    names = sorted(names)
    order = np.random.default_rng(0).permutation(len(names))
    shuffled = [names[i] for i in order]
    n_train = 120 if len(names) == 150 else max(1, round(0.8 * len(names)))
    rest = shuffled[n_train:]
    n_test = 6 if len(names) == 150 else (max(1, round(len(rest) / 5)) if len(rest) >= 2 else 0)
    return {"train": shuffled[:n_train], "val": rest[:len(rest) - n_test], "test": rest[len(rest) - n_test:]}[split]


class GID(torch.utils.data.Dataset):
    """GID-5 scenes cut into ``tile``×``tile`` samples with stride ``stride``.

    Args:
        root: the GID folder (see module docstring).
        split: ``train``, ``val``, ``test`` or ``all``.
        tile, stride: tile size and step in pixels.
        edge: ``"shift"`` moves the last tile of a row/column back inside the scene; ``"pad"`` keeps
            the grid and pads past the edge (image 0, mask ignore).
        image_dir: ``image_RGB`` or ``image_NirRGB``; ``bands``: 0-based bands to read as RGB
            (e.g. ``(1, 2, 3)`` for the RGB of NIR-RGB scenes, or ``(0, 1, 2)`` for NIR-R-G).
        names: image names for this split (overrides split files and the default split).
        cache: decoded scenes kept in memory per worker (a GID scene is ~150 MB with its label).
    """

    classes = GID_CLASSES

    def __init__(self, root: PathLike, split: str = "train", tile: int = 1024, stride: int | None = None,
                 edge: str = "shift", image_dir: str = "image_RGB", label_dir: str = "label_5classes",
                 bands: Sequence[int] | None = None, names: Sequence[str] | None = None, cache: int = 2):
        if edge not in ("shift", "pad"):
            raise ValueError(f"edge must be 'shift' or 'pad', got {edge!r}")
        if tile <= 0 or (stride is not None and stride <= 0):
            raise ValueError("tile and stride must be positive")
        root = Path(root)
        self.root, self.tile, self.stride, self.edge = root, tile, stride or tile, edge
        self.bands = tuple(bands) if bands is not None else None
        images_dir, labels_dir = root / image_dir, root / label_dir
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                raise DataError(f"not a GID folder: {folder} is missing (expected ROOT/{image_dir} and ROOT/{label_dir})")
        available = {p.stem: p for p in list_images(images_dir)}
        if names is None:
            split_file = root / "splits" / f"{split}.txt"
            if split == "all":
                names = sorted(available)
            elif split_file.is_file():
                names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
            elif split in ("train", "val", "test"):
                names = default_split(list(available), split)
            else:
                raise ValueError(f"GID split must be train, val, test or all, got {split!r}")
        self.scenes: list[tuple[Path, Path]] = []
        for name in names:
            stem = Path(name).stem
            if stem not in available:
                raise DataError(f"GID image {stem!r} (split {split}) not found in {images_dir}")
            label = next((labels_dir / f"{stem}_label{ext}" for ext in (".tif", ".tiff", ".png")
                          if (labels_dir / f"{stem}_label{ext}").is_file()), None)
            if label is None:
                raise DataError(f"GID image {available[stem]} has no label (expected {labels_dir / (stem + '_label.tif')})")
            self.scenes.append((available[stem], label))
        if not self.scenes:
            raise DataError(f"no GID scenes for split {split!r} under {root}")
        self.tiles: list[tuple[int, int, int]] = []
        for index, (image_path, _) in enumerate(self.scenes):
            height, width = _image_size(image_path)
            for y in window_starts(height, self.tile, self.stride, edge):
                for x in window_starts(width, self.tile, self.stride, edge):
                    self.tiles.append((index, y, x))
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = max(1, cache)

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole scene ``index``: ``(image (H, W, 3) uint8, mask (H, W) int64)``."""
        if index not in self._cache:
            image_path, label_path = self.scenes[index]
            image = read_image(image_path, self.bands)
            mask = colour_to_label(read_label(label_path), label_path)
            if mask.shape != image.shape[:2]:
                raise DataError(f"{label_path}: label {mask.shape} and image {image.shape[:2]} differ in size")
            self._cache[index] = (image, mask)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(index)
        return self._cache[index]

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> dict:
        scene, y, x = self.tiles[index]
        image, mask = self.scene(scene)
        crop_img = np.zeros((self.tile, self.tile, 3), np.uint8)
        crop_mask = np.full((self.tile, self.tile), IGNORE_INDEX, np.int64)
        part_img = image[y:y + self.tile, x:x + self.tile]
        h, w = part_img.shape[:2]
        crop_img[:h, :w] = part_img
        crop_mask[:h, :w] = mask[y:y + self.tile, x:x + self.tile]
        return sample(crop_img, crop_mask, f"{self.scenes[scene][0].stem}_y{y}_x{x}")


def _image_size(path: Path) -> tuple[int, int]:
    """Height and width without decoding the pixels."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
            return (shape[1], shape[2]) if len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4) \
                else (shape[0], shape[1])
        from PIL import Image

        with Image.open(path) as img:
            return img.height, img.width
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc

"""What every dataset shares: the sample format, image/mask readers, and errors that name the file.

A sample is ``{"image": uint8 (3, H, W), "mask": int64 (H, W) or absent, "name": str}``. Images
stay uint8 RGB until the training/eval loop normalizes them on the device with the statistics
the model's weights expect (``model.config.mean/std``), so datasets do not depend on the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..checkpoints import PathLike


IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class DataError(ValueError):
    """A dataset folder or file that is missing, unreadable or inconsistent; the message names it."""


def read_image(path: PathLike, bands: Sequence[int] | None = None) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array from PNG/JPEG (Pillow) or TIFF (tifffile).

    ``bands``: 0-based channels to take from a multi-band image (e.g. ``(1, 2, 3)`` for the RGB of
    GID's NIR-RGB images); default: the first three, or one band repeated as grey. TIFFs are read by
    their declared axes, so planar ``(C, H, W)`` files are handled whatever C is. Never BGR: neither
    reader swaps channels.
    """
    path = Path(path)
    array = _open_image(path, lambda series: _bands_last(np.asarray(series.asarray()), series.axes, path),
                        lambda img: np.asarray(img.convert("RGB") if bands is None else img))
    if array.ndim == 2:
        array = array[..., None]
    chosen = list(bands) if bands is not None else ([0, 1, 2] if array.shape[-1] >= 3 else [0, 0, 0])
    if max(chosen) >= array.shape[-1]:
        raise DataError(f"{path} has {array.shape[-1]} band(s); bands {tuple(chosen)} were asked for")
    array = array[..., chosen]
    if array.dtype != np.uint8:
        array = to_uint8(array)
    return np.ascontiguousarray(array)


def _bands_last(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """A TIFF series as ``(H, W)`` or ``(H, W, C)``, from tifffile's axes (``YX``, ``YXS``, ``SYX``, ``QYX``...)."""
    if "Y" not in axes or "X" not in axes or array.ndim != len(axes):
        raise DataError(f"{path}: not an image (TIFF axes {axes!r}, shape {array.shape})")
    keep = [i for i, a in enumerate(axes) if a in "YX" or array.shape[i] > 1]
    array = array.squeeze(axis=tuple(i for i in range(array.ndim) if i not in keep))
    axes = "".join(axes[i] for i in keep)
    if len(axes) > 3:
        raise DataError(f"{path}: expected one image with bands, got TIFF axes {axes!r} of shape {array.shape}")
    if len(axes) == 3:
        band = next(i for i, a in enumerate(axes) if a not in "YX")
        array = np.moveaxis(array, band, -1)
    return array


def probe_image(path: PathLike) -> tuple[int, int, int]:
    """``(height, width, bands)`` from the file's header, without reading pixels; :class:`DataError` when
    it is not a readable image. The tools check every input this way before any work starts."""
    path = Path(path)
    return _open_image(path, lambda series: _tiff_extent(series.shape, series.axes, path),
                       lambda img: (img.height, img.width, len(img.getbands())))


def _tiff_extent(shape: tuple, axes: str, path: Path) -> tuple[int, int, int]:
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: not an image (TIFF axes {axes!r})")
    bands = int(np.prod([n for n, a in zip(shape, axes) if a not in "YX"], dtype=np.int64))
    return shape[axes.index("Y")], shape[axes.index("X")], bands


def _open_image(path: Path, tiff, pil):
    """``tiff(first series)`` for TIFFs (tifffile), ``pil(image)`` for the rest (Pillow); every reader
    failure becomes one :class:`DataError` naming the file."""
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return tiff(tif.series[0])
        from PIL import Image

        with Image.open(path) as img:
            return pil(img)
    except DataError:
        raise
    except Exception as exc:  # Pillow/tifffile raise many types for truncated or foreign files
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit or float imagery to uint8 (per-image 2–98% stretch, as GIS viewers do)."""
    lo, hi = np.percentile(array, (2, 98))
    scaled = (array.astype(np.float32) - lo) / max(float(hi - lo), 1e-6)
    return (np.clip(scaled, 0, 1) * 255 + 0.5).astype(np.uint8)


def read_label(path: PathLike) -> np.ndarray:
    """A label image as stored: ``(H, W)`` for index masks, ``(H, W, 3)`` for colour-coded ones."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as img:
            if img.mode == "P":  # palette PNGs store indices; converting would give colours
                return np.asarray(img)
            return np.asarray(img.convert("RGB") if img.mode in ("RGBA", "CMYK", "YCbCr") else img)
    except Exception as exc:
        raise DataError(f"cannot read mask {path}: {type(exc).__name__}: {exc}") from exc


def lookup(raw: np.ndarray, table: np.ndarray, path: PathLike) -> np.ndarray:
    """Map raw index-mask values through ``table`` (-1 marks values that must not occur)."""
    if raw.ndim != 2:
        raise DataError(f"{path}: expected a single-channel index mask, got shape {raw.shape}")
    if raw.min() < 0 or raw.max() >= len(table):
        bad = int(raw.max()) if raw.max() >= len(table) else int(raw.min())
        raise DataError(f"{path}: mask value {bad} is not one of the dataset's labels")
    mapped = table[raw]
    if (mapped < 0).any():
        bad = int(raw[mapped < 0][0])
        raise DataError(f"{path}: mask value {bad} is not one of the dataset's labels")
    return mapped.astype(np.int64)


def colours_to_labels(rgb: np.ndarray, colours, path: PathLike, *, unlabeled=None, scheme: str = "the class") -> np.ndarray:
    """``(H, W, ≥3)`` colour-coded labels → ``(H, W)`` int64 class indices: ``colours[i]`` is class ``i``,
    ``unlabeled`` (if given) is :data:`IGNORE_INDEX`; any other colour is a :class:`DataError` naming it."""
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise DataError(f"{path}: colour-coded labels must be RGB, got shape {rgb.shape}")
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = [*colours, *([unlabeled] if unlabeled is not None else [])]
    keys = np.array([(int(r) << 16) | (int(g) << 8) | int(b) for r, g, b in table])
    values = np.array([*range(len(colours)), *([IGNORE_INDEX] if unlabeled is not None else [])])
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
    known = keys[order][pos] == code
    if not known.all():
        c = int(code[~known][0])
        raise DataError(f"{path}: unknown label colour {(c >> 16, (c >> 8) & 255, c & 255)} ({scheme} colours are "
                        f"{', '.join(map(str, map(tuple, colours)))}{f' and {unlabeled} for unlabeled' if unlabeled else ''})")
    return values[order][pos].astype(np.int64)


def window_starts(length: int, tile: int, stride: int, edge: str = "shift") -> list[int]:
    """Start offsets of ``tile``-long windows every ``stride`` along ``length``. The last window is
    shifted back inside (``"shift"``) or kept on the stride grid past the end (``"pad"``)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile if edge == "shift" else starts[-1] + stride)
    return starts


def list_images(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith("."))


def sample(image: np.ndarray, mask: np.ndarray | None, name: str) -> dict:
    out = {"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(), "name": name}
    if mask is not None:
        out["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
    return out

"""What every dataset shares: the sample format, image/mask readers, and errors that name the file.

A sample is ``{"image": uint8 (3, H, W), "mask": int64 (H, W) or absent, "name": str}``. Images
stay uint8 RGB until the training/eval loop normalizes them on the device with the statistics
the model's weights expect (``model.config.mean/std``), so datasets do not depend on the model.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from kkattn._io import PathLike

IGNORE_INDEX = 255
NODATA_LABEL = 255  # what a predicted pixel without valid input gets (class rasters' nodata)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Images decoded whole (PNG, JPEG, and TIFFs read without GDAL) may have at most this many pixels, checked
# from the header before any pixel is decoded: a tiny file can claim 10¹⁰ pixels. Predicting one costs about
# 20 bytes a pixel at worst (a 16-bit TIFF stretched to 8 bits, labels, palette image, overlay), so the
# default (a 10,000 × 10,000 image) stays near 2 GB. Rasters GDAL reads go window by window instead.
MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "LOVLANET_MAX_PIXELS"  # raises (or lowers) the limit for a process; the tools take --max-pixels
_limit: list[int] = []  # set by pixel_limit()


class DataError(ValueError):
    """A dataset folder or file that is missing, unreadable or inconsistent; the message names it."""


class ImageTooLarge(DataError):
    """An image whose header claims more pixels than :func:`max_pixels` allows it to be decoded whole."""


@contextlib.contextmanager
def pixel_limit(limit: int | None):
    """Within the block, :func:`max_pixels` is ``limit`` (None: unchanged). The tools' ``--max-pixels``."""
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"max_pixels must be a positive integer, got {limit!r}")
    if limit is not None:
        _limit.append(limit)
    try:
        yield
    finally:
        if limit is not None:
            _limit.pop()


def max_pixels() -> int:
    """The pixel limit for images decoded whole: :func:`pixel_limit`'s, else ``$LOVLANET_MAX_PIXELS``, else
    :data:`MAX_PIXELS`."""
    if _limit:
        return _limit[-1]
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        raise DataError(f"{MAX_PIXELS_ENV}={text!r} is not a number of pixels") from None
    if value <= 0:
        raise DataError(f"{MAX_PIXELS_ENV}={text!r} must be positive")
    return value


def check_pixels(path: PathLike, height: int, width: int, streamable: bool = False) -> None:
    """Raise :class:`ImageTooLarge` when a ``height × width`` image (from its header) is over the limit.

    ``streamable``: the file is a TIFF, which the tools read window by window when rasterio is installed.
    """
    limit = max_pixels()
    if height * width <= limit:
        return
    fix = ("install rasterio (pip install \"kkattn[geo]\") to read TIFFs window by window, or " if streamable
           else "convert it to a tiled GeoTIFF (read window by window), or ")
    raise ImageTooLarge(f"{path} is {width}×{height} ({height * width:,} pixels), over the {limit:,}-pixel limit "
                        f"for images decoded whole: {fix}raise the limit with --max-pixels (or ${MAX_PIXELS_ENV}) "
                        f"if this machine has the memory")


def colour_bands(count: int, path: PathLike, bands: Sequence[int] | None = None) -> list[int]:
    """The three 0-based bands read as RGB from a ``count``-band raster.

    ``bands`` when given; else the first three; one band is repeated as grey. Two bands (e.g. grey + alpha,
    or two spectral bands) have no natural RGB reading: they need ``bands`` (``--bands``) to say which.
    """
    if bands is not None:
        bands = [int(b) for b in bands]
        if len(bands) != 3 or min(bands) < 0 or max(bands) >= count:
            raise DataError(f"{path} has {count} band(s); bands {tuple(bands)} were asked for (0-based)")
        return bands
    if count >= 3:
        return [0, 1, 2]
    if count == 1:
        return [0, 0, 0]
    raise DataError(f"{path} has {count} bands: pass --bands with three 0-based band numbers to read as RGB "
                    f"(e.g. --bands 0 1 1); one band is read as grey, three or more as RGB")


def read_image(path: PathLike, bands: Sequence[int] | None = None) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array from PNG/JPEG (Pillow) or TIFF (tifffile).

    ``bands``: 0-based channels to take from a multi-band image (e.g. ``(1, 2, 3)`` for the RGB of
    GID's NIR-RGB images); default: see :func:`colour_bands` (PNG/JPEG: Pillow's RGB conversion). Images
    over :func:`max_pixels` are refused from their header, before decoding. TIFFs are read by
    their declared axes, so planar ``(C, H, W)`` files are handled whatever C is. Never BGR: neither
    reader swaps channels.
    """
    path = Path(path)

    def tiff(series):  # the size from the header, checked before any pixel is decoded (one open of the file)
        height, width, _ = _tiff_extent(series.shape, series.axes, path)
        check_pixels(path, height, width, streamable=True)
        return _bands_last(np.asarray(series.asarray()), series.axes, path)

    def pil(img):
        check_pixels(path, img.height, img.width)
        return np.asarray(img.convert("RGB") if bands is None else img)

    array = _open_image(path, tiff, pil, whole=True)
    if array.ndim == 2:
        array = array[..., None]
    array = array[..., colour_bands(array.shape[-1], path, bands)]
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
    # Only the header is read: Pillow's bomb check is left to check_pixels, which names the limit and its flag.
    return _open_image(path, lambda series: _tiff_extent(series.shape, series.axes, path),
                       lambda img: (img.height, img.width, len(img.getbands())), whole=True)


def _tiff_extent(shape: tuple, axes: str, path: Path) -> tuple[int, int, int]:
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: not an image (TIFF axes {axes!r})")
    bands = int(np.prod([n for n, a in zip(shape, axes) if a not in "YX"], dtype=np.int64))
    return shape[axes.index("Y")], shape[axes.index("X")], bands


def _open_image(path: Path, tiff, pil, whole: bool = False):
    """``tiff(first series)`` for TIFFs (tifffile), ``pil(image)`` for the rest (Pillow); every reader
    failure becomes one :class:`DataError` naming the file. ``whole``: the caller reads only the header or
    has checked the size against :func:`max_pixels`, which then replaces Pillow's decompression-bomb limit."""
    if not path.is_file():
        raise DataError(f"image not found: {path}" if not path.is_dir() else f"{path} is a folder, not an image")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return tiff(tif.series[0])
        from PIL import Image

        with _pillow_limit(Image, whole), Image.open(path) as img:
            return pil(img)
    except DataError:
        raise
    except Exception as exc:  # Pillow/tifffile raise many types for truncated or foreign files
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def _pillow_limit(Image, checked: bool):
    """Pillow's decompression-bomb check (a warning past 89 M pixels, an error past 179 M) off while an image
    already checked against :func:`max_pixels` is decoded: that limit is the one the user can set."""
    if not checked:
        yield
        return
    import warnings

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


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
    height, width, _ = probe_image(path)
    check_pixels(path, height, width)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with _pillow_limit(Image, True), Image.open(path) as img:
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
    import torch

    out = {"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(), "name": name}
    if mask is not None:
        out["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
    return out

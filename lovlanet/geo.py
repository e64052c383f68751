"""Georeferenced rasters through rasterio (GDAL): windowed scene reading, class rasters out.

Only what the tools need, on top of rasterio (``pip install "kkattn[geo]"``):

* :class:`GeoScene` opens a GeoTIFF (or any GDAL raster) and reads windows of it as the sliding
  window asks, never the whole scene. It picks three bands (``bands``, else the red/green/blue colour
  interpretation when the file declares one, else the first three; one band is repeated as grey),
  scales them to the 0–255 the model expects, and says which pixels are valid (not nodata).
* Scaling: 8-bit bands are used as they are. Other types (16-bit, float) are stretched per band
  from the 2nd to the 98th percentile of the valid pixels of a decimated read (≤ 1024 pixels a
  side; GDAL serves it from an overview when the file has one), as GIS viewers do, or linearly
  from a given ``value_range``, which keeps several scenes on one scale.
* :class:`ClassRasterWriter` writes the labels as a single-band uint8 raster with the scene's CRS,
  transform and size: tiled, DEFLATE-compressed, a Cloud-Optimized GeoTIFF when GDAL has the COG
  driver, the class colours as its colour table, the class names in its metadata, nodata 255, and a
  QGIS style (``.qml``) beside it. Optionally a second raster of per-class probabilities in percent
  (uint8, one band per class). Both are written to temporary files and renamed when complete.
* :func:`aligned_labels` opens a label raster for a scene and checks they share a CRS and a pixel
  grid and that the labels cover the scene, so evaluation compares the same places on the ground.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from kkattn._io import WriteError

from .data.common import IGNORE_INDEX, NODATA_LABEL, DataError, colour_bands, colours_to_labels

if TYPE_CHECKING:  # torch loads when a window is read, not with the module (the tools' --help)
    import torch

# Rasters read through GDAL. TIFFs without georeferencing keep the plain path (PNG masks).
GDAL_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
EXTRA = 'pip install "kkattn[geo]"'
BLOCK = 512          # output tile size (and COG block size)
# GDAL's block cache, MB. Its default is 5% of RAM, which a large scene fills: memory would grow with
# the scene. This holds the output blocks of a band of rows of windows across 40,000 columns.
CACHE_MB = 256
SAMPLE_SIDE = 1024   # longest side of the decimated read the percentile stretch is computed from
STRETCH = (2, 98)    # percentiles


def rasterio_for(path) -> object:
    """rasterio, or a :class:`DataError` naming the file and the extra that provides it."""
    try:
        import rasterio
    except ImportError:
        raise DataError(f"{path} is a georeferenced raster: reading it needs rasterio ({EXTRA})") from None
    return rasterio


def has_rasterio() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def georeferenced_bands(path) -> Optional[int]:
    """The band count of ``path`` when it should go through GDAL (a GDAL-only format, or a TIFF with a CRS or
    geotransform), else None; one look at the header."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in GDAL_SUFFIXES:
        return None
    if suffix in (".tif", ".tiff") and not has_rasterio():
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                if tif.is_geotiff:
                    rasterio_for(path)  # raises, naming the extra
        except DataError:
            raise
        except Exception:
            return None  # not readable as TIFF: the image reader reports it
        return None
    rasterio = rasterio_for(path)
    with _opened(rasterio, path) as src:
        if suffix in (".tif", ".tiff") and src.crs is None and src.transform.is_identity:
            return None  # a plain TIFF: the image path (PNG masks)
        return src.count


def gdal_env():
    """The GDAL settings the tools read and write under (a bounded block cache)."""
    rasterio = rasterio_for("a raster")
    return rasterio.Env(GDAL_CACHEMAX=CACHE_MB)


def _opened(rasterio, path):
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioError as exc:
        raise DataError(f"cannot read raster {path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """GDAL's own message: rasterio's "See previous exception" points at the cause, which holds it."""
    while "previous exception" in str(exc) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _reading(rasterio, path, what: str, call):
    """``call()``, with GDAL's read errors (a truncated or corrupt file) as one :class:`DataError` naming the file."""
    try:
        return call()
    except rasterio.errors.RasterioError as exc:
        raise DataError(f"cannot read {what} of {path} (truncated or corrupt?): {_first_line(exc)}") from None


def _writing(rasterio, path, call):
    """``call()``, with GDAL's write errors (a full disk, no permission) as a :class:`WriteError` naming the file."""
    try:
        return call()
    except (rasterio.errors.RasterioError, OSError) as exc:
        if isinstance(exc, WriteError):
            raise
        raise WriteError(getattr(exc, "errno", None), f"cannot write {path}: {_first_line(exc)}") from None


class GeoScene:
    """A raster scene read window by window (see the module docstring); use as a context manager.

    Args:
        path: any raster GDAL reads.
        bands: three 0-based band numbers to use as RGB (GDAL's band 1 is 0), or None for the default.
        value_range: ``(low, high)`` mapped linearly to 0–255 for non-8-bit data, instead of the stretch.
    """

    def __init__(self, path, bands: Optional[Sequence[int]] = None, value_range: Optional[Sequence[float]] = None):
        self.path = Path(path)
        self.rasterio = rasterio_for(self.path)
        self.src = _opened(self.rasterio, self.path)
        try:
            self.indexes = self._choose_bands(bands)
            self.height, self.width = self.src.height, self.src.width
            self.crs, self.transform = self.src.crs, self.src.transform
            self.ranges = self._value_ranges(value_range)
        except BaseException:
            self.src.close()
            raise

    def _choose_bands(self, bands) -> list[int]:
        names = [c.name for c in self.src.colorinterp]
        if bands is None and all(c in names for c in ("red", "green", "blue")):
            return [names.index(c) + 1 for c in ("red", "green", "blue")]
        return [b + 1 for b in colour_bands(self.src.count, self.path, bands)]

    def _value_ranges(self, value_range) -> Optional[list[tuple[float, float]]]:
        """Per chosen band ``(low, high)`` to map to 0–255, or None for 8-bit data used as it is."""
        dtypes = {self.src.dtypes[i - 1] for i in self.indexes}
        if value_range is not None:
            low, high = map(float, value_range)
            if not high > low:
                raise DataError(f"the value range must have low < high, got {low}, {high}")
            return [(low, high)] * 3
        if dtypes == {"uint8"}:
            return None
        scale = max(self.src.height, self.src.width) / SAMPLE_SIDE
        shape = (max(1, round(self.src.height / max(scale, 1))), max(1, round(self.src.width / max(scale, 1))))
        sample = _reading(self.rasterio, self.path, "an overview", lambda: self.src.read(
            sorted(set(self.indexes)), out_shape=(len(set(self.indexes)), *shape), masked=True))
        ranges = []
        for i in self.indexes:
            values = sample[sorted(set(self.indexes)).index(i)].compressed()
            if values.size == 0:
                raise DataError(f"{self.path}: band {i} has no valid (non-nodata) pixel")
            low, high = np.percentile(values, STRETCH)
            ranges.append((float(low), float(high) if high > low else float(low) + 1.0))
        return ranges

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``((3, h, w) uint8 RGB, (h, w) bool valid)`` of rows ``[y0, y1)`` and columns ``[x0, x1)``."""
        import torch

        window = self.rasterio.windows.Window(x0, y0, x1 - x0, y1 - y0)
        unique = sorted(set(self.indexes))
        what = f"rows {y0}–{y1}, columns {x0}–{x1}"
        data = _reading(self.rasterio, self.path, what, lambda: self.src.read(unique, window=window))
        masks = _reading(self.rasterio, self.path, what, lambda: self.src.read_masks(unique, window=window))
        data = data[[unique.index(i) for i in self.indexes]]
        if self.ranges is not None:
            data = np.stack([_scale(band, low, high) for band, (low, high) in zip(data, self.ranges)])
        valid = (masks > 0).all(axis=0)
        return torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(valid)

    def close(self) -> None:
        self.src.close()

    def __enter__(self) -> "GeoScene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _scale(band: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (band.astype(np.float32) - low) / (high - low)
    return (np.clip(scaled, 0, 1) * 255 + 0.5).astype(np.uint8)


class ClassRasterWriter:
    """Labels (and optionally probabilities) of a scene as GeoTIFFs (see the module docstring).

    ``write`` matches :data:`lovlanet.inference.Writer`; :meth:`commit` finishes the files (COG, rename),
    :meth:`discard` removes the temporaries. Use as a context manager: an exception discards.
    """

    def __init__(self, scene: GeoScene, out: Path, class_names: Sequence[str], colours: np.ndarray,
                 probabilities: Optional[Path] = None):
        if len(class_names) > NODATA_LABEL:
            raise DataError(f"a class raster holds at most {NODATA_LABEL} classes (255 is nodata), "
                            f"the model has {len(class_names)}")
        self.rasterio = scene.rasterio
        self.out, self.probabilities = Path(out), probabilities
        self.class_names, self.colours = list(class_names), colours
        profile = dict(driver="GTiff", width=scene.width, height=scene.height, crs=scene.crs,
                       transform=scene.transform, tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="deflate",
                       BIGTIFF="IF_SAFER")
        self._temps: list[Path] = []
        self._ready: list[tuple[Path, Path]] = []
        self.labels = self._create(self.out, dict(profile, count=1, dtype="uint8", nodata=NODATA_LABEL))
        self.labels.write_colormap(1, {**{i: (*map(int, c), 255) for i, c in enumerate(colours)},
                                       NODATA_LABEL: (0, 0, 0, 0)})
        self.labels.set_band_description(1, "class")
        self.labels.update_tags(CLASS_NAMES=json.dumps(self.class_names),
                                **{f"CLASS_{i}": name for i, name in enumerate(self.class_names)})
        self.probs = None
        if probabilities is not None:
            self.probs = self._create(Path(probabilities), dict(profile, count=len(class_names), dtype="uint8",
                                                                nodata=NODATA_LABEL))
            for i, name in enumerate(self.class_names, 1):
                self.probs.set_band_description(i, f"{name} (%)")
            self.probs.update_tags(CLASS_NAMES=json.dumps(self.class_names), UNITS="percent")

    def _create(self, final: Path, profile: dict):
        import warnings

        def create():
            final.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".tmp.tif", dir=final.parent)
            os.close(handle)
            self._temps.append(Path(tmp))
            with warnings.catch_warnings():  # a scene without georeference gives a class raster without one
                warnings.simplefilter("ignore", self.rasterio.errors.NotGeoreferencedWarning)
                return self.rasterio.open(tmp, "w", **profile)

        return _writing(self.rasterio, final, create)

    def write(self, y0: int, y1: int, x0: int, x1: int, labels: np.ndarray, probs: Optional[np.ndarray]) -> None:
        window = self.rasterio.windows.Window(x0, y0, x1 - x0, y1 - y0)
        _writing(self.rasterio, self.out, lambda: self.labels.write(labels[None], window=window))
        if self.probs is not None and probs is not None:
            percent = np.rint(probs * 100).astype(np.uint8)
            percent[:, labels == NODATA_LABEL] = NODATA_LABEL
            _writing(self.rasterio, self.probabilities, lambda: self.probs.write(percent, window=window))

    def commit(self) -> None:
        """Close, convert to COG where GDAL can, and rename into place; then the QGIS style beside it."""
        from kkattn._io import atomic_write_text

        datasets = [(self.labels, self.out)] + ([(self.probs, Path(self.probabilities))] if self.probs else [])
        for dataset, final in datasets:  # every file complete before the first is renamed into place
            tmp = Path(dataset.name)
            _writing(self.rasterio, final, dataset.close)
            ready = _writing(self.rasterio, final, lambda tmp=tmp, final=final: self._cloud_optimized(tmp, final))
            self._ready.append((ready, final))
        for ready, final in self._ready:
            os.replace(ready, final)
        self._ready.clear()
        self._temps.clear()
        atomic_write_text(self.out.with_suffix(".qml"), qgis_style(self.class_names, self.colours))

    def _cloud_optimized(self, tmp: Path, final: Path) -> Path:
        with self.rasterio.Env() as env:
            if "COG" not in env.drivers():
                return tmp  # a tiled GeoTIFF: fine for every GIS, just not cloud-optimized
        handle, cog = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".cog.tmp.tif", dir=final.parent)
        os.close(handle)
        self._temps.append(Path(cog))
        from rasterio.shutil import copy

        # NEAREST overviews: class indices must not be averaged into other classes.
        copy(str(tmp), cog, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK, OVERVIEW_RESAMPLING="NEAREST",
             BIGTIFF="IF_SAFER")
        tmp.unlink()
        return Path(cog)

    def discard(self) -> None:
        for dataset in (self.labels, self.probs):
            if dataset is not None and not dataset.closed:
                try:
                    dataset.close()
                except Exception:  # noqa: BLE001  (a full disk fails the close too: the file goes anyway)
                    pass
        for tmp in self._temps:
            tmp.unlink(missing_ok=True)
        self._temps.clear()

    def __enter__(self) -> "ClassRasterWriter":
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is not None or self._temps:
            self.discard()


def qgis_style(class_names: Sequence[str], colours: np.ndarray) -> str:
    """A QGIS layer style (paletted renderer): QGIS applies ``NAME.qml`` when it opens ``NAME.tif``."""
    from xml.sax.saxutils import quoteattr

    entries = "\n".join(
        f'        <paletteEntry value="{i}" color="#{int(r):02x}{int(g):02x}{int(b):02x}" alpha="255" '
        f'label={quoteattr(name)}/>' for i, (name, (r, g, b)) in enumerate(zip(class_names, colours)))
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            '<qgis version="3.28" styleCategories="Symbology">\n  <pipe>\n'
            '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1">\n'
            f"      <colorPalette>\n{entries}\n      </colorPalette>\n"
            "    </rasterrenderer>\n  </pipe>\n</qgis>\n")


class AlignedLabels:
    """A label raster read over a scene's windows, on the scene's pixel grid (see :func:`aligned_labels`)."""

    def __init__(self, src, row_off: int, col_off: int, class_names: Sequence[str], colours, path: Path):
        self.src, self.row_off, self.col_off = src, row_off, col_off
        self.class_names, self.colours, self.path = list(class_names), colours, path

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``(h, w)`` int64 class indices of the scene's rows/columns; nodata → the ignore index."""
        from rasterio.windows import Window

        window = Window(x0 + self.col_off, y0 + self.row_off, x1 - x0, y1 - y0)
        import rasterio

        def read(indexes):
            what = f"rows {y0}–{y1}, columns {x0}–{x1}"
            return (_reading(rasterio, self.path, what, lambda: self.src.read(indexes, window=window)),
                    _reading(rasterio, self.path, what, lambda: self.src.read_masks(1, window=window)) > 0)

        if self.src.count >= 3:
            rgb, valid = read([1, 2, 3])
            labels = colours_to_labels(np.moveaxis(rgb, 0, -1), self.colours, self.path, scheme="the model's")
        else:
            labels, valid = read(1)
            labels = labels.astype(np.int64)
        labels[~valid] = IGNORE_INDEX
        return labels

    def close(self) -> None:
        self.src.close()


def aligned_labels(scene: GeoScene, path, class_names: Sequence[str] = (), colours=()) -> AlignedLabels:
    """Open the label raster ``path`` for ``scene``: same CRS, same pixel size, grids offset by whole
    pixels, and the labels covering the scene; otherwise a :class:`DataError` saying which differs.

    Single-band labels are class indices (nodata and 255 ignored); three-band labels are colour-coded
    with ``colours`` (class ``i`` has ``colours[i]``).
    """
    path = Path(path)
    src = _opened(scene.rasterio, path)
    try:
        if src.crs != scene.crs:
            raise DataError(f"{path} and {scene.path} have different CRS ({src.crs} vs {scene.crs}): "
                            f"reproject one (e.g. gdalwarp -t_srs) first")
        a, b = src.transform, scene.transform
        if abs(a.a - b.a) > 1e-9 * abs(b.a) or abs(a.e - b.e) > 1e-9 * abs(b.e) or a.b or a.d or b.b or b.d:
            raise DataError(f"{path} and {scene.path} have different pixel sizes or rotations "
                            f"({a.a:g}×{-a.e:g} vs {b.a:g}×{-b.e:g}): resample one onto the other's grid first")
        col, row = (b.c - a.c) / a.a, (b.f - a.f) / a.e
        if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
            raise DataError(f"{path} and {scene.path} are on grids offset by a fraction of a pixel "
                            f"({col:.3f}, {row:.3f} pixels)")
        col, row = round(col), round(row)
        if row < 0 or col < 0 or row + scene.height > src.height or col + scene.width > src.width:
            raise DataError(f"{path} (bounds {tuple(round(v, 3) for v in src.bounds)}) does not cover "
                            f"{scene.path} (bounds {tuple(round(v, 3) for v in scene.src.bounds)})")
        if src.count not in (1, 3, 4):
            raise DataError(f"{path}: labels must be one band of class indices or three colour bands, "
                            f"got {src.count} bands")
        return AlignedLabels(src, row, col, class_names, colours, path)
    except BaseException:
        src.close()
        raise


__all__ = ["GDAL_SUFFIXES", "AlignedLabels", "ClassRasterWriter", "GeoScene", "aligned_labels", "has_rasterio",
           "georeferenced_bands", "qgis_style", "rasterio_for"]

"""lovlanet-predict: images, GeoTIFF scenes or folders → class masks, with a legend.

Examples:
    lovlanet-predict --checkpoint runs/synthetic/best.pt scene.png --out predictions/
    lovlanet-predict --checkpoint best.pt /data/GID/image_RGB --out gid_pred --tile 1024 --overlap 0.25 --overlay
    lovlanet-predict --checkpoint best.pt scene_utm.tif --out pred --probabilities --bands 2 1 0

A plain image ``NAME.png/.jpg/.tif`` gives ``OUT/NAME_mask.png``: a palette PNG whose pixel values
are class indices and whose colours are the classes' (see ``OUT/legend.png``); ``--overlay`` adds
``OUT/NAME_overlay.png``. A georeferenced raster (a GeoTIFF with a CRS, or any GDAL raster; needs
``pip install "kkattn[geo]"``) gives ``OUT/NAME_classes.tif``: a single-band class raster with the
scene's CRS, transform and size (Cloud-Optimized GeoTIFF, colour table, class names, nodata 255)
and ``NAME_classes.qml``, its QGIS style; ``--probabilities`` adds ``NAME_probabilities.tif``.
Scenes are read and predicted window by window, so a scene of any size fits in memory; nodata
pixels are not predicted. A plain TIFF too large to decode whole (over --max-pixels) goes the same
way and gives NAME_classes.tif too (without georeference); a PNG/JPEG that large is refused.

Bands: one band is read as grey, three or more as RGB (the first three, or the red/green/blue colour
interpretation a raster declares); two bands need --bands. Band numbers are 0-based (GDAL's band 1 is 0).

Outputs never replace an input. Outputs that already exist are refused unless --overwrite is given.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .cli import (Parser, check_output_folder, check_variant, fraction, max_pixels_flag, positive_int, precision_flag,
                  resolve_device, resolve_precision, run_cli, tile_size)
from .data.common import (IMAGE_SUFFIXES, DataError, ImageTooLarge, check_pixels, colour_bands, list_images,
                          pixel_limit, probe_image)
from .geo import GDAL_SUFFIXES, georeferenced_bands, has_rasterio

# torch, the model and rasterio load after the arguments are parsed (--help is instant).
IMAGE = "image"    # decoded whole → NAME_mask.png (+ NAME_overlay.png)
RASTER = "raster"  # read window by window through GDAL → NAME_classes.tif (+ .qml, + NAME_probabilities.tif)


def collect_inputs(inputs: list[str], bands=None) -> dict[Path, str]:
    """Every input image, each checked from its header (readable, its size, its bands) before any work starts,
    mapped to how it is read: :data:`RASTER` (georeferenced, or a plain TIFF over the pixel limit) or :data:`IMAGE`.

    Two inputs with one stem (``a.png``, ``a.tif``) would write the same outputs: that is an error.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(list_images(path, IMAGE_SUFFIXES + GDAL_SUFFIXES))
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES + GDAL_SUFFIXES:
                raise DataError(f"{path} is not a PNG/JPEG/TIFF image or a GDAL raster ({', '.join(GDAL_SUFFIXES)})")
            paths.append(path)
        else:
            raise DataError(f"input not found: {path}")
    if not paths:
        raise DataError(f"no images in {', '.join(inputs)}")
    paths = list(dict.fromkeys(paths))
    seen: dict[str, Path] = {}
    kinds: dict[Path, str] = {}
    for path in paths:
        if path.stem in seen:
            raise DataError(f"{seen[path.stem]} and {path} would both be written as {path.stem}_mask.png: "
                            f"rename one or predict them into different --out folders")
        seen[path.stem] = path
        count = georeferenced_bands(path)
        kinds[path] = RASTER if count is not None else IMAGE
        if count is None:
            height, width, count = probe_image(path)
            tiff = path.suffix.lower() in (".tif", ".tiff")
            try:
                check_pixels(path, height, width, streamable=tiff)
            except ImageTooLarge:
                if not (tiff and has_rasterio()):
                    raise
                kinds[path] = RASTER  # too large to decode whole: window by window through GDAL instead
        if bands is not None or path.suffix.lower() in (".tif", ".tiff") + GDAL_SUFFIXES:
            colour_bands(count, path, bands)  # Pillow's own RGB conversion reads PNG/JPEG modes without --bands
    return kinds


def output_files(path: Path, kind: str, out: Path, overlay: bool, probabilities: bool) -> list[Path]:
    """What predicting ``path`` writes into ``out``."""
    if kind == RASTER:
        names = [f"{path.stem}_classes.tif", f"{path.stem}_classes.qml"]
        names += [f"{path.stem}_probabilities.tif"] if probabilities else []
    else:
        names = [f"{path.stem}_mask.png"] + ([f"{path.stem}_overlay.png"] if overlay else [])
    return [out / name for name in names]


SHARED_OUTPUTS = ("legend.png", "class_fractions.json")


def check_outputs(kinds: dict[Path, str], out: Path, overlay: bool, probabilities: bool, overwrite: bool) -> None:
    """Refuse (one :class:`DataError`) an output that is one of the inputs, always, or one that exists, unless
    ``overwrite``: predict never writes over a file it was not asked to replace."""
    planned = [f for path, kind in kinds.items() for f in output_files(path, kind, out, overlay, probabilities)]
    planned += [out / name for name in SHARED_OUTPUTS]
    inputs = {_identity(p): p for p in kinds}
    for target in planned:
        source = inputs.get(_identity(target))
        if source is not None:
            raise DataError(f"{target} would overwrite the input {source}: choose another --out folder")
    existing = [t for t in planned if t.exists() or t.is_symlink()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise DataError(f"{existing[0]}{more} already exist(s) in --out {out}: pass --overwrite to replace them, "
                        f"or choose another folder")
    for target in existing:
        if target.is_dir() or target.is_symlink():
            raise DataError(f"{target} is a {'folder' if target.is_dir() else 'symbolic link'}, not an output of "
                            f"this tool: remove it or choose another --out folder")


def _identity(path: Path):
    """What makes two paths one file: (device, inode) when it exists, else the resolved path."""
    try:
        stat = os.stat(path)
        return stat.st_dev, stat.st_ino
    except OSError:
        return str(path.resolve())


def predict_raster(model, path: Path, out: Path, bands, value_range, probabilities: bool, options):
    """``OUT/NAME_classes.tif`` (+ ``.qml``, + ``NAME_probabilities.tif``) for one raster scene, window by
    window with a progress bar; returns the pixel count per class (nodata last)."""
    import numpy as np
    from tqdm.auto import tqdm

    from .geo import ClassRasterWriter, GeoScene, gdal_env
    from .inference import NODATA_LABEL, WindowGrid, predict_scene
    from .palette import palette

    classes = model.config.class_names
    counts = np.zeros(NODATA_LABEL + 1, np.int64)
    with gdal_env(), GeoScene(path, bands, value_range) as scene:
        grid = WindowGrid.plan(scene.height, scene.width, options["tile"], options["overlap"])
        extra = out / f"{path.stem}_probabilities.tif" if probabilities else None
        with ClassRasterWriter(scene, out / f"{path.stem}_classes.tif", classes, palette(classes), extra) as writer, \
                tqdm(total=grid.runs(), desc=f"{path.name} ({scene.width}×{scene.height})", unit="window",
                     dynamic_ncols=True, leave=False) as bar:
            def write(y0, y1, x0, x1, labels, probs):
                writer.write(y0, y1, x0, x1, labels, probs)
                counts[:] += np.bincount(labels.ravel(), minlength=NODATA_LABEL + 1)

            predict_scene(model, scene.read, write, scene.height, scene.width, probabilities=probabilities,
                          progress=bar.update, **options)
            writer.commit()
    return np.concatenate([counts[:len(classes)], counts[NODATA_LABEL:]])


def save_png(image, path: Path) -> None:
    from .checkpoints import atomic_write

    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def main(argv=None) -> int:
    parser = Parser(prog="lovlanet-predict", description=__doc__.split("\n\n")[0],
                    epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--checkpoint", required=True, help="best.pt / last.pt written by lovlanet-train")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tile", type=tile_size, help="sliding-window size, a multiple of 32 (default: the model's img_size)")
    parser.add_argument("--overlap", type=fraction(0, 1, high_open=True), default=0.25,
                        help="window overlap fraction in [0, 1) (default: 0.25)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="windows per forward pass (default: 4)")
    parser.add_argument("--overlay", action="store_true",
                        help="also write the image blended with the mask (plain images; GIS tools overlay GeoTIFFs)")
    parser.add_argument("--alpha", type=fraction(0, 1), default=0.5, help="overlay opacity in [0, 1] (default: 0.5)")
    parser.add_argument("--bands", type=int, nargs=3, metavar="B",
                        help="three 0-based bands to read as RGB from multi-band rasters (default: the red/green/blue "
                             "colour interpretation when declared, else the first three)")
    parser.add_argument("--value-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="map non-8-bit rasters linearly from [LOW, HIGH] to 0–255 (default: a per-band "
                             "2–98%% percentile stretch of the valid pixels)")
    parser.add_argument("--probabilities", action="store_true",
                        help="georeferenced inputs: also NAME_probabilities.tif, per-class probability in percent")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs already in --out (never an input: an output that would be one is refused)")
    parser.add_argument("--variant", help="refuse a checkpoint of another variant (e.g. full)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    precision_flag(parser)
    max_pixels_flag(parser)
    args = parser.parse_args(argv)
    if args.bands is not None and min(args.bands) < 0:
        parser.error(f"--bands are 0-based band numbers, got {' '.join(map(str, args.bands))}")
    with pixel_limit(args.max_pixels):
        return _main(args)


def _main(args) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from kkattn._io import atomic_write_json

    from .data.common import read_image
    from .inference import predict_image
    from .model import load_model
    from .palette import colourize, legend, overlay

    # Everything is checked before the first window runs or the first file is written.
    out = check_output_folder(args.out)
    paths = collect_inputs(args.inputs, args.bands)
    check_outputs(paths, out, args.overlay, args.probabilities, args.overwrite)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, map_location=device).eval()
    check_variant(model, args.variant, args.checkpoint)
    classes = model.config.class_names
    summary = {}
    options = dict(tile=args.tile or model.config.img_size, overlap=args.overlap, batch_size=args.batch_size,
                   device=device, precision=resolve_precision(args.precision, device))
    for path, kind in tqdm(paths.items(), desc="predicting", dynamic_ncols=True, disable=len(paths) == 1):
        if kind == RASTER:
            counts = predict_raster(model, path, out, args.bands, args.value_range, args.probabilities, options)
        else:
            image = read_image(path, args.bands)
            labels = predict_image(model, image, **options)
            save_png(colourize(labels, classes), out / f"{path.stem}_mask.png")
            if args.overlay:
                save_png(overlay(image, labels, classes, args.alpha), out / f"{path.stem}_overlay.png")
            counts = np.bincount(labels.ravel(), minlength=len(classes))
        counts = counts[:len(classes)] / max(1, counts[:len(classes)].sum())  # over predicted (valid) pixels
        summary[path.name] = {c: round(float(f) * 100, 2) for c, f in zip(classes, counts)}
    save_png(legend(classes), out / "legend.png")
    atomic_write_json(out / "class_fractions.json", summary)
    print(f"wrote {len(paths)} mask(s){' and overlays' if args.overlay else ''} to {out} (legend: {out / 'legend.png'})")
    return 0


def cli(argv=None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())

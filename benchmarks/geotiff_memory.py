"""Peak memory of predicting GeoTIFF scenes of growing size: it must not grow with the scene.

    python -m benchmarks.geotiff_memory [--sizes 5000 20000] [--tile 512] [--work /tmp/geotiff-memory]

For each size it writes a 3-band uint8 GeoTIFF (UTM zone 33N, 10 m pixels, tiled and compressed;
written block by block from a checkerboard of two 1024² synthetic land-cover scenes, so generating
it needs no memory either),
then runs ``lovlanet-predict`` on it in a fresh process with a tiny LoVLANet and reports that
process's peak resident memory (``ru_maxrss``), its time and the output's size. Writes
``benchmarks/results/geotiff-memory.{md,json}`` and a picture of the largest output, rendered from
the GeoTIFF through its own colour table (``docs/geotiff/``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import RESULTS, describe, machine, write_json, write_text

PICTURES = Path(__file__).resolve().parents[1] / "docs" / "geotiff"
TINY = {"visual_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2}, "feature_blocks": [1, 1, 2, 2],
        "decoder_dim": 16, "text_kwargs": {"width": 32, "layers": 1, "heads": 2}}

CHILD = """
import resource, sys, time
from lovlanet import predict
began = time.perf_counter()
code = predict.main(sys.argv[1:])
print("RESULT", code, time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_scene(path: Path, size: int) -> None:
    """A ``size``² 3-band scene, block by block: synthetic 256² land-cover scenes tiled over it."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from lovlanet.data.synthetic import generate_scene

    tiles = [generate_scene((0, 9, i), 1024)[0] for i in range(2)]
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(400_000, 5_000_000, 10, 10), tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", photometric="RGB") as dst:
        for y in range(0, size, 512):
            for x in range(0, size, 512):
                h, w = min(512, size - y), min(512, size - x)
                tile = tiles[(y // 1024 + x // 1024) % 2]  # a checkerboard of two 1024² scenes
                block = tile[y % 1024:y % 1024 + h, x % 1024:x % 1024 + w]
                dst.write(np.moveaxis(block, -1, 0), window=Window(x, y, w, h))


def tiny_checkpoint(path: Path, img_size: int, work: Path) -> None:
    """The tiny model, trained for a minute on synthetic scenes so the picture shows land cover."""
    import shutil
    import warnings

    from lovlanet.train import TrainConfig, train

    cfg = TrainConfig(dataset="synthetic", dataset_options={"size": 256, "num_images": 48}, crop_size=256,
                      model={**TINY, "img_size": img_size}, epochs=4, batch_size=8, lr=2e-3, workers=0,
                      device="cpu", out=str(work / "tiny-run"), overwrite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random text tower
        summary = train(cfg, progress=False)
    shutil.copy(summary["best"], path)


def measure(scene: Path, checkpoint: Path, out: Path, tile: int) -> dict:
    cmd = [sys.executable, "-c", CHILD, str(scene), "--checkpoint", str(checkpoint), "--out", str(out), "--tile",
           str(tile), "--device", "cpu", "--batch-size", "8"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT")]
    if result.returncode or not line:
        raise RuntimeError(f"prediction failed:\n{result.stderr[-3000:]}")
    _, code, seconds, rss_kb = line[0].split()
    return {"seconds": round(float(seconds), 1), "peak_rss_mb": round(int(rss_kb) / 1024, 1)}


def render(classes_tif: Path, scene_tif: Path, picture: Path, side: int = 768, crop: int = 768) -> None:
    """The class raster through its own colour table: the whole scene (from its overviews), a full-resolution
    ``crop``² from its centre next to the input there, and the legend."""
    import json as _json

    import rasterio
    from PIL import Image, ImageDraw
    from rasterio.windows import Window

    from lovlanet.palette import legend

    with rasterio.open(classes_tif) as src:
        scale = max(src.width, src.height) / side
        whole = src.read(1, out_shape=(round(src.height / scale), round(src.width / scale)))
        window = Window((src.width - crop) // 2, (src.height - crop) // 2, crop, crop)
        detail = src.read(1, window=window)
        table = src.colormap(1)
        names = _json.loads(src.tags()["CLASS_NAMES"])
    with rasterio.open(scene_tif) as src:
        rgb = np.moveaxis(src.read([1, 2, 3], window=window), 0, -1)
    lut = np.zeros((256, 3), np.uint8)
    for value, rgba in table.items():
        lut[value] = rgba[:3]
    panels = {f"whole scene ({classes_tif.stem})": Image.fromarray(lut[whole]),
              f"centre {crop}×{crop}, full resolution": Image.fromarray(lut[detail]),
              "input there": Image.fromarray(rgb)}
    key = legend(names)
    head, gap = 20, 8
    width = sum(p.width for p in panels.values()) + key.width + gap * (len(panels) + 1)
    canvas = Image.new("RGB", (width, head + max(p.height for p in panels.values())), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for title, panel in panels.items():
        draw.text((x + 2, 4), title, fill="black")
        canvas.paste(panel, (x, head))
        x += panel.width + gap
    canvas.paste(key, (x, head))
    picture.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(picture)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.geotiff_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000], help="scene sides (default: 5000 20000)")
    parser.add_argument("--tile", type=int, default=512, help="sliding window (default: 512)")
    parser.add_argument("--work", default="/tmp/geotiff-memory", help="folder for the scenes and outputs")
    args = parser.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "tiny.pt"
    tiny_checkpoint(checkpoint, args.tile, work)
    rows = []
    for size in args.sizes:
        scene = work / f"scene_{size}.tif"
        began = time.perf_counter()
        write_scene(scene, size)
        made = time.perf_counter() - began
        out = work / f"out_{size}"
        row = {"size": size, "pixels": size * size, "scene_mb": round(scene.stat().st_size / 2 ** 20, 1),
               "write_s": round(made, 1), **measure(scene, checkpoint, out, args.tile)}
        row["output_mb"] = round((out / f"scene_{size}_classes.tif").stat().st_size / 2 ** 20, 2)
        rows.append(row)
        print(json.dumps(row))
    largest = max(args.sizes)
    render(work / f"out_{largest}" / f"scene_{largest}_classes.tif", work / f"scene_{largest}.tif",
           PICTURES / f"scene_{largest}_classes.png")
    info = machine()
    lines = ["# Peak memory of lovlanet-predict on GeoTIFF scenes", "", describe(info), "",
             "Tiny LoVLANet (2 blocks, 64 wide, trained for a minute on synthetic scenes), "
             f"`--tile {args.tile}`, `--overlap 0.25`, batch 8, CPU. "
             "Peak RSS is the predicting process's `ru_maxrss` (Python, torch and the model included).", "",
             "| scene | pixels | input (MB, deflate) | peak RSS (MB) | time (s) | output (MB, COG) |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['size']}×{r['size']} | {r['pixels']:,} | {r['scene_mb']} | {r['peak_rss_mb']} | {r['seconds']} | "
              f"{r['output_mb']} |" for r in rows]
    write_text(RESULTS / "geotiff-memory.md", "\n".join(lines) + "\n")
    write_json(RESULTS / "geotiff-memory.json", {"machine": info, "tile": args.tile, "rows": rows})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

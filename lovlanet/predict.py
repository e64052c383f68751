"""lovlanet-predict: images or folders → colour-coded mask PNGs (and overlays), with a legend.

Examples:
    lovlanet-predict --checkpoint runs/synthetic/best.pt scene.png --out predictions/
    lovlanet-predict --checkpoint best.pt /data/GID/image_RGB --out gid_pred --tile 1024 --overlap 0.25 --overlay

Each input ``NAME.ext`` gives ``OUT/NAME_mask.png``: a palette PNG whose pixel values are class
indices and whose colours are the classes' (see ``OUT/legend.png``). ``--overlay`` adds
``OUT/NAME_overlay.png``. Large scenes are predicted window by window and assembled band by band,
so a GID-size image does not need its whole probability map in memory.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .checkpoints import atomic_write, atomic_write_text
from .cli import check_variant, resolve_device, run_cli
from .data.common import IMAGE_SUFFIXES, DataError, list_images, read_image
from .inference import predict_image
from .palette import colourize, legend, overlay


def collect_inputs(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(list_images(path))
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{path} is not a PNG/JPEG/TIFF image")
            paths.append(path)
        else:
            raise DataError(f"input not found: {path}")
    if not paths:
        raise DataError(f"no images in {', '.join(inputs)}")
    return paths


def save_png(image, path: Path) -> None:
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lovlanet-predict", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--checkpoint", required=True, help="best.pt / last.pt written by lovlanet-train")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tile", type=int, help="sliding-window size (default: the model's img_size)")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction (default: 0.25)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default: 4)")
    parser.add_argument("--overlay", action="store_true", help="also write the image blended with the mask")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default: 0.5)")
    parser.add_argument("--bands", type=int, nargs=3, help="0-based bands to read as RGB from multi-band TIFFs")
    parser.add_argument("--variant", help="refuse a checkpoint of another variant (e.g. full)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm

    from .model import load_model

    paths = collect_inputs(args.inputs)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, map_location=device).eval()
    check_variant(model, args.variant, args.checkpoint)
    classes = model.config.class_names
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_png(legend(classes), out / "legend.png")
    summary = {}
    for path in tqdm(paths, desc="predicting", dynamic_ncols=True):
        image = read_image(path, args.bands)
        labels = predict_image(model, image, tile=args.tile or model.config.img_size, overlap=args.overlap,
                               batch_size=args.batch_size, device=device, amp=device.type == "cuda")
        save_png(colourize(labels, classes), out / f"{path.stem}_mask.png")
        if args.overlay:
            save_png(overlay(image, labels, classes, args.alpha), out / f"{path.stem}_overlay.png")
        counts = np.bincount(labels.ravel(), minlength=len(classes)) / labels.size
        summary[path.name] = {c: round(float(f) * 100, 2) for c, f in zip(classes, counts)}
    atomic_write_text(out / "class_fractions.json", json.dumps(summary, indent=2))
    print(f"wrote {len(paths)} mask(s){' and overlays' if args.overlay else ''} to {out} (legend: {out / 'legend.png'})")
    return 0


def cli(argv=None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())

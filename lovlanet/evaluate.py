"""lovlanet-eval: a checkpoint on a dataset split or a georeferenced scene → mIoU, mF1, OA, κ, per-class IoU.

Examples:
    lovlanet-eval --checkpoint runs/synthetic/best.pt --dataset synthetic --split val
    lovlanet-eval --checkpoint best.pt --scene scene_utm.tif --labels labels_utm.tif --out results/
    lovlanet-eval --checkpoint best.pt --dataset loveda --data-root /data/LoveDA --split val --out results/
    lovlanet-eval --checkpoint best.pt --dataset gid --data-root /data/GID --split test --tile 1024 --overlap 0.25

Images larger than ``--tile`` are predicted with overlapping sliding windows. The table follows
the paper's Table 1/2 layout; ``--out`` also writes ``metrics.md`` and ``metrics.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kkattn._io import atomic_write_json

from .checkpoints import CheckpointError, atomic_write_text
from .data.common import DataError, pixel_limit
from .cli import (Parser, check_output_folder, check_variant, fraction, json_object, max_pixels_flag, precision_flag,
                  resolve_device, resolve_precision, run_cli, tile_size)
from .data import DATASETS, build_dataset, dataset_classes

# torch and the model load inside the functions (after the arguments are parsed: --help is instant).


def evaluate_dataset(model, dataset, *, tile: int = 1024, overlap: float = 0.25, device=None, precision: str = "fp32",
                     exclude=(), rank: int = 0, world: int = 1, progress: bool = True) -> dict:
    """Metrics of ``model`` on every sample of ``dataset`` (each rank takes every ``world``-th sample)."""
    import torch

    with torch.no_grad():
        return _evaluate_dataset(model, dataset, tile, overlap, device, precision, exclude, rank, world, progress)


def _evaluate_dataset(model, dataset, tile, overlap, device, precision, exclude, rank, world, progress) -> dict:
    import torch
    from tqdm.auto import tqdm

    from .inference import predict_image
    from .metrics import ConfusionMatrix

    was_training = model.training
    model.eval()
    classes = model.config.class_names
    device = torch.device(device) if device is not None else next(model.parameters()).device
    confusion = ConfusionMatrix(len(classes), model.config.ignore_index, classes,
                                exclude=[classes.index(c) if isinstance(c, str) else c for c in exclude], device=device)
    indices = range(rank, len(dataset), world)
    for index in tqdm(indices, desc="evaluating", disable=not (progress and rank == 0), dynamic_ncols=True):
        item = dataset[index]
        if "mask" not in item:
            raise ValueError(f"sample {item['name']} has no mask: evaluation needs labelled data")
        pred = predict_image(model, item["image"], tile=tile, overlap=overlap, device=device, precision=precision)
        confusion.update(torch.from_numpy(pred).to(device), item["mask"].to(device))
    confusion.all_reduce()
    model.train(was_training)
    return confusion.compute()


def evaluate_scene(model, scene_path, labels_path, *, bands=None, value_range=None, tile: int = 1024,
                   overlap: float = 0.25, batch_size: int = 4, device=None, precision: str = "fp32", exclude=(),
                   progress: bool = True) -> dict:
    """Metrics of ``model`` on a georeferenced scene against a label raster on the same ground.

    The labels are read window by window on the scene's grid (:func:`lovlanet.geo.aligned_labels` checks
    CRS, pixel size, alignment and coverage); nodata in either raster is left out.
    """
    import torch

    with torch.no_grad():
        return _evaluate_scene(model, scene_path, labels_path, bands, value_range, tile, overlap, batch_size, device,
                               precision, exclude, progress)


def _evaluate_scene(model, scene_path, labels_path, bands, value_range, tile, overlap, batch_size, device, precision,
                    exclude, progress) -> dict:
    import torch
    from tqdm.auto import tqdm

    from .metrics import ConfusionMatrix

    from .data.common import IGNORE_INDEX
    from .geo import GeoScene, aligned_labels, gdal_env
    from .inference import NODATA_LABEL, WindowGrid, predict_scene
    from .palette import palette

    classes = model.config.class_names
    device = torch.device(device) if device is not None else next(model.parameters()).device
    confusion = ConfusionMatrix(len(classes), IGNORE_INDEX, classes,
                                exclude=[classes.index(c) if isinstance(c, str) else c for c in exclude], device=device)
    was_training = model.training
    model.eval()
    with gdal_env(), GeoScene(scene_path, bands, value_range) as scene:
        labels = aligned_labels(scene, labels_path, classes, palette(classes))
        try:
            grid = WindowGrid.plan(scene.height, scene.width, tile, overlap)
            with tqdm(total=grid.runs(), desc=f"evaluating {Path(scene_path).name}", unit="window",
                      disable=not progress, dynamic_ncols=True, leave=False) as bar:
                def write(y0, y1, x0, x1, pred, _probs):
                    target = labels.read(y0, y1, x0, x1)
                    target[pred == NODATA_LABEL] = IGNORE_INDEX  # not predicted: the scene has no data there
                    try:
                        confusion.update(torch.from_numpy(pred).to(device), torch.from_numpy(target).to(device))
                    except ValueError as exc:  # a label value outside the classes
                        raise DataError(f"{labels_path}: {exc}") from None

                predict_scene(model, scene.read, write, scene.height, scene.width, tile=tile, overlap=overlap,
                              batch_size=batch_size, device=device, precision=precision, progress=bar.update)
        finally:
            labels.close()
    model.train(was_training)
    return confusion.compute()


def main(argv=None) -> int:
    parser = Parser(prog="lovlanet-eval", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="best.pt / last.pt written by lovlanet-train")
    parser.add_argument("--scene", help="a georeferenced raster to evaluate on, with --labels (instead of --dataset)")
    parser.add_argument("--labels", help="the label raster for --scene: class indices, or colour-coded with the "
                                         "model's class colours; aligned by georeference")
    parser.add_argument("--bands", type=int, nargs=3, metavar="B", help="--scene: three 0-based bands to read as RGB")
    parser.add_argument("--value-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="--scene: map non-8-bit data from [LOW, HIGH] to 0–255 (default: 2–98%% stretch)")
    parser.add_argument("--dataset", default="synthetic", help=f"one of {', '.join(DATASETS)} (default: synthetic)")
    parser.add_argument("--data-root", help="dataset folder (not needed for synthetic)")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--dataset-options", type=json_object, default={}, help='JSON, e.g. {"background": "class"}')
    parser.add_argument("--tile", type=tile_size, help="sliding-window size, a multiple of 32 (default: the model's img_size)")
    parser.add_argument("--overlap", type=fraction(0, 1, high_open=True), default=0.25,
                        help="window overlap fraction in [0, 1) (default: 0.25)")
    parser.add_argument("--exclude", nargs="*", default=[], help="classes left out of the means (e.g. background)")
    parser.add_argument("--variant", help="refuse a checkpoint of another variant (e.g. full)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    precision_flag(parser)
    parser.add_argument("--out", help="folder for metrics.md and metrics.json")
    max_pixels_flag(parser)
    args = parser.parse_args(argv)
    with pixel_limit(args.max_pixels):
        return _main(args)


def _main(args) -> int:
    from .metrics import metrics_table
    from .model import load_model

    if args.out:
        check_output_folder(args.out)  # before the evaluation, not after it
    if (args.scene is None) != (args.labels is None):
        raise DataError("--scene and --labels go together")
    device = resolve_device(args.device)
    if args.scene:
        from .geo import GeoScene, aligned_labels

        with GeoScene(args.scene, args.bands, args.value_range) as scene:  # both rasters checked before the model
            aligned_labels(scene, args.labels).close()  # CRS, grid and extent: the classes come with the model
        model = load_model(args.checkpoint, map_location=device)
        check_variant(model, args.variant, args.checkpoint)
        classes = model.config.class_names
    else:
        dataset = build_dataset(args.dataset, args.data_root, args.split, **args.dataset_options)
        model = load_model(args.checkpoint, map_location=device)
        check_variant(model, args.variant, args.checkpoint)
        classes = dataset_classes(dataset)
        if tuple(classes) != tuple(model.config.class_names):
            raise CheckpointError(f"{args.checkpoint} predicts {list(model.config.class_names)}, but the "
                                  f"{args.dataset} split has classes {list(classes)}")
    unknown = [c for c in args.exclude if c not in classes]
    if unknown:
        raise ValueError(f"--exclude: unknown classes {unknown}; the classes are {list(classes)}")
    options = dict(tile=args.tile or model.config.img_size, overlap=args.overlap, device=device,
                   precision=resolve_precision(args.precision, device), exclude=args.exclude)
    if args.scene:
        metrics = evaluate_scene(model, args.scene, args.labels, bands=args.bands, value_range=args.value_range,
                                 **options)
        title = f"{model.config.variant} on {Path(args.scene).name} against {Path(args.labels).name} (%)"
    else:
        metrics = evaluate_dataset(model, dataset, **options)
        title = f"{model.config.variant} on {args.dataset} {args.split} ({len(dataset)} images, %)"
    table = metrics_table(metrics, title)
    print(table)
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "metrics.md", table + "\n")
        source = {"scene": args.scene, "labels": args.labels} if args.scene else \
            {"dataset": args.dataset, "split": args.split}
        record = {"checkpoint": str(args.checkpoint), **source, **metrics}
        atomic_write_json(out / "metrics.json", record)  # a class absent from the split has IoU null, not NaN
        print(f"wrote {out / 'metrics.md'} and {out / 'metrics.json'}")
    return 0


def cli(argv=None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())

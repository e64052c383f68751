"""lovlanet-eval: a checkpoint on a dataset split → mIoU, mF1, OA, κ and per-class IoU.

Examples:
    lovlanet-eval --checkpoint runs/synthetic/best.pt --dataset synthetic --split val
    lovlanet-eval --checkpoint best.pt --dataset loveda --data-root /data/LoveDA --split val --out results/
    lovlanet-eval --checkpoint best.pt --dataset gid --data-root /data/GID --split test --tile 1024 --overlap 0.25

Images larger than ``--tile`` are predicted with overlapping sliding windows. The table follows
the paper's Table 1/2 layout; ``--out`` also writes ``metrics.md`` and ``metrics.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from kkattn._io import atomic_write_json

from .checkpoints import CheckpointError, atomic_write_text
from .cli import (Parser, check_output_folder, check_variant, fraction, json_object, resolve_device, run_cli,
                  tile_size)
from .data import DATASETS, build_dataset, dataset_classes
from .inference import predict_image
from .metrics import ConfusionMatrix, metrics_table


@torch.no_grad()
def evaluate_dataset(model, dataset, *, tile: int = 1024, overlap: float = 0.25, device=None, amp: bool = False,
                     exclude=(), rank: int = 0, world: int = 1, progress: bool = True) -> dict:
    """Metrics of ``model`` on every sample of ``dataset`` (each rank takes every ``world``-th sample)."""
    from tqdm.auto import tqdm

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
        pred = predict_image(model, item["image"], tile=tile, overlap=overlap, device=device, amp=amp)
        confusion.update(torch.from_numpy(pred).to(device), item["mask"].to(device))
    confusion.all_reduce()
    model.train(was_training)
    return confusion.compute()


def main(argv=None) -> int:
    parser = Parser(prog="lovlanet-eval", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="best.pt / last.pt written by lovlanet-train")
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
    parser.add_argument("--out", help="folder for metrics.md and metrics.json")
    args = parser.parse_args(argv)

    from .model import load_model

    if args.out:
        check_output_folder(args.out)  # before the evaluation, not after it
    device = resolve_device(args.device)
    dataset = build_dataset(args.dataset, args.data_root, args.split, **args.dataset_options)
    model = load_model(args.checkpoint, map_location=device)
    check_variant(model, args.variant, args.checkpoint)
    classes = dataset_classes(dataset)
    if tuple(classes) != tuple(model.config.class_names):
        raise CheckpointError(f"{args.checkpoint} predicts {list(model.config.class_names)}, but the {args.dataset} "
                              f"split has classes {list(classes)}")
    unknown = [c for c in args.exclude if c not in classes]
    if unknown:
        raise ValueError(f"--exclude: unknown classes {unknown}; the classes are {list(classes)}")
    metrics = evaluate_dataset(model, dataset, tile=args.tile or model.config.img_size, overlap=args.overlap,
                               device=device, amp=device.type == "cuda", exclude=args.exclude)
    title = f"{model.config.variant} on {args.dataset} {args.split} ({len(dataset)} images, %)"
    table = metrics_table(metrics, title)
    print(table)
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "metrics.md", table + "\n")
        record = {"checkpoint": str(args.checkpoint), "dataset": args.dataset, "split": args.split, **metrics}
        atomic_write_json(out / "metrics.json", record)  # a class absent from the split has IoU null, not NaN
        print(f"wrote {out / 'metrics.md'} and {out / 'metrics.json'}")
    return 0


def cli(argv=None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())

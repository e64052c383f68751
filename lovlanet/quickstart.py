"""lovlanet-quickstart: train → evaluate → predict on the built-in synthetic land-cover set.

No data, weights or GPU needed: a small LoVLANet (4-block ViT, 2-layer random text tower) learns the
procedural scenes of :mod:`lovlanet.data.synthetic` for a few minutes on a CPU. It is then
evaluated on the validation scenes, next to two trivial predictors (a constant: the most frequent
training class; chance: uniform random labels), and predicts a held-out test scene.

Examples:
    lovlanet-quickstart                       # ~1.5 minutes on 2 CPU cores, writes runs/quickstart/
    lovlanet-quickstart --epochs 2 --out /tmp/qs
"""
from __future__ import annotations

import argparse

from kkattn._io import atomic_write_json

from .checkpoints import atomic_write, atomic_write_text
from .cli import Parser, check_output_folder, positive_int, precision_flag, resolve_precision, run_cli, tile_size
from .config import parse_variant, variant_name
from .data import build_dataset
from .train import TrainConfig, train

# numpy, torch and the model load after the arguments are parsed (--help is instant).


def baselines(val_set, train_set, num_classes: int, classes, seed: int = 0) -> dict[str, dict]:
    """Metrics of a constant predictor (most frequent training class) and of uniform random labels."""
    import numpy as np
    import torch

    from .metrics import ConfusionMatrix

    counts = np.zeros(num_classes, np.int64)
    for i in range(len(train_set)):
        mask = train_set[i]["mask"].numpy()
        counts += np.bincount(mask[mask < num_classes].ravel(), minlength=num_classes)
    majority = int(counts.argmax())
    constant, chance = ConfusionMatrix(num_classes, class_names=classes), ConfusionMatrix(num_classes, class_names=classes)
    generator = torch.Generator().manual_seed(seed)
    for i in range(len(val_set)):
        mask = val_set[i]["mask"]
        constant.update(torch.full_like(mask, majority), mask)
        chance.update(torch.randint(0, num_classes, mask.shape, generator=generator), mask)
    return {f"constant ({classes[majority]})": constant.compute(), "chance (uniform)": chance.compute()}


def main(argv=None) -> int:
    parser = Parser(prog="lovlanet-quickstart", description=__doc__.split("\n\n")[0],
                    epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quickstart",
                        help="output folder (default: runs/quickstart; a rerun replaces what it holds)")
    parser.add_argument("--epochs", type=positive_int, default=8, help="training epochs (default: 8)")
    parser.add_argument("--variant", default="full", help="model variant (default: full)")
    parser.add_argument("--train-images", type=positive_int,
                        help="synthetic scenes in the training split, and then also in the validation split "
                             "(default: 96 training and 24 validation scenes)")
    parser.add_argument("--size", type=tile_size, default=256, help="scene size in pixels, a multiple of 32 (default: 256)")
    parser.add_argument("--workers", type=int, default=1, help="data-loading processes (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes' split, the model and the training "
                                                               "(default: 0)")
    precision_flag(parser)
    args = parser.parse_args(argv)
    if args.size < 64:
        parser.error(f"--size must be at least 64, got {args.size}")

    import numpy as np

    from .inference import predict_image
    from .metrics import metrics_table
    from .palette import colourize, legend, overlay, panel

    out = check_output_folder(args.out)
    options = {"size": args.size, **({"num_images": args.train_images} if args.train_images else {})}
    cfg = TrainConfig(dataset="synthetic", dataset_options=options, small=True,
                      model={"variant": args.variant, "img_size": args.size}, crop_size=args.size, batch_size=4,
                      epochs=args.epochs, workers=args.workers, seed=args.seed, out=str(out / "train"), device="cpu",
                      overwrite=True)
    train_set = build_dataset("synthetic", split="train", **options)
    val_set = build_dataset("synthetic", split="val", **options)  # the scenes training validates on
    print(f"training a small '{variant_name(parse_variant(args.variant))}' LoVLANet on {len(train_set)} synthetic scenes for "
          f"{args.epochs} epochs (validation: {len(val_set)} scenes) ...")
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no text checkpoint")  # expected: no RemoteCLIP here
        summary = train(cfg)

    from .model import load_model, read_checkpoint

    model = load_model(summary["best"]).eval()
    classes = model.config.class_names
    # The best epoch's own validation (the "[best]" line above): the same scenes, the same numbers.
    best = read_checkpoint(summary["best"])
    metrics = best["metrics"]
    name = f"LoVLANet ({model.config.variant}, epoch {best['epoch']} of {args.epochs})"
    rows = {name: metrics, **baselines(val_set, train_set, len(classes), classes, args.seed)}

    test = build_dataset("synthetic", split="test", size=args.size)[0]
    image = test["image"].permute(1, 2, 0).numpy()
    import torch

    labels = predict_image(model, image, tile=args.size, precision=resolve_precision(args.precision, torch.device("cpu")))
    pictures = {"test_image.png": _rgb(image), "test_truth.png": colourize(test["mask"].numpy().astype(np.uint8), classes),
                "test_prediction.png": colourize(labels, classes), "test_overlay.png": overlay(image, labels, classes),
                "legend.png": legend(classes)}
    pictures["test_panel.png"] = panel({"image": pictures["test_image.png"], "truth": pictures["test_truth.png"],
                                        "prediction": pictures["test_prediction.png"],
                                        "overlay": pictures["test_overlay.png"]}, pictures["legend.png"])
    for name, picture in pictures.items():
        atomic_write(out / name, lambda h, p=picture: p.save(h, format="PNG"))

    lines = [f"# Quickstart: synthetic land cover ({len(val_set)} validation scenes of {args.size}×{args.size}, %)", "",
             "| model | mIoU | mF1 | OA | Kappa |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {row} | {m['mIoU']:.2f} | {m['mF1']:.2f} | {m['OA']:.2f} | {m['Kappa']:.2f} |" for row, m in rows.items()]
    lines += ["", metrics_table(metrics, "Per-class IoU of LoVLANet (%)"), "",
              f"A held-out scene, its truth, the prediction and the overlay: `{out / 'test_panel.png'}` "
              f"(each also alone: `test_image.png`, `test_truth.png`, `test_prediction.png`, `test_overlay.png`).",
              f"Checkpoints and per-epoch metrics: `{out / 'train'}`."]
    report = "\n".join(lines)
    atomic_write_text(out / "quickstart.md", report + "\n")
    atomic_write_json(out / "quickstart.json", rows)
    print(report)
    return 0


def _rgb(array):
    from PIL import Image

    return Image.fromarray(array)


def cli(argv=None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())

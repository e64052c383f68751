"""lovlanet-train: train a LoVLANet variant, on one process or under torchrun (DDP).

Examples:
    lovlanet-train --dataset synthetic --out runs/synthetic --epochs 5 --small
    lovlanet-train --dataset loveda --data-root /data/LoveDA --variant full \\
        --text-checkpoint RemoteCLIP-ViT-B-32.pt --visual-checkpoint RemoteCLIP-ViT-B-32.pt --out runs/loveda
    lovlanet-train --config runs/loveda.yaml --resume
    torchrun --nproc-per-node 4 -m lovlanet.train --config runs/loveda.yaml

Every epoch writes ``last.pt`` (model, optimizer, schedule, progress) atomically, keeps ``best.pt``
(best validation mIoU), then adds a row to ``metrics.csv`` and ``metrics.jsonl`` (TensorBoard
events too when ``tensorboard`` is installed). ``--resume`` continues from ``OUT/last.pt``;
``--overwrite`` replaces a run already in ``OUT``, which is otherwise refused (see run_folder.py).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kkattn._io import strict_json

from .checkpoints import CheckpointError, atomic_write_text
from .config import VARIANTS, LoVLANetConfig
from .cli import Parser, add_dataclass_flags, json_object, load_config_file, run_cli
from .metrics_log import MetricsLog
from .run_folder import RunFolder

# torch, timm and the data pipeline are imported inside the functions that run the training, so
# ``lovlanet-train --help`` and a mistyped flag answer before they load (seconds on a busy machine).

# A configuration small enough to train on a laptop CPU in minutes (used by --small and the quickstart).
SMALL_MODEL = {"visual_kwargs": {"depth": 4, "embed_dim": 256, "num_heads": 4}, "feature_blocks": [1, 2, 3, 4],
               "decoder_dim": 64, "text_kwargs": {"width": 128, "layers": 2, "heads": 4}}


# LoVLANetConfig fields the trainer also takes as flags of their own (``--variant``, ...); every other
# model field goes through ``--model '{...}'``. The model's defaults and validation stay in LoVLANetConfig.
MODEL_FLAGS = {
    "variant": ", ".join(VARIANTS),
    "sigma": "σ of the Gaussian prior (tokens)",
    "learnable_sigma": "learn σ per head and block",
    "img_size": "size the ViT's positional embedding is stored at",
}


@dataclass
class TrainConfig:
    """One training run. ``model`` holds :class:`LoVLANetConfig` fields (the class list comes from the
    dataset); the rest is data, optimisation and bookkeeping."""

    dataset: str = "synthetic"
    data_root: str | None = None
    dataset_options: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    small: bool = False
    text_checkpoint: str | None = None
    visual_checkpoint: str | None = None
    crop_size: int = 512
    epochs: int = 60
    batch_size: int = 2
    lr: float = 4e-4
    weight_decay: float = 0.01
    poly_power: float = 0.9
    accumulate: int = 1
    amp: bool = True
    seed: int = 0
    workers: int = 2
    steps_per_epoch: int | None = None
    eval_tile: int | None = None
    out: str = "runs/lovlanet"
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"

    def __post_init__(self):
        for name in ("crop_size", "epochs", "batch_size", "accumulate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.crop_size % 32:
            raise ValueError(f"crop_size must be a multiple of 32 (the patch size), got {self.crop_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not isinstance(self.model, dict):
            raise ValueError(f"model must be a mapping of LoVLANetConfig fields, got {self.model!r}")
        if "class_names" in self.model:
            raise ValueError("model.class_names comes from the dataset; do not set it")
        known = {f.name for f in dataclasses.fields(LoVLANetConfig)}
        unknown = sorted(set(self.model) - known)
        if unknown:
            raise ValueError(f"unknown model options: {', '.join(unknown)} (LoVLANetConfig fields: {', '.join(sorted(known))})")
        self.model_config(("class",))  # validates the model fields now, before anything is built

    def model_config(self, class_names) -> LoVLANetConfig:
        """The model this run trains: :data:`SMALL_MODEL` under ``small``, then ``model``, for these classes."""
        return LoVLANetConfig(**{**(SMALL_MODEL if self.small else {}), **self.model, "class_names": tuple(class_names)})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """From a config file's mapping; files of the flat layout (``variant``/``sigma``/``learnable_sigma``/
        ``img_size``/``model_options`` at the top) are read into ``model``, so old runs still resume."""
        values = dict(values)
        model = dict(values.pop("model_options", None) or {})
        model.update(values.get("model") or {})
        for name in MODEL_FLAGS:
            if name in values:
                model[name] = values.pop(name)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        return cls(**{**values, "model": model})


HELP = {
    "dataset": "synthetic | loveda | gid | folder",
    "data_root": "dataset folder (not needed for synthetic)",
    "dataset_options": 'extra dataset arguments, e.g. {"background": "class"} (LoveDA) or {"tile": 1024} (GID)',
    "model": 'other LoVLANetConfig fields, e.g. {"decoder_dim": 128, "attn_backend": "cpu"}',
    "text_checkpoint": "open_clip state dict for the text tower (RemoteCLIP-ViT-B-32.pt)",
    "visual_checkpoint": "timm/open_clip weights for the ViT",
    "small": "a 4-block, 256-wide ViT and a 2-layer text tower for CPU experiments",
    "crop_size": "training crop (multiple of 32)",
    "epochs": "passes over the training set", "batch_size": "images per optimizer step and process",
    "seed": "seed of the model's initialisation, the shuffling and the augmentation",
    "workers": "data-loading worker processes",
    "lr": "AdamW learning rate", "weight_decay": "AdamW weight decay",
    "poly_power": "poly schedule lr0·(1 − t/T)^p, t in fractional epochs",
    "accumulate": "gradient accumulation steps",
    "amp": "bf16 autocast on CUDA (ignored on CPU)",
    "steps_per_epoch": "cap on optimizer steps per epoch (quick runs)",
    "eval_tile": "sliding-window size for validation (default: whole images up to img_size)",
    "out": "output folder (checkpoints, metrics)",
    "resume": "continue from OUT/last.pt",
    "overwrite": "replace the run already in OUT (its checkpoints and metrics)",
    "device": "auto | cpu | cuda | cuda:N",
}


# ------------------------------------------------------------------------------------------- run
@dataclass
class Run:
    """Everything one training run holds: model (and its DDP wrapper), data, optimizer and schedule."""

    cfg: TrainConfig
    rank: int
    world: int
    device: Any  # torch.device
    model: Any
    ddp: Any
    params: list
    optimizer: Any
    scheduler: Any
    loader: Any
    sampler: Any
    val_set: Any
    steps: int
    out: Path
    folder: RunFolder
    resume_state: dict | None = None  # the checkpoint --resume continues, read and checked by build_run

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def amp(self) -> bool:
        return self.cfg.amp and self.device.type == "cuda"


def build_run(cfg: TrainConfig) -> Run:
    """Process group, datasets, model, optimizer, poly schedule and loader for ``cfg``."""
    import torch

    from .data import TrainAugment, build_dataset, dataset_classes
    from .data.batches import Augmented, collate
    from .distributed import setup_distributed
    from .model import build_model

    rank, world, device = setup_distributed(cfg.device)
    folder = RunFolder(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    if rank == 0:
        folder.check()  # before any work; the folder is created only once data and model are built
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)

    train_set = build_dataset(cfg.dataset, cfg.data_root, "train", **cfg.dataset_options)
    val_set = build_dataset(cfg.dataset, cfg.data_root, "val", **cfg.dataset_options)
    classes = dataset_classes(train_set)
    if dataset_classes(val_set) != classes:
        raise ValueError(f"train and val class lists differ: {classes} vs {dataset_classes(val_set)}")

    model = build_model(config=cfg.model_config(classes), text_checkpoint=cfg.text_checkpoint,
                        visual_checkpoint=cfg.visual_checkpoint).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    sampler = torch.utils.data.DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(
        Augmented(train_set, TrainAugment(cfg.crop_size)), batch_size=cfg.batch_size, shuffle=sampler is None,
        sampler=sampler, num_workers=cfg.workers, collate_fn=collate, drop_last=len(train_set) >= cfg.batch_size * world,
        generator=generator, persistent_workers=cfg.workers > 0, pin_memory=device.type == "cuda")
    steps = len(loader) // cfg.accumulate
    if cfg.steps_per_epoch:
        steps = min(steps, cfg.steps_per_epoch)
    if steps == 0:
        raise ValueError(f"one epoch has no optimizer step: {len(loader)} batches, accumulate={cfg.accumulate}")
    total = steps * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: max(0.0, 1 - t / total) ** cfg.poly_power)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    saved = resume_state(cfg, model.config, out / "last.pt")  # checked before the folder is touched
    if rank == 0:
        folder.claim()
        record_config(cfg, saved, out)
    return Run(cfg, rank, world, device, model, ddp, params, optimizer, scheduler, loader, sampler, val_set, steps, out,
               folder, saved)


# What --resume may change (recorded in OUT/resumes.jsonl): where and how long it runs, not what it learns.
# Everything else (lr, batch size, data, model, seed...) would make the resumed run a different one.
RESUMABLE_CHANGES = ("epochs", "device", "workers", "eval_tile")
BOOKKEEPING = ("out", "resume", "overwrite")  # how this process was started, not the run's settings


def resume_state(cfg: TrainConfig, model_config: LoVLANetConfig, last_path: Path) -> dict | None:
    """The checkpoint ``--resume`` continues (None when not resuming or there is none yet), after checking
    that it was written for this model and these hyper-parameters (:data:`RESUMABLE_CHANGES` aside)."""
    from .model import read_checkpoint

    if not cfg.resume or not last_path.exists():
        return None
    state = read_checkpoint(last_path)
    try:
        saved = LoVLANetConfig.from_dict(state["config"])
    except ValueError as exc:
        raise CheckpointError(f"{last_path} has an invalid model config: {exc}") from exc
    if saved != model_config:
        raise CheckpointError(f"{last_path} was written for another model configuration "
                              f"(variant {state['config'].get('variant')!r}, classes {state['config'].get('class_names')})")
    before = state.get("train_config")
    if isinstance(before, dict):
        now = dataclasses.asdict(cfg)
        changed = [k for k in now if k not in BOOKKEEPING + RESUMABLE_CHANGES and k in before and before[k] != now[k]]
        if changed:
            name = changed[0]
            raise CheckpointError(
                f"--resume: {name} was {before[name]!r} in the run in {last_path.parent}, now {now[name]!r}; a resumed "
                f"run keeps its hyper-parameters (only {', '.join(RESUMABLE_CHANGES)} may change): drop the flag, or "
                f"start a new run (another --out, or --overwrite)")
    return state


def record_config(cfg: TrainConfig, saved: dict | None, out: Path) -> None:
    """``OUT/train_config.json`` (this run's settings); on a resume that changed any of
    :data:`RESUMABLE_CHANGES`, also a line of ``OUT/resumes.jsonl`` saying what changed and from which epoch."""
    now = dataclasses.asdict(cfg)
    atomic_write_text(out / "train_config.json", json.dumps(now, indent=2))
    before = saved.get("train_config") if saved is not None else None
    if not isinstance(before, dict):
        return
    changes = {k: [before.get(k), now[k]] for k in RESUMABLE_CHANGES if before.get(k) != now[k]}
    if changes:
        path = out / "resumes.jsonl"
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        entry = {"epoch": int(saved["epoch"]), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": changes}
        atomic_write_text(path, "".join(lines) + json.dumps(strict_json(entry)) + "\n")
        print(f"--resume from epoch {entry['epoch']} changes " +
              ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in changes.items()) + f" (recorded in {path})")


def resume(run: Run, last_path: Path, log: MetricsLog) -> tuple[int, float]:
    """``(start epoch, best mIoU)``: from ``last_path`` when ``--resume`` and it exists, else ``(0, -1)``.

    The metrics log is cut back to the checkpoint's epoch (rows written after it are redone).
    """
    if not run.cfg.resume:
        return 0, -1.0
    state = run.resume_state
    if state is None:
        if run.is_main:
            print(f"--resume: no {last_path} yet, starting from scratch")
        log.truncate(0)
        return 0, -1.0
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    start_epoch, best = int(state["epoch"]), float(state["best_miou"])
    log.truncate(start_epoch, state.get("metrics_row"))
    if run.is_main:
        print(f"resumed from {last_path} at epoch {start_epoch} (best mIoU {best:.2f})")
    return start_epoch, best


def train_one_epoch(run: Run, epoch: int, progress: bool) -> dict:
    """One epoch of optimizer steps; returns its loss (mean over steps and ranks), images/s and seconds."""
    import torch
    from tqdm.auto import tqdm

    from .data import normalize
    from .distributed import reduce_mean

    cfg, model, device = run.cfg, run.model, run.device
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    model.train()
    sums = torch.zeros(3, device=device)
    seen, began = 0, time.perf_counter()
    bar = tqdm(total=run.steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (run.is_main and progress),
               dynamic_ncols=True, leave=False)
    batches = iter(run.loader)
    for _ in range(run.steps):
        for micro in range(cfg.accumulate):
            batch = next(batches)
            images = normalize(batch["image"].to(device, non_blocking=True), model.config.mean, model.config.std)
            target = batch["mask"].to(device, non_blocking=True)
            sync = micro == cfg.accumulate - 1 or run.world == 1
            context = run.ddp.no_sync() if not sync else contextlib.nullcontext()
            with context, torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.amp):
                outputs = run.ddp(images, train_outputs=True)  # through __call__, so DDP's hooks run
                loss = model.criterion(outputs, target)
                (loss.total / cfg.accumulate).backward()
            sums += torch.stack([loss.total.detach(), loss.seg.detach(), loss.align.detach()]) / cfg.accumulate
            seen += images.shape[0] * run.world
        torch.nn.utils.clip_grad_norm_(run.params, max_norm=1.0)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.total.detach()):.3f}", img_s=f"{seen / (time.perf_counter() - began):.1f}")
    bar.close()
    elapsed = time.perf_counter() - began
    loss, seg, align = (reduce_mean(x / run.steps) for x in sums)
    return {"loss": loss, "loss_seg": seg, "loss_align": align, "images_per_s": seen / elapsed, "epoch_s": elapsed}


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Run the training described by ``cfg``; returns the final summary (best mIoU, paths)."""
    run = build_run(cfg)
    try:
        return _train(run, progress)
    finally:
        run.folder.release()


def _train(run: Run, progress: bool) -> dict:
    import torch.distributed as dist

    from .evaluate import evaluate_dataset

    cfg = run.cfg
    last_path, best_path = run.out / "last.pt", run.out / "best.pt"
    log = MetricsLog(run.out, run.is_main)
    start_epoch, best = resume(run, last_path, log)
    for epoch in range(start_epoch, cfg.epochs):
        stats = train_one_epoch(run, epoch, progress)
        metrics = evaluate_dataset(run.model, run.val_set, tile=cfg.eval_tile or max(run.model.config.img_size, cfg.crop_size),
                                   device=run.device, precision="bf16" if run.amp else "fp32", rank=run.rank,
                                   world=run.world, progress=False)
        row = {"epoch": epoch + 1, "step": (epoch + 1) * run.steps, "lr": run.scheduler.get_last_lr()[0], **stats,
               **{f"val_{k}": metrics[k] for k in ("mIoU", "mF1", "OA", "Kappa")}}
        improved = metrics["mIoU"] > best
        best = max(best, metrics["mIoU"])
        if run.is_main:
            # Checkpoints first, then the row: a kill in between loses no epoch on --resume (last.pt
            # carries its row) and never repeats one.
            if improved:
                run.model.save(best_path, epoch=epoch + 1, metrics=strict_json(metrics))
            run.model.save(last_path, epoch=epoch + 1, best_miou=best, optimizer=run.optimizer.state_dict(),
                           scheduler=run.scheduler.state_dict(), train_config=dataclasses.asdict(cfg),
                           metrics_row=strict_json(row))
            log.write(row)
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {stats['loss']:.4f} (seg {stats['loss_seg']:.4f}, align "
                  f"{stats['loss_align']:.4f}), val mIoU {metrics['mIoU']:.2f}, OA {metrics['OA']:.2f}, "
                  f"{stats['images_per_s']:.1f} img/s{'  [best]' if improved else ''}")
        if run.world > 1:
            dist.barrier()
    summary = {"best_mIoU": best, "last": str(last_path), "best": str(best_path), "epochs": cfg.epochs}
    if run.world > 1:
        dist.destroy_process_group()
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lovlanet-train", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML or JSON file with any of the options below (flags override it)")
    add_dataclass_flags(parser, TrainConfig, HELP)
    model_flags = parser.add_argument_group("model", "LoVLANetConfig fields with flags of their own (others: --model)")
    add_dataclass_flags(model_flags, LoVLANetConfig, MODEL_FLAGS, only=MODEL_FLAGS, dest_prefix="model.")
    parser.add_argument("--model-options", dest="model", type=json_object, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)  # the flag's name before --model; kept for existing scripts
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = train_config(args)
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The config file (if any), then ``--model``, then the flags, later ones winning."""
    values = TrainConfig.from_dict(load_config_file(args.config)) if args.config else TrainConfig()
    flags = {k: v for k, v in vars(args).items() if k != "config"}
    model = {**values.model, **flags.pop("model", {})}
    model.update({k.removeprefix("model."): flags.pop(k) for k in list(flags) if k.startswith("model.")})
    return dataclasses.replace(values, **flags, model=model)


cli_main = main  # the un-wrapped entry point (raises instead of printing "error:")


def cli(argv=None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())

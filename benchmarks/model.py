"""Model benchmark: the paper's Table 6 for our implementation, next to the paper's numbers.

    python -m benchmarks.model [--img-size 1024] [--reps 3] [--variants baseline kk ...] [--precisions fp32 bf16]

Rows: Baseline, KK, ReduceMLP, KK+ReduceMLP, Full on one RGB input (batch 1) of ``--img-size``.
Columns: parameters (M, text tower included, as in the paper), GFLOPs of one image forward
(``FlopCounterMode`` on the meta device, with kkattn's registered formula for the key–key op;
the frozen text tower runs once per class list, so its cost is listed apart), inference time
(median of ``--reps`` after a warm-up) and FPS, peak memory (GB: ``max_memory_allocated`` on a
GPU; peak RSS of the variant's own process on a CPU), the attention backend, and the paper's
values (RTX 4090) beside ours, in GFLOPs and in GMACs (= GFLOPs / 2, what many segmentation
papers' counters call FLOPs). ``--precisions fp32 bf16`` adds rows run under ``torch.autocast`` in
bf16 (CPU or GPU, as ``lovlanet-predict --precision``), with the share of pixels whose arg-max class
equals the fp32 forward's on the same input.

Writes ``benchmarks/results/model-<device>-<date>.{md,csv,json}``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from .common import RESULTS, PeakRSS, describe, device_slug, machine, time_it, write_csv, write_json, write_text

# Table 6 of the paper: params (M), FLOPs (G), time (ms), FPS, memory (GB) on an RTX 4090.
PAPER = {"baseline": (166.97, 446.73, 49.44, 20.23, 3.20), "kk": (159.88, 439.80, 48.62, 20.57, 3.08),
         "reduce_mlp": (162.25, 440.60, 47.96, 20.85, 3.02), "kk+reduce_mlp": (155.16, 433.70, 45.82, 21.82, 2.91),
         "full": (155.16, 434.64, 46.17, 21.66, 2.94)}
LABELS = {"baseline": "Baseline", "kk": "KK", "reduce_mlp": "ReduceMLP", "kk+reduce_mlp": "KK + ReduceMLP", "full": "Full"}


def build(variant: str, img_size: int):
    import lovlanet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random text tower: fine for cost measurements
        return lovlanet.build_model(variant, img_size=img_size).eval()


def count_flops(variant: str, img_size: int) -> dict:
    """GFLOPs of the image path and of the text tower, counted on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build(variant, img_size)
        images = torch.empty(1, 3, img_size, img_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    with FlopCounterMode(display=False) as text_counter, torch.no_grad():
        model.text_encoder(model.config.prompts())
    return {"gflops": counter.get_total_flops() / 1e9, "text_gflops": text_counter.get_total_flops() / 1e9,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def attention_backend(variant: str, device: str) -> str:
    from kkattn.backends import resolve

    from lovlanet import parse_variant

    parts = parse_variant(variant)
    if "kk" in parts:
        return f"kkattn-{resolve('auto', torch.empty(1, 1, 1, 64, device=device))}"
    return "timm Attention → SDPA" + (" + materialized G mask" if "gauss" in parts else "")


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure(variant: str, img_size: int, reps: int, device: str, precision: str = "fp32") -> dict:
    """Time and peak memory (weights + activations, as the paper's GPU figure) of one variant, in this process;
    under autocast for ``precision`` bf16/fp16, with the arg-max agreement against an fp32 forward."""
    torch.manual_seed(0)
    rss = PeakRSS()
    rss.start()  # before the weights exist: the CPU figure then covers weights + activations
    model = build(variant, img_size).to(device)
    images = torch.randn(1, 3, img_size, img_size, device=device)
    dtype = AUTOCAST[precision]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def run():
        with torch.no_grad(), torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return model(images)

    timing = time_it(run, device, reps, warmup=1)
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else rss.growth_mb() / 1024

    def run_encoder():  # the image encoder alone: what the pyramid and decoder add is the rest
        with torch.no_grad(), torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            model.encoder(images)

    encoder_ms = time_it(run_encoder, device, reps, warmup=1)["ms"]
    row = {**timing, "fps": 1e3 / timing["ms"], "peak_gb": peak_gb, "encoder_ms": encoder_ms, "precision": precision}
    if dtype is not None:
        with torch.no_grad():
            reference = model(images).argmax(1)
        row["argmax_agreement"] = float((run().float().argmax(1) == reference).float().mean())
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img-size", type=int, default=1024, help="input side, a multiple of 32 (default: 1024)")
    parser.add_argument("--reps", type=int, default=3, help="timed forwards per variant (default: 3)")
    parser.add_argument("--variants", nargs="+", default=list(PAPER), choices=list(PAPER))
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=list(AUTOCAST),
                        help="fp32, and/or bf16/fp16 under torch.autocast (default: fp32)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", choices=list(AUTOCAST), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.img_size % 32 or args.img_size <= 0:
        parser.error(f"--img-size must be a positive multiple of 32, got {args.img_size}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.cell:
        print(json.dumps(measure(args.cell, args.img_size, args.reps, device, args.precision)))
        return 0

    from tqdm.auto import tqdm

    info = machine()
    rows = []
    cells = [(v, p) for v in args.variants for p in args.precisions]
    flops = {v: count_flops(v, args.img_size) for v in args.variants}
    for variant, precision in tqdm(cells, desc="variants", dynamic_ncols=True):
        row = {"variant": variant, "label": LABELS[variant], **flops[variant], "precision": precision,
               "attention": attention_backend(variant, device)}
        if device == "cpu":  # own process: peak RSS belongs to this variant alone
            proc = subprocess.run([sys.executable, "-m", "benchmarks.model", "--cell", variant, "--img-size",
                                   str(args.img_size), "--reps", str(args.reps), "--device", "cpu",
                                   "--precision", precision], capture_output=True, text=True)
            if proc.returncode != 0:
                row["status"] = "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
            else:
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:
            try:
                row.update(measure(variant, args.img_size, args.reps, device, precision))
            except torch.OutOfMemoryError:
                row["status"] = "OOM"
            torch.cuda.empty_cache()
        p = PAPER[variant]
        row.update({"paper_params_m": p[0], "paper_gflops": p[1], "paper_ms": p[2], "paper_fps": p[3], "paper_gb": p[4]})
        rows.append(row)

    date = time.strftime("%Y-%m-%d")
    memory = "max_memory_allocated" if device == "cuda" else \
        "peak RSS growth of the variant's own process from before its weights were built (weights + activations)"
    lines = [f"# Model benchmark (paper Table 6) — {info.get('gpu') if device == 'cuda' else info['cpu']} ({date})", "",
             describe(info) + ".",
             f"One {args.img_size}×{args.img_size} RGB input, batch 1, no_grad, in each row's precision (bf16/fp16: "
             f"torch.autocast; agreement: pixels whose arg-max class equals fp32's); median of {args.reps} runs after "
             f"a warm-up. Memory: {memory}. "
             "GFLOPs from FlopCounterMode (2 per multiply–add), image path only; GMACs = GFLOPs / 2. The frozen text "
             f"tower runs once per class list: {rows[0]['text_gflops']:.1f} GFLOPs for the 6 LoveDA prompts. The paper "
             "does not say how it counts FLOPs. Paper: RTX 4090. Encoder ms: the image encoder alone (ViT with its "
             "attention), timed the same way; ×enc: the whole model over it.", "",
             "| variant | precision | params (M) | GFLOPs | GMACs | ms | FPS | memory (GB) | encoder ms | ×enc "
             "| agreement | attention | paper params | paper FLOPs | paper ms | paper FPS | paper GB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        measured = (f"{r['ms']:,.0f} | {r['fps']:.2f} | {r['peak_gb']:.2f} | {r['encoder_ms']:,.0f} | "
                    f"{r['ms'] / r['encoder_ms']:.2f}" if "ms" in r else f"{r.get('status')} | — | — | — | —")
        agree = f"{100 * r['argmax_agreement']:.1f}%" if r.get("argmax_agreement") is not None else "—"
        lines.append(f"| {r['label']} | {r['precision']} | {r['params_m']:.2f} | {r['gflops']:.2f} | {r['gflops'] / 2:.2f} | "
                     f"{measured} | {agree} | {r['attention']} | "
                     f"{r['paper_params_m']:.2f} | {r['paper_gflops']:.2f} | {r['paper_ms']:.2f} | {r['paper_fps']:.2f} | "
                     f"{r['paper_gb']:.2f} |")
    text = "\n".join(lines) + "\n"
    stem = f"model-{device_slug(device)}-{date}"
    write_text(args.out / f"{stem}.md", text)
    write_csv(args.out / f"{stem}.csv", rows)
    write_json(args.out / f"{stem}.json", {"machine": info, "img_size": args.img_size, "reps": args.reps, "rows": rows})
    print(text)
    print(f"wrote {args.out / stem}.{{md,csv,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Parameter counts of the paper's Table 6 variants, next to the paper's numbers.

    python -m lovlanet.summary [--img-size 1024] [--json]

Models are built on the ``meta`` device (shapes only, no memory, no weights), so this takes seconds.
"""
from __future__ import annotations

import json
import sys
import warnings

from .cli import Parser

# Table 6 of the paper: total parameters (M) at 1024×1024, text tower included.
PAPER_PARAMS_M = {"baseline": 166.97, "kk": 159.88, "reduce_mlp": 162.25, "kk+reduce_mlp": 155.16, "full": 155.16}
TABLE6_LABELS = {"baseline": "Baseline", "kk": "KK", "reduce_mlp": "ReduceMLP", "kk+reduce_mlp": "KK + ReduceMLP",
                 "full": "Full"}


def count_parameters(variant: str, img_size: int = 1024) -> dict[str, int]:
    import torch

    from .model import build_model

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # random (here: shapeless) text tower
        return build_model(variant, img_size=img_size).summary()


def table(img_size: int = 1024) -> list[dict]:
    rows = []
    base = None
    for variant, paper in PAPER_PARAMS_M.items():
        counts = count_parameters(variant, img_size)
        base = base or counts["total"]
        rows.append({"variant": variant, "label": TABLE6_LABELS[variant], **counts,
                     "delta_vs_baseline": counts["total"] - base, "paper_total_M": paper,
                     "paper_delta_M": round(paper - PAPER_PARAMS_M["baseline"], 2)})
    return rows


def to_markdown(rows: list[dict], img_size: int) -> str:
    m = lambda n: f"{n / 1e6:.2f}"  # noqa: E731
    lines = [f"Parameters (M) at {img_size}×{img_size}; paper = Table 6 of Zeng et al. 2026.", "",
             "| variant | text | visual | decoder | total | Δ vs baseline | paper total | paper Δ | total − paper |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {m(r['text_encoder'])} | {m(r['visual_encoder'])} | {m(r['decoder'])} | "
                     f"{m(r['total'])} | {r['delta_vs_baseline'] / 1e6:+.2f} | {r['paper_total_M']:.2f} | "
                     f"{r['paper_delta_M']:+.2f} | {r['total'] / 1e6 - r['paper_total_M']:+.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = Parser(prog="python -m lovlanet.summary", description=__doc__.split("\n\n")[0],
                                     epilog="example: python -m lovlanet.summary --img-size 1024")
    parser.add_argument("--img-size", type=int, default=1024, help="input size (default: 1024, as in the paper)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of Markdown")
    args = parser.parse_args(argv)
    if args.img_size <= 0 or args.img_size % 32:
        parser.error(f"--img-size must be a positive multiple of 32, got {args.img_size}")
    rows = table(args.img_size)
    print(json.dumps(rows, indent=2) if args.json else to_markdown(rows, args.img_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU benchmark of the operator: kkattn's compiled kernel against what a PyTorch user has.

    python -m benchmarks.cpu_operator [--grids 32 64 128] [--reps 5] [--out benchmarks/results]

Each cell (method × grid × pass) runs in its own process: warm-up, then ``--reps`` timed runs
(median reported), and the peak RSS growth above the process after its inputs were allocated
("peak MB above inputs").  Methods:

* ``kkattn`` — ``kkattn.neighborhood_kk_attention(..., backend="cpu")`` (kkattn._C);
* ``sdpa+G`` — ``F.scaled_dot_product_attention(k, k, v, attn_mask=G)`` **including building G**
  (as cheaply as PyTorch allows: the outer product of the two 1-D factors, one multiply per entry);
* ``materialized`` — plain PyTorch as the paper's code does it: ``softmax(scale·K Kᵀ + G) V``
  with every N×N matrix materialized (G built as for ``sdpa+G``);
* ``chunked`` — kkattn's plain-PyTorch fallback.

Cells whose N×N buffers cannot fit the machine are reported as "skipped (N×N needs X GB)".
Writes ``cpu_operator.{md,csv,json}`` under ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time

METHODS = ("kkattn", "sdpa+G", "materialized", "chunked")
PASSES = ("fwd", "fwd+bwd")


def _cell(method: str, grid: int, pass_: str, reps: int, heads: int, dim: int, sigma: float) -> dict:
    """Runs in a child process: times one cell and measures its peak RSS growth."""
    import resource

    import torch
    import torch.nn.functional as F

    import kkattn

    torch.manual_seed(0)
    n = grid * grid
    k = torch.randn(1, heads, n, dim)
    v = torch.randn(1, heads, n, dim)
    dout = torch.randn(1, heads, n, dim)

    def prior():
        g = torch.exp(-torch.arange(grid, dtype=torch.float32) ** 2 / (2 * sigma * sigma))
        idx = torch.arange(grid)
        g1 = g[(idx[:, None] - idx[None, :]).abs()]  # (grid, grid) 1-D factor table
        return (g1[:, None, :, None] * g1[None, :, None, :]).reshape(n, n)

    fns = {
        "kkattn": lambda kk, vv: kkattn.neighborhood_kk_attention(kk, vv, sigma, backend="cpu"),
        "chunked": lambda kk, vv: kkattn.neighborhood_kk_attention(kk, vv, sigma, backend="chunked"),
        "materialized": lambda kk, vv: torch.softmax((kk @ kk.transpose(-1, -2)) * dim ** -0.5 + prior(), -1) @ vv,
        "sdpa+G": lambda kk, vv: F.scaled_dot_product_attention(kk, kk, vv, attn_mask=prior()),
    }
    fn = fns[method]

    def run():
        if pass_ == "fwd":
            with torch.no_grad():
                fn(k, v)
        else:
            kk, vv = k.detach().requires_grad_(), v.detach().requires_grad_()
            fn(kk, vv).backward(dout)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()  # warm-up (also loads the extension)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    return {"ms": statistics.median(times) * 1e3, "peak_mb": peak / 1024, "threads": torch.get_num_threads()}


def _run_cell(method, grid, pass_, args) -> dict:
    n = grid * grid
    if method in ("materialized", "sdpa+G"):
        # Materialized: ≥ 3 fp32 N×N per head (logits, probabilities, prior); SDPA one N×N mask
        # (plus, in its backward, the mask-shaped gradient buffers).
        per = (3 * args.heads if method == "materialized" else (1 if pass_ == "fwd" else 3)) * n * n * 4
        if per > args.memory_limit_gb * 2**30:
            return {"skipped": f"N×N buffers need {per / 2**30:.0f} GB"}
    cmd = [sys.executable, "-m", "benchmarks.cpu_operator", "--cell", method, str(grid), pass_,
           "--reps", str(args.reps), "--heads", str(args.heads), "--dim", str(args.dim), "--sigma", str(args.sigma)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.cell_timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"stopped after {args.cell_timeout / 60:.0f} min"}
    if proc.returncode != 0:
        return {"skipped": f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _write(results: list[dict], args, quiet: bool = False) -> None:
    os.makedirs(args.out, exist_ok=True)
    import torch
    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "heads": args.heads, "head_dim": args.dim, "batch": 1, "sigma": args.sigma,
            "dtype": "float32", "reps": args.reps, "date": time.strftime("%Y-%m-%d")}
    with open(os.path.join(args.out, "cpu_operator.json.tmp"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    os.replace(os.path.join(args.out, "cpu_operator.json.tmp"), os.path.join(args.out, "cpu_operator.json"))
    with open(os.path.join(args.out, "cpu_operator.csv.tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["grid", "n_tokens", "pass", "method", "ms", "peak_mb", "note"])
        w.writeheader()
        for r in results:
            w.writerow({k: r.get(k, "") for k in w.fieldnames})
    os.replace(os.path.join(args.out, "cpu_operator.csv.tmp"), os.path.join(args.out, "cpu_operator.csv"))

    def cell(r):
        return f"{r['ms']:,.0f} ms · {r['peak_mb']:,.0f} MB" if "ms" in r else r["note"]

    lines = [f"# CPU operator benchmark ({meta['date']})", "",
             f"{meta['machine']}, torch {meta['torch']}, fp32, B=1, H={args.heads}, D={args.dim}, σ={args.sigma}; "
             f"median of {args.reps} runs after a warm-up, each cell in its own process; "
             "MB = peak RSS growth above the process after its inputs were allocated.", "",
             "| grid (N) | pass | " + " | ".join(METHODS) + " | kkattn vs sdpa+G | kkattn vs materialized |",
             "|---|---|" + "---|" * len(METHODS) + "---|---|"]
    for grid in sorted({r["grid"] for r in results}):
        for pass_ in PASSES:
            row = {r["method"]: r for r in results if r["grid"] == grid and r["pass"] == pass_}
            ratios = []
            for other in ("sdpa+G", "materialized"):
                a, b = row.get("kkattn", {}), row.get(other, {})
                if "ms" in a and "ms" in b:
                    r = b["ms"] / a["ms"]
                    ratios.append(f"{r:.2f}× faster" if r >= 1 else f"{1 / r:.2f}× slower")
                else:
                    ratios.append("—")
            lines.append(f"| {grid}×{grid} ({grid * grid}) | {pass_} | "
                         + " | ".join(cell(row[m]) if m in row else "—" for m in METHODS)
                         + " | " + " | ".join(ratios) + " |")
    with open(os.path.join(args.out, "cpu_operator.md.tmp"), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(os.path.join(args.out, "cpu_operator.md.tmp"), os.path.join(args.out, "cpu_operator.md"))
    if not quiet:
        print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_operator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids", type=int, nargs="+", default=[32, 64, 128], help="square grid sides (default 32 64 128)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--sigma", type=float, default=2.0)
    p.add_argument("--memory-limit-gb", type=float, default=16.0, help="skip cells whose N×N buffers exceed this")
    p.add_argument("--cell-timeout", type=float, default=900, help="seconds before a cell is stopped (default 900)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    p.add_argument("--cell", nargs=3, metavar=("METHOD", "GRID", "PASS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cell:
        method, grid, pass_ = args.cell
        print(json.dumps(_cell(method, int(grid), pass_, args.reps, args.heads, args.dim, args.sigma)))
        return 0
    try:
        from tqdm import tqdm
    except ImportError:  # progress bar is a nicety, not a dependency
        def tqdm(it, **_):
            return it
    cells = [(m, g, ps) for g in args.grids for ps in PASSES for m in args.methods]
    # Rerunning some cells keeps the others from an earlier run in the same --out.
    results = []
    previous = os.path.join(args.out, "cpu_operator.json")
    if os.path.exists(previous):
        with open(previous) as f:
            results = [r for r in json.load(f)["results"] if (r["method"], r["grid"], r["pass"]) not in cells]
    for method, grid, pass_ in tqdm(cells, desc="cells", unit="cell"):
        r = _run_cell(method, grid, pass_, args)
        results.append({"method": method, "grid": grid, "n_tokens": grid * grid, "pass": pass_,
                        **({"note": r["skipped"]} if "skipped" in r else r)})
        _write(results, args, quiet=True)  # keep what is done if a long run is interrupted
    _write(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Operator benchmark: kkattn's backends against the PyTorch reference and the best peers.

    python -m benchmarks.attention [--quick] [--grids 16 32 64 128 1x4096] [--batch 1] [--dtypes ...] [--reps 10]

Rows are token grids (``32`` is 32×32; ``1x4096`` is one row of 4096 tokens, which must cost what the
square grid of the same N costs) with ViT-B's heads (H = 12, D = 64) and σ = 2, forward and
forward+backward. Columns are every kkattn backend the device has (``cpu``, ``cuda``,
``triton``, ``chunked``), and:

* ``reference`` — kkattn's materialized PyTorch reference (N×N prior, logits, probabilities);
* ``sdpa+G`` — ``F.scaled_dot_product_attention(k, k, v, attn_mask=G)``, building G included
  (as cheaply as PyTorch allows: the outer product of the separable factors; its build time is
  also shown on its own);
* ``flex`` — FlexAttention compiled with the equivalent ``score_mod``, the best of three forms
  (exp in the mod, a 1-D table lookup, a stored G); forward only on CPU (no CPU backward);
* ``sdpa`` — on GPUs, SDPA with no bias at all: the speed-of-light reference.

Per cell: median, min and max time over ``--reps`` runs after a warm-up (device-synchronized),
achieved TFLOP/s from the op's FLOP formula (4·B·H·N²·D forward, 14·B·H·N²·D forward+backward,
checked once against ``FlopCounterMode``) and as a share of the dense GEMM rate measured in the
same process (the "limit": a 2048³ ``torch.mm``), and peak memory above the inputs: the process's peak
RSS growth on CPUs (each method × grid in its own process), ``torch.cuda.max_memory_allocated``
on GPUs. Before any time is reported, the output is compared with a float64 oracle on the first
head; a wrong result is reported as WRONG. Out-of-memory is reported as OOM.

Writes ``benchmarks/results/<device>-<date>[-quick].{md,csv,json,png}``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import RESULTS, PeakRSS, describe, device_slug, machine, ratio_text, time_it, write_csv, write_json, \
    write_text

PASSES = ("fwd", "fwd+bwd")
TOLERANCE = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FLEX_FORMS = ("exp", "table", "stored")


def gemm_limit(device: str, dtype, size: int = 2048, reps: int = 5) -> dict:
    """The dense GEMM rate of this process (``size``³ matmul in ``dtype``): the limit an attention kernel
    built from tile GEMMs can approach. Measured in every cell's own process, next to its timings."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    timing = time_it(lambda: torch.mm(a, b), device, reps, warmup=1)
    return {"gemm_tflops": 2 * size ** 3 / (timing["ms"] * 1e-3) / 1e12, "gemm_size": size}


def flops(batch: int, heads: int, n: int, dim: int, pass_: str) -> float:
    return (4 if pass_ == "fwd" else 14) * batch * heads * n * n * dim


def work_share(method: str, batch: int, heads: int, pass_: str) -> float:
    """The FLOPs a method actually does as a share of the formula's.  The C++ kernel's tile-pair
    schedule (B·H ≥ 2·threads, csrc/kkattn_cpu.cpp) visits each unordered pair once: 3 of the
    forward's 4 N²D and 7 of the backward's 10 (the diagonal tiles, 1/N_blocks of the work, are
    left out of this count).  Everything else does the formula's work."""
    if method != "kkattn-cpu" or batch * heads < 2 * torch.get_num_threads():
        return 1.0
    return 3 / 4 if pass_ == "fwd" else (3 + 7) / 14


def kernel_path(method: str, k, sigma: float, dim: int) -> dict:
    """The path the C++ kernel takes for the benchmark's keys: smoother, online (fallback) or mixed."""
    if method != "kkattn-cpu":
        return {}
    from kkattn.backends.cpu import smoother_path
    return {"path": smoother_path(k, sigma is not None, 0, dim ** -0.5)}


def check_flop_formula() -> str:
    """FlopCounterMode on the op at a small size must equal the formula used for TFLOP/s."""
    import kkattn
    from torch.utils.flop_counter import FlopCounterMode

    b, h, n, d = 1, 2, 64, 16
    k = torch.randn(b, h, n, d, requires_grad=True)
    v = torch.randn(b, h, n, d, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        kkattn.neighborhood_kk_attention(k, v, 2.0, grid=(8, 8), backend="chunked").sum().backward()
    counted, formula = counter.get_total_flops(), flops(b, h, n, d, "fwd+bwd")
    if counted != formula:
        raise RuntimeError(f"FlopCounterMode counts {counted} FLOPs, the formula gives {formula}")
    return "FlopCounterMode agrees with 4·B·H·N²·D (fwd) + 10·B·H·N²·D (bwd)"


def methods_for(device: str) -> list[str]:
    import kkattn
    from kkattn.backends import AUTO_ORDER

    status = kkattn.available_backends()
    names = []
    for backend in AUTO_ORDER[device]:
        if status[backend].available and not (backend == "triton" and device != "cuda"):
            names.append(f"kkattn-{backend}")
    # sdpa: no bias at all (PyTorch's flash attention, also on CPUs): the floor a fused prior competes with.
    names += ["reference", "sdpa+G", "flex", "sdpa"]
    return names


def inputs(batch, heads, n, dim, dtype, device):
    generator = torch.Generator().manual_seed(0)
    make = lambda: torch.randn(batch, heads, n, dim, generator=generator).to(device=device, dtype=dtype)  # noqa: E731
    return make(), make(), make()


def n2_bytes(method: str, batch: int, heads: int, n: int, pass_: str, elem: int) -> int:
    """Bytes of the N×N buffers a materializing method needs (to skip what cannot fit)."""
    if method == "reference":
        return (3 if pass_ == "fwd" else 6) * batch * heads * n * n * 4 + n * n * 4
    if method == "sdpa+G" or (method == "flex"):
        return n * n * elem * (1 if pass_ == "fwd" else 3)
    return 0


def parse_grid(spec) -> tuple[int, int]:
    """``32`` → (32, 32); ``"1x4096"`` → (1, 4096)."""
    text = str(spec).lower().replace("×", "x")
    h, _, w = text.partition("x")
    shape = (int(h), int(w or h))
    if min(shape) <= 0:
        raise ValueError(f"a grid must have positive sides, got {spec!r}")
    return shape


def grid_label(spec) -> str:
    h, w = parse_grid(spec)
    return f"{h}×{w}"


def separable_prior(grid, sigma: float, dtype, device) -> torch.Tensor:
    """G for an h×w grid as cheaply as PyTorch allows a user to build it: one multiply per entry,
    the outer product of the row and column factors g(Δr)·g(Δc)."""
    h, w = parse_grid(grid)

    def factor(n):
        idx = torch.arange(n, device=device)
        return torch.exp(-((idx[:, None] - idx[None, :]).float() ** 2) / (2 * sigma * sigma))

    return (factor(h)[:, None, :, None] * factor(w)[None, :, None, :]).reshape(h * w, h * w).to(dtype)


def make_fn(method: str, grid, sigma: float, dtype, device, form: str = "exp"):
    """``fn(k, v) -> out`` for a method (``form`` picks the FlexAttention score_mod)."""
    import kkattn

    shape = parse_grid(grid)
    width = shape[1]
    if method.startswith("kkattn-"):
        backend = method.split("-", 1)[1]
        return lambda k, v: kkattn.neighborhood_kk_attention(k, v, sigma, grid=shape, backend=backend)
    if method == "reference":
        return lambda k, v: kkattn.reference.neighborhood_kk_attention(k, v, sigma, grid=shape)
    if method == "sdpa+G":
        def sdpa_g(k, v):
            return F.scaled_dot_product_attention(k, k, v, attn_mask=separable_prior(grid, sigma, k.dtype, k.device))
        return sdpa_g
    if method == "sdpa":
        return lambda k, v: F.scaled_dot_product_attention(k, k, v)
    if method == "flex":
        from torch.nn.attention.flex_attention import flex_attention

        neg = -1.0 / (2 * sigma * sigma)
        compiled = torch.compile(flex_attention, dynamic=False)
        if form == "exp":
            def score_mod(score, b, h, q, kv):
                dr = (q // width - kv // width).to(torch.float32)
                dc = (q % width - kv % width).to(torch.float32)
                return score + torch.exp((dr * dr + dc * dc) * neg)
        elif form == "table":
            table = torch.exp(torch.arange(max(shape), device=device, dtype=torch.float32) ** 2 * neg)

            def score_mod(score, b, h, q, kv):
                return score + table[(q // width - kv // width).abs()] * table[(q % width - kv % width).abs()]
        else:
            stored = kkattn.gaussian_prior(shape, sigma, dtype=torch.float32, device=device)

            def score_mod(score, b, h, q, kv):
                return score + stored[q, kv]
        return lambda k, v: compiled(k, k, v, score_mod=score_mod)
    raise ValueError(method)


def oracle_file(grid, args, dtype, folder: Path, prior: bool = True) -> Path:
    """float64 output of head 0 on the benchmark's (dtype-rounded) inputs, computed once per grid; without the
    prior for ``sdpa``, which computes plain attention."""
    import kkattn

    h, w = parse_grid(grid)
    path = folder / f"oracle_{h}x{w}_{str(dtype).split('.')[-1]}{'' if prior else '_noprior'}.pt"
    if not path.exists():
        k, v, _ = inputs(args.batch, args.heads, h * w, args.dim, dtype, "cpu")
        k, v = k[:1, :1].double(), v[:1, :1].double()
        ref = kkattn.neighborhood_kk_attention(k, v, args.sigma if prior else None, grid=(h, w), backend="chunked")
        torch.save(ref, path)
    return path


def run_cell(method: str, grid, dtype_name: str, args, oracle: Path) -> list[dict]:
    """Both passes of one method × grid × dtype, in this process. Returns one row per pass."""
    device, dtype = args.device, DTYPES[dtype_name]
    h, w = parse_grid(grid)
    n = h * w
    torch.manual_seed(0)
    k, v, dout = inputs(args.batch, args.heads, n, args.dim, dtype, device)
    if method == "sdpa":  # plain attention, checked against its own oracle
        oracle = oracle_file(grid, args, dtype, oracle.parent, prior=False)
    ref = torch.load(oracle, weights_only=True)
    limit = gemm_limit(device, dtype)
    rows = []
    forms = FLEX_FORMS if method == "flex" else ("",)
    for pass_ in PASSES:
        base = {"method": method, "grid": grid_label(grid), "n_tokens": n, "pass": pass_, "dtype": dtype_name}
        if method == "flex" and pass_ == "fwd+bwd" and device == "cpu":
            rows.append({**base, "status": "n/a (FlexAttention has no CPU backward)"})
            continue
        best = None
        for form in forms:
            row = dict(base, form=form) if form else dict(base)
            try:
                row.update(_measure(method, form or "exp", grid, pass_, k, v, dout, ref, dtype, args))
                if row["status"] == "ok":
                    share = work_share(method, args.batch, args.heads, pass_)
                    row.update(limit, pct_of_gemm=100 * row["tflops"] / limit["gemm_tflops"],
                               actual_tflops=row["tflops"] * share,
                               actual_pct_of_gemm=100 * row["tflops"] * share / limit["gemm_tflops"],
                               **kernel_path(method, k, args.sigma, args.dim))
            except torch.OutOfMemoryError:
                row["status"] = "OOM"
            except Exception as exc:  # a peer that cannot run this shape is reported, not fatal
                row["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            if device == "cuda":
                torch.cuda.empty_cache()
            if form:
                rows.append({**row, "method": f"flex[{form}]"})
            if "ms" in row and (best is None or row["ms"] < best["ms"]):
                best = row
        if method == "flex":
            rows.append({**(best or {**base, "status": rows[-1].get("status", "failed")}), "method": "flex"})
        else:
            rows.append(row)
    return rows


def _measure(method, form, grid, pass_, k, v, dout, ref, dtype, args) -> dict:
    device = args.device
    fn = make_fn(method, grid, args.sigma, dtype, device, form)
    out = fn(k, v)  # compile / load libraries; also the correctness gate
    err = ((out[:1, :1].double().cpu() - ref).abs().max() / ref.abs().max()).item()
    if not err <= TOLERANCE[dtype]:
        return {"status": f"WRONG (max rel err {err:.1e})", "max_rel_err": err}
    del out
    if pass_ == "fwd":
        def run():
            with torch.no_grad():
                fn(k, v)
    else:
        kk, vv = k.detach().requires_grad_(), v.detach().requires_grad_()

        def run():
            kk.grad = vv.grad = None
            fn(kk, vv).backward(dout)
    rss = PeakRSS()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        rss.start()  # after the gate: one-time library loading is not the method's memory
    timing = time_it(run, device, args.reps, warmup=1)
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if device == "cuda" else rss.growth_mb()
    result = {**timing, "peak_mb": peak, "max_rel_err": err, "status": "ok",
              "tflops": flops(args.batch, args.heads, k.shape[2], args.dim, pass_) / (timing["ms"] * 1e-3) / 1e12}
    if method == "sdpa+G" and pass_ == "fwd":
        result["g_build_ms"] = time_it(lambda: separable_prior(grid, args.sigma, dtype, device), device, 3)["ms"]
    return result


def _subprocess_cell(method, grid, dtype_name, args, oracle: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "benchmarks.attention", "--cell", method, str(grid), dtype_name, str(oracle),
           "--batch", str(args.batch), "--heads", str(args.heads), "--dim", str(args.dim), "--sigma", str(args.sigma),
           "--reps", str(args.reps), "--device", args.device]
    h, w = parse_grid(grid)
    base = {"method": method, "grid": grid_label(grid), "n_tokens": h * w, "dtype": dtype_name}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.cell_timeout)
    except subprocess.TimeoutExpired:
        return [{**base, "pass": p, "status": f"stopped after {args.cell_timeout:.0f} s"} for p in PASSES]
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        status = "OOM" if proc.returncode in (-9, 137) or "memory" in last.lower() else f"failed: {last[:120]}"
        return [{**base, "pass": p, "status": status} for p in PASSES]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- report
def primary(methods: list[str]) -> str:
    return next(m for m in methods if m.startswith("kkattn-"))


def cell_text(row: dict | None) -> str:
    if row is None:
        return "—"
    if row.get("status") != "ok":
        return row.get("status", "—")
    spread = f"{row['ms_min']:,.1f}–{row['ms_max']:,.1f}"
    gemm = ""
    if "pct_of_gemm" in row:
        actual = row.get("actual_pct_of_gemm", row["pct_of_gemm"])
        gemm = (f" ({row['pct_of_gemm']:.0f}% of GEMM)" if abs(actual - row["pct_of_gemm"]) < 0.5
                else f" ({row['pct_of_gemm']:.0f}% of GEMM; actual {actual:.0f}%)")
    path = f" · {row['path']}" if row.get("path") else ""
    return f"{row['ms']:,.1f} ms ({spread}) · {row['peak_mb']:,.0f} MB · {row['tflops']:.2f} TF/s{gemm}{path}"


def limit_line(rows: list[dict], dtype: str) -> str:
    """The same-process GEMM rates of a table's cells, as its "limit" line."""
    rates = sorted(r["gemm_tflops"] for r in rows if r.get("dtype") == dtype and "gemm_tflops" in r)
    if not rates:
        return ""
    size = next(r["gemm_size"] for r in rows if "gemm_size" in r)
    return (f"Limit: a {size}³ {dtype} GEMM (`torch.mm`) in each cell's own process runs at {rates[len(rates) // 2]:.3f} "
            f"TF/s (median; {rates[0]:.3f}–{rates[-1]:.3f}); each cell's TF/s is also given as a share of its "
            f"process's GEMM rate. TF/s are equivalent rates: the op's FLOP formula over the time, whatever "
            f"work a kernel saves; where a kernel does less (the C++ kernel's tile-pair schedule: 3/4 of the "
            f"forward's, 10/14 of forward+backward's), \"actual\" is the share its own FLOPs reach. "
            f"kkattn-cpu cells name the path the kernel took: smoother (one exp per unordered pair, no online "
            f"softmax) or online (the fallback for keys whose norms differ widely).")


def markdown(rows: list[dict], methods: list[str], meta: dict) -> str:
    mine = primary(methods)
    lines = [f"# Operator benchmark — {meta['device_name']} ({meta['date']}{', quick' if meta['quick'] else ''})", "",
             describe(meta["machine"]) + ".",
             f"B={meta['batch']}, H={meta['heads']}, D={meta['dim']}, σ={meta['sigma']}; median (min–max) of "
             f"{meta['reps']} runs after a warm-up; MB = {meta['memory']}; TF/s from the op's FLOP formula "
             f"({meta['flop_check']}). Every timed output matched a float64 oracle on head 0 (else: WRONG).", ""]
    for dtype in meta["dtypes"]:
        for pass_ in PASSES:
            cols = [m for m in methods if not (m == "flex" and pass_ == "fwd+bwd" and meta["device"] == "cpu")]
            lines += [f"## {pass_}, {dtype}", "", *([limit_line(rows, dtype), ""] if limit_line(rows, dtype) else []),
                      "| grid (N) | " + " | ".join(cols) + f" | {mine} vs reference | {mine} vs sdpa+G | "
                      f"{mine} vs sdpa (no bias) | G build |",
                      "|---|" + "---|" * (len(cols) + 4)]
            for grid in map(grid_label, meta["grids"]):
                by = {r["method"]: r for r in rows if r["grid"] == grid and r["pass"] == pass_ and r["dtype"] == dtype}
                ratios = []
                for other in ("reference", "sdpa+G", "sdpa"):
                    a, b = by.get(mine, {}), by.get(other, {})
                    ratios.append(ratio_text(a["ms"], b["ms"]) if a.get("status") == "ok" and b.get("status") == "ok" else "—")
                g = next((r.get("g_build_ms") for r in rows if r["method"] == "sdpa+G" and r["grid"] == grid
                          and r["dtype"] == dtype and r.get("g_build_ms") is not None), None)
                n = next((r["n_tokens"] for r in by.values()), "?")
                lines.append(f"| {grid} ({n}) | " + " | ".join(cell_text(by.get(m)) for m in cols)
                             + " | " + " | ".join(ratios) + f" | {f'{g:,.1f} ms' if g is not None else '—'} |")
            lines.append("")
    flex = [r for r in rows if r["method"].startswith("flex[") and r.get("status") == "ok"]
    if flex:
        lines += ["FlexAttention forms (ms): " + "; ".join(
            f"{r['grid']} {r['pass']} {r['dtype']} {r['method'][5:-1]} {r['ms']:,.1f}" for r in flex), ""]
    return "\n".join(lines)


def plot(rows: list[dict], methods: list[str], meta: dict, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install 'kkattn[bench]'): no plot"
    dtype = meta["dtypes"][0]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for col, pass_ in enumerate(PASSES):
        for m in methods:
            pts = sorted((r["n_tokens"], r["ms"], r["peak_mb"]) for r in rows  # square grids: one line per method
                         if r["method"] == m and r["pass"] == pass_ and r["dtype"] == dtype and r.get("status") == "ok"
                         and len(set(r["grid"].split("×"))) == 1)
            if pts:
                n, ms, mb = zip(*pts)
                axes[0, col].plot(n, ms, marker="o", label=m)
                axes[1, col].plot(n, [max(x, 0.1) for x in mb], marker="o", label=m)
        axes[0, col].set_title(f"{pass_}, {dtype}: time")
        axes[1, col].set_title(f"{pass_}, {dtype}: peak memory above inputs")
        axes[0, col].set_ylabel("ms (median)")
        axes[1, col].set_ylabel("MB")
        axes[1, col].set_xlabel("tokens N")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"neighborhood key–key attention, {meta['device_name']}, B={meta['batch']} H={meta['heads']} D={meta['dim']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16×16 and 32×32, 3 reps, no FlexAttention on CPU (~1 min)")
    parser.add_argument("--grids", type=parse_grid, nargs="+", metavar="GRID",
                        help="grid sides (32 = 32×32) or HxW (1x4096) (default: 16 32 64 128 1x4096; --quick: 16 32 1x1024)")
    parser.add_argument("--batch", type=int, default=1, help="batch size B (default: 1)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--sigma", type=float, default=2.0)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="default: fp32 on CPU, bf16 fp16 on GPU")
    parser.add_argument("--methods", nargs="+", help="subset of the methods (default: all available)")
    parser.add_argument("--reps", type=int, help="timed runs per cell (default: 10; 3 with --quick)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--memory-limit-gb", type=float, help="skip cells whose N×N buffers exceed this "
                        "(default: 60%% of RAM / GPU memory)")
    parser.add_argument("--cell-timeout", type=float, default=1200, help="CPU: seconds per method × grid (default: 1200)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="METHOD@GRID",
                        help="cells not to run, e.g. kkattn-chunked@128 (reported as not run)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    parser.add_argument("--cell", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.reps = args.reps or (3 if args.quick else 10)
    if args.cell:  # child process: one method × grid × dtype on the CPU
        method, grid, dtype_name, oracle = args.cell
        print(json.dumps(run_cell(method, grid, dtype_name, args, Path(oracle))))
        return 0

    grids = [f"{h}x{w}" for h, w in (args.grids or (
        [(16, 16), (32, 32), (1, 1024)] if args.quick else [(16, 16), (32, 32), (64, 64), (128, 128), (1, 4096)]))]
    dtypes = args.dtypes or (["fp32"] if args.device == "cpu" else ["bf16", "fp16"])
    methods = methods_for(args.device)
    if args.quick and args.device == "cpu":
        methods = [m for m in methods if m != "flex"]
    if args.methods:
        unknown = set(args.methods) - set(methods)
        if unknown:
            parser.error(f"unknown or unavailable methods {sorted(unknown)}; available: {methods}")
        methods = [m for m in methods if m in args.methods]
    if args.device == "cuda":
        capacity = torch.cuda.get_device_properties(0).total_memory
    else:
        import os

        capacity = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = (args.memory_limit_gb * 2**30) if args.memory_limit_gb else 0.6 * capacity

    info = machine()
    meta = {"device": args.device, "device_name": info.get("gpu", info["cpu"]) if args.device == "cuda" else info["cpu"],
            "machine": info, "date": time.strftime("%Y-%m-%d"), "quick": args.quick, "batch": args.batch,
            "heads": args.heads, "dim": args.dim, "sigma": args.sigma, "reps": args.reps, "grids": grids,
            "dtypes": dtypes, "methods": methods, "flop_check": check_flop_formula(),
            "memory": "peak RSS growth of the cell's process above its inputs" if args.device == "cpu"
            else "torch.cuda.max_memory_allocated above the inputs"}
    from tqdm.auto import tqdm

    rows: list[dict] = []
    cells = [(m, g, d) for d in dtypes for g in grids for m in methods]
    with tempfile.TemporaryDirectory() as tmp:
        for method, grid, dtype_name in tqdm(cells, desc="benchmark cells", unit="cell", dynamic_ncols=True):
            h, w = parse_grid(grid)
            if {f"{method}@{grid}", f"{method}@{h}"} & set(args.skip) and (h == w or f"{method}@{grid}" in args.skip):
                rows += [{"method": method, "grid": grid_label(grid), "n_tokens": h * w, "pass": p, "dtype": dtype_name,
                          "status": "not run (--skip)"} for p in PASSES]
                continue
            elem = torch.finfo(DTYPES[dtype_name]).bits // 8
            need = max(n2_bytes(method, args.batch, args.heads, h * w, p, elem) for p in PASSES)
            if need > limit:
                rows += [{"method": method, "grid": grid_label(grid), "n_tokens": h * w, "pass": p, "dtype": dtype_name,
                          "status": f"skipped (N×N buffers need {need / 2**30:.0f} GB)"} for p in PASSES]
                continue
            oracle = oracle_file(grid, args, DTYPES[dtype_name], Path(tmp))
            rows += (_subprocess_cell(method, grid, dtype_name, args, oracle) if args.device == "cpu"
                     else run_cell(method, grid, dtype_name, args, oracle))
    mine = primary(methods)
    for row in rows:  # ratio to the reference, per pass/grid/dtype
        ref = next((r for r in rows if r["method"] == "reference" and r["grid"] == row["grid"]
                    and r["pass"] == row["pass"] and r["dtype"] == row["dtype"] and r.get("status") == "ok"), None)
        if ref and row.get("status") == "ok":
            row["speedup_vs_reference"] = ref["ms"] / row["ms"]
    stem = f"{device_slug(args.device)}-{meta['date']}{'-quick' if args.quick else ''}"
    text = markdown(rows, methods, meta)
    picture = plot(rows, methods, meta, args.out / f"{stem}.png")
    if picture.endswith(".png"):
        text += f"\nPlot: `{Path(picture).name}` (beside this file)\n"
    else:
        text += f"\n{picture}\n"
    write_text(args.out / f"{stem}.md", text)
    write_csv(args.out / f"{stem}.csv", rows)
    write_json(args.out / f"{stem}.json", {"meta": meta, "rows": rows})
    print(text)
    print(f"wrote {args.out / stem}.{{md,csv,json,png}}  (main kkattn column: {mine})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

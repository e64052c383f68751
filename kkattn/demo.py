"""``kkattn-demo``: run the operator, check it against the float64 reference, show the memory saved.

Default: the paper's setting (ViT-B/32 at 1024 px: a 32×32 token grid, 12 heads, head dim 64,
σ = 2) on the CPU.  ``--accuracy`` prints instead the max errors of each backend and dtype
against the float64 reference, as a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _grid(text: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must look like 32x32, got {text!r}") from None
    return h, w


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    # The docstring is reStructuredText; --help shows it without the markup (argparse prints text as it is).
    p = argparse.ArgumentParser(prog="kkattn-demo", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=_grid, default=(32, 32), help="token grid HxW (default 32x32)")
    p.add_argument("--batch", type=_positive, default=1, help="batch size B (default 1)")
    p.add_argument("--heads", type=_positive, default=12, help="attention heads H (default 12, ViT-B)")
    p.add_argument("--head-dim", type=_positive, default=64, help="head dimension D (default 64, ViT-B)")
    p.add_argument("--sigma", type=float, default=2.0, help="σ of the prior in grid units (default 2.0)")
    p.add_argument("--prefix", type=int, default=0, help="prefix tokens (CLS, registers) with no prior")
    p.add_argument("--backend", default="auto", help="auto, chunked, triton, ... (default auto)")
    p.add_argument("--device", default="auto", help="auto (the GPU if there is one, else the CPU), cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0, help="seed of the random keys and values (default 0)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--accuracy", action="store_true",
                   help="print a Markdown table of max errors per backend and dtype (small sizes)")
    return p


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _device(name: str) -> str:
    return ("cuda" if _cuda() else "cpu") if name == "auto" else name


def _peak_rss() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def _run_demo(args) -> dict:
    import torch

    import kkattn
    from kkattn import backends, reference

    torch.manual_seed(args.seed)
    h, w = args.grid
    n = h * w + args.prefix
    shape = (args.batch, args.heads, n, args.head_dim)
    dev = torch.device(args.device)
    k, v, dout = (torch.randn(shape, device=dev) for _ in range(3))
    name = backends.resolve(args.backend, k)
    print(f"kkattn {kkattn.__version__} · torch {torch.__version__} · device {dev}")
    for status in kkattn.available_backends().values():
        print(f"  {status}")
    print(f"\nproblem: B={args.batch} H={args.heads} grid {h}x{w} (+{args.prefix} prefix) N={n} "
          f"D={args.head_dim} σ={args.sigma} fp32 · backend {name!r}\n")

    def fwd_bwd(fn):
        kk, vv = k.clone().requires_grad_(), v.clone().requires_grad_()
        start = time.perf_counter()
        out = fn(kk, vv)
        out.backward(dout.to(out.dtype))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out.detach(), kk.grad, vv.grad, time.perf_counter() - start

    op = lambda kk, vv: kkattn.neighborhood_kk_attention(  # noqa: E731
        kk, vv, args.sigma, grid=(h, w), num_prefix_tokens=args.prefix, backend=name)
    ref32 = lambda kk, vv: reference.neighborhood_kk_attention(  # noqa: E731
        kk, vv, args.sigma, grid=(h, w), num_prefix_tokens=args.prefix)
    ref64 = lambda kk, vv: reference.neighborhood_kk_attention(  # noqa: E731
        kk.double(), vv.double(), args.sigma, grid=(h, w), num_prefix_tokens=args.prefix)

    # Peak memory first, while the process is fresh: the growth of its peak RSS (ru_maxrss, a
    # high-water mark) over the inputs.  kkattn runs before the materialized reference, whose peak
    # is the higher one, so each figure is that method's own.  This sees inside compiled kernels.
    rss_peak = _peak_rss if dev.type == "cpu" else (lambda: torch.cuda.max_memory_allocated())
    base = rss_peak()
    fwd_bwd(op)  # also the warm-up (Triton compiles on first call)
    peak_op = rss_peak() - base
    fwd_bwd(ref32)
    peak_ref = rss_peak() - base
    got = fwd_bwd(op)
    ref = fwd_bwd(ref32)
    oracle = fwd_bwd(ref64)
    errors = {}
    for label, a, b in zip(("out", "dk", "dv"), got[:3], oracle[:3]):
        errors[label] = (a.double() - b).abs().max().item()
    ref_errors = {label: (a.double() - b).abs().max().item() for label, a, b in zip(("out", "dk", "dv"), ref[:3], oracle[:3])}

    nxn = args.batch * args.heads * n * n * 4
    result = {
        "problem": {"batch": args.batch, "heads": args.heads, "grid": [h, w], "prefix": args.prefix,
                    "n_tokens": n, "head_dim": args.head_dim, "sigma": args.sigma, "device": str(dev)},
        "backend": name,
        "max_abs_error_vs_float64": errors,
        "reference_fp32_max_abs_error_vs_float64": ref_errors,
        "fwd_bwd_seconds": {"kkattn": got[3], "reference_fp32": ref[3]},
        "peak_memory_growth_bytes": {"kkattn": peak_op, "reference_fp32": peak_ref},
        "nxn_logits_fp32_bytes": nxn,
    }
    print("max |error| vs the float64 reference   (the fp32 reference's own error in brackets)")
    for label in errors:
        print(f"  {label:>3}: {errors[label]:.2e}   [{ref_errors[label]:.2e}]")
    print(f"\nforward+backward: kkattn {got[3] * 1e3:,.0f} ms · materialized reference {ref[3] * 1e3:,.0f} ms")
    print(f"peak memory above the inputs, forward+backward ({'process RSS' if dev.type == 'cpu' else 'CUDA'}): "
          f"kkattn {_mib(peak_op)} · reference {_mib(peak_ref)} "
          f"({peak_ref / max(1, peak_op):.1f}x more, {_mib(max(0, peak_ref - peak_op))} saved)")
    never = {"cpu": "the C++ kernel never allocates", "triton": "the Triton kernels never allocate",
             "cuda": "the CUDA kernels never allocate"}
    how = (f"{never[name]} an N×N matrix" if name in never else
           f"the chunked backend works on blocks of {backends.chunked.block_rows(args.batch, args.heads, n)} query rows"
           if name == "chunked" else "the reference materializes them")
    print(f"for scale: the N×N fp32 logits of all {args.batch * args.heads} heads take {_mib(nxn)}; {how}")
    return result


# (name, head dim, key scale): random keys, and the "peaked" regime where the diagonal logit k_i·k_i
# dominates each row (keys ×1.5: 1 − P_ii ~ 1e-5 at D = 64, ~1e-8 at D = 128), key–key attention's
# normal operating point and where a backward's δ loses the most.
_REGIMES = (("random", 32, 1.0), ("peaked", 64, 1.5), ("peaked", 128, 1.5))
_MATERIALIZED = "PyTorch (materialized)"


def _run_accuracy(args) -> dict:
    import math

    import torch

    import kkattn
    from kkattn import reference

    torch.manual_seed(args.seed)
    grid, prefix, heads = (9, 11), 1, 3
    n = grid[0] * grid[1] + prefix
    dev = torch.device(args.device)

    def grads(fn, dt, device, k, v, sigma, dout):
        kk = k.detach().to(device=device, dtype=dt).requires_grad_()
        vv = v.detach().to(device=device, dtype=dt).requires_grad_()
        ss = sigma.detach().to(device=device, dtype=torch.float64 if dt == torch.float64 else torch.float32).requires_grad_()
        out = fn(kk, vv, ss)
        out.backward(dout.to(device=device, dtype=dt))
        return [t.detach().double().cpu() for t in (out, kk.grad, vv.grad, ss.grad)]

    def error(got, want):
        if not torch.isfinite(got).all():
            return math.inf
        return ((got - want).abs().max() / want.abs().max()).item()

    ref_fn = lambda a, b, s: reference.neighborhood_kk_attention(a, b, s, grid=grid, num_prefix_tokens=prefix)  # noqa: E731
    backends = [b for b in ("chunked", "cpu", "triton") if kkattn.available_backends()[b].available]
    rows = []
    print("| regime | D | dtype | backend | out | dk | dv | dσ |\n|---|---|---|---|---|---|---|---|")
    for regime, dim, key_scale in _REGIMES:
        dtypes = ((torch.float64,) if regime == "random" else ()) + (torch.float32, torch.float16, torch.bfloat16)
        for dtype in dtypes:
            k = (torch.randn(2, heads, n, dim, dtype=torch.float64) * key_scale).to(dtype)
            v, dout = (torch.randn(2, heads, n, dim, dtype=torch.float64).to(dtype) for _ in range(2))
            sigma = torch.rand(heads, dtype=torch.float64) * 2 + 0.5
            want = grads(ref_fn, torch.float64, "cpu", k, v, sigma, dout)
            # PyTorch's own materialized autograd on the same inputs (fp32 math for fp16/bf16, as
            # autocast runs a softmax): the yardstick of the tests' 3× rule.
            names = ([] if dtype == torch.float64 else [_MATERIALIZED]) + [
                b for b in backends if b == "chunked" or dtype != torch.float64]
            for backend in names:
                if backend == _MATERIALIZED:
                    got = grads(ref_fn, dtype, "cpu", k, v, sigma, dout)
                else:
                    got = grads(lambda a, b, s, backend=backend: kkattn.neighborhood_kk_attention(
                        a, b, s, grid=grid, num_prefix_tokens=prefix, backend=backend), dtype, dev, k, v, sigma, dout)
                errs = [error(g, r) for g, r in zip(got, want)]
                rows.append({"regime": regime, "head_dim": dim, "key_scale": key_scale,
                             "dtype": str(dtype).replace("torch.", ""), "backend": backend,
                             "relative_max_error": dict(zip(("out", "dk", "dv", "dsigma"),
                                                            [e if math.isfinite(e) else None for e in errs]))})
                print(f"| {regime} | {dim} | {rows[-1]['dtype']} | {backend} | "
                      + " | ".join(f"{e:.1e}" for e in errs) + " |")
    print(f"\nmax |error| / max |float64 reference|, B=2 H={heads} grid {grid[0]}x{grid[1]}+{prefix}, per-head σ, "
          f"device {dev}; peaked: keys ×1.5"
          + (" (Triton in its interpreter)" if os.environ.get("TRITON_INTERPRET") == "1" else ""))
    return {"accuracy": rows}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    args.device = _device(args.device)
    if args.accuracy and args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton's CPU interpreter must be chosen before triton is imported (kkattn, and this module's
        # package, import it): start again with it set.
        os.environ["TRITON_INTERPRET"] = "1"
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "kkattn.demo", *(sys.argv[1:] if argv is None else argv)])
    try:
        result = _run_accuracy(args) if args.accuracy else _run_demo(args)
    except (ValueError, TypeError) as err:
        print(f"kkattn-demo: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        from ._io import atomic_write_json

        atomic_write_json(args.json, result)  # strict JSON, never half-written
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

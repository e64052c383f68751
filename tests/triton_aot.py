"""Compile the Triton kernels ahead of time for GPU architectures, without a GPU, and report each
variant's shared memory: ``python tests/triton_aot.py [--arch 80,86,89,90] [--full] [--json PATH]``.

A variant is what the launcher would run: :func:`kkattn.backends.triton_launch.forward_launch` /
``backward_launch`` are called on meta tensors with the architecture's shared-memory budget (from
``kkattn.backends.SHARED_MEMORY_PER_BLOCK``), and the resulting kernel, arguments and options are
compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` — signature and
tiles come from the launcher, nothing is restated here.  Integer arguments equal to 1 become
constants and pointers / multiples of 16 get Triton's divisibility hint, as a real launch on
contiguous tensors specializes them.

Default: a representative subset (D = 64 and 128, which bound D = 16 and 32 in each tile class, the
prior with statistics / dσ, every dtype, and fp32 both as IEEE fp32 and as TF32 — what
``torch.set_float32_matmul_precision("high")`` or ``allow_tf32`` makes the launcher pick, with tensor-core
operands staged in shared memory).  ``--full``: every dispatchable variant.  Must run without
TRITON_INTERPRET=1 (interpreted kernels cannot be compiled).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import sys

ARCHS = (80, 86, 89, 90)
# (dtype, fp32 matmul precision as torch.get_float32_matmul_precision() names it)
PRECISIONS = (("float16", "highest"), ("bfloat16", "highest"), ("float32", "highest"), ("float32", "high"))


def variants(full: bool):
    """(pass, dtype, head dim, has_prior, flag, matmul precision): flag is WITH_STATS (forward) or NEED_DSIGMA
    (backward); the precision only matters for float32 ("highest": IEEE, "high": TF32)."""
    dims = (16, 32, 64, 128) if full else (64, 128)
    out = []
    for (dtype, precision), d in itertools.product(PRECISIONS, dims):
        flags = [(True, True), (True, False), (False, True), (False, False)] if full else [(True, True)]
        out += [("forward", dtype, d, p, f, precision) for p, f in flags]
        out += [("backward", dtype, d, p, f, precision) for p, f in flags if p or not f]
    return out


def label(result: dict) -> str:
    """``float16``, ``bfloat16``, ``float32`` or ``float32-tf32``."""
    return result["dtype"] + ("-tf32" if result.get("precision") == "high" else "")


def _signature(launch):
    """Triton signature, constexprs and attributes of a launch on meta tensors."""
    import torch

    kernel = launch.kernel
    names = kernel.arg_names
    meta = {k: v for k, v in launch.meta.items() if k not in ("num_warps", "num_stages")}
    signature, constexprs, attrs = {}, dict(meta), {}
    positional = [n for n in names if n not in meta]
    for name, value in zip(positional, launch.args):
        index = names.index(name)
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
                                     torch.int32: "i32"}[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1:
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    for name in meta:
        signature[name] = "constexpr"
    return signature, constexprs, attrs


def compile_variant(arch: int, variant) -> dict:
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kkattn.backends import SHARED_MEMORY_PER_BLOCK, triton_launch

    kind, dtype_name, head_dim, has_prior, flag, precision = variant
    dtype = getattr(torch, dtype_name)
    torch.set_float32_matmul_precision(precision)  # what the launcher reads (this worker runs one variant at a time)
    budget = SHARED_MEMORY_PER_BLOCK[arch]
    shape = (1, 2, 1025, head_dim)  # N: several blocks and a partial one (only the shapes' values matter)
    k = torch.empty(shape, dtype=dtype, device="meta")
    sigma = torch.empty(2, dtype=torch.float32, device="meta") if has_prior else None
    if kind == "forward":
        launch = triton_launch.forward_launch(k, k, sigma, 41, 0, 0.125, flag, budget=budget)
    else:
        rows = torch.empty(shape[:3], dtype=torch.float32, device="meta")
        launch = triton_launch.backward_launch(k, k, k, rows, rows, rows, rows, sigma, 41, 0, 0.125, flag, budget=budget)
    signature, constexprs, attrs = _signature(launch)
    tiles = {n: launch.meta[n] for n in launch.meta if n.startswith("BLOCK") or n.startswith("num_")}
    result = {"arch": arch, "pass": kind, "dtype": dtype_name, "precision": precision, "head_dim": head_dim,
              "prior": has_prior, "flag": flag, "tiles": tiles, "budget": budget,
              "input_precision": launch.meta["INPUT_PRECISION"]}
    try:
        compiled = triton.compile(ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                                  target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": launch.meta["num_warps"], "num_stages": launch.meta["num_stages"]})
        result["shared"] = int(compiled.metadata.shared)
    except Exception as err:  # noqa: BLE001 — a compile failure is a result to report
        result["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300] if str(err).strip() else ''}"
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=",".join(map(str, ARCHS)), help="compute capabilities, e.g. 80,86,89,90")
    parser.add_argument("--full", action="store_true", help="every dispatchable variant (slow: ~10 min on 2 cores)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    archs = [int(a) for a in args.arch.split(",")]
    jobs = [(arch, v) for arch in archs for v in variants(args.full)]
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(compile_variant, *zip(*jobs)))
    print("| arch | pass | dtype | D | prior | stats/dσ | tiles (rows, cols, warps, stages) | shared KB | budget KB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t = r["tiles"]
        rows, cols = (t.get("BLOCK_M") or t.get("BLOCK_I")), (t.get("BLOCK_N") or t.get("BLOCK_J"))
        shared = f"{r['shared'] / 1024:.1f}" if "shared" in r else f"FAILED: {r['error']}"
        print(f"| sm_{r['arch']} | {r['pass']} | {label(r)} | {r['head_dim']} | {r['prior']} | {r['flag']} | "
              f"{rows}, {cols}, {t['num_warps']}, {t['num_stages']} | {shared} | {r['budget'] / 1024:.0f} |")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1, allow_nan=False)
        os.replace(tmp, args.json)
    over = [r for r in results if "shared" not in r or r["shared"] > r["budget"]]
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())

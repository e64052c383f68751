"""Static GPU profile of the Triton kernels, read from the binaries a GPU would run (no GPU needed).

    python -m benchmarks.gpu_static [--arch 80,90] [--dims 64 128] [--out benchmarks/results]

Each variant is what the launcher picks (``tests/triton_aot.py`` builds the same launch descriptions on
meta tensors: prior with statistics / dσ, the architecture's shared-memory budget), compiled with
``triton.compile`` for the architecture; ``cuobjdump`` (the copy inside the triton wheel) reads its
registers and stack (spills) and counts HGMMA (wgmma), HMMA (mma.sync) and MUFU.EX2 (exp2) in its SASS.
Writes ``gpu-static-<date>.md`` and ``.json``. The CUDA backend's kernels are not covered yet
(``nvcc -Xptxas -v`` on csrc/kkattn_cuda.cu reports their registers and spills).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import RESULTS, write_json, write_text

TESTS = Path(__file__).resolve().parent.parent / "tests"


def profile(arch: int, kind: str, dtype_name: str, head_dim: int, precision: str = "highest") -> dict:
    """Registers, stack bytes and instruction counts of one Triton variant compiled for ``arch``."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sys.path.insert(0, str(TESTS))
    import triton_aot  # the launch descriptions the AOT test compiles

    from kkattn.backends import SHARED_MEMORY_PER_BLOCK, triton_launch

    torch.set_float32_matmul_precision(precision)
    shape = (1, 2, 1025, head_dim)
    k = torch.empty(shape, dtype=getattr(torch, dtype_name), device="meta")
    sigma = torch.empty(2, dtype=torch.float32, device="meta")
    budget = SHARED_MEMORY_PER_BLOCK[arch]
    if kind == "forward":
        launch = triton_launch.forward_launch(k, k, sigma, 41, 0, 0.125, True, budget=budget)
    else:
        rows = torch.empty(shape[:3], dtype=torch.float32, device="meta")
        launch = triton_launch.backward_launch(k, k, k, rows, rows, rows, rows, sigma, 41, 0, 0.125, True, budget=budget)
    signature, constexprs, attrs = triton_aot._signature(launch)
    compiled = triton.compile(ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": launch.meta["num_warps"], "num_stages": launch.meta["num_stages"]})
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([str(tool), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    return {"arch": arch, "pass": kind, "dtype": dtype_name, "head_dim": head_dim,
            "warps": launch.meta["num_warps"], "registers": int(re.search(r"REG:(\d+)", usage).group(1)),
            "stack": int(re.search(r"STACK:(\d+)", usage).group(1)), "shared_kb": compiled.metadata.shared / 1024,
            "hgmma": sass.count("HGMMA"), "hmma": sass.count("HMMA"), "mufu_ex2": sass.count("MUFU.EX2")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_static", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="80,90", help="compute capabilities, e.g. 80,86,89,90 (default: 80,90)")
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128], help="head dims (default: 64 128)")
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"], choices=["float16", "bfloat16", "float32"],
                        help="input dtypes (default: float16 bfloat16)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    rows = [profile(int(arch), kind, dtype, dim) for arch in args.arch.split(",")
            for kind in ("forward", "backward") for dtype in args.dtypes for dim in args.dims]
    import triton

    date = time.strftime("%Y-%m-%d")
    lines = [f"# Static GPU profile of the Triton kernels ({date}, triton {triton.__version__})", "",
             "Compiled ahead of time with the launcher's tiles (prior with statistics / dσ); read with cuobjdump. "
             "stack = spill bytes per thread; HGMMA = wgmma (Hopper), HMMA = mma.sync.", "",
             "| arch | pass | dtype | D | warps | registers | stack (B) | shared (KB) | HGMMA | HMMA | MUFU.EX2 |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| sm_{r['arch']} | {r['pass']} | {r['dtype']} | {r['head_dim']} | {r['warps']} | {r['registers']} | "
              f"{r['stack']} | {r['shared_kb']:.1f} | {r['hgmma']} | {r['hmma']} | {r['mufu_ex2']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    write_text(args.out / f"gpu-static-{date}.md", text)
    write_json(args.out / f"gpu-static-{date}.json", {"triton": triton.__version__, "rows": rows})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

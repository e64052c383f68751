"""The Triton kernels compiled ahead of time for sm_80, sm_86, sm_89 and sm_90 (no GPU needed): every
variant compiles, and its shared memory fits the architecture's per-block budget
(``kkattn.backends.SHARED_MEMORY_PER_BLOCK``) with the tiles the launcher picks for that budget, fp32
both as IEEE fp32 and as TF32 (``torch.set_float32_matmul_precision("high")``).

The default is a representative subset (tests/triton_aot.py says which); ``KKATTN_AOT_FULL=1`` compiles
every dispatchable variant (about ten minutes on 2 cores).
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
SCRIPT = Path(__file__).resolve().parent.parent / "triton_aot.py"


def test_every_variant_compiles_within_its_architectures_budget(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile for real GPUs
    report = tmp_path / "aot.json"
    cmd = [sys.executable, str(SCRIPT), "--json", str(report)] + (["--full"] if os.environ.get("KKATTN_AOT_FULL") else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500,
                          cwd=SCRIPT.parent.parent)
    assert report.exists(), proc.stderr[-3000:]
    results = json.loads(report.read_text())
    assert {r["arch"] for r in results} == {80, 86, 89, 90}
    assert {(r["pass"], r["dtype"], r["input_precision"]) for r in results} == {
        (p, d, i) for p in ("forward", "backward")
        for d, i in (("float16", None), ("bfloat16", None), ("float32", "ieee"), ("float32", "tf32"))}
    failed = [r for r in results if "shared" not in r]
    assert not failed, f"variants that do not compile: {failed}"
    over = [r for r in results if r["shared"] > r["budget"]]
    assert not over, f"variants over their architecture's shared-memory budget: {over}"
    assert proc.returncode == 0, proc.stdout[-3000:]

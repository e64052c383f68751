#!/usr/bin/env bash
# Everything a session with a lent GPU runs, in one device call (see README, "GPU runs"):
#
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#   run(command="bash benchmarks/gpu_check.sh bench", ...)   # stages: all (default), test, bench
#
# 1. installs the wheels carried in .whl/ (open_clip and its needs: the GPU image lacks them),
# 2. builds kkattn._C in place (CPU kernel, and the CUDA kernels when csrc/ has them),
# 3. runs the operator tests with a GPU present (Triton and CUDA backends on CUDA tensors),
# 4. runs the operator benchmark (bf16 and fp16) and the model benchmark (Table 6),
# and leaves at most 8 files under $OUT (the device tool's limit): one log plus the result tables.
#
# The GPU image (Python 3.12, torch 2.11 + cu130, triton 3.6, nvcc 13.0, timm) lacks open_clip, which the
# model benchmark needs. Before the call, here in the repository root:
#   echo /.whl/ >> .git/info/exclude
#   for w in open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth regex; do python3 -m pip download --no-deps \
#     --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$w"; done
# Without them the operator tests and benchmark still run; the model benchmark reports the import error.
set -uo pipefail
STAGE=${1:-all}
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
{
  echo "== machine"; nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site
  fi
  echo "== build"; KKATTN_BUILD_EXT=1 python3 setup.py -q build_ext --inplace 2>&1 | tail -20
  export PYTHONPATH="$PWD:${PYTHONPATH:-}"
  python3 -c "import kkattn; [print(s) for s in kkattn.available_backends().values()]"
  if [ "$STAGE" != bench ]; then
  echo "== tests (operator, GPU present)"
  timeout 150 python3 -m pytest -q -x tests/test_backends.py tests/test_memory.py tests/test_validation.py \
    tests/test_integration.py 2>&1 | tail -40
  fi
  if [ "$STAGE" != test ]; then
  echo "== operator benchmark"; timeout 270 python3 -m benchmarks.attention --out "$OUT" 2>&1 | grep -v "cells:"
  echo "== model benchmark"; timeout 90 python3 -m benchmarks.model --out "$OUT" --reps 20 2>&1 | grep -v "variants:"
  fi
} 2>&1 | tee "$LOG"

#!/usr/bin/env bash
# What a machine with a GPU runs, in stages that each fit one 600 s call of the device tool:
#
#   run(command="bash benchmarks/gpu_check.sh build", carry=[".whl"], timeout_s=600)
#   run(command="bash benchmarks/gpu_check.sh test",  carry=[".whl"], timeout_s=600)
#   run(command="bash benchmarks/gpu_check.sh bench", carry=[".whl"], timeout_s=600)
#
#   build  installs the carried wheels, builds kkattn._C in place (CPU kernel + CUDA kernels) and
#          prints what every backend can run here                              (≤ 300 s)
#   test   every operator test with the GPU present: the gpu-marked ones included, the CUDA backend's
#          (tests/kkattn/test_cuda_backend.py) too, without -x so one failure hides nothing (≤ 540 s)
#   bench  the operator benchmark (bf16/fp16) and the model benchmark (Table 6)           (≤ 540 s)
#
# Each stage is resumable: it builds first when the machine is fresh (the build stays on a warm machine
# between calls), and writes its own log, $OUT/<stage>.log, beside the result tables (at most 8 files
# come back).  The GPU image (Python 3.12, torch 2.11 + cu130, triton 3.6, nvcc 13.0, timm) lacks
# open_clip, which the model benchmark needs; before the calls, in the repository root:
#   echo /.whl/ >> .git/info/exclude
#   for w in open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth regex; do python3 -m pip download --no-deps \
#     --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$w"; done
# Without them the operator stages still run; the model benchmark reports the import error.
set -uo pipefail
STAGE=${1:-build}
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}

wheels() {
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH="$PWD:${PYTHONPATH:-}"
}

# Builds kkattn._C in place unless a build newer than every source is there (a warm machine).
ensure_built() {
  local so
  so=$(ls kkattn/_C*.so 2>/dev/null | head -1)
  if [ -n "$so" ] && [ -z "$(find csrc setup.py -newer "$so" -print -quit)" ]; then
    echo "kkattn._C is up to date ($so)"
  else
    echo "== build (KKATTN_BUILD_CUDA=1, MAX_JOBS=$MAX_JOBS)"
    KKATTN_BUILD_EXT=1 KKATTN_BUILD_CUDA=1 timeout 300 python3 setup.py -q build_ext --inplace 2>&1 | tail -20
  fi
  python3 -c "import kkattn; [print(s) for s in kkattn.available_backends().values()]"
}

case "$STAGE" in
  build)
    { echo "== machine"; nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
      wheels; ensure_built; } 2>&1 | tee "$OUT/build.log" ;;
  test)
    { wheels; ensure_built
      echo "== operator tests, GPU present"
      timeout 480 python3 -m pytest -q -rfE -p no:cacheprovider tests/kkattn/test_cuda_backend.py \
        tests/kkattn/test_backends.py tests/kkattn/test_numerics.py tests/kkattn/test_memory.py \
        tests/kkattn/test_validation.py tests/kkattn/test_integration.py 2>&1 | tail -80
    } 2>&1 | tee "$OUT/test.log" ;;
  bench)
    { wheels; ensure_built
      echo "== operator benchmark"; timeout 330 python3 -m benchmarks.attention --out "$OUT" 2>&1 | grep -v "cells:"
      echo "== model benchmark"; timeout 150 python3 -m benchmarks.model --out "$OUT" --reps 20 2>&1 | grep -v "variants:"
    } 2>&1 | tee "$OUT/bench.log" ;;
  *) echo "error: unknown stage '$STAGE' (build, test, bench)" >&2; exit 2 ;;
esac

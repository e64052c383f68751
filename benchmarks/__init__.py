"""Benchmarks: side-by-side timing and memory tables, written to benchmarks/results/.

* ``python -m benchmarks.attention`` — the operator: every kkattn backend on the device against
  the materialized reference, SDPA with a materialized G, FlexAttention, and (GPU) SDPA without bias.
* ``python -m benchmarks.model`` — the paper's Table 6 (params, GFLOPs, ms, FPS, memory) for our model.
* ``benchmarks/gpu_check.sh build|test|bench`` — the GPU checks, in stages of at most ten minutes each.
"""

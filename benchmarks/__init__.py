"""Benchmarks: side-by-side timing and memory tables, written to benchmarks/results/.

* ``python -m benchmarks.cpu_operator`` — the CPU kernel against SDPA with a materialized prior,
  materialized PyTorch and the chunked fallback.

GPU tables (Triton/CUDA against FlashAttention, FlexAttention, cuDNN) and model-level tables come
with their issues.
"""

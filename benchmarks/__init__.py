"""Benchmarks (to come): FLOPs / ms / memory tables for kkattn against the PyTorch reference,
SDPA with a materialized prior, FlexAttention and FlashAttention, written to benchmarks/results/."""

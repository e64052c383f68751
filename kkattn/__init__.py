"""kkattn — fused neighborhood key–key attention.

``O = softmax(scale · K Kᵀ + G) V`` with ``G(i, j) = exp(−‖p_i − p_j‖² / (2σ²))`` over the token
grid, generated on the fly (never an N×N matrix) by tensor-core CUDA kernels and Triton kernels on
GPUs, a fused C++ kernel on CPUs and a blockwise PyTorch fallback anywhere, with a materialized
reference as the oracle.

Public API:

* :func:`neighborhood_kk_attention` — the operator (autograd, ``torch.compile``, ``FlopCounterMode``).
* :func:`gaussian_prior` — the materialized G, for references and plots.
* :mod:`kkattn.reference` — the plain-PyTorch oracle.
* :func:`available_backends` — what this install can run, and why not; :data:`BACKEND_NAMES` — every
  name ``backend=`` takes; :class:`KernelNotBuiltWarning` — ``auto`` fell back for want of a kernel.
* :class:`kkattn.nn.NeighborhoodKKAttention` — the attention module for ViT blocks.
"""
from . import nn, reference, testing
from .backends import BACKEND_NAMES, BackendStatus, KernelNotBuiltWarning, available_backends
from .functional import neighborhood_kk_attention
from .reference import gaussian_prior

__version__ = "0.1.0"

__all__ = [
    "BACKEND_NAMES",
    "BackendStatus",
    "KernelNotBuiltWarning",
    "available_backends",
    "gaussian_prior",
    "neighborhood_kk_attention",
    "nn",
    "reference",
    "testing",
]

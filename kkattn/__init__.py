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

A program that has imported torch gets everything at ``import kkattn``, as from any torch extension:
the custom ops ``torch.ops.kkattn.*`` and their FLOP formulas are registered then (``FlopCounterMode``
reads its formulas when it is created). Without torch imported yet (the console scripts, which parse
their arguments first), the names load on first use (PEP 562), so ``--help`` returns at once.
"""
from ._lazy import lazy_attributes

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_attributes(__name__, {
    "BACKEND_NAMES": (".backends", "BACKEND_NAMES"),
    "BackendStatus": (".backends", "BackendStatus"),
    "KernelNotBuiltWarning": (".backends", "KernelNotBuiltWarning"),
    "available_backends": (".backends", "available_backends"),
    "gaussian_prior": (".reference", "gaussian_prior"),
    "neighborhood_kk_attention": (".functional", "neighborhood_kk_attention"),
    "nn": (".nn", None),
    "reference": (".reference", None),
    "testing": (".testing", None),
})
if "torch" in __import__("sys").modules:
    from . import functional as _functional  # noqa: F401  (registers torch.ops.kkattn and the FLOP formulas)

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

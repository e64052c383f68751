"""The backward's logit gradient, in plain PyTorch, with the one constant it needs.

``dS = P ∘ (dP − δ)``. Where a softmax weight rounds to 1 (within two fp32 ulps, :data:`ONE_HOT_P`) its
row is one-hot: the exact ``dS`` is then below ``2⁻²³·|dP|``, while ``dP − δ`` computed in two summation
orders (a tile product for ``dP``, the forward's output for ``δ``) is a few ulps of ``|dP|`` — and dK
multiplies that by the other key, of size 1e3 or more in a saturated row. So such entries get exactly 0,
as fp32 autograd's ``P ∘ (dP − Σ P∘dP)`` gives them. The diagonal has its own, cancellation-free formula
(kkattn/_ops.py); this covers a row held by another token.

The Triton kernels import :data:`ONE_HOT_P`; csrc/kkattn_math.h holds the C++/CUDA copy (a test
checks the two agree).
"""
from __future__ import annotations

from torch import Tensor

ONE_HOT_P = 1.0 - 2.0 ** -23


def logit_grad_(dp: Tensor, delta: Tensor, p: Tensor) -> Tensor:
    """``dS = P ∘ (dP − δ)`` in place in ``dp`` (``delta`` broadcast over columns), 0 where ``P ≥`` :data:`ONE_HOT_P`."""
    return dp.sub_(delta).mul_(p).masked_fill_(p >= ONE_HOT_P, 0.0)

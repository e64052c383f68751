"""``nn.Module`` wrappers around the operator."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .functional import neighborhood_kk_attention


class NeighborhoodKKAttention(nn.Module):
    """Key–key attention block: key+value projection (no query), the operator, output projection.

    Drop-in for timm's ``Attention`` in a ViT block, minus the query projection.

    Args:
        dim: channels C; ``num_heads`` must divide it.
        sigma: σ of the Gaussian prior in grid units (``None``: no prior).
        learnable_sigma: learn one σ per head (stored as ``log_sigma`` so it stays positive).
        num_prefix_tokens: leading tokens (CLS, registers) with no prior.
        backend: passed to :func:`kkattn.neighborhood_kk_attention`.

    Shapes: ``forward(x (B, N, C), grid=(h, w) or None) -> (B, N, C)``.
    """

    def __init__(self, dim: int, num_heads: int = 8, sigma: Optional[float] = 2.0, *, qkv_bias: bool = True,
                 proj_bias: bool = True, num_prefix_tokens: int = 0, learnable_sigma: bool = False,
                 scale: Optional[float] = None, proj_drop: float = 0.0, backend: str = "auto"):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if learnable_sigma and sigma is None:
            raise ValueError("learnable_sigma=True needs an initial sigma, got None")
        if sigma is not None and not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive finite float or None, got {sigma!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = scale
        self.num_prefix_tokens = num_prefix_tokens
        self.backend = backend
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        if learnable_sigma:
            self.log_sigma = nn.Parameter(torch.full((num_heads,), math.log(sigma)))
            self.fixed_sigma = None
        else:
            self.register_parameter("log_sigma", None)
            self.fixed_sigma = None if sigma is None else float(sigma)

    @property
    def sigma(self):
        """The σ passed to the operator: a float, a ``(H,)`` tensor (learnable), or ``None``."""
        return self.log_sigma.exp() if self.log_sigma is not None else self.fixed_sigma

    @torch.no_grad()
    def load_qkv_(self, qkv_weight: Tensor, qkv_bias: Optional[Tensor] = None) -> "NeighborhoodKKAttention":
        """Take k and v from a fused ``qkv`` Linear (timm / open_clip: rows ordered q, k, v)."""
        dim = self.kv.in_features
        if qkv_weight.shape != (3 * dim, dim):
            raise ValueError(f"qkv_weight must have shape ({3 * dim}, {dim}), got {tuple(qkv_weight.shape)}")
        self.kv.weight.copy_(qkv_weight[dim:])
        if (qkv_bias is None) != (self.kv.bias is None):
            raise ValueError("qkv_bias must be given exactly when this module has a kv bias")
        if qkv_bias is not None:
            self.kv.bias.copy_(qkv_bias[dim:])
        return self

    def forward(self, x: Tensor, grid: Optional[tuple[int, int]] = None) -> Tensor:
        batch, n_tokens, channels = x.shape
        kv = self.kv(x).reshape(batch, n_tokens, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # (B, H, N, D) strided views: the kernels take any strides
        out = neighborhood_kk_attention(k, v, self.sigma, grid=grid, scale=self.scale,
                                        num_prefix_tokens=self.num_prefix_tokens, backend=self.backend)
        out = out.transpose(1, 2).reshape(batch, n_tokens, channels)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        sigma = "learnable" if self.log_sigma is not None else self.fixed_sigma
        return f"heads={self.num_heads}, head_dim={self.head_dim}, sigma={sigma}, backend={self.backend!r}"

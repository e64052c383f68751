"""The decoder: spatial feature fusion (SFF) and cross-modal feature alignment (CMFA), section 2.2.4."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SpatialFeatureFusion(nn.Module):
    """Top-down fusion: ``P4 = L4(F4)``, ``Pi = Li(Fi) + up(P(i+1))`` down to ``P1`` (stride 4).

    ``Li`` are 1×1 lateral convolutions to a common width (FPN's lateral step; the paper adds maps of
    different levels, which needs one width), ``up`` is bilinear upsampling to the shallower map's size.

    Shapes: ``forward(4 × (B, in_dim, H/s, W/s)) -> (B, dim, H/4, W/4)``.
    """

    def __init__(self, in_dim: int, dim: int, num_levels: int = 4):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(in_dim, dim, kernel_size=1) for _ in range(num_levels))

    def forward(self, features: list[Tensor]) -> Tensor:
        fused = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            shallow = lateral(feature)
            fused = shallow + F.interpolate(fused, size=shallow.shape[-2:], mode="bilinear", align_corners=False)
        return fused


class CrossModalAlignment(nn.Module):
    """CMFA: ``S = τ · V̂ T̂ᵀ`` between per-pixel visual embeddings and class text embeddings.

    ``P1`` is projected (1×1 conv) to the text embedding width and L2-normalized per pixel; τ is
    learnable, stored as ``log τ`` and clamped to ``[0, log 100]`` as CLIP's logit scale is.

    Shapes: ``forward(p1 (B, dim, h, w), text (K, E)) -> (logits (B, K, h, w), embeddings (B, E, h, w))``.
    """

    MAX_LOG_TAU = math.log(100.0)

    def __init__(self, dim: int, embed_dim: int, init_tau: float = 1 / 0.07):
        super().__init__()
        self.proj = nn.Conv2d(dim, embed_dim, kernel_size=1)
        self.log_tau = nn.Parameter(torch.tensor(math.log(init_tau)))

    @property
    def tau(self) -> Tensor:
        return self.log_tau.clamp(0.0, self.MAX_LOG_TAU).exp()

    def forward(self, p1: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        embeddings = F.normalize(self.proj(p1), dim=1)
        logits = self.tau * torch.einsum("behw,ke->bkhw", embeddings, text.to(embeddings.dtype))
        return logits, embeddings

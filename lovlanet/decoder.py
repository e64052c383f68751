"""The decoder: spatial feature fusion (SFF) and cross-modal feature alignment (CMFA), section 2.2.4."""
from __future__ import annotations

import contextlib
import math
from typing import Optional

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
        return self.merge([lateral(feature) for lateral, feature in zip(self.lateral, features)])

    def forward_pyramid(self, levels: nn.ModuleList, maps: list[Tensor]) -> Tensor:
        """``forward([level(m) for level, m in zip(levels, maps)])``, with each level's last deconvolution folded
        into its lateral convolution (:func:`lateral_through`): the same result to fp32 rounding, without the
        full-width maps at strides 4, 8 and 16 (at 1024², 100 of the model's 376 GFLOPs)."""
        return self.merge([lateral_through(level, lateral, m) for level, lateral, m in zip(levels, self.lateral, maps)])

    @staticmethod
    def merge(laterals: list[Tensor]) -> Tensor:
        """The top-down sum over the lateral maps ``Li(Fi)``, deepest last."""
        fused = laterals[-1]
        for shallow in reversed(laterals[:-1]):
            # added into the upsampled map (fresh, and not needed by its backward): no second full-size buffer
            fused = F.interpolate(fused, size=shallow.shape[-2:], mode="bilinear", align_corners=False).add_(shallow)
        return fused


def lateral_through(level: nn.Module, lateral: nn.Conv2d, x: Tensor) -> Tensor:
    """``lateral(level(x))`` for a pyramid level (a module or an ``nn.Sequential``) and a 1×1 lateral convolution.

    Where the level is made of non-overlapping transposed convolutions (kernel = stride, ViTDet's 2×2 steps),
    LayerNorm2d and GELU, it runs channels-last as matrix products: a k×k/k transposed convolution is one
    (C_in → k²·C_out) product per input pixel and a pixel shuffle, LayerNorm2d a layer norm over the last dim, so
    no layer converts layouts.  The last transposed convolution and the lateral are one linear map per input pixel,
    so they run as one product to the lateral's width: weight ``Σ_m L[o, m]·W[i, m, ·, ·]``, bias ``L·b_W + b_L``;
    that skips the level's full-width output (768 channels at 256² for the stride-4 level of a 1024² input).  Same
    result to rounding, and the gradients are the composition's.  Other levels run as given.

    Shapes: ``x (B, C_in, h, w) -> (B, C_lateral, h', w')`` as ``lateral(level(x))`` (channels-last memory).
    """
    from timm.layers import LayerNorm2d

    layers = list(level) if isinstance(level, nn.Sequential) else [level]
    if lateral.kernel_size != (1, 1) or lateral.groups != 1 or not layers or \
            not all(_is_pixel_deconv(m) or isinstance(m, (LayerNorm2d, nn.GELU, nn.Identity)) for m in layers):
        return lateral(level(x))
    mix = lateral.weight[:, :, 0, 0]  # (C_lateral, C_mid)
    y = x.permute(0, 2, 3, 1)  # (B, h, w, C): a view of channels-last maps (the encoder's)
    if not _is_pixel_deconv(layers[-1]):  # the lateral after an identity level
        return _linear_last(y, mix, lateral.bias).permute(0, 3, 1, 2)
    # Every layer of a level acts per pixel, so the sub-pixel offsets of each step stay as extra dims
    # (B, h, w, r1, c1, r2, c2, ..., C) and the pixels are put in place once, at the end.
    for layer in layers[:-1]:
        if _is_pixel_deconv(layer):
            y = _pixel_deconv(y, layer.weight, layer.bias, layer.stride[0])
        elif isinstance(layer, LayerNorm2d):
            y = F.layer_norm(y, y.shape[-1:], layer.weight, layer.bias, layer.eps)
        else:
            y = layer(y)
    last = layers[-1]
    # The folded weight in the weights' own dtype (outside autocast; meta tensors, for FLOP counts, have none).
    no_autocast = torch.autocast(x.device.type, enabled=False) if torch.amp.is_autocast_available(x.device.type) \
        else contextlib.nullcontext()
    with no_autocast:
        weight = torch.einsum("om,imhw->iohw", mix, last.weight)  # (C_in, C_lateral, kh, kw)
        bias = lateral.bias
        if last.bias is not None:
            bias = mix @ last.bias if bias is None else torch.addmv(bias, mix, last.bias)
    return _place_pixels(_pixel_deconv(y, weight, bias, last.stride[0])).permute(0, 3, 1, 2)


def _is_pixel_deconv(m: nn.Module) -> bool:
    """A transposed convolution whose k×k kernels do not overlap (kernel = stride, no padding or dilation)."""
    return isinstance(m, nn.ConvTranspose2d) and m.groups == 1 and m.kernel_size[0] == m.kernel_size[1] \
        and m.stride == m.kernel_size and m.padding == (0, 0) and m.dilation == (1, 1) \
        and m.output_padding == (0, 0)


def _linear_last(y: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.linear`` over the last dim of ``y (..., C_in)``; weight ``(C_out, C_in)``."""
    out = F.linear(y.reshape(-1, y.shape[-1]), weight, bias)  # autocast casts all three alike
    return out.view(*y.shape[:-1], weight.shape[0])


def _pixel_deconv(y: Tensor, weight: Tensor, bias: Optional[Tensor], k: int) -> Tensor:
    """ConvTranspose2d with kernel = stride = k on a channels-last map, its k×k outputs per input pixel left as two
    dims before the channels: ``(B, h, w, ..., C_in) -> (B, h, w, ..., k, k, C_out)`` (:func:`_place_pixels` puts
    them in place).  weight ``(C_in, C_out, k, k)``, as ``nn.ConvTranspose2d`` stores it.
    """
    c_in, c_out = weight.shape[:2]
    out = _linear_last(y, weight.permute(2, 3, 1, 0).reshape(k * k * c_out, c_in),
                       None if bias is None else bias.repeat(k * k))  # (..., (i, j, c))
    return out.view(*y.shape[:-1], k, k, c_out)


def _place_pixels(y: Tensor) -> Tensor:
    """``(B, h, w, r1, c1, ..., rn, cn, C) -> (B, h·r1···rn, w·c1···cn, C)``: each step's sub-pixel row and column
    offsets, outermost first, into the map (one copy)."""
    rows, cols = [1], [2]
    height, width = y.shape[1], y.shape[2]
    for step in range((y.dim() - 4) // 2):  # a plain loop: torch.compile(fullgraph=True) traces it
        rows.append(3 + 2 * step)
        cols.append(4 + 2 * step)
        height, width = height * y.shape[3 + 2 * step], width * y.shape[4 + 2 * step]
    return y.permute([0, *rows, *cols, y.dim() - 1]).reshape(y.shape[0], height, width, y.shape[-1])


class CrossModalAlignment(nn.Module):
    """CMFA: ``S = τ · V̂ T̂ᵀ`` between per-pixel visual embeddings and class text embeddings.

    ``P1`` is projected (1×1 conv) to the text embedding width and L2-normalized per pixel; τ is
    learnable, stored as ``log τ`` and clamped to ``[0, log 100]`` as CLIP's logit scale is.

    Shapes: ``forward(p1 (B, dim, h, w), text (K, E)) -> (logits (B, K, h, w), embeddings (B, E, h, w))``, the
    projection run channels-last as a matrix product (p1 comes channels-last from the fusion).
    """

    MAX_LOG_TAU = math.log(100.0)

    def __init__(self, dim: int, embed_dim: int, init_tau: float = 1 / 0.07):
        super().__init__()
        self.proj = nn.Conv2d(dim, embed_dim, kernel_size=1)
        self.log_tau = nn.Parameter(torch.tensor(math.log(init_tau)))

    @property
    def tau(self) -> Tensor:
        return self.log_tau.clamp(0.0, self.MAX_LOG_TAU).exp()

    def forward(self, p1: Tensor, text: Tensor, embeddings: bool = True) -> tuple[Tensor, Optional[Tensor]]:
        """With ``embeddings=False`` (inference) the second output is None, and the logits are the per-pixel
        products divided by the norm, ``τ·(e·t)/max(‖e‖, 1e-12)``: F.normalize's result without the
        normalized full-width map."""
        projected = _linear_last(p1.permute(0, 2, 3, 1), self.proj.weight[:, :, 0, 0], self.proj.bias)
        text = text.to(projected.dtype)
        if embeddings:
            unit = F.normalize(projected, dim=-1)  # (B, h, w, E)
            return self.tau * (unit @ text.t()).permute(0, 3, 1, 2), unit.permute(0, 3, 1, 2)
        norm = torch.linalg.vector_norm(projected, dim=-1, keepdim=True).clamp_min(1e-12)
        return self.tau * ((projected @ text.t()) / norm).permute(0, 3, 1, 2), None

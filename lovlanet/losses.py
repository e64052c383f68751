"""The training objective of section 2.2.5: ``L = L_seg + λ·L_align``.

``L_seg`` is pixel cross-entropy over the CMFA logits (cosine similarity × τ), ignoring
``ignore_index``. The paper writes ``L_align`` for "the visual embedding f_v and the text embedding
f_t" with negatives over the other class texts; a per-pixel reading would repeat ``L_seg`` exactly,
so here f_v is the **region embedding** of each class present in an image: the mean of its pixels'
normalized embeddings (labels area-pooled to the embedding grid), re-normalized, contrasted against
every class text with the same τ. Both terms are returned separately for logging.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LossOutput(NamedTuple):
    total: Tensor
    seg: Tensor
    align: Tensor


def region_embeddings(embeddings: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Per image and class, the area-weighted mean embedding of that class's pixels.

    Args:
        embeddings: ``(B, E, h, w)`` unit-norm pixel embeddings.
        target: ``(B, H, W)`` labels in ``[0, num_classes)`` or ``ignore_index``.
    Returns:
        ``(M, E)`` normalized region embeddings and ``(M,)`` their classes, for the M (image, class)
        pairs present.
    """
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    onehot = F.one_hot(torch.where(valid, target, 0).long(), num_classes).permute(0, 3, 1, 2).to(embeddings.dtype)
    onehot = onehot * valid[:, None].to(embeddings.dtype)
    weights = F.adaptive_avg_pool2d(onehot, embeddings.shape[-2:])  # (B, K, h, w): fraction of each cell
    sums = torch.einsum("bkhw,behw->bke", weights, embeddings)
    present = weights.sum(dim=(2, 3)) > 0
    regions = F.normalize(sums[present], dim=-1)
    classes = torch.arange(num_classes, device=target.device).expand_as(present)[present]
    return regions, classes


class LoVLANetLoss(nn.Module):
    """``seg + λ·align`` from the model's training outputs.

    Shapes: ``forward(outputs, target (B, H, W) int) -> LossOutput`` where ``outputs`` is
    :meth:`LoVLANet.forward_train`'s dict (``logits (B, K, H, W)``, ``embeddings (B, E, h, w)``,
    ``text (K, E)``, ``tau``).
    """

    def __init__(self, ignore_index: int = 255, align_weight: float = 1.0):
        super().__init__()
        self.ignore_index = ignore_index
        self.align_weight = align_weight

    def forward(self, outputs: dict[str, Tensor], target: Tensor) -> LossOutput:
        logits = outputs["logits"]
        if target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"target must have shape {(logits.shape[0], *logits.shape[2:])}, got {tuple(target.shape)}")
        target = target.long()
        # Sum / count rather than mean: an all-ignored batch gives 0, not cross_entropy's 0/0 = NaN.
        n_valid = (target != self.ignore_index).sum().clamp(min=1)
        seg = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="sum") / n_valid
        if self.align_weight == 0:
            align = seg.new_zeros(())
        else:
            regions, classes = region_embeddings(outputs["embeddings"].float(), target, logits.shape[1], self.ignore_index)
            if classes.numel() == 0:
                align = outputs["tau"].float() * 0.0  # keeps the graph: nothing labelled in this batch
            else:
                align = F.cross_entropy(outputs["tau"].float() * regions @ outputs["text"].float().T, classes)
        return LossOutput(seg + self.align_weight * align, seg, align)

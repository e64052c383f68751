"""Sliding-window prediction that never holds more than a band of tiles in memory.

Tiles of ``tile``×``tile`` pixels step by ``tile − overlap`` across the image (the last row/column
shifted back inside it). Their class probabilities are summed where they overlap. Rows are
finalized (arg-max) as soon as no later tile can touch them, so memory is
``O(K · (tile + stride) · W)`` whatever the image height: a 6800×7200 GID scene never needs its
full ``(K, H, W)`` probability map.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data.common import window_starts
from .data.transforms import normalize


@torch.no_grad()
def predict_image(model, image, *, tile: int = 1024, overlap: float = 0.25, batch_size: int = 4,
                  device=None, amp: bool = False, multiple: int = 32) -> np.ndarray:
    """Labels for one image.

    Args:
        model: a :class:`~lovlanet.LoVLANet` (or anything mapping normalized ``(B, 3, h, w)`` to logits),
            with ``config.mean/std``.
        image: ``(H, W, 3)`` uint8 array or ``(3, H, W)`` uint8 tensor.
        tile: window size (rounded up to a multiple of ``multiple``, the patch size); images smaller than a
            window are padded to the next multiple.
        overlap: fraction of the window shared by neighbours, in ``[0, 1)``.
    Returns:
        ``(H, W)`` uint8 class indices.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image must be (H, W, 3), got {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    _, height, width = image.shape
    round_up = lambda n: -(-n // multiple) * multiple  # noqa: E731
    tile_h = min(round_up(tile), round_up(height))
    tile_w = min(round_up(tile), round_up(width))
    stride_h = max(1, int(tile_h * (1 - overlap)))
    stride_w = max(1, int(tile_w * (1 - overlap)))
    # Pad (bottom/right) only when the image is smaller than a window; otherwise windows shift inside.
    pad_h, pad_w = max(0, tile_h - height), max(0, tile_w - width)
    ys = window_starts(height + pad_h, tile_h, stride_h)
    xs = window_starts(width + pad_w, tile_w, stride_w)
    mean, std = model.config.mean, model.config.std

    labels = np.empty((height, width), np.uint8)
    acc: Tensor | None = None  # probabilities of rows [top, top + acc.shape[1])
    top = 0
    for row, y in enumerate(ys):
        bottom = y + tile_h
        if acc is None:
            acc = torch.zeros(0, 0, width + pad_w)
        if acc.shape[1] < bottom - top:
            grow = torch.zeros(acc.shape[0], bottom - top - acc.shape[1], width + pad_w)
            acc = torch.cat([acc, grow], dim=1) if acc.numel() else grow
        for start in range(0, len(xs), batch_size):
            batch_x = xs[start:start + batch_size]
            crops = []
            for x in batch_x:
                crop = image[:, y:y + tile_h, x:x + tile_w]
                if crop.shape[1:] != (tile_h, tile_w):
                    crop = F.pad(crop, (0, tile_w - crop.shape[2], 0, tile_h - crop.shape[1]))
                crops.append(crop)
            batch = normalize(torch.stack(crops).to(device), mean, std)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                probs = model(batch).float().softmax(dim=1).cpu()
            if acc.shape[0] == 0:
                acc = torch.zeros(probs.shape[1], acc.shape[1], width + pad_w)
            for p, x in zip(probs, batch_x):
                acc[:, y - top:y - top + tile_h, x:x + tile_w] += p
        done = ys[row + 1] if row + 1 < len(ys) else height + pad_h
        done = min(done, height)
        if done > top:
            labels[top:done] = acc[:, : done - top, :width].argmax(dim=0).to(torch.uint8).numpy()
            acc = acc[:, done - top:]
            top = done
    return labels

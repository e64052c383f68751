"""Joint image/mask augmentation (torchvision.transforms.v2) and normalization.

torchvision's v2 transforms apply one random draw to an ``Image`` and a ``Mask`` together
(nearest-neighbour for the mask, ignore-fill for padding), and colour jitter to the image only.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from .common import IGNORE_INDEX


class TrainAugment:
    """Random scale (``scale`` range), random ``crop``×``crop`` crop (ignore-padded), flips, mild colour jitter.

    Call on a sample dict; returns it with ``image`` uint8 ``(3, crop, crop)`` and ``mask`` ``(crop, crop)``.
    """

    def __init__(self, crop: int, scale: tuple[float, float] = (0.5, 2.0), jitter: float = 0.2):
        self.crop = crop
        self.scale = scale
        self.geometric = v2.Compose([
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),  # overhead imagery has no "up"
        ])
        self.colour = v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 10)

    def __call__(self, item: dict) -> dict:
        image, mask = tv_tensors.Image(item["image"]), tv_tensors.Mask(item["mask"])
        factor = float(torch.empty(()).uniform_(*self.scale))
        size = [max(1, round(image.shape[-2] * factor)), max(1, round(image.shape[-1] * factor))]
        image = v2.functional.resize(image, size, antialias=True)
        mask = v2.functional.resize(mask, size, interpolation=v2.InterpolationMode.NEAREST)
        image, mask = self.geometric(image, mask)
        return {**item, "image": self.colour(image).as_subclass(Tensor), "mask": mask.as_subclass(Tensor)}


def normalize(images: Tensor, mean, std) -> Tensor:
    """uint8 ``(B, 3, H, W)`` → float, ``(x / 255 − mean) / std`` per channel (on the images' device)."""
    mean = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std

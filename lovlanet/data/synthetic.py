"""A procedural land-cover set: RGB scenes with exact masks, deterministic from a seed, no download.

Each scene is built in layers, each drawn over the previous one:

1. **Fields, forest and barren land.** Irregular regions (a Voronoi diagram of random seeds on
   coordinates warped by smooth noise). Each field gets its own crop colour and row stripes, forest
   is dark and blotchy, barren land is tan and grainy.
2. **Water.** A meandering river of random width, and sometimes a lake (a thresholded noise blob).
3. **Roads.** A connected network: a main road across the scene plus perpendicular branches
   that start on it, as thin gray lines.
4. **Buildings.** Rectangular roofs in a few roof colours, placed beside roads and never on water
   or roads.

Then sensor noise and a per-scene brightness/contrast change are added. Classes follow LoveDA's
foreground order, so the default model's class list fits: building, road, water, barren,
forest, agriculture.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import LOVEDA_CLASSES
from .common import sample

CLASSES = LOVEDA_CLASSES
BUILDING, ROAD, WATER, BARREN, FOREST, AGRICULTURE = range(6)
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 96, "val": 24, "test": 8}


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """``(size, size)`` noise in about [-1, 1] with features ``size / cells`` pixels wide."""
    grid = torch.from_numpy(rng.standard_normal((1, 1, cells + 1, cells + 1)).astype(np.float32))
    return F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0, 0].numpy() / 1.5


def _segment_distance(yy, xx, p0, p1):
    d = p1 - p0
    t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / max(float(d @ d), 1e-9), 0, 1)
    return np.hypot(yy - (p0[0] + t * d[0]), xx - (p0[1] + t * d[1]))


def generate_scene(seed, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image (size, size, 3) uint8, mask (size, size) int64)``; same seed, same scene."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    # 1. land regions on warped coordinates
    n_regions = int(rng.integers(6, 14))
    seeds = rng.uniform(0, size, (n_regions, 2))
    kinds = rng.choice([AGRICULTURE, FOREST, BARREN], size=n_regions, p=[0.5, 0.32, 0.18])
    wy = yy + smooth_noise(rng, size, 4) * size * 0.12
    wx = xx + smooth_noise(rng, size, 4) * size * 0.12
    region = np.argmin((wy[..., None] - seeds[:, 0]) ** 2 + (wx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    mask = kinds[region].astype(np.int64)

    image = np.zeros((size, size, 3), np.float32)
    fine = rng.standard_normal((size, size)).astype(np.float32)
    blotch = smooth_noise(rng, size, size // 8)
    for r in range(n_regions):
        sel = region == r
        if kinds[r] == AGRICULTURE:
            base = np.array([rng.uniform(90, 170), rng.uniform(140, 200), rng.uniform(50, 100)])
            angle = rng.uniform(0, np.pi)
            stripes = np.sin((yy * np.cos(angle) + xx * np.sin(angle)) * 2 * np.pi / rng.uniform(4, 9))
            tex = 14 * stripes[..., None] + 4 * fine[..., None]
        elif kinds[r] == FOREST:
            base = np.array([35, 80, 40]) + rng.uniform(-10, 10, 3)
            tex = 30 * blotch[..., None] + 8 * fine[..., None]
        else:
            base = np.array([180, 160, 120]) + rng.uniform(-15, 15, 3)
            tex = 16 * fine[..., None] + 10 * blotch[..., None]
        image[sel] = (base + tex)[sel]

    # 2. water: a river, sometimes a lake
    water = np.zeros((size, size), bool)
    if rng.random() < 0.8:
        vertical = rng.random() < 0.5
        along, across = (yy, xx) if vertical else (xx, yy)
        centre = rng.uniform(0.2, 0.8) * size + 0.15 * size * np.sin(along / size * rng.uniform(2, 6) + rng.uniform(0, 6))
        water |= np.abs(across - centre) < rng.uniform(4, 12)
    if rng.random() < 0.5:
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        blob = smooth_noise(rng, size, 6) * 0.5 + 1 - np.hypot(yy - cy, xx - cx) / (size * rng.uniform(0.12, 0.22))
        water |= blob > 0.5
    mask[water] = WATER
    image[water] = np.array([30, 60, 110]) + 10 * blotch[water][:, None] + 3 * fine[water][:, None]

    # 3. roads: a main road and perpendicular branches from it (connected by construction)
    road = np.zeros((size, size), bool)
    width = rng.uniform(1.5, 2.8)
    horizontal = rng.random() < 0.5
    a, b = rng.uniform(0.2, 0.8, 2) * size
    p0, p1 = (np.array([a, 0.0]), np.array([b, size - 1.0])) if horizontal else (np.array([0.0, a]), np.array([size - 1.0, b]))
    road |= _segment_distance(yy, xx, p0, p1) < width
    for _ in range(int(rng.integers(1, 4))):
        t = rng.uniform(0.1, 0.9)
        start = p0 + t * (p1 - p0)
        normal = np.array([-(p1 - p0)[1], (p1 - p0)[0]]) / np.linalg.norm(p1 - p0)
        end = start + normal * rng.choice([-1, 1]) * rng.uniform(0.3, 0.9) * size
        road |= _segment_distance(yy, xx, start, end) < width * 0.8
    mask[road] = ROAD
    image[road] = 125 + 8 * fine[road][:, None]

    # 4. buildings beside roads, never on water or roads
    near_road = _distance_band(road, 4, 22)
    candidates = np.argwhere(near_road & ~water)
    roofs = np.array([[170, 70, 60], [150, 150, 155], [215, 210, 200], [95, 90, 100]], np.float32)
    for _ in range(int(rng.integers(8, 30)) if len(candidates) else 0):
        cy, cx = candidates[rng.integers(len(candidates))]
        h, w = rng.integers(4, 12, 2)
        y0, x0 = max(cy - h // 2, 0), max(cx - w // 2, 0)
        box = (slice(y0, min(y0 + h, size)), slice(x0, min(x0 + w, size)))
        if (water[box] | road[box]).any():
            continue
        mask[box] = BUILDING
        image[box] = roofs[rng.integers(len(roofs))] + 4 * fine[box][..., None]

    # sensor noise, per-scene gain and offset
    image = image * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15) + rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _distance_band(region: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Pixels within ``outer`` (and beyond ``inner``) pixels of ``region`` (Chebyshev distance)."""
    t = torch.from_numpy(region.astype(np.float32))[None, None]

    def grow(r):  # a square dilation is separable: rows, then columns
        rows = F.max_pool2d(t, (2 * r + 1, 1), stride=1, padding=(r, 0))
        return F.max_pool2d(rows, (1, 2 * r + 1), stride=1, padding=(0, r))[0, 0].numpy() > 0

    return grow(outer) & ~grow(inner)


class SyntheticLandCover(torch.utils.data.Dataset):
    """``num_images`` procedural scenes of ``size``×``size`` pixels for a split.

    Scene ``i`` of split ``s`` is generated from the seed ``(seed, s, i)``, so splits never share a
    scene and the same arguments always give the same data. The classes are :data:`CLASSES`.
    """

    classes = CLASSES

    def __init__(self, split: str = "train", num_images: int | None = None, size: int = 256, seed: int = 0):
        if split not in SPLIT_SEEDS:
            raise ValueError(f"synthetic split must be one of {', '.join(SPLIT_SEEDS)}, got {split!r}")
        if size < 64:
            raise ValueError(f"synthetic scenes need size >= 64, got {size}")
        self.split, self.size, self.seed = split, size, seed
        self.num_images = DEFAULT_SIZES[split] if num_images is None else int(num_images)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # a scene takes ~0.2 s to draw

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        if index not in self._cache:
            self._cache[index] = generate_scene((self.seed, SPLIT_SEEDS[self.split], index), self.size)
        image, mask = self._cache[index]
        return sample(image, mask, f"synthetic_{self.split}_{index:04d}")

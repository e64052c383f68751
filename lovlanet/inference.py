"""Sliding-window prediction of scenes of any size, in bounded memory.

Tiles of ``tile``×``tile`` pixels step by ``tile − overlap`` across the scene (the last row/column
shifted back inside it). Their class probabilities are summed where they overlap, and a pixel's
label is the arg-max of its sum. The scene is processed in column strips (one strip when it is
narrow enough), and within a strip row band by row band: rows are finalized as soon as no later
tile can touch them. So memory is ``O(K · (tile + stride) · strip)`` whatever the scene's size,
and pixels are read only as the windows need them (``read``) and handed out as they are finalized
(``write``): a 20,000 × 20,000 GeoTIFF is never held whole.

The tile grid is global and every pixel's tiles are summed in the same order whatever the strip
width, so the labels do not depend on how the scene is cut (tests check that against the whole
image at once). Windows that cross a strip border are computed once for each strip.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data.common import NODATA_LABEL, window_starts  # noqa: F401  (NODATA_LABEL: re-exported)
from .data.transforms import normalize


class NonFiniteOutput(ValueError):
    """The model gave NaN or infinite logits: a broken checkpoint or input, never turned into a mask."""


# precision= of the inference functions: the autocast dtype (None: fp32, no autocast), on CPU and CUDA alike.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


# Widest column strip, in tiles: wider scenes are cut into strips (memory stays O(strip)).
MAX_STRIP_TILES = 16

# read(y0, y1, x0, x1) -> ((3, y1 - y0, x1 - x0) uint8 tensor, (y1 - y0, x1 - x0) bool valid mask or None)
Reader = Callable[[int, int, int, int], tuple[Tensor, Optional[Tensor]]]
# write(y0, y1, x0, x1, labels (rows, cols) uint8, probabilities (K, rows, cols) float32 or None)
Writer = Callable[[int, int, int, int, np.ndarray, Optional[np.ndarray]], None]


@dataclass(frozen=True)
class WindowGrid:
    """Where the windows of a scene go: ``ys``/``xs`` are window corners; windows are ``tile_h × tile_w``
    and the scene is padded bottom/right by ``pad_h``/``pad_w`` only when it is smaller than one window."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def plan(cls, height: int, width: int, tile: int, overlap: float, multiple: int = 32) -> "WindowGrid":
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if height <= 0 or width <= 0:
            raise ValueError(f"the scene must have pixels, got {height}×{width}")
        round_up = lambda n: -(-n // multiple) * multiple  # noqa: E731
        tile_h, tile_w = min(round_up(tile), round_up(height)), min(round_up(tile), round_up(width))
        stride_h, stride_w = max(1, int(tile_h * (1 - overlap))), max(1, int(tile_w * (1 - overlap)))
        ys = window_starts(max(height, tile_h), tile_h, stride_h)
        xs = window_starts(max(width, tile_w), tile_w, stride_w)
        return cls(height, width, tile_h, tile_w, tuple(ys), tuple(xs))

    def strips(self, max_width: int) -> list[tuple[int, int]]:
        """Column ranges ``[c0, c1)`` of at most ``max_width`` pixels, cut at window corners."""
        cuts, start = [], 0
        while start < self.width:
            end = min(self.width, start + max_width)
            if end < self.width:  # cut where a window starts, so strips cover whole windows' worth of columns
                starts = [x for x in self.xs if start < x <= end]
                end = starts[-1] if starts else end
            cuts.append((start, end))
            start = end
        return cuts

    def default_strip_width(self) -> int:
        return MAX_STRIP_TILES * self.tile_w

    def runs(self, strip_width: Optional[int] = None) -> int:
        """How many windows the model runs (a window crossing a strip border runs once per strip)."""
        strips = self.strips(strip_width or self.default_strip_width())
        return len(self.ys) * sum(len([x for x in self.xs if x < c1 and x + self.tile_w > c0]) for c0, c1 in strips)


@torch.no_grad()
def predict_scene(model, read: Reader, write: Writer, height: int, width: int, *, tile: int = 1024,
                  overlap: float = 0.25, batch_size: int = 4, device=None, precision: str = "fp32",
                  probabilities: bool = False, strip_width: Optional[int] = None, progress=None) -> WindowGrid:
    """Predict a ``height × width`` scene window by window (see the module docstring).

    Args:
        model: a :class:`~lovlanet.LoVLANet` (or anything mapping normalized ``(B, 3, h, w)`` to logits),
            with ``config.mean/std``.
        read, write: the scene's pixels in, labels (and probabilities) out, by window (see ``Reader``/``Writer``).
            Pixels whose valid mask is False get :data:`NODATA_LABEL` (and probability 0); windows with no
            valid pixel are not run.
        tile: window size (rounded up to a multiple of 32, the patch size); smaller scenes are padded.
        overlap: fraction of the window shared by neighbours, in ``[0, 1)``.
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"``: the model runs under ``torch.autocast`` in that dtype
            (CPU or CUDA); probabilities are summed in fp32 either way.
        strip_width: widest column strip (default :data:`MAX_STRIP_TILES` windows).
        progress: a callable told ``progress(n)`` after every ``n`` windows (e.g. a tqdm bar's ``update``).
    Returns:
        the :class:`WindowGrid` used.
    """
    grid = WindowGrid.plan(height, width, tile, overlap)
    autocast_dtype(precision)  # checked before any window runs
    device = torch.device(device) if device is not None else next(model.parameters()).device
    strip_width = strip_width or grid.default_strip_width()
    if strip_width < grid.tile_w:
        raise ValueError(f"strip_width {strip_width} is narrower than a window ({grid.tile_w})")
    for c0, c1 in grid.strips(strip_width):
        _predict_strip(model, grid, read, write, c0, c1, batch_size, device, precision, probabilities, progress)
    return grid


def _predict_strip(model, grid: WindowGrid, read: Reader, write: Writer, c0: int, c1: int, batch_size: int,
                   device, precision: str, probabilities: bool, progress) -> None:
    th, tw = grid.tile_h, grid.tile_w
    xs = [x for x in grid.xs if x < c1 and x + tw > c0]          # windows touching the strip
    left, span = xs[0], max(xs[-1] + tw, c1) - xs[0]              # the columns those windows cover
    mean, std = model.config.mean, model.config.std
    classes = getattr(model.config, "num_classes", None)
    # Summed probabilities and "a window with valid input covered it", for rows [top, top + rows).
    acc: Optional[Tensor] = None if classes is None else torch.zeros(classes, 0, span)
    covered = torch.zeros(0, span, dtype=torch.bool)
    top = 0
    for row, y in enumerate(grid.ys):
        covered = _grow(covered, y + th - top, dim=0)
        if acc is not None:
            acc = _grow(acc, y + th - top, dim=1)
        crops, corners = [], []
        for x in xs:
            y1, x1 = min(y + th, grid.height), min(x + tw, grid.width)
            crop, valid = read(y, y1, x, x1)
            valid = torch.ones(y1 - y, x1 - x, dtype=torch.bool) if valid is None else valid
            if not bool(valid.any()):
                continue  # nodata only: nothing to predict in this window
            covered[y - top:y1 - top, x - left:x1 - left] |= valid
            pad = (0, tw - (x1 - x), 0, th - (y1 - y))
            crops.append(F.pad(crop, pad) if any(pad) else crop)
            corners.append(x)
        for start in range(0, len(crops), batch_size):
            batch = normalize(torch.stack(crops[start:start + batch_size]).to(device), mean, std)
            dtype = autocast_dtype(precision)
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = model(batch).float()
            if not bool(torch.isfinite(logits).all()):
                raise NonFiniteOutput(
                    f"the model's output holds NaN/inf in the window at row {y}, column {corners[start]}: the "
                    f"checkpoint or the input is broken, so no labels are written for this scene")
            probs = logits.softmax(dim=1).cpu()
            if acc is None:
                acc = torch.zeros(probs.shape[1], covered.shape[0], span)
            for p, x in zip(probs, corners[start:start + batch_size]):
                acc[:, y - top:y - top + th, x - left:x - left + tw] += p
        if progress is not None:
            progress(len(xs))
        done = min(grid.ys[row + 1] if row + 1 < len(grid.ys) else grid.height, grid.height)
        if done <= top:
            continue
        rows, cols = slice(0, done - top), slice(c0 - left, c1 - left)
        seen = covered[rows, cols]
        if acc is None:  # no window has run yet (a model without config.num_classes): all nodata so far
            labels, probs_out = torch.full(seen.shape, NODATA_LABEL, dtype=torch.uint8), None
            if probabilities:
                raise ValueError("probabilities need model.config.num_classes")
        else:
            part = acc[:, rows, cols]
            labels = part.argmax(dim=0).to(torch.uint8).masked_fill(~seen, NODATA_LABEL)
            probs_out = (part / part.sum(dim=0).clamp_min(1e-12)).masked_fill(~seen, 0).numpy() if probabilities \
                else None
            acc = acc[:, done - top:]
        write(top, done, c0, c1, labels.numpy(), probs_out)
        covered = covered[done - top:]
        top = done


def _grow(t: Tensor, size: int, dim: int) -> Tensor:
    """``t`` zero-padded along ``dim`` to at least ``size``."""
    if t.shape[dim] >= size:
        return t
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


@torch.no_grad()
def predict_image(model, image, *, tile: int = 1024, overlap: float = 0.25, batch_size: int = 4,
                  device=None, precision: str = "fp32", strip_width: Optional[int] = None) -> np.ndarray:
    """Labels ``(H, W)`` uint8 for one in-memory image: ``(H, W, 3)`` uint8 array or ``(3, H, W)`` uint8 tensor."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image must be (H, W, 3), got {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    _, height, width = image.shape
    labels = np.empty((height, width), np.uint8)

    def read(y0, y1, x0, x1):
        return image[:, y0:y1, x0:x1], None

    def write(y0, y1, x0, x1, rows, _probs):
        labels[y0:y1, x0:x1] = rows

    predict_scene(model, read, write, height, width, tile=tile, overlap=overlap, batch_size=batch_size,
                  device=device, precision=precision, strip_width=strip_width)
    return labels

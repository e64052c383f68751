"""Class colours for masks, overlays and legends (LoveDA's and GID's usual colours where known)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

KNOWN = {
    "background": (255, 255, 255), "building": (255, 0, 0), "road": (255, 255, 0), "water": (0, 0, 255),
    "barren": (159, 129, 183), "forest": (0, 255, 0), "agriculture": (255, 195, 128),
    "built-up": (255, 0, 0), "farmland": (0, 255, 0), "meadow": (255, 255, 0),
}
# Distinct fallbacks for other class names (tab10-like).
FALLBACK = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def palette(class_names: Sequence[str]) -> np.ndarray:
    """``(K, 3)`` uint8 colours; GID's forest is cyan as in its labels."""
    names = [n.lower() for n in class_names]
    gid = "built-up" in names
    colours = []
    for i, name in enumerate(names):
        if gid and name == "forest":
            colours.append((0, 255, 255))
        else:
            colours.append(KNOWN.get(name, FALLBACK[i % len(FALLBACK)]))
    return np.array(colours, np.uint8)


def colourize(labels: np.ndarray, class_names: Sequence[str]):
    """A palette-mode PIL image: pixel values are class indices, viewers show the colours."""
    from PIL import Image

    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = palette(class_names).reshape(-1).tolist()
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.5):
    """The RGB image blended with the colour-coded mask; ``alpha`` in [0, 1] is the mask's opacity."""
    from PIL import Image

    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")  # beyond it uint8 colours wrap around
    colours = palette(class_names)[labels]
    return Image.fromarray((image.astype(np.float32) * (1 - alpha) + colours * alpha).astype(np.uint8))


def legend(class_names: Sequence[str]):
    """A small PNG legend: one colour swatch and name per class."""
    from PIL import Image, ImageDraw

    row, width = 22, 220
    img = Image.new("RGB", (width, row * len(class_names) + 8), "white")
    draw = ImageDraw.Draw(img)
    for i, (name, colour) in enumerate(zip(class_names, palette(class_names))):
        y = 4 + i * row
        draw.rectangle([6, y + 2, 30, y + row - 4], fill=tuple(int(c) for c in colour), outline="black")
        draw.text((40, y + 4), name, fill="black")
    return img


def panel(pictures: dict, legend_image=None, scale: int = 2):
    """Pictures side by side under their titles (``{title: PIL image}``, same size), the legend at the right."""
    from PIL import Image, ImageDraw

    tiles = [img.convert("RGB").resize((img.width * scale, img.height * scale), Image.NEAREST)
             for img in pictures.values()]
    gap, head = 8, 20
    width = sum(t.width for t in tiles) + gap * (len(tiles) + 1) + (legend_image.width + gap if legend_image else 0)
    height = max(t.height for t in tiles) + head + gap
    canvas = Image.new("RGB", (width, max(height, (legend_image.height + head) if legend_image else 0)), "white")
    draw = ImageDraw.Draw(canvas)
    x = gap
    for title, tile in zip(pictures, tiles):
        draw.text((x, 4), title, fill="black")
        canvas.paste(tile, (x, head))
        x += tile.width + gap
    if legend_image is not None:
        canvas.paste(legend_image, (x, head))
    return canvas

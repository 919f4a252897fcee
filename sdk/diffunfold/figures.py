"""Figures without matplotlib: captioned image grids (PIL) and a perceptual colour map (numpy).

The demo and the samples compose their comparison figures here: one row per image, one column
per method, each tile enlarged with nearest-neighbour (pixels stay pixels) and captioned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Anchors of an inferno-like map (black -> purple -> orange -> pale yellow): monotone in
# lightness, so a grey-scale print still reads as low -> high.
_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)


def colormap(values, vmax: float | None = None) -> np.ndarray:
    """``(H, W)`` non-negative values -> ``(H, W, 3)`` uint8, 0 black and ``vmax`` (default the
    maximum) pale yellow."""
    v = np.asarray(values, dtype=np.float64)
    top = float(v.max()) if vmax is None else float(vmax)
    t = np.clip(v / top, 0.0, 1.0) if top > 0 else np.zeros_like(v)
    pos = t * (len(_ANCHORS) - 1)
    i = np.minimum(pos.astype(int), len(_ANCHORS) - 2)
    frac = (pos - i)[..., None]
    return np.round(_ANCHORS[i] * (1 - frac) + _ANCHORS[i + 1] * frac).astype(np.uint8)


def to_rgb8(image) -> np.ndarray:
    """A ``(C, H, W)`` (C in 1, 3) or ``(H, W)`` float image in [0, 1] -> ``(H, W, 3)`` uint8."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        a = np.moveaxis(a, 0, -1)
        if a.shape[-1] == 1:
            a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return np.round(np.clip(a, 0.0, 1.0) * 255).astype(np.uint8)


@dataclass
class Panel:
    """One tile: an ``(h, w, 3)`` uint8 picture and up to two caption lines."""

    pixels: np.ndarray
    caption: str = ""


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError, AttributeError):
        return ImageFont.load_default()


def grid(
    rows: Sequence[Sequence[Panel]],
    columns: Sequence[str],
    title: str = "",
    tile: int = 192,
    path: str | Path | None = None,
) -> Image.Image:
    """Compose ``rows`` of panels under ``columns`` headings into one figure (saved to ``path``).

    Every panel is resized to ``tile`` x ``tile`` with nearest-neighbour, so a 16x16 SR input
    and a 64x64 result share a scale and stay honest about their pixels."""
    font, small = _font(15), _font(12)
    pad, head, cap = 6, (46 if title else 24), 32
    width = pad + len(columns) * (tile + pad)
    height = head + len(rows) * (tile + cap + pad) + pad
    fig = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(fig)
    if title:
        draw.text((pad, 4), title, fill="black", font=font)
    for j, name in enumerate(columns):
        draw.text((pad + j * (tile + pad), head - 20), name, fill="black", font=font)
    for i, row in enumerate(rows):
        top = head + i * (tile + cap + pad)
        for j, panel in enumerate(row):
            left = pad + j * (tile + pad)
            img = Image.fromarray(panel.pixels).resize((tile, tile), Image.NEAREST)
            fig.paste(img, (left, top))
            draw.multiline_text((left, top + tile + 2), panel.caption, fill="black", font=small, spacing=2)
    if path is not None:
        from .data.images import save_image  # written whole or not at all

        save_image(path, np.moveaxis(np.asarray(fig), -1, 0))
    return fig


__all__ = ["Panel", "colormap", "grid", "to_rgb8"]

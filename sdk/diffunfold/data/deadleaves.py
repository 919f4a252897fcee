"""Dead-leaves images: synthetic training images with the statistics of natural photos.

Opaque disks with power-law radii (density ~ r^-3) fall on top of one another until the canvas
is covered. The result is scale invariant, with a ~1/|f|^2 power spectrum, sharp occluding
edges and flat regions: the statistics a restoration prior needs (Lee, Mumford & Huang 2001;
Achddou et al. 2021 and Baradad et al. 2021 train restoration and vision networks on such
images). With only 14 bundled training photos, a model memorises them; mixing in an endless
stream of dead leaves (``data.synthetic`` in a training config) keeps it learning image
structure rather than those images.

Colours come from a palette of real pixels (the training photos) when one is given, so the
colour statistics are natural too. Rendering is at twice the size, then box-downsampled:
anti-aliased edges like a photo resized down.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def dead_leaves(size: int, rng: np.random.Generator, channels: int = 3, palette: np.ndarray | None = None,
                r_min: float = 1.5, r_max: float | None = None, texture: float = 0.03,
                max_disks: int = 5000) -> np.ndarray:
    """One ``(channels, size, size)`` float32 image in [0, 1].

    ``palette``: ``(N, channels)`` colours in [0, 1] to draw from (default: uniform colours).
    Radii follow density ``r^-3`` on ``[r_min, r_max]`` pixels of the output (``r_max``
    defaults to half the size); ``texture`` adds that much Gaussian grain inside each disk.
    """
    if size < 4 or channels not in (1, 3):
        raise InputError(f"dead_leaves needs size >= 4 and 1 or 3 channels, got size {size}, channels {channels}")
    scale = 2  # render at 2x, then average 2x2 blocks
    n = size * scale
    r_max = size / 2 if r_max is None else r_max
    lo, hi = r_min * scale, r_max * scale
    image = np.zeros((n, n, channels))
    free = np.ones((n, n), dtype=bool)  # pixels no disk covers yet (disks are drawn front to back)
    yy, xx = np.mgrid[0:n, 0:n]
    for _ in range(max_disks):
        # inverse CDF of p(r) ~ r^-3 on [lo, hi]
        u = rng.uniform()
        r = 1.0 / np.sqrt(1.0 / lo**2 - u * (1.0 / lo**2 - 1.0 / hi**2))
        cy, cx = rng.uniform(-r, n + r, size=2)
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, n)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, n)
        if y0 >= y1 or x0 >= x1:
            continue
        inside = ((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r) & free[y0:y1, x0:x1]
        if not inside.any():
            continue
        colour = palette[rng.integers(len(palette))] if palette is not None else rng.uniform(size=channels)
        grain = texture * rng.standard_normal((int(inside.sum()), channels)) if texture else 0.0
        image[y0:y1, x0:x1][inside] = colour + grain
        free[y0:y1, x0:x1] &= ~inside
        if not free.any():
            break
    image = image.reshape(size, scale, size, scale, channels).mean(axis=(1, 3))
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32)


def palette_from(images, count: int = 4096, seed: int = 0) -> np.ndarray:
    """``count`` random pixel colours ``(count, C)`` from ``(C, H, W)`` images in [0, 1]."""
    rng = np.random.default_rng(seed)
    pixels = np.concatenate([np.asarray(im, dtype=np.float32).reshape(im.shape[0], -1).T for im in images])
    return pixels[rng.integers(len(pixels), size=count)]


__all__ = ["dead_leaves", "palette_from"]

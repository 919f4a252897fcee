"""Inpainting: ``A x = m * x`` with a binary mask ``m`` (1 = observed).

The measurement keeps the image's shape with zeros where pixels are missing, so ``A`` is an
orthogonal projection: self-adjoint, ``||A|| = 1`` and ``pinv = A`` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._array import to_numpy
from ..errors import InputError
from .base import LinearOperator


class Inpainting(LinearOperator):
    """Inpainting with a given binary mask.

    ``mask`` is ``(H, W)`` (shared by the batch and the channels) or ``(B, 1 | C, H, W)``
    (one mask per image, or per image and channel).
    """

    task = "inpainting"

    def __init__(self, mask, recipe: dict | None = None):
        m = np.asarray(to_numpy(mask))
        if m.ndim == 2:
            m = m[None, None]
        if m.ndim != 4:
            raise InputError(f"an inpainting mask must be (H, W) or (B, C, H, W), got shape {m.shape}")
        if m.dtype != bool and not np.all((m == 0) | (m == 1)):
            raise InputError("an inpainting mask must be binary (1 = observed, 0 = missing)")
        super().__init__(m.shape[-2:], batch=int(m.shape[0]))
        self._mask = m.astype(np.float64)
        self._mask_channels = int(m.shape[1])
        self._recipe = recipe

    @property
    def lipschitz(self) -> float:
        # A binary mask is a projection: ||A||^2 = 1 (also used when nothing is observed, where
        # the gradient is zero anyway, so no step is ever divided by zero).
        return 1.0

    @classmethod
    def random(cls, image_shape: Sequence[int], missing: float, seed: int | None = None) -> Inpainting:
        """Pixel-wise "dust-like" mask: each pixel (all channels together) is missing with
        probability ``missing`` (the paper uses 0.2, 0.4, 0.6)."""
        if not 0.0 <= float(missing) < 1.0:
            raise InputError(f"missing must be a probability in [0, 1), got {missing!r}")
        h, w = tuple(int(s) for s in image_shape)[-2:]
        mask = np.random.default_rng(seed).random((h, w)) >= float(missing)
        return cls(mask, recipe={"task": "inpainting", "image_shape": (h, w), "missing": float(missing), "seed": seed})

    @classmethod
    def box(cls, image_shape: Sequence[int], size: float | Sequence[int] = 0.4, seed: int | None = None) -> Inpainting:
        """One missing rectangle. ``size`` is a fraction of each side or ``(rows, cols)`` in
        pixels; the box is centred when ``seed`` is None, else placed at random."""
        h, w = tuple(int(s) for s in image_shape)[-2:]
        if np.ndim(size) == 0:
            if not 0.0 < float(size) < 1.0:
                raise InputError(f"a box size given as a fraction must be in (0, 1), got {size!r}")
            bh, bw = int(round(h * float(size))), int(round(w * float(size)))
        else:
            bh, bw = (int(s) for s in size)
        if not (0 < bh < h and 0 < bw < w):
            raise InputError(f"box {bh}x{bw} does not fit in a {h}x{w} image")
        if seed is None:
            top, left = (h - bh) // 2, (w - bw) // 2
        else:
            rng = np.random.default_rng(seed)
            top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        mask = np.ones((h, w), dtype=bool)
        mask[top : top + bh, left : left + bw] = False
        return cls(mask, recipe={"task": "box_inpainting", "image_shape": (h, w), "size": size, "seed": seed})

    @property
    def mask(self) -> np.ndarray:
        """The mask as ``(B, 1 | C, H, W)`` float64 (1 = observed)."""
        return self._mask

    @property
    def observed_fraction(self) -> float:
        return float(self._mask.mean())

    def _check_image(self, x, what):
        super()._check_image(x, what)
        if self._mask_channels > 1 and int(x.shape[1]) != self._mask_channels:
            raise InputError(f"{what} has {int(x.shape[1])} channels but the mask has {self._mask_channels}")

    def _apply(self, v):
        return v * self._const("mask", self._mask, v, dtype=v.dtype)

    _forward = _adjoint = _pinv = _apply

    def _measured(self, y):
        return self._const("mask", self._mask, y, dtype=y.dtype)

    def _prox(self, v, y, weight, iterations: int):
        # Diagonal: observed pixels move to (y + w v) / (1 + w), missing ones keep v.
        m = self._const("mask", self._mask, v, dtype=v.dtype)
        return (m * y + weight * v) / (m + weight)

    def spec(self) -> dict:
        """The recipe it was built from; for an explicit mask, ``given`` names the mask (which
        ``make_operator`` then needs as an argument)."""
        if self._recipe is None:
            return {
                "task": "inpainting",
                "image_shape": self.image_shape,
                "given": ["mask"],
                "observed_fraction": round(self.observed_fraction, 4),
            }
        return dict(self._recipe)

    def __repr__(self) -> str:
        return f"Inpainting({self.image_shape}, observed={self.observed_fraction:.3f}, batch={self.batch})"

"""Contrast stretch of low-contrast images, exact through any linear physics.

A prior learned from photographs expects their contrast. Given a flat image (fog, a wall, wood
grain, sea), the bundled model restores it with the texture of a typical photo and loses 2-3 dB
to a smoothness prior. The physics is linear, so ``A (g x + o) = g A x + o A 1``: the same
image at a photo's contrast, ``x' = g x + o``, has the measurement ``y' = g y + o A 1`` with noise
``g sigma_y``. The solver restores ``x'`` from ``y'`` and maps the result back,
``x = (x' - o) / g``; nothing is approximated, only the problem the network sees is one it knows.

The gain comes from ``y``: its least-squares constant ``m`` (``y ~ m A 1``), and the spread of ``y``
about it less the noise's, ``s``. A blur or a downsampling lowers the spread ``y`` shows (by up
to a third on photos), so only an image with ``s`` below ``flat_std`` counts as flat; it gets
``g = target_std / s`` (at most ``max_gain``), the others ``g = 1`` and are untouched. The
defaults: ``target_std`` 0.15 is the 10th percentile of the training photos' std at 64 px;
``flat_std`` 0.09 lies between what the one flat photo among 39 held-out ones shows through the
harness's blurs, SR and inpainting (``s`` <= 0.068) and what the next flattest shows (>= 0.107). A stretched image's
mean moves towards mid-grey as ``g``
grows, ``m' = m + (1/2 - m) (1 - 1/g)``, so it stays in the data range. Images only: an MRI
package refuses it.

Measured on the bundled image-small (``bench/results/real-data/image-small-validation``,
section 9): the flat photo among 6 validation photos gains 2.3-2.9 dB on SR x8 and inpainting
60 %, the others are not touched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._array import like, to_numpy
from .errors import InputError

CONTRASTS = ("none", "stretch", "colour")


@dataclass(frozen=True)
class Contrast:
    """The stretch's settings: an image whose estimated std is below ``flat_std`` is stretched to
    ``target_std``, by at most ``max_gain``. ``colour``: also move each colour channel's level to
    mid-grey, every image (grey-world; it removes a colour cast the prior does not know, exact
    for operators that act on each channel alike, as every image operator here does)."""

    target_std: float = 0.15
    flat_std: float = 0.09
    max_gain: float = 4.0
    colour: bool = False

    def __post_init__(self):
        if not (np.isfinite(self.target_std) and self.target_std > 0):
            raise InputError(f"contrast target_std must be > 0, got {self.target_std}")
        if not (np.isfinite(self.flat_std) and 0 < self.flat_std <= self.target_std):
            raise InputError(f"contrast flat_std must be in (0, target_std = {self.target_std}], got {self.flat_std}")
        if not (np.isfinite(self.max_gain) and self.max_gain >= 1):
            raise InputError(f"contrast max_gain must be >= 1, got {self.max_gain}")

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def of(value: Any) -> Contrast | None:
        """None for ``None``/``"none"``/``False``; the default stretch for ``"stretch"``/``True``,
        with the colour centring for ``"colour"``; a :class:`Contrast` or a dict of its fields."""
        if value is None or value is False or value == "none":
            return None
        if value is True or value == "stretch":
            return Contrast()
        if value == "colour":
            return Contrast(colour=True)
        if isinstance(value, Contrast):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"target_std", "flat_std", "max_gain", "colour"}
            if unknown:
                raise InputError(
                    f"unknown contrast setting(s) {sorted(unknown)}; use target_std, flat_std, max_gain and colour"
                )
            if not isinstance(value.get("colour", False), bool):
                raise InputError(f"contrast colour must be true or false, got {value['colour']!r}")
            return Contrast(**{k: (v if k == "colour" else float(v)) for k, v in value.items()})
        raise InputError(f"contrast must be one of {CONTRASTS}, a Contrast or a dict, got {value!r}")


@dataclass(frozen=True)
class Stretch:
    """Per image gain ``g`` (``(B,)``) and offset ``o`` (``(B,)``, or ``(B, C)`` per channel) of
    ``x' = g x + o`` (float64 numpy)."""

    gain: np.ndarray
    offset: np.ndarray

    @property
    def identity(self) -> bool:
        return bool(np.all(self.gain == 1.0) and np.all(self.offset == 0.0))

    @staticmethod
    def _per_image(values: np.ndarray, ref):
        """``values`` (per image, or per image and channel) shaped to broadcast over ``ref``, in its
        namespace and on its device."""
        return like(values.reshape(values.shape + (1,) * (ref.ndim - values.ndim)).astype(np.float32), ref)

    def measurement(self, y, a_ones):
        """``y' = g y + o A 1`` (``a_ones``: ``A`` of the all-ones image, broadcastable to ``y``)."""
        return self._per_image(self.gain, y) * y + self._per_image(self.offset, y) * a_ones

    def noise_std(self, std: np.ndarray) -> np.ndarray:
        return np.asarray(std, dtype=np.float64) * self.gain

    def stretched(self, x):
        """An image at the stretched contrast, ``g x + o`` (a solve's starting estimate)."""
        return self._per_image(self.gain, x) * x + self._per_image(self.offset, x)

    def image(self, x_stretched):
        """The restoration back at the image's own contrast: ``(x' - o) / g``."""
        return (x_stretched - self._per_image(self.offset, x_stretched)) / self._per_image(self.gain, x_stretched)


def estimate(y, a_ones, noise_std, contrast: Contrast) -> Stretch:
    """The stretch of each image from its measurement ``y`` (``(B, ...)``), ``a_ones`` = ``A 1``
    (broadcastable to ``y``) and the noise std per image."""
    y64 = to_numpy(y).astype(np.float64)
    c = np.broadcast_to(to_numpy(a_ones).astype(np.float64), y64.shape).reshape(len(y64), -1)
    y64 = y64.reshape(len(y64), -1)
    energy = (c * c).sum(axis=1)
    if np.any(energy <= 0):
        raise InputError(
            "the operator maps a constant image to zero: the contrast stretch cannot "
            "estimate the image's level from y; use contrast 'none'"
        )
    mean = (c * y64).sum(axis=1) / energy
    spread = ((y64 - mean[:, None] * c) ** 2).sum(axis=1) / energy - np.asarray(noise_std, np.float64) ** 2
    std = np.sqrt(np.maximum(spread, 1e-12))
    gain = np.where(std < contrast.flat_std, np.clip(contrast.target_std / std, 1.0, contrast.max_gain), 1.0)
    if contrast.colour:  # each channel's level to mid-grey
        return Stretch(gain=gain, offset=0.5 - gain[:, None] * _channel_levels(y, a_ones))
    centre = mean + (0.5 - mean) * (1.0 - 1.0 / gain)
    offset = np.where(gain > 1.0, centre - gain * mean, 0.0)
    return Stretch(gain=gain, offset=offset)


def _channel_levels(y, a_ones) -> np.ndarray:
    """Each channel's least-squares level in ``y`` (``(B, C, ...)``): ``(B, C)``."""
    y64 = to_numpy(y).astype(np.float64)
    c = np.broadcast_to(to_numpy(a_ones).astype(np.float64), y64.shape)
    axes = tuple(range(2, y64.ndim))
    return (c * y64).sum(axis=axes) / np.maximum((c * c).sum(axis=axes), 1e-12)

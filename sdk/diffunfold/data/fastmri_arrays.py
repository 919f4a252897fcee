"""Array helpers of fastMRI data: the centre crop to the recon matrix and the paper's
99th-percentile normalisation. Re-exported by ``diffunfold.data.fastmri``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError


def center_crop(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The centre ``(h, w)`` of the last two axes of ``x`` (a view, not a copy).

    The crop starts at ``(H - h) // 2``, which keeps the k-space/FFT centre pixel ``H // 2``
    at ``h // 2`` when sizes are even.
    """
    if getattr(x, "ndim", 0) < 2:
        raise InputError(
            f"center_crop needs an array with at least 2 dimensions, got {type(x).__name__} {getattr(x, 'shape', '')}"
        )
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"the crop shape must be (h, w), got {shape!r}") from None
    H, W = int(x.shape[-2]), int(x.shape[-1])
    if h < 1 or w < 1:
        raise InputError(f"the crop shape must be positive, got {(h, w)}")
    if h > H or w > W:
        raise InputError(
            f"cannot crop {(H, W)} to {(h, w)}: the crop is larger than the image; pick a crop of at most {(H, W)}"
        )
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top : top + h, left : left + w]


def percentile_normalize(image: np.ndarray, q: float = 99.0) -> tuple[np.ndarray, float]:
    """``(image / s, s)`` with ``s`` the ``q``-th percentile of ``|image|``.

    The paper normalises each fastMRI slice by its 99th-percentile magnitude, so a handful of
    bright pixels (fat, vessels) do not set the scale. The dtype is kept.
    """
    image = np.asarray(image)
    if not (0 < float(q) <= 100):
        raise InputError(f"q must be a percentile in (0, 100], got {q!r}")
    mag = np.abs(image)
    if mag.size == 0 or not np.all(np.isfinite(mag)):
        raise InputError("the image is empty or contains NaN/Inf; it cannot be normalised")
    scale = float(np.percentile(mag, q))
    if not scale > 0:
        raise InputError(
            f"the {q:g}th percentile of |image| is 0 (the image is blank or mostly background), "
            "so it cannot be normalised; check the slice, or use a larger q"
        )
    return (image / np.asarray(scale, dtype=mag.dtype)).astype(image.dtype, copy=False), scale


def fit_crop(recon: Sequence[int], hw: Sequence[int]) -> tuple[int, int]:
    # Some fastMRI brain volumes have fewer phase encodes than the 320-wide recon matrix;
    # like fastMRI itself, crop to what the image has rather than fail.
    return (min(int(recon[0]), int(hw[0])), min(int(recon[1]), int(hw[1])))

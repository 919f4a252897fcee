"""Image-quality metrics: PSNR and SSIM, per image, for natural images and MRI.

Both wrap scikit-image (``skimage.metrics``) and add what evaluation code keeps re-writing:
numpy / torch / CuPy inputs, complex images compared on their magnitudes, batches scored
image by image, the fastMRI data-range convention, and clear errors for bad inputs.

Conventions
-----------
* Shapes: ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)``. One image (ndim <= 3) gives a Python
  ``float``; a batch (ndim == 4) gives a numpy float64 array of shape ``(B,)``, each entry
  exactly what the single-image call returns (the score never depends on the batch).
* ``data_range=None`` is the fastMRI convention: the maximum of the target image (of its
  magnitude, per image). Natural images in [0, 1] should pass ``data_range=1.0``.
* PSNR of identical images is ``inf`` (no warning is emitted); average such scores with care.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ._array import to_numpy
from .errors import InputError

__all__ = ["psnr", "ssim", "summarize"]


def _prepare(estimate: Any, target: Any, name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Both inputs as float64 numpy arrays of shape (B, C, H, W) (magnitudes if complex),
    and whether the caller passed a batch."""
    est = np.asarray(to_numpy(estimate))
    tgt = np.asarray(to_numpy(target))
    if est.shape != tgt.shape:
        raise InputError(
            f"{name}: estimate and target shapes differ: {est.shape} vs {tgt.shape}; "
            "compare images of the same size (crop or resize first)"
        )
    if est.ndim not in (2, 3, 4):
        raise InputError(f"{name}: expected (H, W), (C, H, W) or (B, C, H, W) images, got shape {est.shape}")
    out = []
    for arr, what in ((est, "estimate"), (tgt, "target")):
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise InputError(f"{name}: {what} has non-numeric dtype {arr.dtype}")
        # np.abs of a complex array is its magnitude; of a real array, leave the sign alone.
        arr = np.abs(arr) if np.iscomplexobj(arr) else arr
        arr = arr.astype(np.float64, copy=False)
        if not np.all(np.isfinite(arr)):
            raise InputError(
                f"{name}: {what} contains NaN or Inf values; the score would be meaningless "
                "(check the reconstruction for divergence)"
            )
        out.append(arr.reshape((1,) * (4 - arr.ndim) + arr.shape))
    return out[0], out[1], est.ndim == 4


def _ranges(target: np.ndarray, data_range: Any, name: str) -> np.ndarray:
    """One data range per image of the (B, C, H, W) ``target``."""
    if data_range is None:
        ranges = target.reshape(target.shape[0], -1).max(axis=1)
        bad = np.flatnonzero(ranges <= 0)
        if bad.size:
            raise InputError(
                f"{name}: data_range=None uses the target's maximum, but it is "
                f"{ranges[bad[0]]:g} (image {int(bad[0])}); pass data_range explicitly "
                "(1.0 for images in [0, 1])"
            )
        return ranges
    try:
        value = float(data_range)
    except (TypeError, ValueError):
        raise InputError(f"{name}: data_range must be a positive number or None, got {data_range!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"{name}: data_range must be a positive finite number, got {data_range!r}")
    return np.full(target.shape[0], value)


def _result(values: list[float], batched: bool):
    return np.asarray(values, dtype=np.float64) if batched else float(values[0])


def psnr(estimate: Any, target: Any, data_range: float | None = None):
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``, per image.

    ``estimate`` and ``target`` are numpy, torch or CuPy arrays of the same shape ``(H, W)``,
    ``(C, H, W)`` or ``(B, C, H, W)``; complex inputs are compared on their magnitudes. The
    MSE is taken over all channels and pixels of an image. ``data_range=None`` uses each
    target's maximum (fastMRI). Returns a float, or a float64 ``(B,)`` array for a batch;
    identical images give ``inf``.
    """
    from skimage.metrics import peak_signal_noise_ratio

    est, tgt, batched = _prepare(estimate, target, "psnr")
    ranges = _ranges(tgt, data_range, "psnr")
    values = []
    # skimage divides by the MSE: a zero MSE is a correct +inf, not something to warn about.
    with np.errstate(divide="ignore"):
        for e, t, r in zip(est, tgt, ranges):
            values.append(float(peak_signal_noise_ratio(t, e, data_range=float(r))))
    return _result(values, batched)


def _win_size(height: int, width: int) -> int:
    """The standard 7x7 window, shrunk to the largest odd size that fits small images."""
    side = min(height, width, 7)
    return side if side % 2 == 1 else side - 1


def ssim(estimate: Any, target: Any, data_range: float | None = None):
    """Structural similarity (Wang et al. 2004) per image, via scikit-image's defaults
    (7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance) as fastMRI uses them.

    Inputs and ``data_range`` as for :func:`psnr`. Multichannel images are scored per
    channel and averaged (``channel_axis``); single-channel images as 2-D. The window shrinks
    to the largest odd size <= the shorter side for images smaller than 7 pixels; images
    smaller than 3 pixels are rejected. Returns a float, or a float64 ``(B,)`` array.
    """
    from skimage.metrics import structural_similarity

    est, tgt, batched = _prepare(estimate, target, "ssim")
    ranges = _ranges(tgt, data_range, "ssim")
    _, channels, height, width = est.shape
    win = _win_size(height, width)
    if win < 3:
        raise InputError(f"ssim: images of {height}x{width} pixels are too small; SSIM needs at least 3x3 pixels")
    values = []
    for e, t, r in zip(est, tgt, ranges):
        if channels == 1:
            value = structural_similarity(t[0], e[0], win_size=win, data_range=float(r))
        else:
            value = structural_similarity(t, e, win_size=win, data_range=float(r), channel_axis=0)
        values.append(float(value))
    return _result(values, batched)


def summarize(values: Iterable[float] | Any) -> tuple[float, float]:
    """``(mean, std)`` of per-image scores (population std, ddof=0), e.g. of a ``psnr`` batch.

    ``inf`` PSNRs (identical images) make the mean ``inf``; drop them first if that is not
    what the report should say.
    """
    arr = to_numpy(values) if hasattr(values, "shape") else list(values)
    arr = np.asarray(arr, dtype=np.float64).ravel()
    if arr.size == 0:
        raise InputError("summarize: no values given")
    if np.any(np.isnan(arr)):
        raise InputError("summarize: the values contain NaN")
    with np.errstate(invalid="ignore"):  # std of values containing inf is nan, not a warning
        return float(arr.mean()), float(arr.std())

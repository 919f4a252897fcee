"""Estimate the measurement noise ``sigma_y`` from ``y`` alone, for when the user does not know it.

Robust estimates, one per image: from the part of ``y`` where the signal is weakest for images
(the finest wavelet detail for blur and SR: scikit-image's ``estimate_sigma``; differences of
neighbouring observed pixels for inpainting), where signal can only add to them, so they err
on the high side (a model then trusts ``y`` a little less than it could); for MRI the scanner
pipeline's estimate from the coils' redundancy (``diffunfold.scanner.noise``: 0 on noise-free
k-space, a few per cent low on noisy). Torch-free: the runtime uses it.
"""

from __future__ import annotations

import numpy as np

from ._array import to_numpy
from .physics.base import LinearOperator, check_noise_std
from .physics.inpainting import Inpainting
from .physics.mri import MultiCoilMRI

_MAD = 1.4826  # median absolute deviation -> standard deviation, Gaussian noise


def _inpainting(op: Inpainting, y: np.ndarray) -> np.ndarray:
    """Noise of observed pixels from second differences of three observed neighbours in a row
    or column: ``y[i-1] - 2 y[i] + y[i+1]`` has variance ``6 sigma^2`` plus the local curvature,
    which is small on most of a natural image."""
    m = np.broadcast_to(op.mask, y.shape) > 0
    out = []
    for yi, mi in zip(y, m):
        d = [
            (yi[..., :, :-2] - 2 * yi[..., :, 1:-1] + yi[..., :, 2:])[
                mi[..., :, :-2] & mi[..., :, 1:-1] & mi[..., :, 2:]
            ],
            (yi[..., :-2, :] - 2 * yi[..., 1:-1, :] + yi[..., 2:, :])[
                mi[..., :-2, :] & mi[..., 1:-1, :] & mi[..., 2:, :]
            ],
        ]
        d = np.concatenate(d)
        out.append(_MAD * np.median(np.abs(d)) / np.sqrt(6) if d.size else 0.0)
    return np.asarray(out)


def _mri(op: MultiCoilMRI, y: np.ndarray) -> np.ndarray:
    """Per image, the scanner pipeline's estimate (:func:`diffunfold.scanner.noise.estimate_kspace_noise`):
    the Hankel tail of fully sampled k-space patches, 0 on noise-free data, or the outer
    k-space where the mask has too few fully sampled patches."""
    from .scanner.noise import estimate_kspace_noise

    masks = np.broadcast_to(op.mask, (y.shape[0], 1, *y.shape[-2:]))[:, 0]
    return np.asarray([estimate_kspace_noise(yi, mi)[0] for yi, mi in zip(y, masks)])


def _image(y: np.ndarray) -> np.ndarray:
    from skimage.restoration import estimate_sigma

    return np.asarray([float(np.mean(estimate_sigma(yi, channel_axis=0))) for yi in y])


def estimate_noise_std(operator: LinearOperator, y) -> np.ndarray:
    """One estimate of the measurement noise standard deviation per image of ``y``
    (numpy, CuPy or torch), as float64 ``(B,)``."""
    operator.check_measurement(y)
    y = np.asarray(to_numpy(y), dtype=np.complex128 if operator.complex_image else np.float64)
    if isinstance(operator, MultiCoilMRI):
        return _mri(operator, y)
    if isinstance(operator, Inpainting):
        return _inpainting(operator, y)
    return _image(y)


def resolve_noise_std(noise_std, operator: LinearOperator, y, batch: int) -> np.ndarray:
    """The noise level of a solve, resolved once: ``noise_std`` as float64 ``(batch,)``, checked
    when given (a number or one per image, finite, >= 0: ``physics.base.check_noise_std``),
    estimated from ``y`` when None (:func:`estimate_noise_std`)."""
    if noise_std is None:
        return estimate_noise_std(operator, y)
    return np.broadcast_to(check_noise_std(noise_std, batch), (batch,)).copy()

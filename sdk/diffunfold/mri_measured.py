"""A fastMRI file's slice reconstructed as a scanner delivers it: the file's own coil k-space,
undersampled by the mask, then the scan pipeline (``diffunfold.scanner``: noise level and
ESPIRiT maps from the data, the SENSE start). The reference (the fully sampled SENSE image,
as ``FastMRISlices`` makes it) is never seen by the reconstruction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .data.fastmri import FastMRIFile
from .data.fastmri_arrays import center_crop
from .physics.mri import fft2c, ifft2c
from .scanner.reconstruct import ScanResult, reconstruct_kspace
from .scanner.simulate import white_noise


def coil_kspace(path, s: int, scale: float, crop: tuple[int, int] | None) -> np.ndarray:
    """Slice ``s``'s coil k-space ``(Nc, H, W)`` on the reference's grid (its coil images cut
    to the recon matrix, then to ``crop``) and in its units (divided by ``scale``)."""
    with FastMRIFile(path) as f:
        images = center_crop(ifft2c(f.kspace(s)), f.recon_shape)
    if crop is not None:
        images = center_crop(images, crop)
    return np.asarray(fft2c(images / scale), dtype=np.complex64)


def reconstruct_measured(
    solver, kspace: np.ndarray, mask: np.ndarray, noise_rel: float, seed: int, **solve: Any
) -> tuple[ScanResult, np.ndarray, float]:
    """Undersample ``kspace`` (with extra complex Gaussian noise of std ``noise_rel`` max|k|,
    drawn from ``seed``) and reconstruct it. Returns the result, the zero-filled root sum of
    squares and the added noise's std."""
    noise_std = float(noise_rel) * float(np.abs(kspace).max())
    noise = white_noise(kspace.shape, np.random.default_rng(seed)) * noise_std
    y = ((kspace + noise) * mask).astype(np.complex64)
    result = reconstruct_kspace(solver, y, mask, seed=seed, **solve)
    zero_filled = np.sqrt(np.sum(np.abs(np.asarray(ifft2c(y))) ** 2, axis=0)).astype(np.float32)
    return result, zero_filled, noise_std

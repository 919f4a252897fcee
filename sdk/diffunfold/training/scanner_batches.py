"""MRI training batches as a scanner delivers them (``data.scanner = true``).

The clean slice is measured through its true (simulated) coils with noise correlated between
coils, and the measurement then goes through the inference pipeline itself
(:func:`diffunfold.scanner.prepare_kspace`): noise level estimated from the calibration
region, coil compression, ESPIRiT maps from the calibration region (uncropped, as inference uses
them by default: at 64 px the few calibration lines leave ESPIRiT's eigenvalues under any
useful crop threshold, so a cropped support would be empty), the maps' residual as a floor under the noise level, and
the scale
from the zero-filled image. The model is trained on the operator with the *estimated* maps,
the scaled measurement and the estimated noise level: what it will be given at inference; its
target is the clean image as those maps see it (the true coil images combined with them).
Every draw comes from the step's per-image streams, so a batch is fixed by its seed.
"""

from __future__ import annotations

import numpy as np

from ..physics.mri import MultiCoilMRI
from ..scanner import ScannerSettings, prepare_kspace
from ..scanner.simulate import correlated_noise, random_noise_covariance


def scan_batch(
    x: np.ndarray,
    true_op: MultiCoilMRI,
    noise_std: np.ndarray,
    rngs: list[np.random.Generator],
    settings: ScannerSettings,
) -> dict:
    """``x`` (B, 1, H, W) clean slices, ``true_op`` their acquisition (true maps, shared mask),
    ``noise_std`` (B,) the k-space noise level (the mean over coils) -> ``{"x", "y", "operator",
    "sigma_y"}`` in the model's units, as inference would see the scan."""
    y_clean = np.asarray(true_op.A(x))
    mask = np.asarray(true_op.mask[0, 0], dtype=np.float32)
    xs, ys, maps, stds = [], [], [], []
    for i, g in enumerate(rngs):
        psi = random_noise_covariance(y_clean.shape[1], g)
        y = y_clean[i] + float(noise_std[i]) * correlated_noise(y_clean.shape[1:], psi, g) * mask
        p = prepare_kspace(y, mask, settings)
        # The target in the estimated maps' convention: ESPIRiT fixes the image only up to a
        # smooth phase (and |S_est^H S_true| <= 1), so the image the data imply through them is
        # the true coil images combined with the estimated maps, not x itself.
        true_maps = np.einsum(
            "vc,chw->vhw", p.coil_transform, true_op.coil_maps[min(i, true_op.coil_maps.shape[0] - 1)]
        )
        combined = np.sum(np.conj(p.operator.coil_maps[0]) * true_maps, axis=0)
        xs.append(x[i] * combined / p.scale)
        ys.append(p.y[0])
        maps.append(p.operator.coil_maps[0])
        stds.append(p.data_std)
    return {
        "x": np.stack(xs).astype(np.complex64),
        "y": np.stack(ys),
        "operator": MultiCoilMRI(np.stack(maps), mask),
        "sigma_y": np.asarray(stds),
    }

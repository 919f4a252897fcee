"""MRI as a scanner delivers it: k-space at its own resolution with noise correlated between
coils, a calibration region instead of coil maps, and an unknown noise level and scale.

* :mod:`.noise`: the coil noise covariance from noise-scan lines, prewhitening, and an
  estimate of the k-space noise level from the data alone.
* :mod:`.coils`: coil compression (SVD) and ESPIRiT coil maps (SigPy) from the calibration
  region, with the residual of the data that the maps cannot explain.
* :mod:`.prepare`: the one pipeline that turns measured k-space and its mask into what the
  solver needs (operator, scaled measurement, noise level), shared by the API, ``diffunfold
  mri``, the MRD server and training, so that training sees what inference will see.
* :mod:`.start`: where sampling starts: a SENSE estimate plus noise (fewer network calls, and
  a sample that stays near what the data fix).
* :mod:`.reconstruct`: the API's one call for a scan, ``reconstruct_kspace``.
"""

from .coils import calibration_region, compression_matrix, espirit_maps, map_residual
from .noise import estimate_kspace_noise, noise_covariance, prewhiten, whitening_matrix
from .prepare import Prepared, ScannerSettings, prepare_kspace
from .start import StartSettings, sense_start

__all__ = [
    "Prepared",
    "ScannerSettings",
    "StartSettings",
    "calibration_region",
    "compression_matrix",
    "espirit_maps",
    "estimate_kspace_noise",
    "map_residual",
    "noise_covariance",
    "prepare_kspace",
    "prewhiten",
    "sense_start",
    "whitening_matrix",
]

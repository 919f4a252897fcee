"""Measured multi-coil k-space -> what the solver needs, the same way everywhere.

``prepare_kspace`` is the pipeline of ``diffunfold mri``, the MRD server, the Python API and
the MRI training data (which simulates a scan and then runs it, so that the model learns from
the maps and noise levels it will be given):

1. prewhiten with the coil noise covariance, when noise-scan lines gave one;
2. the noise level: 1 after prewhitening, else given, else estimated from the calibration
   region (:func:`~.noise.estimate_kspace_noise`);
3. coil compression to ``virtual_coils`` (SVD over the calibration region), if asked for;
4. coil maps: ESPIRiT from the calibration region (or the low-resolution ratio maps);
5. the maps' residual on the calibration data, a floor under the noise level the data step
   is given (``map_floor`` times it, by default 0.3 for 1-D patterns and 0.1 for 2-D ones),
   since no image matches data through estimated maps;
6. the scale: the 99th percentile of the zero-filled SENSE magnitude maps to 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InputError
from ..physics.mri import MultiCoilMRI, estimate_coil_maps
from .coils import ESPIRIT_GRID, calibration_region, calibration_width, compression_matrix, espirit_maps, map_residual
from .noise import estimate_kspace_noise, prewhiten, whitening_matrix

COIL_MAP_METHODS = ("espirit", "calibration")
# The maps' residual's weight in the data step by pattern. A 2-D pattern's calibration square is
# small (10 px at 256 px), and the truncation of so small a window, not the maps' error, makes
# most of its residual: 0.1 there beat 0.3 in every 2-D validation cell at 64-320 px, with and
# without noise (+0.2 to +2.6 dB). A 1-D pattern's calibration lines span the readout; at 64 px
# without noise 0.1 lost 3.2 dB there.
MAP_FLOOR_LINES = 0.3
MAP_FLOOR_POINTS = 0.1


@dataclass(frozen=True)
class ScannerSettings:
    """How measured k-space is turned into a reconstruction problem (see the module)."""

    coil_maps: str = "espirit"  # espirit | calibration (low-resolution ratio maps)
    # SVD coil compression; None keeps every coil. Off by default: on the held-out head at
    # 256 px, 8 virtual coils cost 0.3 dB (Gaussian 1-D 4x) and 1.8 dB (Gaussian 2-D 8x, whose
    # 10 px calibration square fixes the compression poorly) for 1.3-2x less time per slice.
    virtual_coils: int | None = None
    espirit_crop: float = 0.0  # ESPIRiT support threshold (0: maps everywhere, as trained)
    espirit_kernel: int = 6
    espirit_grid: int = ESPIRIT_GRID  # ESPIRiT's coarse grid side (>= the image: the full grid)
    # weight of the maps' residual in the data step's noise level; None: the pattern's own
    # (MAP_FLOOR_LINES, MAP_FLOOR_POINTS; bench/results/scanner-start-validation.md)
    map_floor: float | None = None

    def checked(self) -> ScannerSettings:
        if self.coil_maps not in COIL_MAP_METHODS:
            raise InputError(f"coil maps must be one of {COIL_MAP_METHODS}, got {self.coil_maps!r}")
        v = self.virtual_coils
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"virtual_coils must be a positive integer or None, got {v!r}")
        if not 0.0 <= float(self.espirit_crop) < 1.0:
            raise InputError(f"espirit_crop must be in [0, 1), got {self.espirit_crop!r}")
        f = self.map_floor
        if f is not None and (
            isinstance(f, bool) or not isinstance(f, (int, float)) or not (np.isfinite(f) and f >= 0)
        ):
            raise InputError(f"map_floor must be a finite number >= 0 or None, got {f!r}")
        return self


@dataclass
class Prepared:
    """A scan ready for ``Solver.solve(prepared.y, prepared.operator, noise_std=prepared.data_std)``.
    Levels are k-space standard deviations in the model's units (the data's over ``scale``)."""

    operator: MultiCoilMRI
    y: np.ndarray  # (1, Nv, H, W) complex64, scaled
    scale: float  # the data's units per model unit
    noise_std: float  # the measurement noise (estimated, given, or 1 / scale whitened)
    map_std: float  # what the coil maps cannot explain
    data_std: float  # what the data step is told: sqrt(noise^2 + (map_floor map)^2)
    info: dict = field(default_factory=dict)
    coil_transform: np.ndarray | None = None  # (Nv, Nc): the coils the operator has, from the measured ones


def map_floor(settings: ScannerSettings, operator: MultiCoilMRI) -> float:
    """The maps' residual's weight: the setting, or the pattern's own."""
    if settings.map_floor is not None:
        return float(settings.map_floor)
    return MAP_FLOOR_LINES if operator.samples_lines else MAP_FLOOR_POINTS


def _check(kspace, mask) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(kspace)
    if k.ndim != 3 or not np.iscomplexobj(k):
        raise InputError(f"k-space must be complex (coils, H, W), got {k.dtype} {k.shape}")
    m = np.asarray(mask, dtype=np.float32)
    if m.shape != k.shape[-2:]:
        raise InputError(f"the mask is {m.shape} but the k-space is {k.shape[-2:]}; they must match")
    if not np.all(np.isfinite(k)):
        raise InputError("the k-space contains NaN or Inf")
    return k.astype(np.complex64) * m, m


def prepare_kspace(
    kspace,
    mask,
    settings: ScannerSettings | None = None,
    noise_covariance=None,
    noise_std: float | None = None,
    coil_maps=None,
    calibration=None,
) -> Prepared:
    """Measured k-space ``(Nc, H, W)`` (zeros where not sampled) and its mask ``(H, W)`` -> a
    :class:`Prepared` problem. ``noise_covariance``: ``(Nc, Nc)`` from noise-scan lines
    (prewhitening); ``noise_std``: the k-space noise level in the data's units, when known;
    ``coil_maps``: given maps ``(Nc, H, W)`` (no estimation, no compression);
    ``calibration``: ``(k-space, mask)`` of separately acquired calibration lines, for the
    maps when they cover more than the imaging data's own fully sampled centre."""
    s = (settings or ScannerSettings()).checked()
    k, m = _check(kspace, mask)
    calib_k, calib_m = _calibration(k, m, calibration)
    info: dict = {"coils": int(k.shape[0])}
    transform = np.eye(k.shape[0], dtype=np.complex128)
    if noise_covariance is not None:
        whitener = whitening_matrix(noise_covariance)
        k, calib_k = prewhiten(k, whitener), prewhiten(calib_k, whitener)
        transform = whitener
        noise_std, info["noise"] = 1.0, "prewhitened (noise scan)"
    region = calibration_region(calib_m)
    info["calibration_width"] = calibration_width(region)
    if noise_std is None:
        noise_std, how = estimate_kspace_noise(k, m)
        info["noise"] = f"estimated: {how}"
    elif "noise" not in info:
        info["noise"] = "given"
    if coil_maps is None:
        k, calib_k, maps, compression = _estimate_maps(k, calib_k, region, s, info)
        transform = compression @ transform
        map_std = map_residual(calib_k, maps, region, float(noise_std))
    else:
        maps, map_std = np.asarray(coil_maps), 0.0
        info["coil_maps"] = "given"
    op = MultiCoilMRI(maps, m)
    scale = float(np.percentile(np.abs(np.asarray(op.pinv(k[None]))), 99))
    if not np.isfinite(scale) or scale <= 0:
        raise InputError("the k-space is all zero; nothing to reconstruct")
    info.update(asdict(s))
    info["map_floor"] = floor = map_floor(s, op)
    data_std = float(np.hypot(noise_std, floor * map_std))
    return Prepared(
        operator=op,
        y=(k[None] / scale).astype(np.complex64),
        scale=scale,
        noise_std=float(noise_std) / scale,
        map_std=map_std / scale,
        data_std=data_std / scale,
        info=info,
        coil_transform=transform,
    )


def _calibration(k: np.ndarray, m: np.ndarray, calibration) -> tuple[np.ndarray, np.ndarray]:
    """The k-space and mask the maps come from: separate calibration lines where their fully
    sampled centre is wider than the imaging data's, else the imaging data."""
    if calibration is None:
        return k, m
    ck, cm = _check(*calibration)
    if ck.shape != k.shape:
        raise InputError(f"the calibration k-space is {ck.shape} but the imaging k-space is {k.shape}")
    try:
        own = calibration_width(calibration_region(m))
    except InputError:
        own = 0
    return (ck, cm) if calibration_width(calibration_region(cm)) > own else (k, m)


def _estimate_maps(
    k: np.ndarray, calib_k: np.ndarray, region, s: ScannerSettings, info: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Compressed k-space (imaging and calibration), the coil maps estimated from it, and the
    compression matrix (the identity without compression)."""
    matrix = np.eye(k.shape[0], dtype=np.complex128)
    if s.virtual_coils is not None and s.virtual_coils < k.shape[0]:
        matrix, kept = compression_matrix(calib_k[:, region[0], region[1]], s.virtual_coils)
        k, calib_k = (np.einsum("vc,chw->vhw", matrix, a, optimize=True).astype(np.complex64) for a in (k, calib_k))
        info.update(virtual_coils=int(matrix.shape[0]), calibration_energy_kept=kept)
    if s.coil_maps == "espirit":
        maps = espirit_maps(calib_k, region, kernel_width=s.espirit_kernel, crop=s.espirit_crop, grid=s.espirit_grid)
    else:
        calib = np.zeros_like(calib_k)
        calib[:, region[0], region[1]] = calib_k[:, region[0], region[1]]
        fraction = min(calibration_width(region) / max(k.shape[-2:]), 0.08)
        maps = np.asarray(estimate_coil_maps(calib, calib_fraction=fraction), np.complex64)
    info["coil_maps"] = s.coil_maps
    return k, calib_k, maps, matrix

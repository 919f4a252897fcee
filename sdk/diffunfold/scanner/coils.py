"""Coil compression and coil maps from the calibration region of measured k-space.

* :func:`compression_matrix`: SVD coil compression (Buehrer et al. 2007): the calibration
  data's leading left singular vectors over the coils. Multiplying k-space by it gives virtual
  coils that keep the most signal; white noise stays white (its rows are orthonormal), and the
  reconstruction's cost falls with the coil count.
* :func:`espirit_maps`: ESPIRiT (Uecker et al. 2014) through SigPy's ``EspiritCalib``. The
  maps are smooth (their bandwidth is the calibration width plus the kernel), so they are
  computed on a coarse grid over the same field of view and interpolated: at 256 px this is
  ~16 times cheaper and changes the maps by far less than their own error.
* :func:`map_residual`: how much of the calibration data the maps do not explain, as a k-space
  standard deviation: the floor under the data-consistency weight, since no image can match
  data exactly through maps that are only estimates.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from ..errors import InputError, require
from ..physics.mri import fft2c, ifft2c, normalize_coil_maps

# ESPIRiT's grid: at least this many pixels per side (and twice the calibration width).
ESPIRIT_GRID = 64


def calibration_region(mask: np.ndarray) -> tuple[slice, slice]:
    """The fully sampled centred block of a ``(H, W)`` mask as ``(rows, columns)`` slices: for a
    1-D mask (whole columns) its centre run of columns over every row, else the largest
    centred square (as SigPy crops it: start ``n // 2 - c // 2``)."""
    m = np.asarray(mask) > 0.5
    if m.ndim != 2:
        raise InputError(f"the mask must be (H, W), got {m.shape}")
    h, w = m.shape
    if np.all(m == m[:1]):  # 1-D: whole columns
        cols = m[0]
        lo = hi = w // 2
        if not cols[lo]:
            raise InputError("the k-space centre line was not sampled; coil maps cannot be estimated from this scan")
        while lo > 0 and cols[lo - 1]:
            lo -= 1
        while hi < w - 1 and cols[hi + 1]:
            hi += 1
        return slice(0, h), slice(lo, hi + 1)
    side = 0
    for c in range(1, min(h, w) + 1):
        top, left = h // 2 - c // 2, w // 2 - c // 2
        if not m[top : top + c, left : left + c].all():
            break
        side = c
    if side < 2:
        raise InputError(
            "the mask does not sample a centred calibration square of at least 2 x 2; "
            "coil maps cannot be estimated from this scan"
        )
    return slice(h // 2 - side // 2, h // 2 - side // 2 + side), slice(w // 2 - side // 2, w // 2 - side // 2 + side)


def calibration_width(region: tuple[slice, slice]) -> int:
    return min(region[0].stop - region[0].start, region[1].stop - region[1].start)


def compression_matrix(calibration: np.ndarray, virtual: int) -> tuple[np.ndarray, float]:
    """``(Nv, Nc)`` SVD compression to ``virtual`` coils from a calibration block ``(Nc, ...)``,
    and the fraction of the calibration energy the virtual coils keep."""
    c = np.asarray(calibration, dtype=np.complex128)
    nc = c.shape[0]
    if not 1 <= int(virtual):
        raise InputError(f"the virtual coil count must be >= 1, got {virtual}")
    u, s, _ = np.linalg.svd(c.reshape(nc, -1), full_matrices=False)
    nv = min(int(virtual), nc)
    energy = float(np.sum(s[:nv] ** 2) / max(np.sum(s**2), 1e-300))
    return u[:, :nv].conj().T, energy


def _centre_crop(k: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = k.shape[-2:]
    top, left = h // 2 - shape[0] // 2, w // 2 - shape[1] // 2
    return k[..., top : top + shape[0], left : left + shape[1]]


def _upsample(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Maps on a coarse grid over the same field of view, linearly interpolated (periodic, as the
    FFT's field of view is) onto ``shape``: pixel ``I`` of ``N`` sits at ``(I - N/2) / N``."""
    if maps.shape[-2:] == tuple(shape):
        return maps
    coords = [(np.arange(n) - n / 2) / n * g + g / 2 for n, g in zip(shape, maps.shape[-2:])]
    grid = np.meshgrid(*coords, indexing="ij")
    out = np.empty((maps.shape[0], *shape), dtype=np.complex128)
    for c, m in enumerate(maps):
        out[c] = ndimage.map_coordinates(m.real, grid, order=1, mode="grid-wrap") + 1j * ndimage.map_coordinates(
            m.imag, grid, order=1, mode="grid-wrap"
        )
    return out


def espirit_maps(
    kspace: np.ndarray,
    region: tuple[slice, slice],
    kernel_width: int = 6,
    crop: float = 0.0,
    threshold: float = 0.02,
    grid: int = ESPIRIT_GRID,
) -> np.ndarray:
    """ESPIRiT coil maps ``(Nc, H, W)`` complex64 (``sum_c |S_c|^2 = 1`` on their support) from
    k-space ``(Nc, H, W)`` with the fully sampled ``region`` (:func:`calibration_region`).
    ``crop``: SigPy's eigenvalue threshold for the support (0 keeps the maps everywhere, as
    the models are trained); ``threshold``: its singular-value threshold of the calibration
    matrix; ``grid``: the coarse grid's side (at least twice the calibration width)."""
    require("sigpy", "mrd")
    import sigpy.mri.app as app

    k = np.asarray(kspace)
    h, w = k.shape[-2:]
    width = calibration_width(region)
    kernel = min(int(kernel_width), max(2, width - 1))
    if width < 3:
        raise InputError(f"ESPIRiT needs a calibration region of at least 3 x 3, the scan has {width}")
    small = tuple(min(n, max(int(grid), 2 * width + 2)) for n in (h, w))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's deprecation notes
        maps = app.EspiritCalib(
            _centre_crop(k, small).astype(np.complex128),
            calib_width=width,
            kernel_width=kernel,
            thresh=float(threshold),
            crop=float(crop),
            show_pbar=False,
        ).run()
    maps = np.nan_to_num(np.asarray(maps))
    return normalize_coil_maps(_upsample(maps, (h, w))).astype(np.complex64)


def map_residual(kspace: np.ndarray, maps: np.ndarray, region: tuple[slice, slice], noise_std: float = 0.0) -> float:
    """The k-space standard deviation of the calibration data that ``maps`` do not explain:
    the calibration block's coil images less their projection onto the maps, back in k-space
    on the block. White noise of ``noise_std`` leaves ``(Nc - 1) / Nc`` of its variance in that
    residual; it is taken out. What remains is the maps' error plus the truncation of the
    calibration window (a low-pass of ``S x`` is not ``S`` times a low-pass of ``x``), which
    grows with the signal: for the true maps of a 64 px phantom it is about what ESPIRiT's
    maps leave. It is a measure of how exactly data can be matched through maps, not of their
    error alone; the data step's floor is a fraction of it (``ScannerSettings.map_floor``), the
    same in training and at inference."""
    k = np.asarray(kspace)
    calib = np.zeros_like(k)
    calib[..., region[0], region[1]] = k[..., region[0], region[1]]
    coil_images = ifft2c(calib)
    s = np.asarray(maps)
    rest = coil_images - s * np.sum(np.conj(s) * coil_images, axis=-3, keepdims=True)
    block = fft2c(rest)[..., region[0], region[1]]
    nc = k.shape[-3]
    var = float(np.mean(np.abs(block) ** 2)) - noise_std**2 * (nc - 1) / nc
    return float(np.sqrt(max(var, 0.0)))

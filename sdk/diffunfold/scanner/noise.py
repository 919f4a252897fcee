"""Coil noise: its covariance from noise-scan lines, prewhitening, and its level from the data.

Prewhitening (as Gadgetron's noise adjustment does before any reconstruction): with the coil
noise covariance ``Psi = L L^H`` (Cholesky), ``L^-1 y`` has white noise of unit variance per
coil. A reconstruction then sees independent coils of equal noise, which is what its data
step assumes.

Without noise-scan lines, :func:`estimate_kspace_noise` reads the level from the calibration
region: its block-Hankel matrix of coil patches has a signal part of low rank (smooth coil
maps) and a noise part spread over every singular value. The smallest singular values are
then noise, and their ratio to those of a pure-noise matrix of the same structure is the
noise standard deviation. On noise-free data they are only what the low-rank model misses,
so the estimate stays near zero there (a median of outer k-space would read signal as noise).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .simulate import white_noise

# The smallest singular values used by the estimate: the last this fraction of them.
_TAIL = 0.25
# Patch shapes tried, largest first, and the rows a Hankel matrix needs per column.
_KERNELS = ((5, 5), (4, 4), (3, 3), (3, 2), (2, 3), (2, 2), (2, 1), (1, 2))
_ROWS_PER_COLUMN = 2
_MAX_ROWS_PER_COLUMN = 4
_MAD = 1.4826  # median absolute deviation -> standard deviation, Gaussian noise


def noise_covariance(noise: np.ndarray, bandwidth_ratio: float = 1.0) -> np.ndarray:
    """The coil noise covariance ``Psi`` (``(Nc, Nc)``, complex128) of noise-only samples
    ``(Nc, N)`` (any trailing shape is flattened). ``bandwidth_ratio``: the imaging readout's
    sample spacing over the noise scan's (noise variance scales with the receiver bandwidth)."""
    n = np.asarray(noise)
    if n.ndim < 2 or not np.iscomplexobj(n):
        raise InputError(f"noise samples must be complex (coils, samples...), got {n.dtype} {n.shape}")
    n = n.reshape(n.shape[0], -1).astype(np.complex128)
    if n.shape[1] < 2 * n.shape[0]:
        raise InputError(
            f"{n.shape[1]} noise samples cannot fix the covariance of {n.shape[0]} coils; "
            f"the noise scan needs at least {2 * n.shape[0]} samples per coil"
        )
    if not np.all(np.isfinite(n)):
        raise InputError("the noise samples contain NaN or Inf")
    n = n - n.mean(axis=1, keepdims=True)
    psi = (n @ n.conj().T) / (n.shape[1] - 1)
    return psi / float(bandwidth_ratio)


def whitening_matrix(psi: np.ndarray) -> np.ndarray:
    """``L^-1`` for ``Psi = L L^H``: multiply coil vectors by it to whiten them."""
    psi = np.asarray(psi, dtype=np.complex128)
    if psi.ndim != 2 or psi.shape[0] != psi.shape[1]:
        raise InputError(f"the noise covariance must be square (coils, coils), got {psi.shape}")
    try:
        low = np.linalg.cholesky((psi + psi.conj().T) / 2)
    except np.linalg.LinAlgError:
        raise InputError(
            "the noise covariance is not positive definite (a dead or duplicated coil?); "
            "drop that coil or reconstruct without prewhitening"
        ) from None
    return np.linalg.inv(low)


def prewhiten(kspace: np.ndarray, whitener: np.ndarray) -> np.ndarray:
    """Coil-whitened k-space: ``whitener`` (``(Nc, Nc)``) applied along the coil axis ``-3``."""
    k = np.asarray(kspace)
    if whitener.shape != (k.shape[-3], k.shape[-3]):
        raise InputError(f"the whitening matrix is for {whitener.shape[0]} coils, the k-space has {k.shape[-3]}")
    out = np.einsum("dc,...chw->...dhw", whitener, k, optimize=True)
    return out.astype(k.dtype, copy=False)


def _patch_starts(mask: np.ndarray, kernel: tuple[int, int]) -> np.ndarray:
    """Top-left corners ``(n, 2)`` of every ``kernel`` patch of ``mask`` sampled throughout."""
    win = np.lib.stride_tricks.sliding_window_view(mask > 0.5, kernel)
    return np.argwhere(win.all(axis=(-2, -1)))


def _hankel(kspace: np.ndarray, starts: np.ndarray, kernel: tuple[int, int]) -> np.ndarray:
    """One row per patch: its ``kernel`` samples of every coil side by side."""
    kh, kw = kernel
    rows = starts[:, 0, None, None] + np.arange(kh)[None, :, None]
    cols = starts[:, 1, None, None] + np.arange(kw)[None, None, :]
    return kspace[:, rows, cols].transpose(1, 0, 2, 3).reshape(len(starts), -1)


def _patches(mask: np.ndarray, nc: int, seed: int) -> tuple[tuple[int, int], np.ndarray] | None:
    """The largest patch shape with enough fully sampled patches anywhere in k-space (the
    signal's linear relations between neighbours and coils hold everywhere), and a seeded
    choice of at most ``_MAX_ROWS_PER_COLUMN`` rows per column of them; None if none has."""
    for kernel in _KERNELS:
        starts = _patch_starts(mask, kernel)
        columns = nc * kernel[0] * kernel[1]
        if len(starts) >= _ROWS_PER_COLUMN * columns:
            keep = _MAX_ROWS_PER_COLUMN * columns
            if len(starts) > keep:
                starts = starts[np.sort(np.random.default_rng(seed).choice(len(starts), keep, replace=False))]
            return kernel, starts
    return None


def _tail(matrix: np.ndarray) -> np.ndarray:
    s = np.linalg.svd(matrix, compute_uv=False)
    return s[int(len(s) * (1 - _TAIL)) :]


def _outer_kspace(kspace: np.ndarray, mask: np.ndarray) -> float:
    """The median-based level of the sampled outer quarter of k-space radius (where an MR
    image's signal is weakest; signal can only raise it)."""
    h, w = mask.shape
    r = np.hypot(((np.arange(h) - h // 2) / (h / 2))[:, None], ((np.arange(w) - w // 2) / (w / 2))[None, :])
    sel = kspace[:, (mask > 0.5) & (r > 0.75)]
    if sel.size == 0:
        sel = kspace[:, mask > 0.5]
    parts = np.concatenate([sel.real.ravel(), sel.imag.ravel()])
    return float(_MAD * np.median(np.abs(parts)) * np.sqrt(2))


def estimate_kspace_noise(kspace: np.ndarray, mask: np.ndarray, seed: int = 0) -> tuple[float, str]:
    """The standard deviation of complex k-space noise (``E|n|^2``, per sample and coil) of
    ``kspace`` ``(Nc, H, W)`` sampled on ``mask`` (after prewhitening, if any; before coil
    compression), and how it was found: the Hankel tail of fully sampled patches where the
    mask has enough of them for the coil count, else the outer k-space (which errs high).
    Deterministic for a given ``seed``."""
    k = np.asarray(kspace)
    m = np.asarray(mask)
    if not np.all(np.isfinite(k)):
        raise InputError("the k-space contains NaN or Inf")
    found = _patches(m, k.shape[0], seed)
    if found is None:
        return _outer_kspace(k, m), "outer k-space (too few fully sampled patches for the coils)"
    kernel, starts = found
    rng = np.random.default_rng(seed)
    ref = white_noise(k.shape, rng)
    data = _tail(_hankel(k.astype(np.complex128), starts, kernel))
    noise = _tail(_hankel(ref, starts, kernel))
    return float(
        np.median(data / np.maximum(noise, 1e-300))
    ), f"Hankel tail of {len(starts)} {kernel[0]}x{kernel[1]} patches"

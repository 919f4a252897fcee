"""Synthetic multi-coil MRI data in the fastMRI file format.

Random ellipse phantoms (a body outline, a fat layer, organs and small lesions, a little
texture, a smooth phase) are turned into fully sampled 15-coil k-space with the birdcage coil
model and written as fastMRI-layout HDF5 files, so every fastMRI code path (reader, dataset,
training, evaluation) can run without downloading fastMRI.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..physics.base import check_noise_std
from ..physics.mri import birdcage_maps, fft2c, ifft2c
from ..safe_io import refuse_existing
from .fastmri_header import make_ismrmrd_header
from .fastmri_write import write_fastmri_file

__all__ = ["random_phantom", "simulate_multicoil", "write_phantom_dataset"]

RNGLike = np.random.Generator | int | None


def _generator(rng: RNGLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0):
        return np.random.default_rng(rng)
    raise InputError(f"rng must be a numpy Generator, a non-negative int seed or None, got {rng!r}")


def _positive_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _image_shape(shape, name: str, minimum: int, even: bool) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
        ok = all(float(s).is_integer() for s in shape)
    except (TypeError, ValueError):
        h = w = 0
        ok = False
    if not ok or min(h, w) < minimum or (even and (h % 2 or w % 2)):
        need = f"even integers >= {minimum}" if even else f"integers >= {minimum}"
        raise InputError(f"{name} must be (H, W) with {need}, got {shape!r}")
    return h, w


def _ellipse(yy: np.ndarray, xx: np.ndarray, center, axes, theta: float) -> np.ndarray:
    """Boolean mask of the ellipse with semi-axes ``axes = (a, b)`` along its rotated u, v."""
    dy, dx = yy - center[0], xx - center[1]
    c, s = math.cos(theta), math.sin(theta)
    u, v = dx * c + dy * s, -dx * s + dy * c
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1.0


def random_phantom(shape: Sequence[int], rng: RNGLike = None, texture: float = 0.05) -> np.ndarray:
    """A random anatomical-looking ellipse phantom, complex64 ``(H, W)``.

    Magnitude in ``[0, 1]`` with an exactly zero background: a body ellipse near the centre
    (random size and orientation), a fat layer under its edge (usually brighter than the
    tissue, sometimes darker, as with fat suppression), 3-7 inner structures of random
    intensity, 1-4 small lesions, and (``texture`` > 0) a smooth multiplicative texture of
    relative amplitude ``texture``. The phase is a random quadratic polynomial in x and y
    (B0/coil-like) with a linear ramp of 0.8-2 rad per half field of view, so the image is
    genuinely complex. ``rng``: a Generator, a seed or None.
    """
    h, w = _image_shape(shape, "shape", minimum=8, even=False)
    g = _generator(rng)
    if not (math.isfinite(texture) and texture >= 0):
        raise InputError(f"texture must be a finite amplitude >= 0, got {texture!r}")
    # Coordinates in [-1, 1] over each axis, so the body always fits the field of view.
    yy = ((np.arange(h) - h / 2 + 0.5) / (h / 2))[:, None]
    xx = ((np.arange(w) - w / 2 + 0.5) / (w / 2))[None, :]

    center = g.uniform(-0.05, 0.05, size=2)
    major = g.uniform(0.6, 0.85)
    body_axes = (major, g.uniform(0.45, major))  # semi-axes <= 0.85, centre <= 0.07 off: inside
    theta = g.uniform(0, math.pi)
    body = _ellipse(yy, xx, center, body_axes, theta)
    layer = g.uniform(0.06, 0.14)  # fat thickness as a fraction of the body size
    inner_axes = (body_axes[0] * (1 - layer), body_axes[1] * (1 - layer))
    interior = _ellipse(yy, xx, center, inner_axes, theta)

    fat = g.uniform(0.7, 1.0) if g.random() < 0.75 else g.uniform(0.08, 0.2)
    mag = np.where(body, fat, 0.0)
    mag[interior] = g.uniform(0.3, 0.55)  # soft tissue

    def inside_point(spread: float) -> tuple[float, float]:
        # A uniform point in the interior ellipse, shrunk by ``spread``.
        r, phi = spread * math.sqrt(g.random()), g.uniform(0, 2 * math.pi)
        u, v = r * math.cos(phi) * inner_axes[0], r * math.sin(phi) * inner_axes[1]
        c, s = math.cos(theta), math.sin(theta)
        return (center[0] + u * s + v * c, center[1] + u * c - v * s)

    # Later structures paint over earlier ones, giving overlaps like organs and vessels.
    for _ in range(int(g.integers(3, 8))):
        a = g.uniform(0.08, 0.3)
        organ = _ellipse(yy, xx, inside_point(0.75), (a, g.uniform(0.04, a)), g.uniform(0, math.pi))
        mag[organ & interior] = g.uniform(0.05, 0.95)
    for _ in range(int(g.integers(1, 5))):
        a = g.uniform(0.02, 0.06)
        lesion = _ellipse(yy, xx, inside_point(0.85), (a, g.uniform(0.6 * a, a)), g.uniform(0, math.pi))
        mag[lesion & interior] = g.uniform(0.85, 1.0) if g.random() < 0.5 else g.uniform(0.0, 0.12)

    if texture > 0:
        mag *= 1.0 + texture * _texture_field(g, h, w)
    mag = np.clip(np.where(body, mag, 0.0), 0.0, 1.0)
    return (mag * np.exp(1j * _random_phase(g, yy, xx))).astype(np.complex64)


def _texture_field(g: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-pass filtered white noise (a Gaussian window in k-space) of unit std: a smooth tissue
    texture."""
    ky = (np.arange(h) - h // 2)[:, None] / h
    kx = (np.arange(w) - w // 2)[None, :] / w
    window = np.exp(-0.5 * (ky**2 + kx**2) / 0.04**2)
    field = ifft2c(fft2c(g.standard_normal((h, w)).astype(np.complex128)) * window).real
    field /= max(float(field.std()), 1e-12)
    return field


def _random_phase(g: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A random offset, a linear ramp of at least 0.8 rad per half field of view (so the phase
    always varies across the object) and small quadratic terms."""
    ramp, direction = g.uniform(0.8, 2.0), g.uniform(0, 2 * math.pi)
    q = g.uniform(-0.6, 0.6, size=3)
    return (
        g.uniform(-math.pi, math.pi)
        + ramp * (math.cos(direction) * xx + math.sin(direction) * yy)
        + q[0] * xx**2
        + q[1] * xx * yy
        + q[2] * yy**2
    )


def simulate_multicoil(image: np.ndarray, ncoils: int = 15, noise_std: float = 0.0, rng: RNGLike = None) -> np.ndarray:
    """Fully sampled multi-coil k-space ``fft2c(birdcage_maps(ncoils, shape) * image)``.

    Returns complex64 ``(ncoils, H, W)``. ``noise_std`` > 0 adds circular complex Gaussian
    noise of that standard deviation per sample (real and imaginary parts each
    ``noise_std / sqrt(2)``, as ``LinearOperator.measure`` does); ``rng`` draws it.
    Because the maps satisfy ``sum_c |S_c|^2 = 1``, ``rss(ifft2c(kspace)) == |image|``
    without noise.
    """
    x = np.asarray(image)
    if x.ndim != 2:
        raise InputError(f"image must be 2-D (H, W), got shape {x.shape}; simulate one slice at a time")
    if not np.all(np.isfinite(x)):
        raise InputError("image contains NaN or Inf")
    ncoils = _positive_int(ncoils, "ncoils")
    noise_std = float(noise_std)
    check_noise_std(noise_std, 1)
    kspace = fft2c(birdcage_maps(ncoils, x.shape) * x.astype(np.complex128))
    if noise_std > 0:
        g = _generator(rng)
        noise = g.standard_normal(kspace.shape) + 1j * g.standard_normal(kspace.shape)
        kspace = kspace + (noise_std / math.sqrt(2.0)) * noise
    return kspace.astype(np.complex64)


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    num_files: int = 4,
    slices_per_file: int = 8,
    shape: Sequence[int] = (128, 128),
    ncoils: int = 15,
    noise_std: float = 0.0,
    seed: int = 0,
    recon_shape: Sequence[int] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``num_files`` fastMRI-format phantom volumes ``phantom_{i:04d}.h5`` to ``out_dir``.

    Each volume holds ``slices_per_file`` independent random phantoms of size ``shape``
    simulated on ``ncoils`` birdcage coils (k-space ``(slices, ncoils, H, W)``), the RSS image
    cropped to ``recon_shape`` (default ``shape``), and a header with encoded matrix ``shape``
    and recon matrix ``recon_shape``. File ``i`` is drawn from ``default_rng([seed, i])``, so a
    seed gives identical arrays on every run, and a file does not depend on how many are
    written. Existing files of the same names are refused unless ``overwrite`` (then replaced
    atomically); every file is written whole or not at all. Returns the paths.
    """
    num_files = _positive_int(num_files, "num_files")
    slices_per_file = _positive_int(slices_per_file, "slices_per_file")
    ncoils = _positive_int(ncoils, "ncoils")
    h, w = _image_shape(shape, "shape", minimum=16, even=True)
    rh, rw = (h, w) if recon_shape is None else _image_shape(recon_shape, "recon_shape", minimum=16, even=True)
    if rh > h or rw > w:
        raise InputError(f"recon_shape {(rh, rw)} must not exceed shape {(h, w)} (it is a centre crop)")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    noise_std = float(noise_std)
    check_noise_std(noise_std, 1)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{str(out)!r} is a file, not a folder; give a folder for the phantom files")
    targets = [out / f"phantom_{i:04d}.h5" for i in range(num_files)]
    refuse_existing(targets, overwrite, "choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    header = make_ismrmrd_header((h, w), (rh, rw))
    paths: list[Path] = []
    with tqdm(total=num_files * slices_per_file, desc="phantoms", unit="slice", disable=not progress) as bar:
        try:
            _write_files(targets, slices_per_file, ncoils, (h, w), noise_std, seed, header, bar, paths)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"{len(paths)} of {num_files} phantom file(s) written whole to {out}/ before the stop"
            ) from None
    return paths


def _write_files(
    targets: list[Path],
    slices_per_file: int,
    ncoils: int,
    shape: tuple[int, int],
    noise_std: float,
    seed: int,
    header: str,
    bar,
    paths: list[Path],
) -> None:
    """Simulate and write each file (appended to ``paths`` once it is whole)."""
    h, w = shape
    for i, target in enumerate(targets):
        g = np.random.default_rng([int(seed), i])
        kspace = np.empty((slices_per_file, ncoils, h, w), dtype=np.complex64)
        for s in range(slices_per_file):
            kspace[s] = simulate_multicoil(random_phantom((h, w), g), ncoils, noise_std, g)
            bar.update(1)
        paths.append(
            write_fastmri_file(
                target,
                kspace,
                header=header,
                attrs={"acquisition": "PHANTOM", "patient_id": f"phantom-{int(seed)}-{i:04d}"},
            )
        )

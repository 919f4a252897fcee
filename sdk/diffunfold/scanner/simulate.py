"""Simulated receive-chain noise for training and benchmarks: correlated between coils, as a
real array's is (shared preamplifier couplings, overlapping coils), with unequal coil gains."""

from __future__ import annotations

import numpy as np


def random_noise_covariance(ncoils: int, rng: np.random.Generator, coupling: float = 0.3) -> np.ndarray:
    """A random coil noise covariance ``(Nc, Nc)`` with mean variance 1: coil variances within a
    factor of ~2 of each other, and neighbouring coils (on the ring) coupled by up to
    ``coupling`` with a random phase."""
    nc = int(ncoils)
    mix = np.eye(nc, dtype=np.complex128)
    for c in range(nc):
        for d, strength in ((1, 1.0), (2, 0.4)):
            if nc > d:
                mix[c, (c + d) % nc] += strength * coupling * rng.uniform(0, 1) * np.exp(2j * np.pi * rng.uniform())
    gains = np.exp(rng.uniform(-0.35, 0.35, size=nc))
    mix = gains[:, None] * mix
    psi = mix @ mix.conj().T
    return psi / float(np.real(np.trace(psi)) / nc)


def white_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Circular complex Gaussian noise of ``shape``, unit variance per sample (complex128)."""
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)


def correlated_noise(shape: tuple[int, ...], psi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Complex noise of ``shape`` ``(Nc, ...)`` with coil covariance ``psi`` (``E[n n^H] = psi``)."""
    low = np.linalg.cholesky(psi)
    return np.einsum("cd,d...->c...", low, white_noise(shape, rng)).astype(np.complex64)

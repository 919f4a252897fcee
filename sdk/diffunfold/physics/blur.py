"""Blur operators: circular convolution by FFT with a non-negative kernel summing to one.

Such a kernel has ``|K(w)| <= K(0) = 1``, so ``||A||_2 = 1`` with no extra scaling. The kernel
is built on the full (wrapped) image grid, so nothing is truncated and the adjoint is exact:
multiplication by the conjugate spectrum.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from .._array import complex_dtype_for, fft_of, namespace, real_dtype_for
from ..errors import InputError
from .base import LinearOperator


def _wrapped_offsets(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets from the origin on a periodic grid, in [-N/2, N/2)."""
    h, w = shape
    dy = (np.arange(h) + h // 2) % h - h // 2
    dx = (np.arange(w) + w // 2) % w - w // 2
    return dy[:, None].astype(np.float64), dx[None, :].astype(np.float64)


class Convolution(LinearOperator):
    """``A x = k (*) x``: circular convolution of every channel with one kernel.

    ``kernel`` is given on the full image grid with its centre at index ``[0, 0]`` (the FFT
    convention); it must be non-negative and is normalised to sum to one.
    """

    task = "convolution"
    default_pinv_eps = 1e-3

    def __init__(self, kernel: np.ndarray, pinv_eps: float | None = None):
        kernel = np.asarray(kernel, dtype=np.float64)
        super().__init__(kernel.shape)
        if kernel.ndim != 2:
            raise InputError(f"a convolution kernel must be 2-D on the image grid, got shape {kernel.shape}")
        if np.any(kernel < 0) or not np.all(np.isfinite(kernel)) or kernel.sum() <= 0:
            raise InputError("a blur kernel must be finite, non-negative and not all zero")
        self._kernel = kernel / kernel.sum()
        self._spectrum = np.fft.rfft2(self._kernel)
        self.pinv_eps = self.default_pinv_eps if pinv_eps is None else float(pinv_eps)

    def spec(self) -> dict:
        return {"task": "convolution", "image_shape": self.image_shape, "given": ["kernel"]}

    @functools.cached_property  # read twice per stage
    def lipschitz(self) -> float:
        return float(np.max(np.abs(self._spectrum)) ** 2)  # 1 for a kernel summing to one

    @property
    def kernel(self) -> np.ndarray:
        """The kernel centred in the image grid (for display)."""
        return np.fft.fftshift(self._kernel)

    def _apply_spectrum(self, x, name: str, spectrum):
        xp = namespace(x)
        k = self._const(name, spectrum, x, dtype=complex_dtype_for(xp, x.dtype))
        fft = fft_of(x)
        return fft.irfftn(fft.rfftn(x, axes=(-2, -1)) * k, s=self.image_shape, axes=(-2, -1))

    def _forward(self, x):
        return self._apply_spectrum(x, "K", self._spectrum)

    def _adjoint(self, y):
        return self._apply_spectrum(y, "K*", lambda: np.conj(self._spectrum))

    def _prox(self, v, y, weight, iterations: int):
        # Diagonal in Fourier: X = (conj(K) Y / L + w V) / (|K|^2 / L + w), exactly.
        xp = namespace(v)
        lip = self.lipschitz
        real_t = real_dtype_for(xp, v.dtype)
        conj_k = self._const(
            "prox:K*/L", lambda: np.conj(self._spectrum) / lip, v, dtype=complex_dtype_for(xp, v.dtype)
        )
        power = self._const("prox:|K|^2/L", lambda: np.abs(self._spectrum) ** 2 / lip, v, dtype=real_t)
        fft = fft_of(v)
        data = self._for_measurement(y, f"prox:K* Y/L {v.dtype}", lambda u: conj_k * fft.rfftn(u, axes=(-2, -1)))
        spec = (data + weight * fft.rfftn(v, axes=(-2, -1))) / (power + weight)
        return fft.irfftn(spec, s=self.image_shape, axes=(-2, -1))

    def pinv(self, y, eps: float | None = None):
        """Tikhonov-regularised inverse ``K* / (|K|^2 + eps)``; ``eps=0`` gives the exact
        pseudo-inverse (frequencies with ``|K|^2 <= 1e-12`` are dropped)."""
        self.check_measurement(y)
        eps = self.pinv_eps if eps is None else float(eps)
        if eps < 0:
            raise InputError(f"eps must be >= 0, got {eps}")
        return self._apply_spectrum(y, f"pinv{eps!r}", lambda: self._inverse_spectrum(eps))

    def _inverse_spectrum(self, eps: float) -> np.ndarray:
        power = np.abs(self._spectrum) ** 2
        if eps > 0:
            return np.conj(self._spectrum) / (power + eps)
        keep = power > 1e-12
        return np.where(keep, np.conj(self._spectrum) / np.where(keep, power, 1.0), 0.0)


class GaussianBlur(Convolution):
    """Gaussian blur, isotropic (``sigma`` a float) or anisotropic (``sigma=(s1, s2)``).

    For the anisotropic kernel ``s1`` is the standard deviation (pixels) along the direction
    at ``angle`` radians counter-clockwise from the image's horizontal axis, ``s2`` across it.
    """

    task = "gaussian_blur"

    def __init__(
        self,
        image_shape: Sequence[int],
        sigma: float | Sequence[float],
        angle: float = 0.0,
        pinv_eps: float | None = None,
    ):
        shape = tuple(int(s) for s in image_shape)[-2:]
        s = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
        if s.shape not in ((1,), (2,)) or np.any(~np.isfinite(s)) or np.any(s <= 0):
            raise InputError(f"sigma must be a positive number or a pair of them, got {sigma!r}")
        s1, s2 = (float(s[0]), float(s[-1]))
        if 3 * max(s1, s2) > min(shape) / 2:
            raise InputError(
                f"a Gaussian of std {max(s1, s2)} px is too wide for a {shape} image (3 std must fit in half the image)"
            )
        self.sigma = (s1, s2)
        self.angle = float(angle)
        dy, dx = _wrapped_offsets(shape)
        # Coordinates along (u) and across (v) the rotated axis; rows grow downwards.
        c, sn = math.cos(self.angle), math.sin(self.angle)
        u = dx * c - dy * sn
        v = dx * sn + dy * c
        kernel = np.exp(-0.5 * ((u / s1) ** 2 + (v / s2) ** 2))
        super().__init__(kernel, pinv_eps)

    @property
    def isotropic(self) -> bool:
        return self.sigma[0] == self.sigma[1]

    def spec(self) -> dict:
        if self.isotropic:
            return {"task": "gaussian_blur", "image_shape": self.image_shape, "sigma": self.sigma[0]}
        return {"task": "anisotropic_blur", "image_shape": self.image_shape, "sigma": self.sigma, "angle": self.angle}


class MotionBlur(Convolution):
    """Linear motion blur: a segment of ``length`` pixels at ``angle`` radians (counter-
    clockwise from horizontal), rasterised with bilinear weights. Never in the training mix:
    it is the operator that shows a trained model generalises to new physics."""

    task = "motion_blur"

    def __init__(self, image_shape: Sequence[int], length: float, angle: float, pinv_eps: float | None = None):
        shape = tuple(int(s) for s in image_shape)[-2:]
        length = float(length)
        if not math.isfinite(length) or length < 1 or length > min(shape) / 2:
            raise InputError(f"motion length must be in [1, {min(shape) / 2}] px, got {length}")
        self.length = length
        self.angle = float(angle)
        h, w = shape
        t = np.linspace(-length / 2, length / 2, max(2, int(math.ceil(length * 8))))
        px = t * math.cos(self.angle)
        py = -t * math.sin(self.angle)
        kernel = np.zeros(shape)
        x0, y0 = np.floor(px), np.floor(py)
        fx, fy = px - x0, py - y0
        for oy, ox, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
            np.add.at(kernel, (((y0 + oy) % h).astype(int), ((x0 + ox) % w).astype(int)), wgt)
        super().__init__(kernel, pinv_eps)

    def spec(self) -> dict:
        return {"task": "motion_blur", "image_shape": self.image_shape, "length": self.length, "angle": self.angle}

"""Super-resolution: separable downsampling ``A x = D_h x D_w^T`` by an integer factor.

Both kernels are separable, so the operator is two small matrices: the adjoint is their
transposes and the pseudo-inverse is exact (the pseudo-inverse of a Kronecker product is the
Kronecker product of the pseudo-inverses), the SVD route the paper's Appendix B cites,
without ever forming an (HW x hw) matrix.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from .._array import namespace
from ..errors import InputError
from .base import LinearOperator

SR_KERNELS = ("box", "bicubic")


def _cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5, as MATLAB's imresize and PIL use)."""
    t = np.abs(t)
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def downsampling_matrix(n: int, factor: int, kernel: str) -> np.ndarray:
    """The (n/factor, n) matrix that downsamples one axis.

    ``box``: the mean of each block of ``factor`` samples. ``bicubic``: anti-aliased bicubic
    (the cubic kernel stretched by ``factor``, centred on each output sample, rows summing to
    one) with symmetric reflection at the borders, as imresize does.
    """
    m = n // factor
    if kernel == "box":
        mat = np.zeros((m, n))
        for i in range(m):
            mat[i, i * factor : (i + 1) * factor] = 1.0 / factor
        return mat
    if kernel == "bicubic":
        mat = np.zeros((m, n))
        for i in range(m):
            centre = (i + 0.5) * factor - 0.5
            taps = np.arange(int(np.floor(centre - 2 * factor)), int(np.ceil(centre + 2 * factor)) + 1)
            weights = _cubic((centre - taps) / factor)
            weights /= weights.sum()
            reflected = np.where(taps < 0, -taps - 1, np.where(taps >= n, 2 * n - 1 - taps, taps))
            np.add.at(mat[i], reflected, weights)
        return mat
    raise InputError(f"unknown SR kernel {kernel!r}; choose one of {SR_KERNELS}")


class SuperResolution(LinearOperator):
    """Downsampling by ``factor`` (2, 4, 8, 16, ...) with a ``box`` or ``bicubic`` kernel.

    ``box`` is block averaging (adjoint: nearest upsampling / factor^2, ``||A|| = 1/factor``);
    ``bicubic`` is anti-aliased bicubic downsampling. ``pinv`` is the exact Moore-Penrose
    pseudo-inverse (for ``box``, nearest-neighbour upsampling).
    """

    task = "sr"

    def __init__(self, image_shape: Sequence[int], factor: int, kernel: str = "box"):
        super().__init__(image_shape)
        h, w = self.image_shape
        if int(factor) != factor or factor < 2:
            raise InputError(f"the SR factor must be an integer >= 2, got {factor!r}")
        factor = int(factor)
        if h % factor or w % factor:
            raise InputError(
                f"image size {h}x{w} is not divisible by the SR factor {factor}; crop or pad the "
                "image to a multiple of the factor"
            )
        self.factor = factor
        self.kernel = kernel
        dh = downsampling_matrix(h, factor, kernel)
        dw = downsampling_matrix(w, factor, kernel)
        # ||A|| = ||D_h|| ||D_w||; keep it <= 1 (it already is for both kernels, ~1/factor).
        scale = max(1.0, float(np.linalg.norm(dh, 2) * np.linalg.norm(dw, 2))) ** 0.5
        self._dh, self._dw = dh / scale, dw / scale

    @functools.cached_property  # two SVDs: once per operator, not once per stage
    def lipschitz(self) -> float:
        # A = D_h (.) D_w^T: ||A|| = ||D_h|| ||D_w|| (Kronecker product of the two matrices).
        return float(np.linalg.norm(self._dh, 2) * np.linalg.norm(self._dw, 2)) ** 2

    def _expected_measurement_hw(self) -> tuple[int, int]:
        return (self.image_shape[0] // self.factor, self.image_shape[1] // self.factor)

    def measurement_shape(self, x_shape):
        return tuple(x_shape[:-2]) + self._expected_measurement_hw()

    def _sandwich(self, v, name: str, left, right_t):
        left = self._const(name + "L", left, v, dtype=v.dtype)
        right_t = self._const(name + "R", right_t, v, dtype=v.dtype)
        return namespace(v).matmul(namespace(v).matmul(left, v), right_t)

    def _forward(self, x):
        return self._sandwich(x, "A", self._dh, lambda: self._dw.T.copy())

    def _adjoint(self, y):
        return self._sandwich(y, "AT", lambda: self._dh.T.copy(), self._dw)

    def _pinv(self, y):
        return self._sandwich(y, "P", lambda: np.linalg.pinv(self._dh), lambda: np.linalg.pinv(self._dw).T.copy())

    def _eigen(self):
        """``D^T D = U diag(lam) U^T`` for both axes: ``A^H A`` is their Kronecker product, so
        its eigenvectors are ``U_h (x) U_w`` with eigenvalues ``lam_h lam_w^T`` (over ``L``)."""
        if not hasattr(self, "_eig"):
            lam_h, u_h = np.linalg.eigh(self._dh.T @ self._dh)
            lam_w, u_w = np.linalg.eigh(self._dw.T @ self._dw)
            self._eig = (u_h, u_w, np.clip(np.outer(lam_h, lam_w), 0.0, None) / self.lipschitz)
        return self._eig

    def _prox(self, v, y, weight, iterations: int):
        # Exact: v plus the correction A^H (y - A v) / L rotated into the eigenbasis of A^H A
        # and divided by (lam + w). The correction lies in A's range, so its null-space part is
        # zero: it is set so, not divided by a tiny w (float32 rounding of the rotation would
        # otherwise blow up a noise-free step).
        u_h, u_w, lam = self._eigen()
        r = self._adjoint(y - self._forward(v)) / self.lipschitz
        t = self._sandwich(r, "E", lambda: u_h.T.copy(), u_w)
        lam = self._const("E:lam", lam, v, dtype=v.dtype)
        inv = namespace(v).where(lam > 1e-6, 1.0 / (lam + weight), 0.0 * lam)
        return v + self._sandwich(t * inv, "Ei", u_h, lambda: u_w.T.copy())

    def spec(self) -> dict:
        return {"task": "sr", "image_shape": self.image_shape, "factor": self.factor, "kernel": self.kernel}

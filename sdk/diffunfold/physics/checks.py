"""Numerical checks of an operator: adjointness, spectral norm, pseudo-inverse consistency.

Used by the test suite and by ``diffunfold selfcheck``; they take arrays of any namespace.
"""

from __future__ import annotations

import numpy as np

from .._array import is_complex, namespace
from .base import LinearOperator


def random_pair(op: LinearOperator, batch: int = 2, channels: int = 3, dtype=np.float64, seed: int = 0):
    """A random image ``x`` and measurement ``y`` (numpy) of the shapes ``op`` expects."""
    rng = np.random.default_rng(seed)
    c = op.channels or channels
    b = op.batch if op.batch and op.batch > 1 else batch  # per-image constants fix the batch
    x_shape = (b, c) + op.image_shape
    y_shape = op.measurement_shape(x_shape)
    if op.complex_image:
        y_shape = (x_shape[0], op.ncoils) + tuple(y_shape[-2:])
        cdtype = np.complex64 if np.dtype(dtype) in (np.float32, np.complex64) else np.complex128
        x = (rng.standard_normal(x_shape) + 1j * rng.standard_normal(x_shape)).astype(cdtype)
        y = (rng.standard_normal(y_shape) + 1j * rng.standard_normal(y_shape)).astype(cdtype)
    else:
        x = rng.standard_normal(x_shape).astype(dtype)
        y = rng.standard_normal(y_shape).astype(dtype)
    return x, y


def _vdot(a, b) -> complex:
    """<a, b> = sum(a * conj(b)), accumulated in double precision on the host."""
    xp = namespace(a)
    wide = xp.complex128 if is_complex(a) else xp.float64
    return complex(xp.sum(xp.astype(a, wide) * xp.conj(xp.astype(b, wide))))


def adjoint_error(op: LinearOperator, x, y) -> float:
    """Relative mismatch ``|<A x, y> - <x, A^H y>| / max(|<A x, y>|, |<x, A^H y>|)``."""
    lhs = _vdot(op.A(x), y)
    rhs = _vdot(x, op.AT(y))
    return abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1e-300)


def spectral_norm(op: LinearOperator, x0, iters: int = 60) -> float:
    """Power iteration on ``A^H A`` from ``x0``; a lower bound that converges to ``||A||_2``."""
    xp = namespace(x0)
    x = x0
    value = 0.0
    for _ in range(iters):
        x = x / float(xp.sqrt(xp.sum(xp.abs(x) ** 2)))
        x = op.AT(op.A(x))
        value = float(xp.sqrt(xp.sum(xp.abs(x) ** 2)))
    return value**0.5


def pinv_consistency(op: LinearOperator, x, **pinv_kwargs) -> float:
    """Relative error of ``A pinv(A x) = A x`` (zero where ``pinv`` is an exact pseudo-inverse)."""
    xp = namespace(x)
    ax = op.A(x)
    back = op.A(op.pinv(ax, **pinv_kwargs))
    return float(xp.sqrt(xp.sum(xp.abs(back - ax) ** 2)) / xp.sqrt(xp.sum(xp.abs(ax) ** 2)))

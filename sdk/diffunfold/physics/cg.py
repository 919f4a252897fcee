"""Batched conjugate gradients for the normal equations of a data-consistency step, written
against the array API (numpy, CuPy and torch with autograd alike).

Every image of a batch runs its own CG: the step lengths are per-image inner products, so a
result never depends on which other images share the batch. The iteration count is fixed,
which keeps the step differentiable, exportable and the same on every backend.
"""

from __future__ import annotations

from collections.abc import Callable

from .._array import is_complex, namespace


def _dot(a, b):
    """Real part of the per-image inner product ``<a, b>``: shape ``(B, 1, 1, 1)``."""
    xp = namespace(a)
    prod = xp.real(xp.conj(a) * b) if is_complex(a) else a * b
    return xp.sum(prod, axis=(1, 2, 3), keepdims=True)


def conjugate_gradient(normal: Callable, rhs, x0, iterations: int):
    """Approximately solve ``normal(x) = rhs`` (``normal`` Hermitian positive semi-definite)
    from ``x0`` with ``iterations`` CG steps. Started from ``x0``, the part of ``x0`` in the
    null space of a singular ``normal`` is kept untouched: CG only moves within the range."""
    xp = namespace(rhs)
    x = x0
    r = rhs - normal(x)
    p = r
    rr = _dot(r, r)
    # An image is converged once its squared residual falls eps^2 below the start (the
    # dtype's resolution) or near the smallest normal number: it then keeps its x. Stopping
    # there also keeps the backward pass finite, whose 1/rr^2 terms would overflow.
    info = xp.finfo(rr.dtype)
    floor = rr * float(info.eps) ** 2 + 1e4 * float(info.tiny) ** 0.5
    one, zero = xp.ones_like(rr), xp.zeros_like(rr)
    for _ in range(int(iterations)):
        q = normal(p)
        pq = _dot(p, q)
        live = (rr > floor) & (pq > floor)
        alpha = xp.where(live, rr / xp.where(live, pq, one), zero)
        x = x + alpha * p
        r = r - alpha * q
        rr_new = _dot(r, r)
        beta = xp.where(live, rr_new / xp.where(live, rr, one), zero)
        p = r + beta * p
        rr = xp.where(live, rr_new, rr)
    return x

"""The data-consistency (proximal) step every operator offers: it solves its normal equations,
per image, on every array backend, and a clean measurement is matched where A sees."""

from __future__ import annotations

import numpy as np
import pytest

from diffunfold.errors import InputError
from diffunfold.physics import make_operator
from diffunfold.physics.mri import birdcage_maps

SHAPE = (32, 32)
CLOSED_FORM = [
    ("gaussian_blur", {"sigma": 2.0}),
    ("motion_blur", {"length": 5.0}),
    ("sr", {"factor": 4}),
    ("sr", {"factor": 2, "kernel": "bicubic"}),
    ("inpainting", {"missing": 0.4}),
    ("box_inpainting", {"size": 0.3}),
]
MRI = ("mri", {"kind": "gaussian1d", "acceleration": 4})


def operator(task, params):
    if task == "mri":
        return make_operator(task, SHAPE, coil_maps=birdcage_maps(4, SHAPE), **params)
    return make_operator(task, SHAPE, **params)


def pair(op, rng, batch=2):
    if op.complex_image:
        z = lambda: rng.standard_normal((batch, 1, *SHAPE)) + 1j * rng.standard_normal((batch, 1, *SHAPE))
        return z(), op.A(z())
    return rng.random((batch, 3, *SHAPE)), op.A(rng.random((batch, 3, *SHAPE)))


def normal_residual(op, v, y, w, u):
    """|| (A^H A / L + w) u - (A^H y / L + w v) || / || rhs ||"""
    w = np.reshape(w, (-1, 1, 1, 1)) if np.ndim(w) else w
    lhs = op.AT(op.A(u)) / op.lipschitz + w * u
    rhs = op.AT(y) / op.lipschitz + w * v
    return np.linalg.norm(lhs - rhs) / np.linalg.norm(rhs)


@pytest.mark.parametrize("task,params", CLOSED_FORM, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("weight", [1e-6, 0.3, 30.0, "per-image"])
def test_closed_form_prox_solves_its_normal_equations(task, params, weight):
    op = operator(task, params)
    v, y = pair(op, np.random.default_rng(0))
    w = np.array([1e-3, 3.0]) if weight == "per-image" else weight
    assert normal_residual(op, v, y, w, op.prox(v, y, w)) < 1e-9


@pytest.mark.parametrize("task,params", CLOSED_FORM[:2], ids=lambda v: v if isinstance(v, str) else "")
def test_blur_prox_follows_the_measurement_it_is_given(task, params):
    """The blur's data spectrum is kept between calls with the same measurement (a solve's K x
    NFE steps), never served for another one, nor for the same array changed in place, nor for
    another precision."""
    op = operator(task, params)
    v, y = pair(op, np.random.default_rng(3))
    first = op.prox(v, y, 0.3)
    assert np.array_equal(op.prox(v, y.copy(), 0.3), first)
    y *= 2  # in place: the same object, new values
    assert normal_residual(op, v, y, 0.3, op.prox(v, y, 0.3)) < 1e-9
    low = op.prox(v.astype(np.float32), y.astype(np.float32), 0.3)
    assert low.dtype == np.float32 and normal_residual(op, v, y, 0.3, low) < 1e-5
    assert normal_residual(op, v, y, 0.3, op.prox(v, y.astype(np.float32), 0.3)) < 1e-5


def test_mri_prox_converges_with_cg_and_keeps_the_null_space():
    op = operator(*MRI)
    v, y = pair(op, np.random.default_rng(1))
    start = normal_residual(op, v, y, 0.1, v)
    assert normal_residual(op, v, y, 0.1, op.prox(v, y, 0.1, iterations=8)) < start / 30
    assert normal_residual(op, v, y, 0.1, op.prox(v, y, 0.1, iterations=60)) < 1e-6
    with pytest.raises(InputError, match="iterations must be >= 1"):
        op.prox(v, y, 0.1, iterations=0)


@pytest.mark.parametrize("task,params", CLOSED_FORM + [MRI], ids=lambda v: v if isinstance(v, str) else "")
def test_prox_is_per_image_and_agrees_across_backends(task, params, backend):
    op = operator(task, params)
    v, y = pair(op, np.random.default_rng(2))
    dtype = np.complex64 if op.complex_image else np.float32
    v, y = v.astype(dtype), y.astype(dtype)
    w = np.array([0.01, 2.0])
    both = np.asarray(op.prox(v, y, w))
    got = op.prox(backend.asarray(v[1:]), backend.asarray(y[1:]), w[1:])
    from diffunfold._array import to_numpy

    assert np.all(np.isfinite(to_numpy(got)))
    assert np.max(np.abs(to_numpy(got) - both[1:])) <= 1e-4 * np.max(np.abs(both))


@pytest.mark.parametrize("task,params", CLOSED_FORM, ids=lambda v: v if isinstance(v, str) else "")
def test_prox_is_non_expansive(task, params):
    op = operator(task, params)
    rng = np.random.default_rng(3)
    v1, y = pair(op, rng)
    v2 = v1 + rng.standard_normal(v1.shape)
    for w in (1e-4, 0.5, 5.0):
        d = np.linalg.norm(op.prox(v1, y, w) - op.prox(v2, y, w))
        assert d <= np.linalg.norm(v1 - v2) * (1 + 1e-9)


def test_noise_free_inpainting_prox_keeps_the_observed_pixels():
    op = operator("inpainting", {"missing": 0.5})
    rng = np.random.default_rng(4)
    x = rng.random((1, 3, *SHAPE))
    guess = rng.random((1, 3, *SHAPE))
    u = op.prox(guess, op.A(x), 1e-8)
    observed = np.broadcast_to(op.mask, u.shape) > 0
    assert np.max(np.abs(u - x)[observed]) < 1e-7
    assert np.allclose(u[~observed], guess[~observed], rtol=1e-12, atol=0)  # what A does not see is left alone


def test_prox_refuses_mismatched_inputs():
    op = operator("gaussian_blur", {"sigma": 2.0})
    v, y = pair(op, np.random.default_rng(5))
    with pytest.raises(InputError, match="must have shape"):
        op.prox(v[..., :16], y, 1.0)


def test_cg_backward_stays_finite_after_convergence():
    """Once a CG has converged, later iterations must not divide by a residual that underflows:
    in float32 the backward pass of rr_new / rr would hold 1/rr^2 and turn into NaN."""
    torch = pytest.importorskip("torch")
    from diffunfold.physics.cg import conjugate_gradient

    rhs = torch.randn(3, 1, 8, 8, dtype=torch.float32, requires_grad=True)
    w = torch.tensor([0.5, 1.0, 2.0]).reshape(3, 1, 1, 1).requires_grad_()
    x = conjugate_gradient(lambda u: w * u, rhs, torch.zeros_like(rhs), iterations=30)
    torch.testing.assert_close(x, rhs / w)
    (x**2).sum().backward()
    assert torch.isfinite(rhs.grad).all() and torch.isfinite(w.grad).all()

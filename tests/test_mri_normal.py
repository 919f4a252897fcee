"""The MRI normal operator ``A^H A`` and the gradient and proximal step built on it, against the
literal definitions ``A^H(A x)``, ``A^H(A x - y)`` and CG on ``A^H A`` written as ``_adjoint(_forward(.))``.

Tolerances (relative to the largest value): complex128 1e-12 (the same arithmetic reordered,
measured ~5e-16), complex64 1e-5 (measured ~3e-7); even and odd sizes (the centring shifts), 1-D
masks (the W-only transform) and 2-D masks, one mask for the batch and one per image.
"""

import numpy as np
import pytest

from diffunfold.physics import make_operator
from diffunfold.physics.mri import MultiCoilMRI, birdcage_maps, mri_mask

TOL = {np.complex128: 1e-12, np.complex64: 1e-5}


def rel(a, b):
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def operator(kind, n, per_image=False):
    maps = birdcage_maps(6, (n, n))
    if per_image:
        masks = np.stack([mri_mask(kind, (n, n), 4, seed=s) for s in (0, 1)])[:, None]
        return MultiCoilMRI(maps, masks)
    return make_operator("mri", (n, n), coil_maps=maps, kind=kind, acceleration=4)


def images(n, dtype, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 1, n, n)) + 1j * rng.standard_normal((batch, 1, n, n))).astype(dtype)


def literal_prox(op, v, y, w, iterations):
    from diffunfold.physics.cg import conjugate_gradient

    normal = lambda u: op._adjoint(op._forward(u)) + w * u  # noqa: E731 (L = 1 for MRI)
    return conjugate_gradient(normal, op._adjoint(y) + w * v, v, iterations)


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
@pytest.mark.parametrize(
    "kind,n,per_image",
    [("gaussian1d", 32, False), ("random1d", 33, True), ("gaussian2d", 32, False), ("gaussian2d", 31, True)],
)
def test_normal_gradient_and_prox_match_the_definitions(kind, n, per_image, dtype):
    op = operator(kind, n, per_image)
    assert op.fast_normal and op._is_1d == kind.endswith("1d")
    x, v = images(n, dtype), images(n, dtype, seed=1)
    y = op.measure(images(n, dtype, seed=2), 0.01, seed=[3, 4])
    assert rel(op.normal(x), op.AT(op.A(x))) < TOL[dtype]
    assert rel(op.grad(x, y), op.AT(op.A(x) - y)) < TOL[dtype]
    if op._is_1d:  # exact there (the row-wise eigensystems): the limit of the literal CG
        assert rel(op.prox(v, y, 0.3, iterations=8), literal_prox(op, v, y, 0.3, 200)) < 10 * TOL[dtype] + 1e-9
        op.row_prox = False  # the CG path, which it can still be asked for
    assert rel(op.prox(v, y, 0.3, iterations=8), literal_prox(op, v, y, 0.3, 8)) < 10 * TOL[dtype]


def test_adjoint_of_y_follows_the_measurement():
    """``A^H y`` is kept between calls with the same measurement, and never served for another
    one, nor for the same array changed in place."""
    op = operator("gaussian1d", 32)
    x = images(32, np.complex64)
    y = op.measure(images(32, np.complex64, seed=2), 0.0)
    first = op.grad(x, y)
    assert op._y_memo is not None and np.array_equal(op.grad(x, y.copy()), first)
    y *= 2  # in place: the same object, new values
    assert rel(op.grad(x, y), op.AT(op.A(x) - y)) < 1e-5
    other = op.measure(images(32, np.complex64, seed=5), 0.0)
    assert rel(op.grad(x, other), op.AT(op.A(x) - other)) < 1e-5


def test_torch_gradient_flows_through_the_normal_operator(torch_backend):
    torch = pytest.importorskip("torch")
    op = operator("gaussian2d", 16)
    x = torch.from_numpy(images(16, np.complex128)).requires_grad_(True)
    y = torch.from_numpy(op.measure(images(16, np.complex128, seed=2), 0.0))
    loss = op.prox(x, y, 0.5, iterations=4).abs().sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    y.requires_grad_(True)  # a y with a gradient is never memoised
    g = torch.autograd.grad(op.grad(x.detach(), y).abs().sum(), y)[0]
    assert torch.isfinite(g).all()

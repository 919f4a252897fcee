"""Every operator: exact adjoint, ||A|| <= 1, the same numbers on every backend, exact pinv
where it exists, autograd through the torch path."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffunfold._array import to_numpy
from diffunfold.physics import (
    Convolution,
    GaussianBlur,
    Inpainting,
    MotionBlur,
    MultiCoilMRI,
    SuperResolution,
    adjoint_error,
    birdcage_maps,
    make_operator,
    mri_mask,
    pinv_consistency,
    random_pair,
    spectral_norm,
)

SHAPE = (32, 48)  # not square, so an H/W mix-up cannot pass


def operator_zoo():
    rng = np.random.default_rng(7)
    maps = birdcage_maps(4, SHAPE)
    per_image_maps = np.stack([birdcage_maps(4, SHAPE), birdcage_maps(4, SHAPE, radius=2.0)])
    # Gaussian and motion kernels are point-symmetric (real spectra, self-adjoint operators):
    # an asymmetric kernel is what catches a missing conjugate in the adjoint.
    asymmetric = np.zeros(SHAPE)
    asymmetric[:3, :4] = rng.random((3, 4))
    return {
        "convolution_asymmetric": Convolution(asymmetric),
        "gaussian_blur": GaussianBlur(SHAPE, 2.0),
        "anisotropic_blur": GaussianBlur(SHAPE, (3.0, 0.8), angle=0.6),
        "motion_blur": MotionBlur(SHAPE, 7.0, 1.1),
        "sr_box_x4": SuperResolution(SHAPE, 4),
        "sr_box_x16": SuperResolution(SHAPE, 16),
        "sr_bicubic_x2": SuperResolution(SHAPE, 2, "bicubic"),
        "sr_bicubic_x8": SuperResolution(SHAPE, 8, "bicubic"),
        "inpainting": Inpainting.random(SHAPE, 0.5, seed=1),
        "box_inpainting": Inpainting.box(SHAPE, 0.3, seed=2),
        "inpainting_per_image": Inpainting(rng.random((2, 3) + SHAPE) > 0.4),
        "mri_uniform1d": MultiCoilMRI(maps, mri_mask("uniform1d", SHAPE, 4, center_fraction=0.1)),
        "mri_gaussian2d": MultiCoilMRI(maps, mri_mask("gaussian2d", SHAPE, 4)),
        "mri_per_image": MultiCoilMRI(per_image_maps, mri_mask("gaussian1d", SHAPE, 2, center_fraction=0.1)),
        "mri_odd_grid": MultiCoilMRI(birdcage_maps(3, (31, 47)), mri_mask("gaussian2d", (31, 47), 2)),
        "mri_single_coil": MultiCoilMRI(np.ones((1,) + SHAPE), mri_mask("random1d", SHAPE, 2, center_fraction=0.1)),
    }


ZOO = operator_zoo()
ZOO_IDS = list(ZOO)


@pytest.fixture(params=ZOO_IDS)
def op(request):
    return ZOO[request.param]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-5), (np.float32, 1e-4)])
def test_adjoint(op, backend, dtype, tol):
    x, y = random_pair(op, dtype=dtype, seed=3)
    err = adjoint_error(op, backend.asarray(x), backend.asarray(y))
    assert err < tol, f"<Ax,y> != <x,A^H y> for {op!r} on {backend.name}: relative error {err:.2e}"


def test_spectral_norm_at_most_one(op):
    x, _ = random_pair(op, seed=4)
    norm = spectral_norm(op, x, iters=80)
    assert 0 < norm <= 1 + 1e-6, f"||A|| = {norm} for {op!r}"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("gaussian_blur", 1.0),
        ("inpainting", 1.0),
        ("sr_box_x4", 0.25),
        ("sr_box_x16", 1 / 16),
        ("mri_single_coil", 1.0),
    ],
)
def test_spectral_norm_known_values(name, expected):
    op = ZOO[name]
    x, _ = random_pair(op, seed=5)
    assert spectral_norm(op, x, iters=300) == pytest.approx(expected, rel=2e-3)


def test_backends_give_the_numpy_results(op, backend):
    x, y = random_pair(op, seed=6)
    xb, yb = backend.asarray(x), backend.asarray(y)
    for name, ref, got in [
        ("A", op.A(x), op.A(xb)),
        ("AT", op.AT(y), op.AT(yb)),
        ("pinv", op.pinv(y), op.pinv(yb)),
        ("grad", op.grad(x, op.A(x) + 0.1), op.grad(xb, op.A(xb) + 0.1)),
    ]:
        assert type(got) is type(xb), f"{name} returned {type(got).__name__} for {backend.name} input"
        assert got.dtype == (xb.dtype if name in ("AT", "pinv", "grad") else yb.dtype)
        np.testing.assert_allclose(to_numpy(got), ref, rtol=1e-10, atol=1e-12, err_msg=f"{name} on {backend.name}")


def test_float32_stays_float32(op, backend):
    x, y = random_pair(op, dtype=np.float32, seed=8)
    xb, yb = backend.asarray(x), backend.asarray(y)
    assert op.A(xb).dtype == yb.dtype and op.AT(yb).dtype == xb.dtype
    np.testing.assert_allclose(
        to_numpy(op.A(xb)), op.A(x.astype(np.complex128 if op.complex_image else np.float64)), rtol=1e-4, atol=1e-5
    )


def test_grad_is_adjoint_of_residual(op):
    x, _ = random_pair(op, seed=9)
    y = op.A(x) * 0.5
    np.testing.assert_allclose(op.grad(x, y), op.AT(op.A(x) - y), rtol=1e-12, atol=1e-14)


def test_torch_autograd_matches_grad(op, torch_backend):
    torch = pytest.importorskip("torch")
    x, _ = random_pair(op, seed=10)
    y = op.A(x) + 0.3 * random_pair(op, seed=11)[1]
    xt = torch.from_numpy(x).requires_grad_(True)
    residual = op.A(xt) - torch.from_numpy(y)
    loss = 0.5 * torch.sum(torch.abs(residual) ** 2)
    loss.backward()
    # torch's gradient of a real loss w.r.t. a complex input is dL/dRe + i dL/dIm = A^H(Ax - y).
    np.testing.assert_allclose(xt.grad.numpy(), op.grad(x, y), rtol=1e-9, atol=1e-12)


# -- pseudo-inverses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "sr_box_x4",
        "sr_box_x16",
        "sr_bicubic_x2",
        "sr_bicubic_x8",
        "inpainting",
        "box_inpainting",
        "inpainting_per_image",
    ],
)
def test_pinv_is_exact(name):
    op = ZOO[name]
    x, _ = random_pair(op, seed=12)
    assert pinv_consistency(op, x) < 1e-10


@pytest.mark.parametrize("name", ["gaussian_blur", "motion_blur", "anisotropic_blur"])
def test_blur_pinv_exact_without_regularisation(name):
    op = ZOO[name]
    x, _ = random_pair(op, seed=13)
    assert pinv_consistency(op, x, eps=0.0) < 1e-6
    # The default (Tikhonov) inverse is a regularised one: close, not exact.
    assert pinv_consistency(op, x) < 0.5


def test_mri_pinv_exact_when_fully_sampled():
    op = MultiCoilMRI(birdcage_maps(6, SHAPE), np.ones(SHAPE))
    x, _ = random_pair(op, seed=14)
    assert pinv_consistency(op, x) < 1e-10
    # sum |S|^2 = 1 makes S an isometry: fully sampled zero-filled SENSE returns x itself.
    np.testing.assert_allclose(op.pinv(op.A(x)), x, rtol=1e-10, atol=1e-12)


def test_sr_box_pinv_is_nearest_upsampling():
    op = SuperResolution(SHAPE, 4)
    y = np.random.default_rng(0).random((1, 2, 8, 12))
    up = np.repeat(np.repeat(y, 4, axis=-2), 4, axis=-1)
    np.testing.assert_allclose(op.pinv(y), up, rtol=1e-12)
    np.testing.assert_allclose(op.AT(y), up / 16, rtol=1e-12)


# -- what each operator computes ---------------------------------------------------------------


def test_sr_box_is_block_mean():
    x = np.random.default_rng(1).random((2, 3) + SHAPE)
    expected = x.reshape(2, 3, 8, 4, 12, 4).mean(axis=(3, 5))
    np.testing.assert_allclose(SuperResolution(SHAPE, 4).A(x), expected, rtol=1e-12)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_sr_bicubic_matches_pillow_inside_the_border(factor):
    from PIL import Image

    x = np.random.default_rng(2).random(SHAPE).astype(np.float32)
    ours = SuperResolution(SHAPE, factor, "bicubic").A(x[None, None].astype(np.float64))[0, 0]
    pil = np.asarray(Image.fromarray(x, mode="F").resize((SHAPE[1] // factor, SHAPE[0] // factor), Image.BICUBIC))
    b = 2  # Pillow renormalises truncated taps at the border where we reflect
    np.testing.assert_allclose(ours[b:-b, b:-b], pil[b:-b, b:-b], atol=1e-6)


def _kernel_covariance(kernel: np.ndarray) -> np.ndarray:
    h, w = kernel.shape
    yy, xx = np.mgrid[:h, :w].astype(float)
    k = kernel / kernel.sum()
    my, mx = (k * yy).sum(), (k * xx).sum()
    cyy = (k * (yy - my) ** 2).sum()
    cxx = (k * (xx - mx) ** 2).sum()
    cxy = (k * (yy - my) * (xx - mx)).sum()
    return np.array([[cxx, cxy], [cxy, cyy]]), (my, mx)


def test_anisotropic_gaussian_has_the_requested_covariance():
    s1, s2, angle = 4.0, 1.5, 0.5
    op = GaussianBlur((96, 96), (s1, s2), angle)
    cov, centre = _kernel_covariance(op.kernel)
    # Rows grow downwards, so a counter-clockwise angle is -angle in (x, row) coordinates.
    c, s = math.cos(angle), -math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    expected = rot @ np.diag([s1**2, s2**2]) @ rot.T
    np.testing.assert_allclose(cov, expected, atol=1e-3)
    assert centre == pytest.approx((48, 48))


def test_motion_blur_is_a_centred_segment():
    op = MotionBlur((64, 64), 15.0, 0.0)
    k = op.kernel
    cov, centre = _kernel_covariance(k)
    assert centre == pytest.approx((32, 32), abs=1e-9)
    assert cov[0, 0] == pytest.approx(15.0**2 / 12, rel=0.05)  # variance of a uniform segment
    assert cov[1, 1] < 0.05
    assert np.all(k >= 0) and k.sum() == pytest.approx(1.0)


def test_batch_invariance_of_shared_operators():
    op = GaussianBlur(SHAPE, 2.0)
    x = np.random.default_rng(3).random((4, 3) + SHAPE)
    np.testing.assert_allclose(op.A(x)[2:3], op.A(x[2:3]), rtol=1e-12)


def test_operators_rebuild_from_spec():
    for name, op in ZOO.items():
        spec = op.spec()
        if "given" in spec:
            continue
        rebuilt = make_operator(**spec)
        x, _ = random_pair(op, seed=15)
        np.testing.assert_allclose(rebuilt.A(x), op.A(x), rtol=1e-12, err_msg=name)


@pytest.mark.parametrize(
    "task,params",
    [
        ("gaussian_blur", {"sigma": 2.0}),
        ("anisotropic_blur", {}),
        ("motion_blur", {}),
        ("sr", {"factor": 4}),
        ("sr", {"factor": 2, "kernel": "bicubic"}),
        ("inpainting", {"missing": 0.5}),
        ("mri", {"ncoils": 4, "acceleration": 4}),
    ],
)
def test_lipschitz_is_the_squared_norm(task, params):
    # The unfolding divides its fidelity step by op.lipschitz: it must be ||A||^2 (or a tight
    # upper bound), else SR and blur get different effective step sizes.
    from diffunfold.physics import make_operator
    from diffunfold.physics.checks import spectral_norm

    op = make_operator(task, (32, 32), **params)
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32))
    est = spectral_norm(op, x + 0j if op.complex_image else x, iters=300) ** 2
    assert est <= op.lipschitz * (1 + 1e-9)
    assert est >= 0.99 * op.lipschitz


def test_noise_goes_only_where_something_is_measured():
    """Missing pixels and unsampled k-space stay exactly 0 in a noisy measurement (the operator
    returns 0 there; a detector or coil never records them)."""
    from diffunfold.physics import make_operator

    rng = np.random.default_rng(0)
    op = make_operator("inpainting", (3, 32, 32), missing=0.4, seed=1)
    x = rng.uniform(size=(2, 3, 32, 32))
    e = op.measure(x, 0.1, seed=[1, 2]) - op.A(x)
    m = np.broadcast_to(np.asarray(op.mask) > 0, e.shape)
    assert np.all(e[~m] == 0) and abs(np.std(e[m]) - 0.1) < 0.01

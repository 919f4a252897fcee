"""EDM constants, schedule and loop, and the data-space / model-space map (torch-free parts)."""

import math

import numpy as np
import pytest

from diffunfold import edm
from diffunfold.errors import InputError
from diffunfold.physics import make_operator
from diffunfold.spaces import DataSpace


@pytest.mark.parametrize("s", [0.002, 0.1, 0.5, 3.0, 80.0])
def test_preconditioning_matches_edm(s):
    sd = 0.5
    assert edm.c_skip(s) == pytest.approx(sd**2 / (s**2 + sd**2))
    assert edm.c_out(s) == pytest.approx(s * sd / math.sqrt(s**2 + sd**2))
    assert edm.c_in(s) == pytest.approx(1 / math.sqrt(s**2 + sd**2))
    assert edm.c_noise(s) == pytest.approx(math.log(s) / 4)
    assert edm.loss_weight(s) == pytest.approx((s**2 + sd**2) / (s * sd) ** 2)
    # EDM's design: the effective training target has unit variance, c_skip^2 sd^2 ... and
    # lambda(s) * c_out(s)^2 = 1 (the loss weight undoes the output scaling).
    assert edm.loss_weight(s) * edm.c_out(s) ** 2 == pytest.approx(1.0)
    assert edm.c_in(s) ** 2 * (s**2 + sd**2) == pytest.approx(1.0)


def test_constants_are_the_papers():
    assert (edm.SIGMA_DATA, edm.P_MEAN, edm.P_STD) == (0.5, -1.2, 1.2)
    assert (edm.SIGMA_MIN, edm.SIGMA_MAX, edm.RHO) == (0.002, 80.0, 7.0)


def test_schedule():
    s = edm.schedule(18)
    assert s.shape == (19,) and s[-1] == 0.0
    assert s[0] == pytest.approx(80.0) and s[-2] == pytest.approx(0.002)
    assert np.all(np.diff(s) < 0)
    i = 7
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert s[i] == pytest.approx(expected, rel=1e-12)
    assert edm.nfe_of(18, "euler") == 18 and edm.nfe_of(18, "heun") == 35
    with pytest.raises(InputError):
        edm.schedule(0)
    with pytest.raises(InputError):
        edm.check_sampler("rk4")


def test_training_sigmas_are_lognormal():
    s = edm.training_sigmas(np.random.default_rng(0), 200_000)
    assert np.log(s).mean() == pytest.approx(-1.2, abs=0.01)
    assert np.log(s).std() == pytest.approx(1.2, abs=0.01)


def test_initial_noise_is_per_image():
    a = edm.initial_noise([3, 4, 5], (2, 8, 8))
    b = edm.initial_noise([4], (2, 8, 8))
    assert a.dtype == np.float32 and a.shape == (3, 2, 8, 8)
    np.testing.assert_array_equal(a[1], b[0])
    assert a[0].std() == pytest.approx(80, rel=0.2)
    assert edm.seeds_for(10, 3) == [10, 11, 12]
    with pytest.raises(InputError):
        edm.seeds_for([1, 2], 3)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_sample_loop_is_exact_for_a_gaussian(sampler):
    # Data ~ N(mu, 0): the ideal denoiser is D(x; s) = mu, and the probability-flow ODE
    # ends exactly at mu (the last step sets x_N = D); NFE as documented.
    calls = []
    mu = np.full((1, 1, 4, 4), 0.3)

    def denoise(x, s):
        calls.append(s)
        return mu

    x, nfe = edm.sample_loop(denoise, np.random.default_rng(0).standard_normal(mu.shape) * 80, edm.schedule(6), sampler)
    np.testing.assert_allclose(x, mu, atol=1e-12)
    assert nfe == len(calls) == edm.nfe_of(6, sampler)


def test_sample_loop_heun_is_second_order():
    # Data ~ N(0, c^2): D(x; s) = c^2/(c^2+s^2) x, exact solution x(s) = x0 sqrt(c^2+s^2)/sqrt(c^2+s0^2).
    c = 0.5

    def denoise(x, s):
        return c**2 / (c**2 + s**2) * x

    sig = np.linspace(2.0, 0.5, 9)  # stop before 0 to compare the integrators
    exact = np.sqrt(c**2 + sig[-1] ** 2) / np.sqrt(c**2 + sig[0] ** 2)
    err = {m: abs(edm.sample_loop(denoise, np.ones(1), sig, m)[0][0] - exact) for m in ("euler", "heun")}
    assert err["heun"] < err["euler"] / 5


def test_image_space_round_trip_and_chain_rule():
    space = DataSpace("image", 3)
    x = np.random.default_rng(0).uniform(size=(2, 3, 8, 8))
    xm = space.to_model(x)
    assert xm.min() >= -1 and xm.max() <= 1
    np.testing.assert_allclose(xm, 2 * x - 1)  # x_model = 2 x - 1 (diffunfold.spaces), not just any map into [-1, 1]
    np.testing.assert_allclose(space.to_user(xm), x)
    np.testing.assert_allclose(space.grad_to_model(np.ones_like(x)), 0.5)


def test_mri_space_packs_real_and_imag():
    space = DataSpace("mri", 1)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 1, 8, 8)) + 1j * rng.standard_normal((2, 1, 8, 8))).astype(np.complex64)
    xm = space.to_model(x)
    assert xm.shape == (2, 2, 8, 8) and xm.dtype == np.float32
    np.testing.assert_array_equal(xm[:, 0], x.real[:, 0])
    np.testing.assert_array_equal(space.to_user(xm), x)
    assert space.model_channels == 2 and space.data_range is None
    with pytest.raises(InputError):
        space.to_model(x.real)
    with pytest.raises(InputError):
        DataSpace("mri", 3)


@pytest.mark.parametrize("kind", ["image", "mri"])
def test_grad_to_model_matches_finite_differences(kind):
    # d/dx_model of g(x_user(x_model)), g = 0.5||A x - y||^2, by central differences.
    rng = np.random.default_rng(1)
    if kind == "image":
        space, op = DataSpace("image", 1), make_operator("gaussian_blur", (8, 8), sigma=1.0)
        x = rng.uniform(size=(1, 1, 8, 8))
    else:
        space, op = DataSpace("mri", 1), make_operator("mri", (8, 8), kind="gaussian2d", acceleration=2, ncoils=3)
        x = rng.standard_normal((1, 1, 8, 8)) + 1j * rng.standard_normal((1, 1, 8, 8))
    y = op.A(x) + 0.1
    xm = space.to_model(x)

    def g(v):
        r = op.A(space.to_user(v)) - y
        return 0.5 * float(np.sum(np.abs(r) ** 2))

    grad = space.grad_to_model(op.grad(space.to_user(xm), y))
    h = 1e-6
    for idx in [(0, 0, 2, 3), (0, space.model_channels - 1, 5, 1)]:
        e = np.zeros_like(xm)
        e[idx] = h
        fd = (g(xm + e) - g(xm - e)) / (2 * h)
        assert grad[idx] == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_churn_samples_a_gaussian_and_off_is_the_ode():
    # Data ~ N(mu, c^2) per pixel: D(x; s) = mu + c^2 / (c^2 + s^2) (x - mu). EDM's stochastic
    # Heun sampler, re-noising at every level, must still end on that distribution.
    mu, c, n = 0.3, 0.5, 100_000
    rng = np.random.default_rng(0)

    def denoise(x, s):
        return mu + c**2 / (c**2 + s**2) * (x - mu)

    x0 = rng.standard_normal(n) * 80
    churn = edm.Churn(s_churn=1000.0, s_min=0.0, s_max=80.0)
    x, nfe = edm.sample_loop(
        denoise, x0, edm.schedule(200), "heun", churn=churn, noise=lambda i: rng.standard_normal(n)
    )
    assert nfe == edm.nfe_of(200, "heun")
    assert abs(x.mean() - mu) < 0.01 and abs(x.std() - c) < 0.02 * c
    ode = edm.sample_loop(denoise, x0, edm.schedule(18))[0]
    # churn 0, or a range the schedule never enters, is the deterministic ODE exactly
    for off in (edm.Churn(), edm.Churn(s_churn=5.0, s_min=100.0, s_max=200.0)):
        np.testing.assert_array_equal(edm.sample_loop(denoise, x0, edm.schedule(18), churn=off)[0], ode)
    with pytest.raises(InputError, match="noise source"):
        edm.sample_loop(denoise, x0, edm.schedule(18), churn=edm.Churn(1.0))


def test_churn_levels_and_settings():
    sig = edm.schedule(18)
    hats = edm.Churn(s_churn=7.2).sigma_hats(sig)
    assert len(hats) == 18
    for s, h in zip(sig[:-1], hats):
        assert h == pytest.approx(s * 1.4) if 0.05 <= s <= 50 else h == s
    capped = edm.Churn(s_churn=1000.0).sigma_hat(1.0, 18)
    assert capped == pytest.approx(np.sqrt(2.0))  # gamma is capped at sqrt(2) - 1
    assert edm.Churn.of(None) == edm.Churn() and not edm.Churn.of(0).active
    assert edm.Churn.of({"s_churn": 3, "s_max": 10}) == edm.Churn(3.0, 0.05, 10.0)
    for bad in (
        -1.0,
        float("nan"),
        True,
        "7",
        {"churn": 1},
        {"s_churn": 1, "s_min": 5, "s_max": 1},
        {"s_churn": 1, "s_noise": 0},
    ):
        with pytest.raises(InputError):
            edm.Churn.of(bad)


def test_churn_noise_is_per_image_sample_and_step():
    a = edm.churn_noise([3, 4, 5], (2, 8, 8), step=2, sample=1)
    b = edm.churn_noise([4], (2, 8, 8), step=2, sample=1)
    assert a.dtype == np.float32 and a.shape == (3, 2, 8, 8)
    np.testing.assert_array_equal(a[1], b[0])
    assert a[0].std() == pytest.approx(1.0, rel=0.2)
    others = [
        edm.churn_noise([4], (2, 8, 8), step=3, sample=1),
        edm.churn_noise([4], (2, 8, 8), step=2, sample=0),
        edm.initial_noise([4], (2, 8, 8), 1.0, sample=1),
    ]
    for other in others:
        assert np.abs(other[0] - b[0]).max() > 0.1

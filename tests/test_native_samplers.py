"""Each diffusion formulation's own ODE solver (EDM's Table 1, ``sampler="native"``): the step
coefficients against their closed forms, first-order convergence to the exact probability-flow
ODE of a Gaussian toy, and the refusals. Runtime/torch parity: test_formulations.py."""

import numpy as np
import pytest

from diffunfold import edm, formulations
from diffunfold.errors import InputError

C = 0.5  # data ~ N(0, C^2): D(x; s) = C^2 / (C^2 + s^2) x, the exact denoiser


def _denoise(x, s):
    return C**2 / (C**2 + s**2) * x


def _exact(x0, s0, s1):
    """The probability-flow ODE's solution in the unscaled x, for every formulation alike."""
    return x0 * np.sqrt(C**2 + s1**2) / np.sqrt(C**2 + s0**2)


@pytest.mark.parametrize("name", ["edm", "iddpm"])
def test_sigma_equal_t_is_the_plain_euler_step(name):
    sig = formulations.schedule(name, 7)
    rows = formulations.get(name).euler_in_t(sig)
    ratio = sig[1:] / sig[:-1]
    np.testing.assert_allclose(rows, np.stack([ratio, 1 - ratio], axis=1), rtol=1e-14, atol=1e-15)


def test_ve_steps_in_sigma_squared():
    sig = formulations.schedule("ve", 5)
    rows = formulations.get("ve").euler_in_t(sig)
    r2 = (sig[1:] / sig[:-1]) ** 2
    np.testing.assert_allclose(rows, 0.5 * np.stack([1 + r2, 1 - r2], axis=1), rtol=1e-14)
    assert tuple(rows[-1]) == (0.5, 0.5)  # Table 1's last Euler step to t = 0 keeps half of x


def test_vp_coefficients_match_a_finite_difference_of_its_ode():
    """VP's row against EDM's Algorithm 1 evaluated with numerical derivatives of sigma(t), s(t)."""
    vp = formulations.get("vp")
    t0, t1, h = 0.6, 0.55, 1e-6
    sigma = lambda t: float(formulations.vp_sigma(t))  # noqa: E731
    scale = lambda t: 1 / np.sqrt(1 + sigma(t) ** 2)  # noqa: E731
    a = (sigma(t0 + h) - sigma(t0 - h)) / (2 * h) / sigma(t0)
    b = (scale(t0 + h) - scale(t0 - h)) / (2 * h) / scale(t0)
    ratio = scale(t0) / scale(t1)
    want = [ratio * (1 + (t1 - t0) * (a + b)), -ratio * (t1 - t0) * a]
    np.testing.assert_allclose(vp.euler_in_t(np.array([sigma(t0), sigma(t1)]))[0], want, rtol=1e-7)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_native_euler_converges_to_the_exact_ode_at_first_order(name):
    f, x0 = formulations.get(name), np.array([1.3])
    errors = []
    for steps in (50, 100, 200):
        # the formulation's own levels, stopped at 0.05 so the integrators are compared, not the last jump
        # (Table 1's spacing: VE geometric in t, VP uniform in t)
        if name == "ve":
            sig = np.geomspace(f.sigma_max, 0.05, steps + 1)
        else:
            sig = formulations.vp_sigma(np.linspace(1.0, float(formulations.vp_t(0.05)), steps + 1))
        x, nfe = edm.sample_loop(_denoise, x0, sig, "euler", coefficients=f.euler_in_t(sig))
        assert nfe == steps
        errors.append(abs(x[0] - _exact(x0[0], sig[0], sig[-1])))
    assert errors[2] < 5e-3 * abs(x0[0])
    assert 0.4 < errors[1] / errors[0] < 0.6 and 0.4 < errors[2] / errors[1] < 0.6


def test_at_18_steps_the_solvers_differ_as_edm_found():
    """On the formulations' own 18 levels (to sigma_min), on the Gaussian toy: Euler in VE's
    t = sigma^2 lags far behind the exact ODE where Euler in sigma follows it (EDM's section 3:
    sigma(t) = t makes the ODE nearly straight), while VP's scaling makes its own Euler in t the
    closer of the two there."""
    err = {}
    for name in ("vp", "ve"):
        sig = formulations.schedule(name, 18)[:-1]  # the last jump to 0 differs by design
        x0 = np.array([0.7 * sig[0]])
        rows = formulations.get(name).euler_in_t(sig)
        exact = _exact(x0[0], sig[0], sig[-1])
        for kind, coefficients in (("sigma", None), ("own", rows)):
            x, _ = edm.sample_loop(_denoise, x0, sig, "euler", coefficients=coefficients)
            err[name, kind] = abs(x[0] - exact) / exact
    assert err["ve", "own"] > 3 * err["ve", "sigma"] and err["ve", "sigma"] < 0.15
    assert err["vp", "own"] < err["vp", "sigma"] / 3


def test_solver_resolution_and_calls():
    sig = formulations.schedule("vp", 6)
    assert formulations.solver("edm", "native", sig) == ("heun", None)
    assert formulations.solver("iddpm", "native", sig) == ("euler", None)
    sampler, rows = formulations.solver("vp", "native", sig)
    assert sampler == "euler" and rows.shape == (6, 2)
    assert formulations.solver("vp", "heun", sig) == ("heun", None)
    assert formulations.nfe_of("edm", 18, "native") == 35 and formulations.nfe_of("ve", 18, "native") == 18


def test_refusals():
    sig = formulations.schedule("ve", 4)
    rows = formulations.get("ve").euler_in_t(sig)
    with pytest.raises(InputError, match="native"):
        edm.sample_loop(_denoise, np.ones(1), sig, "native")
    with pytest.raises(InputError, match="native"):
        edm.nfe_of(18, "native")
    with pytest.raises(InputError, match="Euler"):
        edm.sample_loop(_denoise, np.ones(1), sig, "heun", coefficients=rows)
    with pytest.raises(InputError, match="Euler"):
        edm.sample_loop(
            _denoise, np.ones(1), sig, "euler", churn=edm.Churn(5.0), noise=lambda i: 0.0, coefficients=rows
        )
    with pytest.raises(InputError, match="3 step coefficients for 4"):
        edm.sample_loop(_denoise, np.ones(1), sig, "euler", coefficients=rows[:3])
    with pytest.raises(InputError, match="fall strictly"):
        formulations.get("ve").euler_in_t(sig[::-1])
    with pytest.raises(InputError, match="sampler must be one of"):
        formulations.solver("vp", "rk4", sig)

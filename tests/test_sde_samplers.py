"""The papers' stochastic samplers (``sampler="ancestral"``, DDPM's; ``"pc"``, the score-SDE
predictor-corrector): their steps, their convergence to the exact posterior on a Gaussian toy,
their refusals, and the runtime against the torch reference.

On the toy the exact denoiser of a Gaussian posterior N(m, p^2) per pixel is
``D(x; s) = m + p^2 / (p^2 + s^2) (x - m)``; sampling from noise at s = 80 must end at samples
of that posterior, up to an error that shrinks with the step (ancestral puts the posterior
mean, not a draw, in place of x_0; the reverse-diffusion predictor adds too much noise).
"""

import math

import numpy as np
import pytest

from diffunfold import edm, formulations
from diffunfold.errors import InputError
from diffunfold.sde_samplers import ancestral_step, langevin_correct, reverse_diffusion_step

M, P = 0.3, 0.2  # the toy posterior: mean and standard deviation per pixel


def _toy_denoise(x, s):
    return M + P**2 / (P**2 + s**2) * (x - M)


def _toy_samples(steps: int, sampler: str = "ancestral", n: int = 40_000, seed: int = 0) -> np.ndarray:
    """``n`` draws, one pixel each, of the toy posterior: as 100 images of n / 100 pixels, since
    the corrector's step is set per image."""
    rng = np.random.default_rng(seed)
    sigmas = edm.schedule(steps)
    x = sigmas[0] * rng.standard_normal((100, n // 100))
    out, nfe = edm.sample_loop(_toy_denoise, x, sigmas, sampler, noise=lambda i: rng.standard_normal(x.shape))
    assert nfe == edm.nfe_of(steps, sampler) == steps * (2 if sampler == "pc" else 1)
    return out.ravel()


def test_the_step_is_the_gaussian_posterior_given_the_denoised_image():
    a, b, c = ancestral_step(2.0, 1.0)
    assert (a, b) == (0.25, 0.75) and c == pytest.approx(math.sqrt(0.75))
    assert ancestral_step(0.5, 0.0) == (0.0, 1.0, 0.0)  # the last step returns D(x)
    # the reverse-diffusion predictor: the same mean, the noise of the whole interval
    a, b, c = reverse_diffusion_step(2.0, 1.0)
    assert (a, b) == (0.25, 0.75) and c == pytest.approx(math.sqrt(3.0))
    assert reverse_diffusion_step(0.5, 0.0) == (0.0, 1.0, 0.0)
    # one step keeps the noise level: x = x0 + s n goes to x0 + s_next n' when D(x) = x0 exactly
    rng = np.random.default_rng(1)
    x0, n = 0.7, 200_000
    x = x0 + 3.0 * rng.standard_normal(n)
    a, b, c = ancestral_step(3.0, 1.2)
    x_next = a * x + b * x0 + c * rng.standard_normal(n)
    assert np.mean(x_next) == pytest.approx(x0, abs=0.01) and np.std(x_next) == pytest.approx(1.2, rel=0.01)


@pytest.mark.parametrize("sampler", ["ancestral", "pc"])
def test_converges_to_the_toy_posterior(sampler):
    errors = {}
    for steps in (16, 64, 256):
        x = _toy_samples(steps, sampler)
        assert np.all(np.isfinite(x))
        assert np.mean(x) == pytest.approx(M, abs=0.01)
        errors[steps] = abs(np.std(x) / P - 1)
    # measured, |std / p - 1| at 16 / 64 / 256 steps: ancestral 0.32 / 0.10 / 0.028 (too narrow),
    # pc 0.46 / 0.035 / 0.021 (too wide); the sampling error of the std at n = 40,000 is 0.4 %
    assert errors[256] < 0.04
    assert errors[16] > 2.5 * errors[64] > 2.5 * errors[256]


def test_the_langevin_corrector_keeps_the_toy_distribution():
    """At the toy's noisy marginal N(m, p^2 + s^2), a corrector step leaves it in place (to
    first order in its step), and its step follows the signal-to-noise rule per image."""
    rng = np.random.default_rng(2)
    s, v = 0.5, P**2 + 0.25
    x = M + math.sqrt(v) * rng.standard_normal((50, 2000))
    for _ in range(20):
        x = langevin_correct(_toy_denoise, x, s, rng.standard_normal(x.shape))
    assert np.mean(x) == pytest.approx(M, abs=0.01) and np.var(x) == pytest.approx(v, rel=0.03)


def test_without_noise_it_is_not_the_ode():
    """The ancestral step is not the Euler step with noise added: with z = 0 it moves further
    towards D(x) (by 1 - r^2, against Euler's 1 - r)."""
    sigmas = edm.schedule(6)
    x = np.full(3, 5.0)
    zero = edm.sample_loop(_toy_denoise, x, sigmas[:2], "ancestral", noise=lambda i: np.zeros(3))[0]
    euler = edm.sample_loop(_toy_denoise, x, sigmas[:2], "euler")[0]
    assert np.all(np.abs(zero - M) < np.abs(euler - M))


def test_refusals_and_resolution():
    with pytest.raises(InputError, match="needs its noise source"):
        edm.sample_loop(_toy_denoise, np.zeros(2), edm.schedule(4), "ancestral")
    with pytest.raises(InputError, match="stochastic already"):
        edm.sample_loop(_toy_denoise, np.zeros(2), edm.schedule(4), "ancestral", churn=edm.Churn(5.0), noise=np.ones)
    with pytest.raises(InputError, match="'ancestral', 'pc'"):
        edm.check_sampler("ddpm")  # the message lists the names
    for name in ("edm", "vp", "ve", "iddpm"):
        for sampler, calls in (("ancestral", 10), ("pc", 20)):
            assert formulations.solver(name, sampler, edm.schedule(4)) == (sampler, None)
            assert formulations.nfe_of(name, 10, sampler) == calls


@pytest.mark.torch
@pytest.mark.parametrize("sampler", ["ancestral", "pc"])
@pytest.mark.parametrize("task", ["gaussian_blur", "mri"])
def test_runtime_matches_torch_reference(tiny_packages, task, sampler):
    """The same noise per (image seed, sample, step) in both; a package's churn is left out."""
    pytest.importorskip("torch", reason="the torch reference needs torch (the train extra)")
    import torch
    from helpers import IMAGE_TASKS, MRI_TASKS, REL_TOL, clean_images, operator_for, rel_err

    from diffunfold.runtime import Solver
    from diffunfold.training.sampler import restore

    _, params = (MRI_TASKS if task == "mri" else IMAGE_TASKS)[0]
    model, pkg = tiny_packages["mri" if task == "mri" else "shared"]
    op = operator_for(task, params)
    y = op.measure(clean_images(mri=task == "mri"), 0.01 if task == "mri" else 0.05, seed=[11, 12])
    solver = Solver.load(pkg, backend="onnxruntime")
    got = solver.solve(y, op, schedule="full", steps=8, sampler=sampler, seed=3, samples=2)
    want = restore(model, torch.from_numpy(y), op, steps=8, sampler=sampler, seed=3, samples=2)
    assert got.nfe == want.nfe == edm.nfe_of(8, sampler)
    assert np.all(np.isfinite(got.images)) and rel_err(got.images, want.images.numpy()) < REL_TOL
    ode = solver.solve(y, op, schedule="full", steps=8, sampler="euler", seed=3, samples=2)
    assert np.max(np.abs(got.images - ode.images)) > 1e-3
    with pytest.raises(InputError, match="stochastic already"):
        solver.solve(y, op, schedule="full", steps=8, sampler=sampler, churn=5.0)


@pytest.mark.torch
def test_a_package_can_ask_for_a_stochastic_sampler(tiny_packages, tmp_path):
    """``export_model(sampler=...)`` (``diffunfold export --sampler``) writes the manifest's
    ``schedule.sampler``; the runtime then runs it unless told otherwise."""
    pytest.importorskip("onnx", reason="exporting needs onnx (the export extra)")
    from helpers import IMAGE_TASKS, clean_images, operator_for

    from diffunfold.export import export_model
    from diffunfold.package_schema import manifest_problems
    from diffunfold.runtime import Solver

    model, plain = tiny_packages["shared"]
    pkg = export_model(model, tmp_path / "anc", sampler="ancestral", check=False, log=lambda _: None)
    assert pkg.schedule["sampler"] == "ancestral" and plain.schedule["sampler"] == "euler"
    op = operator_for(*IMAGE_TASKS[0])
    y = op.measure(clean_images(), 0.05, seed=[1, 2])
    asked = Solver.load(pkg, backend="onnxruntime").solve(y, op, schedule="full", steps=5, seed=4)
    told = Solver.load(plain, backend="onnxruntime").solve(y, op, schedule="full", steps=5, seed=4, sampler="ancestral")
    np.testing.assert_allclose(asked.images, told.images, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="stochastic already"):
        export_model(model, tmp_path / "both", sampler="pc", churn=5.0, check=False, log=lambda _: None)
    assert not (tmp_path / "both").exists()
    bad = {"schedule": {"sampler": "ddim"}}
    assert any("schedule.sampler must be one of" in p for p in manifest_problems(bad))

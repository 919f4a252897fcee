"""The zero-shot solvers (``diffunfold.runtime.zero_shot``): DPS, DiffPIR, PnP-EDM and DDS.

A Gaussian toy checks what each one gets right. The prior is ``x ~ N(mu, Sigma)`` on a 1-channel
8x8 image in model space; its exact MMSE denoiser ``D(x; s) = mu + Sigma (Sigma + s^2 I)^-1 (x - mu)``
runs as a fake backend behind the real ``Solver.solve``; with a linear operator and Gaussian noise
the posterior ``N(m, C)`` is known in closed form. Many chains (a batch of one measurement under
different seeds) give each solver's mean. What is asserted, per method:

* PnP-EDM is an MCMC sampler: at a fixed coupling ``rho`` its chain's stationary mean is exactly
  the mean of the relaxed posterior (the likelihood of ``y = A (x + rho n) + e``), because both
  conditional steps have exact means for a Gaussian prior (the likelihood step is an exact draw;
  each ancestral prior step keeps the exact conditional mean). Its mean must sit within 3 Monte
  Carlo standard errors of it, and near ``m`` as ``rho_min`` shrinks.
* DiffPIR, DDS and DPS are approximations (DPS not even a sampler of a fixed distribution): their
  means must land near ``m``, within a stated share (``MISS``) of the distance from the prior mean
  to ``m`` (ignoring the data scores 1, the posterior mean 0), and their results must fit the data
  to the noise level (residual RMS under 1.5 sigma_y; a solver that ignores the data does not).
* DPS's finite-difference JVP equals the exact VJP for this denoiser (its Jacobian is symmetric).
* All four recover a known image when the prior concentrates around it (a rank-4 prior whose
  coefficients the data determine).

The torch part holds the runtime (ONNX Runtime on an exported ``tiny_denoiser()``) to the torch
reference per method, and checks the API and the CLI.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from diffunfold.errors import InputError
from diffunfold.physics import make_operator
from diffunfold.runtime.backend_base import Backend
from diffunfold.runtime.solver import Solver
from diffunfold.runtime.tiling import TilePlan
from diffunfold.runtime.zero_shot import METHODS, names, route, settings_for
from diffunfold.runtime.zero_shot.common import Problem
from diffunfold.runtime.zero_shot.dps import DPSSettings, guidance
from diffunfold.spaces import DataSpace

N = 8
SPACE = DataSpace("image", 1)
CHAINS = 48
# Fewer steps than the papers' (1000, 100, 100 x 50, 50) where the toy does not need them: the
# file stays fast. Each is the method's own loop, only shorter. DPS's step acts on the residual
# norm of the whole image, so its useful size shrinks with the pixel count: the toy's 64 pixels
# take 0.1 where the paper's 256x256 colour images take 1 (at zeta = 1 the toy's DPS fits the noise:
# residual 0.033 against sigma_y 0.05). PnP-EDM anneals faster (0.8) so that 60 iterations
# reach rho_min = 0.05 and stay there.
FAST = {
    "dps": dict(steps=200, zeta=0.1),
    "diffpir": dict(steps=50),
    "pnp-edm": dict(iterations=60, decay=0.8, burn_in=30, keep=15, prior_steps=30, rho_min=0.05),
    "dds": dict(steps=50),
}
# How far each approximate method's mean may miss the posterior mean, as a share of the prior
# mean's distance to it (0: exact, 1: the data ignored). Measured at these settings (inpainting /
# blur): DiffPIR 0.05 / 0.17, DDS 0.08 / 0.31, DPS 0.20 / 0.16.
MISS = {"diffpir": 0.25, "dds": 0.5, "dps": 0.35}


class Gaussian:
    """The prior ``N(mu, Sigma)`` in model space and its exact denoiser."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray):
        self.mu, self.sigma = mu, sigma
        self.lam, self.u = np.linalg.eigh(sigma)

    def denoise(self, x, s: float):
        v = x.reshape(x.shape[0], -1).astype(np.float64) - self.mu
        c = (v @ self.u) * (self.lam / (self.lam + s * s))
        return (self.mu + c @ self.u.T).reshape(x.shape).astype(np.float32)

    def jacobian(self, s: float) -> np.ndarray:
        return (self.u * (self.lam / (self.lam + s * s))) @ self.u.T

    def user(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance in user space ([0, 1] images: ``u = (x + 1) / 2``)."""
        return (self.mu + 1) / 2, self.sigma / 4


class ExactBackend(Backend):
    """A backend whose network is the exact denoiser of a Gaussian prior."""

    name = "exact-gaussian"

    def __init__(self, prior: Gaussian):
        self.prior, self.device_kind, self.device_index, self.stages, self.shared = prior, "cpu", 0, 1, False

    def regularize(self, x, sigma: float, k: int):
        return self.prior.denoise(x, sigma)


def toy_solver(prior: Gaussian, kind: str = "denoiser") -> Solver:
    package = SimpleNamespace(kind=kind, space=SPACE, stages=1, size_multiple=1, path=None)
    solver = Solver(package, ExactBackend(prior))
    solver.plan = lambda *a, **k: TilePlan(None)  # no package manifest to size tiles from
    return solver


def smooth_prior(scale: float = 0.1, rank: int | None = None, eps: float = 1e-3) -> Gaussian:
    yy, xx = np.mgrid[:N, :N]
    pts = np.stack([yy.ravel(), xx.ravel()], 1)
    cov = scale * np.exp(-((pts[:, None] - pts[None]) ** 2).sum(-1) / 8.0)
    if rank is not None:
        lam, u = np.linalg.eigh(cov)
        cov = (u[:, -rank:] * lam[-rank:]) @ u[:, -rank:].T
    return Gaussian(0.2 * np.sin(pts[:, 1].astype(float)), cov + eps**2 * np.eye(N * N))


def operator(task: str):
    if task == "inpainting":
        return make_operator("inpainting", (N, N), missing=0.5, seed=1)
    return make_operator("gaussian_blur", (N, N), sigma=1.0)


def matrix(op) -> np.ndarray:
    basis = np.eye(N * N).reshape(N * N, 1, N, N)
    return np.asarray(op.A(basis)).reshape(N * N, -1).T


def measurement(prior: Gaussian, op, std: float, seed: int = 0):
    """A truth drawn from the prior (user space) and its measurement ``(1, 1, N, N)``."""
    rng = np.random.default_rng(seed)
    x = prior.mu + prior.u @ (np.sqrt(np.maximum(prior.lam, 0)) * rng.standard_normal(N * N))
    truth = ((x + 1) / 2).reshape(1, 1, N, N)
    y = op.A(truth) + std * rng.standard_normal(op.A(truth).shape)
    return truth, y.astype(np.float32)


def posterior(prior: Gaussian, a: np.ndarray, y: np.ndarray, std: float, rho: float = 0.0):
    """Mean and covariance (user space) of the posterior, with the likelihood of
    ``y = A (u + rho_u n) + e`` (``rho_u = rho / 2``: the relaxed posterior of split Gibbs)."""
    mu, cov = prior.user()
    noise = std**2 * np.eye(a.shape[0]) + (rho / 2) ** 2 * a @ a.T
    gain = cov @ a.T @ np.linalg.inv(a @ cov @ a.T + noise)
    return mu + gain @ (y.ravel() - a @ mu), cov - gain @ a @ cov


def chains(solver: Solver, method: str, y, op, std: float, options: dict):
    """Every chain's result ``(CHAINS, N*N)`` (user space), one measurement under many seeds."""
    ys = np.repeat(y, CHAINS, axis=0)
    sol = solver.solve(ys, op, method=method, noise_std=std, seed=10, method_options=options)
    assert sol.extra["method"] == method and sol.nfe > 0
    return np.asarray(sol.images).reshape(CHAINS, -1)


@pytest.mark.parametrize("task", ["inpainting", "gaussian_blur"])
@pytest.mark.parametrize("method", ["diffpir", "dds", "dps"])
def test_approximate_solvers_land_near_the_posterior_mean_and_fit_the_data(method, task):
    prior, op, std = smooth_prior(), operator(task), 0.05
    truth, y = measurement(prior, op, std)
    a = matrix(op)
    m, _ = posterior(prior, a, y, std)
    got = chains(toy_solver(prior), method, y, op, std, FAST[method])
    miss = np.linalg.norm(got.mean(0) - m) / np.linalg.norm(prior.user()[0] - m)
    assert miss < MISS[method], f"{method} mean is {miss:.2f} of the prior-to-posterior distance from m"
    fit = np.sqrt(np.mean((got @ a.T - y.reshape(1, -1)) ** 2))
    assert fit < 1.5 * std, f"{method} residual rms {fit:.3f} against noise {std}"


@pytest.mark.parametrize("task", ["inpainting", "gaussian_blur"])
def test_pnp_edm_mean_is_the_relaxed_posterior_mean(task):
    prior, op, std = smooth_prior(), operator(task), 0.05
    _, y = measurement(prior, op, std)
    a = matrix(op)
    m, _ = posterior(prior, a, y, std)
    for rho_min in (0.3, 0.05):
        m_rho, c_rho = posterior(prior, a, y, std, rho=rho_min)
        got = chains(toy_solver(prior), "pnp-edm", y, op, std, {**FAST["pnp-edm"], "rho_min": rho_min})
        standard_error = np.sqrt(np.trace(c_rho) / CHAINS)  # of the mean's norm; averaging iterates only lowers it
        err = np.linalg.norm(got.mean(0) - m_rho)
        assert err < 3 * standard_error, f"rho_min {rho_min}: {err:.3f} from the relaxed mean (SE {standard_error:.3f})"
    # the relaxation's bias vanishes as rho_min does: at 0.05 the sampler's mean is m's
    assert np.linalg.norm(got.mean(0) - m) < 3 * standard_error + np.linalg.norm(m_rho - m)
    assert np.linalg.norm(m_rho - m) < 0.25 * np.linalg.norm(posterior(prior, a, y, std, rho=0.3)[0] - m)


@pytest.mark.parametrize("method", list(METHODS))
def test_known_image_is_recovered_when_the_prior_concentrates_on_it(method):
    prior = smooth_prior(scale=0.2, rank=4, eps=1e-3)
    op, std = operator("inpainting"), 0.01
    truth, y = measurement(prior, op, std, seed=3)
    got = chains(toy_solver(prior), method, y, op, std, FAST[method])
    rms = np.sqrt(np.mean((got.mean(0) - truth.ravel()) ** 2))
    assert rms < 0.02, f"{method}: rms error {rms:.4f} to the known image"


def test_dps_finite_difference_is_the_exact_vjp_for_an_mmse_denoiser():
    prior, op = smooth_prior(), operator("gaussian_blur")
    _, y = measurement(prior, op, 0.05)
    p = Problem(prior.denoise, op, y, np.array([0.05]), SPACE, [0])
    x = np.random.default_rng(1).standard_normal((1, 1, N, N)).astype(np.float32)
    for s in (0.01, 0.3, 5.0):
        d, g, calls = guidance(p, x, s, DPSSettings())
        assert calls == 3
        r = (op.A((d + 1) / 2) - y).ravel()
        cot = (matrix(op).T @ r) / np.linalg.norm(r)  # d||A u - y||_model / d x0 (model units)
        want = prior.jacobian(s).T @ cot
        assert np.linalg.norm(g.ravel() - want) < 2e-3 * np.linalg.norm(want), s


def test_method_names_and_package_kinds_are_checked():
    for bad in ("DPSS", "", 3, "unfolding"):
        with pytest.raises(InputError, match="the methods are: diff-unfolding, dps, diffpir, pnp-edm, dds"):
            route(bad, "denoiser")
    with pytest.raises(InputError, match="choose a zero-shot method, one of dps, diffpir, pnp-edm, dds"):
        route(None, "denoiser")
    with pytest.raises(InputError, match="not an unconditional denoiser"):
        route("dps", "unfolding")
    assert route(None, "unfolding") is None and route("Diff-Unfolding", "unfolding") is None
    with pytest.raises(InputError, match="method_options are the settings of a zero-shot method"):
        route(None, "unfolding", {"zeta": 1.0})
    assert route("DPS", "denoiser") == "dps" and names()[0] == "diff-unfolding"
    with pytest.raises(InputError, match="unknown settings"):
        settings_for("dps", options={"zeta_prime": 1.0})
    with pytest.raises(InputError, match="zeta must be in"):
        settings_for("diffpir", options={"zeta": 1.5})


def test_solve_refuses_unfolding_options_and_never_returns_nan():
    prior = smooth_prior()
    op = operator("inpainting")
    _, y = measurement(prior, op, 0.05)
    solver = toy_solver(prior)
    with pytest.raises(InputError, match="choose a zero-shot method"):
        solver.solve(y, op)
    with pytest.raises(InputError, match="churn is for the unfolding sampler"):
        solver.solve(y, op, method="diffpir", churn=10)
    solver.backend.regularize = lambda x, s, k: np.full_like(x, np.nan)
    with pytest.raises(InputError, match="diffpir diverged"):
        solver.solve(y, op, method="diffpir", steps=3)


def test_calls_and_seeds():
    prior = smooth_prior()
    op = operator("gaussian_blur")
    _, y = measurement(prior, op, 0.05)
    solver = toy_solver(prior)
    assert settings_for("dps").calls() == 3000 and settings_for("diffpir").calls() == 100
    assert settings_for("dds").calls() == 50
    for method in METHODS:
        options = FAST[method]
        sol = solver.solve(np.repeat(y, 2, 0), op, method=method, seed=[5, 6], method_options=options, noise_std=0.05)
        assert (
            sol.nfe == settings_for(method, options=options).calls() == sol.timing.network_calls == sol.calls_per_sample
        )
        one = solver.solve(y, op, method=method, seed=6, method_options=options, noise_std=0.05)
        np.testing.assert_allclose(np.asarray(one.images)[0], np.asarray(sol.images)[1], atol=1e-6)
        two = solver.solve(y, op, method=method, seed=6, samples=2, method_options=options, noise_std=0.05)
        assert two.samples == 2 and two.std is not None and np.all(two.std >= 0)


def test_cli_method_names_are_the_runtime_names():
    from diffunfold.cli_values import METHOD_HELP, METHOD_NAMES

    assert list(METHOD_NAMES) == names()
    for method in METHODS:  # the help's call counts are the settings' own
        assert f"{method} {settings_for(method).calls()} (" in METHOD_HELP


def test_an_unfolding_package_refuses_a_zero_shot_method():
    prior = smooth_prior()
    op = operator("inpainting")
    _, y = measurement(prior, op, 0.05)
    with pytest.raises(InputError, match="holds an unfolded model"):
        toy_solver(prior, kind="unfolding").solve(y, op, method="pnp-edm")


# -- the runtime against the torch reference, and the CLI (torch builds the test package) -----------

PARITY_SIZE = 16
# (method, task, steps): short runs of each method's own loop; pnp-edm's steps are its iterations.
PARITY = [
    ("dps", "gaussian_blur", 8),
    ("dps", "inpainting", 8),
    ("diffpir", "gaussian_blur", 10),
    ("diffpir", "sr", 10),
    ("pnp-edm", "inpainting", 4),
    ("dds", "gaussian_blur", 10),
    ("dds", "mri", 6),
]


@pytest.fixture(scope="module")
def denoisers(tmp_path_factory):
    """Tiny random denoisers (an image one and an MRI one), exported: ``{data: (model, package)}``."""
    pytest.importorskip("torch", reason="building the test package needs torch")
    pytest.importorskip("onnx", reason="building the test package needs onnx")
    from helpers import tiny_denoiser

    from diffunfold.export import export_model

    root = tmp_path_factory.mktemp("denoisers")
    out = {}
    for data, channels in (("image", 3), ("mri", 1)):
        model = tiny_denoiser(data=data, channels=channels, seed=1)
        out[data] = (model, export_model(model, root / data, tasks=[], log=lambda s: None))
    return out


def parity_problem(task: str):
    from diffunfold.physics.mri import birdcage_maps

    shape = (PARITY_SIZE, PARITY_SIZE)
    rng = np.random.default_rng(4)
    if task == "mri":
        op = make_operator("mri", shape, coil_maps=birdcage_maps(4, shape), kind="gaussian2d", acceleration=4)
        x = (rng.uniform(0.2, 1.0, (2, 1, *shape)) * np.exp(1j * rng.uniform(0, 1, (2, 1, *shape)))).astype(
            np.complex64
        )
        return op, op.measure(x, 0.02, seed=[1, 2]).astype(np.complex64), 0.02
    params = {"gaussian_blur": {"sigma": 1.0}, "inpainting": {"missing": 0.5}, "sr": {"factor": 2}}[task]
    op = make_operator(task, shape, **params)
    x = rng.uniform(0.2, 0.8, (2, 3, *shape)).astype(np.float32)
    return op, op.measure(x, 0.05, seed=[1, 2]).astype(np.float32), 0.05


@pytest.mark.torch
@pytest.mark.parametrize("method,task,steps", PARITY)
def test_runtime_matches_the_torch_reference(denoisers, method, task, steps):
    """Same seeds, settings and noise: the runtime (ONNX Runtime, numpy) and the torch reference agree
    to float32 rounding carried through the loop (measured: at most 1.4e-5; tolerance 1e-4 of the
    [0, 1] range). DPS is compared with the reference's own finite-difference JVP (the runtime's);
    its autograd VJP differs by the network's Jacobian asymmetry, which bench/results/zero-shot
    measures on the trained denoiser."""
    import torch

    from diffunfold.training.zero_shot_reference import restore

    model, package = denoisers["mri" if task == "mri" else "image"]
    op, y, std = parity_problem(task)
    solver = Solver.load(package, backend="onnxruntime", threads=1)
    got = solver.solve(y, op, method=method, steps=steps, seed=3, noise_std=std)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order: DPS's finite differences magnify rounding by 1/step
    try:
        want = restore(model, torch.from_numpy(y), op, method, seed=3, steps=steps, noise_std=std, vjp="central")
    finally:
        torch.set_num_threads(threads)
    assert got.nfe == want.nfe == settings_for(method, steps).calls()
    diff = np.abs(np.asarray(got.images) - want.images.numpy()).max()
    assert diff < 1e-4, f"{method} on {task}: runtime and torch reference differ by {diff:.2e}"
    if method == "dps":  # the exact VJP runs and counts one call per step
        exact = restore(model, torch.from_numpy(y), op, method, seed=3, steps=steps, noise_std=std)
        assert exact.nfe == steps and torch.all(torch.isfinite(exact.images))


@pytest.mark.torch
def test_restore_cli_runs_a_zero_shot_method(denoisers, tmp_path, capsys):
    from PIL import Image

    from diffunfold.cli import main

    _, package = denoisers["image"]
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out"
    common = [
        str(package.path),
        str(img),
        "--task",
        "inpainting",
        "--out",
        str(out),
        "--quiet",
        "--backend",
        "onnxruntime",
    ]
    assert main(["restore", *common]) != 0  # refused before any image, saying why
    assert "error: this package holds a plain EDM denoiser" in capsys.readouterr().err
    assert main(["restore", *common, "--method", "DiffPIR", "--steps", "3", "--json", str(tmp_path / "r.json")]) == 0
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    (row,) = report["rows"]
    assert report["method"] == row["method"] == "diffpir" and row["nfe"] == 3 and report["steps"] == 3
    assert (out / "photo_restored.png").exists() and "EDM denoiser" in capsys.readouterr().out
    assert main(["restore", *common, "--method", "dpss"]) != 0
    err = capsys.readouterr().err
    assert "invalid choice: 'dpss'" in err and all(f"'{n}'" in err for n in names())


@pytest.mark.torch
@pytest.mark.slow
def test_mri_cli_runs_dds_from_noise(denoisers, tmp_path, capsys):
    """`diffunfold mri --method dds`: the scanner path's SENSE start belongs to the unfolding
    sampler; a zero-shot method starts from noise instead (and is not refused for it)."""
    from diffunfold.cli import main
    from diffunfold.data.phantom import write_phantom_dataset

    _, package = denoisers["mri"]
    (path,) = write_phantom_dataset(
        tmp_path / "ph", num_files=1, slices_per_file=1, shape=(32, 32), ncoils=4, progress=False
    )
    args = ["mri", str(package.path), str(path), "--out", str(tmp_path / "out"), "--quiet", "--backend", "onnxruntime"]
    assert main([*args, "--method", "dds", "--steps", "3"]) == 0
    assert "NFE 3" in capsys.readouterr().out

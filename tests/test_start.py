"""Starting a solve from an estimate (``Solver.solve(init=, init_sigma=)``, ``edm.start_at``) and
the scanner's SENSE start (``diffunfold.scanner.start``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from diffunfold import edm
from diffunfold.data.phantom import random_phantom
from diffunfold.ensemble import flip_axes
from diffunfold.errors import InputError
from diffunfold.physics.mri import MultiCoilMRI, birdcage_maps, mri_mask
from diffunfold.runtime.solver import Solver, Timing
from diffunfold.scanner import StartSettings, prepare_kspace, sense_start
from diffunfold.scanner.reconstruct import reconstruct_kspace
from diffunfold.scanner.start import LINE_SIGMA, LINE_STEPS, POINT_SIGMA

MRI_SMALL = Path(__file__).resolve().parents[1] / "samples" / "models" / "mri-small"
SIZE, COILS = 32, 8


def _scan(kind: str, seed: int = 0, acc: float = 4.0):
    x = random_phantom((SIZE, SIZE), np.random.default_rng(seed)).astype(np.complex64)
    x /= np.percentile(np.abs(x), 99)
    maps = birdcage_maps(COILS, (SIZE, SIZE))
    mask = mri_mask(kind, (SIZE, SIZE), acc, seed=1)
    y = np.asarray(MultiCoilMRI(maps, mask).A(x[None, None]))[0].astype(np.complex64)
    return x, maps, mask, y


def test_start_at_keeps_the_tail_of_the_schedule():
    sched = edm.schedule(18)
    tail = edm.start_at(sched, 0.5)
    assert tail[-1] == 0.0 and tail[0] <= 0.5
    assert np.array_equal(tail, sched[len(sched) - len(tail) :])  # the schedule's own levels
    assert sched[len(sched) - len(tail) - 1] > 0.5  # and every one of them below 0.5
    assert np.array_equal(edm.start_at(sched, 80.0), sched)  # at the top: the whole schedule
    assert np.array_equal(edm.start_at(sched, 1e-6), sched[-2:])  # below the bottom: one step is left
    for bad in (0.0, -1.0, math.nan, math.inf, True, "0.5"):
        with pytest.raises(InputError, match="noise level"):
            edm.start_at(sched, bad)


@pytest.fixture(scope="module")
def mri_solver():
    return Solver.load(MRI_SMALL, backend="onnxruntime", threads=1)


def test_a_solve_from_an_estimate_is_the_loop_from_estimate_plus_noise(mri_solver):
    """The documented start: ``to_model(init) + init_sigma`` noise at the tail's first level, then
    the same sampling loop; fewer calls than from pure noise."""
    x, maps, mask, y = _scan("gaussian2d")
    op = MultiCoilMRI(maps, mask)
    init = np.asarray(op.pinv(y[None]), np.complex64)
    sol = mri_solver.solve(y[None], op, noise_std=1e-3, seed=3, init=init, init_sigma=0.2)
    tail = edm.start_at(edm.schedule(18), 0.2)
    assert sol.nfe == len(tail) - 1 < 18
    weights = mri_solver.weights_for(np.unique(tail))  # as the solve asks for them
    plan = mri_solver.plan((SIZE, SIZE))
    var = np.asarray([1e-6], np.float32)
    x0 = mri_solver.space.to_model(init) + edm.initial_noise([3], (2, SIZE, SIZE), float(tail[0]))
    by_hand, _ = edm.sample_loop(  # the package's sampler (ancestral) with the solve's noise streams
        lambda v, s: mri_solver.denoise(
            v, s, y[None], op, weights, Timing(), var, plan, [(0, 1, flip_axes("flips", 0))]
        ),
        x0,
        tail,
        mri_solver.package.schedule["sampler"],
        noise=lambda i: edm.churn_noise([3], (2, SIZE, SIZE), i, 0),
    )
    assert np.allclose(sol.images, mri_solver.space.to_user(by_hand), atol=1e-5)
    two = mri_solver.solve(y[None], op, noise_std=1e-3, seed=3, init=init, init_sigma=0.2, samples=2)
    assert not np.allclose(two.draws[0], two.draws[1])  # each sample its own start noise
    assert np.allclose(two.draws[0], sol.images, atol=1e-5)


def test_an_estimate_that_carries_noise_gets_only_the_rest(mri_solver):
    """``init_noise``: the solve adds sqrt(level^2 - init_noise^2) of noise; none where the
    estimate already carries the level, so the seed no longer matters."""
    x, maps, mask, y = _scan("gaussian2d")
    op = MultiCoilMRI(maps, mask)
    init = np.asarray(op.pinv(y[None]), np.complex64)
    one = {"steps": 1, "sigma_max": 0.1, "init": init, "init_sigma": 0.1}
    full = [mri_solver.solve(y[None], op, noise_std=1e-3, seed=s, **one).images for s in (0, 1)]
    carried = [mri_solver.solve(y[None], op, noise_std=1e-3, seed=s, init_noise=0.1, **one) for s in (0, 1)]
    assert carried[0].nfe == 1 and not np.allclose(full[0], full[1])
    assert np.array_equal(carried[0].images, carried[1].images)  # no noise was added
    var, plan = np.asarray([1e-6], np.float32), mri_solver.plan((SIZE, SIZE))
    weights = mri_solver.weights_for([0.1])
    for noise, seed in ((0.06, 4), (0.0, 4)):  # 0.08 added to one that carries 0.06; all of 0.1 to none
        sol = mri_solver.solve(y[None], op, noise_std=1e-3, seed=seed, init_noise=noise, **one)
        added = np.sqrt(0.1**2 - noise**2)
        x0 = mri_solver.space.to_model(init) + edm.initial_noise([seed], (2, SIZE, SIZE), added)
        by_hand = mri_solver.denoise(x0, 0.1, y[None], op, weights, Timing(), var, plan)
        assert np.allclose(sol.images, mri_solver.space.to_user(by_hand), atol=1e-5)


def test_a_bad_estimate_is_refused(mri_solver):
    x, maps, mask, y = _scan("gaussian2d")
    op = MultiCoilMRI(maps, mask)
    good = np.asarray(op.pinv(y[None]), np.complex64)
    cases = [
        ({"init": good}, "go together"),
        ({"init_sigma": 0.1}, "go together"),
        ({"init": good[:, :, :16], "init_sigma": 0.1}, "shaped"),
        ({"init": np.abs(good), "init_sigma": 0.1}, "complex"),
        ({"init": np.where(np.arange(SIZE) == 3, np.nan, good).astype(np.complex64), "init_sigma": 0.1}, "NaN"),
        ({"init": good, "init_sigma": -1.0}, "noise level"),
        ({"init": good, "init_sigma": 0.1, "init_noise": -0.1}, "init_noise"),
        ({"init": good, "init_sigma": 0.1, "init_noise": math.nan}, "init_noise"),
        ({"init_noise": 0.1}, "given with init"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            mri_solver.solve(y[None], op, noise_std=1e-3, **kwargs)


def test_the_sense_start_by_pattern_and_its_settings():
    # given 18 steps, a 1-D tail is the schedule's 7 from 0.585 (LINE_SIGMA is not just below it)
    assert len(edm.start_at(edm.schedule(18), LINE_SIGMA)) - 1 == 7
    for kind, acc, sigma in (("gaussian1d", 2.0, LINE_SIGMA), ("gaussian2d", 4.0, POINT_SIGMA)):
        x, maps, mask, y = _scan(kind, acc=acc)
        p = prepare_kspace(y, mask, coil_maps=maps)
        begin = sense_start(p, StartSettings(readout="sample"))
        assert begin["init_sigma"] == sigma
        # a 1-D tail re-spaced to LINE_STEPS from the start level; a 2-D one the schedule's own
        assert (begin.get("steps"), begin.get("sigma_max")) == (
            (LINE_STEPS, sigma) if kind == "gaussian1d" else (None, None)
        )
        assert "steps" not in sense_start(p, StartSettings(readout="sample"), steps=12)
        assert begin["init"].shape == (1, 1, SIZE, SIZE) and begin["init"].dtype == np.complex64
        # the estimate is nearer the truth than the zero-filled image
        truth = x / p.scale
        err = np.linalg.norm(begin["init"][0, 0] - truth)
        assert err < 0.8 * np.linalg.norm(np.asarray(p.operator.pinv(p.y))[0, 0] - truth)
        assert sense_start(p, StartSettings(method="sense", sigma=0.3))["init_sigma"] == 0.3
        assert sense_start(p, StartSettings(method="noise")) == {}
        assert p.info["start"] == "noise"
    for bad in ({"method": "cg"}, {"readout": "median"}, {"sigma": 0.0}, {"sigma": math.nan}):
        with pytest.raises(InputError):
            StartSettings(**bad).checked()
    for bad in (
        {"sense_weight": 0.0},
        {"sense_iterations": 0},
        {"sense_iterations": 2.5},
    ):
        with pytest.raises(InputError):
            StartSettings(**bad).checked()


def test_the_readout_by_pattern_and_request():
    """The mean (one call) for a 2-D pattern and one sample; a sample for 1-D patterns, for
    several samples and for a given number of steps; a mean asked with those is refused."""
    from diffunfold.scanner.start import MEAN_SIGMA, readout

    def prepared(kind: str, acc: float):
        x, maps, mask, y = _scan(kind, acc=acc)
        return prepare_kspace(y, mask, coil_maps=maps)

    two_d, one_d = prepared("gaussian2d", 2.0), prepared("gaussian1d", 2.0)  # 2-D 2x: the near level
    auto = StartSettings()
    assert readout(two_d, auto) == "mean" and readout(one_d, auto) == "sample"
    assert readout(two_d, auto, samples=4) == readout(two_d, auto, steps=12) == "sample"
    assert readout(one_d, StartSettings(readout="mean")) == "mean"
    for kwargs in ({"samples": 2}, {"steps": 5}):
        with pytest.raises(InputError, match="mean readout is one denoiser call"):
            readout(two_d, StartSettings(readout="mean"), **kwargs)
    begin = sense_start(two_d)
    assert begin["steps"] == 1 and begin["init_sigma"] == begin["sigma_max"] == max(MEAN_SIGMA, begin["init_noise"])
    assert two_d.info["start"].endswith("(the posterior mean)")


def test_reconstruct_kspace_starts_from_sense_by_default_and_says_so(mri_solver):
    from diffunfold.scanner.start import MEAN_SIGMA

    x, maps, mask, y = _scan("gaussian2d", seed=1)
    res = reconstruct_kspace(mri_solver, y, mask, coil_maps=maps, seed=0)
    assert res.info["start"].startswith(f"SENSE estimate, one denoiser call at {MEAN_SIGMA:.3g}")
    assert res.info["held_out_error"] < 0.1 and res.solution.nfe == 1
    sampled = reconstruct_kspace(mri_solver, y, mask, coil_maps=maps, seed=0, samples=2)
    assert sampled.info["start"] == f"SENSE estimate + noise {POINT_SIGMA:.3g} (a posterior sample)"
    assert sampled.solution.nfe == len(edm.start_at(edm.schedule(18), POINT_SIGMA)) - 1 and sampled.std is not None
    full = reconstruct_kspace(mri_solver, y, mask, coil_maps=maps, seed=0, start=StartSettings(method="noise"))
    assert full.info["start"] == "noise" and full.solution.nfe == 18
    for r in (res, sampled, full):
        assert np.all(np.isfinite(r.image))
        assert np.linalg.norm(np.abs(r.image) - np.abs(x)) < 0.5 * np.linalg.norm(np.abs(x))


def test_the_start_drowns_the_noise_the_sense_estimate_carries():
    from dataclasses import replace

    from diffunfold.scanner.start import NOISE_MARGIN, estimate_noise

    x, maps, mask, y = _scan("gaussian2d", acc=2.0)  # a pattern that samples most of the energy
    clean = prepare_kspace(y, mask, coil_maps=maps, noise_std=0.0)
    sample = StartSettings(readout="sample")
    assert estimate_noise(clean, StartSettings()) == 0.0 and sense_start(clean, sample)["init_sigma"] == POINT_SIGMA
    noisy = replace(clean, noise_std=0.05)
    level = estimate_noise(noisy, StartSettings())
    assert level > 0 and np.isclose(estimate_noise(replace(clean, noise_std=0.1), StartSettings()), 2 * level)
    assert sense_start(noisy, sample)["init_sigma"] == max(POINT_SIGMA, NOISE_MARGIN * level) > POINT_SIGMA
    mean = sense_start(noisy)  # one call at the level the estimate carries, no noise added
    assert mean["init_sigma"] == mean["init_noise"] == level


def test_where_the_data_leave_much_open_the_start_is_high_above_them(mri_solver):
    """Held-out lines predicted from the rest: a 1-D 4x pattern on a 32 px phantom leaves more
    open than a 2-D one or 2x; there the sample starts from the SENSE estimate plus noise
    OPEN_START in OPEN_STEPS steps (not 18 from pure noise), and the reason is given."""
    from diffunfold.scanner.start import OPEN_LIMIT, OPEN_START, OPEN_STEPS, held_out_error

    errors = {}
    for kind, acc in (("gaussian1d", 4.0), ("gaussian1d", 2.0), ("gaussian2d", 4.0)):
        x, maps, mask, y = _scan(kind, acc=acc)
        errors[kind, acc] = held_out_error(prepare_kspace(y, mask, coil_maps=maps), StartSettings())
    assert errors["gaussian1d", 4.0] > OPEN_LIMIT > max(errors["gaussian1d", 2.0], errors["gaussian2d", 4.0])
    x, maps, mask, y = _scan("gaussian1d", acc=4.0)
    p = prepare_kspace(y, mask, coil_maps=maps)
    begin = sense_start(p)
    assert begin["init_sigma"] == begin["sigma_max"] == OPEN_START and begin["steps"] == OPEN_STEPS
    assert "the data leave much open" in p.info["start"] and "init" in begin
    res = reconstruct_kspace(mri_solver, y, mask, coil_maps=maps, seed=0)
    assert res.solution.nfe == OPEN_STEPS and "the data leave much open" in res.info["start"]
    assert np.isfinite(res.image).all()
    # asked for steps: the tail of that schedule below the start
    assert reconstruct_kspace(mri_solver, y, mask, coil_maps=maps, seed=0, steps=18).solution.nfe < 18
    # the measurement noise is not counted as what the data leave open
    rng = np.random.default_rng(7)
    noise = (rng.standard_normal(y.shape) + 1j * rng.standard_normal(y.shape)) * (0.05 / np.sqrt(2)) * mask
    noisy = prepare_kspace((y + noise).astype(np.complex64), mask, coil_maps=maps, noise_std=0.05)
    assert np.isclose(held_out_error(noisy, StartSettings()), errors["gaussian1d", 4.0], rtol=0.1)


def test_a_pattern_that_samples_little_of_the_images_energy_gets_the_one_call_high(mri_solver):
    """``sampled_energy``: 1 for a full pattern, falling with the acceleration, blind to the
    measurement noise; below SAMPLED_ENERGY_LIMIT the 2-D one call is made at OPEN_SIGMA, unless
    the maps explain the data poorly (held-out error above OPEN_TRUST)."""
    from diffunfold.scanner.start import (
        MEAN_SIGMA,
        OPEN_SIGMA,
        OPEN_TRUST,
        SAMPLED_ENERGY_LIMIT,
        _mean_base,
        sampled_energy,
    )

    size = 64
    x = random_phantom((size, size), np.random.default_rng(0)).astype(np.complex64)
    x /= np.percentile(np.abs(x), 99)
    maps = birdcage_maps(COILS, (size, size))
    rng = np.random.default_rng(3)
    shares, prepared, noisy = {}, {}, {}
    for acc in (1.0, 2.0, 4.0, 8.0):
        mask = np.ones((size, size), np.float32) if acc == 1 else mri_mask("gaussian2d", (size, size), acc, seed=1)
        y = np.asarray(MultiCoilMRI(maps, mask).A(x[None, None]))[0].astype(np.complex64)
        prepared[acc] = prepare_kspace(y, mask, coil_maps=maps, noise_std=0.0)
        shares[acc] = sampled_energy(prepared[acc])
        noise = (rng.standard_normal(y.shape) + 1j * rng.standard_normal(y.shape)) * (0.02 / np.sqrt(2)) * mask
        noisy[acc] = prepare_kspace((y + noise).astype(np.complex64), mask, coil_maps=maps)
        assert abs(sampled_energy(noisy[acc]) - shares[acc]) < 0.01  # the noise floor is taken out
    assert shares[1.0] == pytest.approx(1.0)
    # the same pattern on a larger matrix covers the object's spectrum more densely
    big = random_phantom((2 * size, 2 * size), np.random.default_rng(0)).astype(np.complex64)
    big_maps, big_mask = birdcage_maps(COILS, big.shape), mri_mask("gaussian2d", big.shape, 8.0, seed=1)
    big_y = np.asarray(MultiCoilMRI(big_maps, big_mask).A(big[None, None]))[0].astype(np.complex64)
    assert sampled_energy(prepare_kspace(big_y, big_mask, coil_maps=big_maps, noise_std=0.0)) > shares[8.0] + 0.05
    assert shares[1.0] > shares[2.0] > shares[4.0] > SAMPLED_ENERGY_LIMIT > shares[8.0] > 0
    high, near = sense_start(prepared[8.0]), sense_start(prepared[4.0])
    assert high["init_sigma"] == high["sigma_max"] == OPEN_SIGMA and near["init_sigma"] == MEAN_SIGMA
    # without noise two calls, the second at MEAN_SIGMA; with it, one at OPEN_SIGMA or the noise
    assert (high["steps"], high["sigma_min"], near["steps"]) == (2, MEAN_SIGMA, 1)
    assert prepared[8.0].info["start"].startswith("SENSE estimate, two denoiser calls at 0.4 and")
    one = sense_start(noisy[8.0])
    assert one["steps"] == 1 and "sigma_min" not in one and one["init_sigma"] == max(OPEN_SIGMA, one["init_noise"])
    assert one["init_noise"] > MEAN_SIGMA
    res = reconstruct_kspace(mri_solver, y, mask, coil_maps=maps, noise_std=0.0, seed=0)  # the 8x scan
    assert res.solution.nfe == 2 and res.info["start"].startswith("SENSE estimate, two denoiser calls")
    assert np.all(np.isfinite(res.image)) and np.linalg.norm(np.abs(res.image) - np.abs(x)) < 0.3 * np.linalg.norm(x)
    assert prepared[8.0].info["sampled_energy"] == shares[8.0]
    assert sense_start(prepared[8.0], StartSettings(sigma=0.05))["init_sigma"] == 0.05  # a given level wins
    assert prepared[8.0].info["held_out_error"] <= OPEN_TRUST
    prepared[8.0].info["held_out_error"] = 1.5 * OPEN_TRUST  # maps that explain the data poorly
    assert _mean_base(prepared[8.0]) == MEAN_SIGMA

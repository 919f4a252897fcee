"""The few-call schedule (``diffunfold.fast_schedule``): it matches the torch reference, starts from
the classical estimate, is what image packages run by default, and refuses what it cannot run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch reference needs torch (the train extra)")
pytest.importorskip("onnx", reason="building test packages needs onnx (the export extra)")

from helpers import IMAGE_TASKS, SIZE, clean_images, operator_for, proximal_model, rel_err  # noqa: E402

from diffunfold import edm  # noqa: E402
from diffunfold.baselines import classical_baseline  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402
from diffunfold.export import export_model  # noqa: E402
from diffunfold.fast_schedule import IMAGE_DEFAULT, FastSchedule  # noqa: E402
from diffunfold.package import ModelPackage, write_manifest  # noqa: E402
from diffunfold.physics import make_operator  # noqa: E402
from diffunfold.runtime import Solver  # noqa: E402
from diffunfold.training.sampler import restore  # noqa: E402

REL_TOL = 1e-3


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    models = {"image": proximal_model(), "mri": proximal_model(data="mri", channels=1, seed=2)}
    return {k: (m, export_model(m, root / k, log=lambda s: None)) for k, m in models.items()}


def test_image_packages_are_exported_with_the_fast_schedule_and_mri_ones_without(packages):
    assert packages["image"][1].fast_schedule == IMAGE_DEFAULT.for_stages(packages["image"][1].stages)
    assert packages["mri"][1].fast_schedule is None


@pytest.mark.parametrize("task,params", IMAGE_TASKS[:4], ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_fast_schedule_matches_the_torch_reference(packages, task, params, noise):
    model, pkg = packages["image"]
    op = operator_for(task, params)
    y = op.measure(clean_images(), noise, seed=[5, 6])
    got = Solver.load(pkg, backend="onnxruntime").solve(y, op, seed=3, samples=2, noise_std=noise)
    want = restore(model, torch.from_numpy(y), op, seed=3, samples=2, noise_std=noise, fast=pkg.fast_schedule)
    assert rel_err(got.images, want.images.numpy()) < REL_TOL
    assert got.nfe == IMAGE_DEFAULT.steps and got.timing.network_calls == sum(pkg.fast_schedule.stages)
    assert got.calls_per_sample == sum(pkg.fast_schedule.stages)  # two samples side by side: one pass
    assert got.extra["schedule"] == "fast (classical start)"


def test_fast_schedule_starts_from_the_classical_estimate(packages):
    """One step from a vanishing first level is one denoiser call on the classical estimate."""
    _, pkg = packages["image"]
    op = operator_for("gaussian_blur", {"sigma": 1.5})
    y = op.measure(clean_images(), 0.02, seed=[1, 2])
    solver = Solver.load(pkg, backend="onnxruntime")
    tiny = solver.solve(y, op, steps=1, sigma_max=1e-6, sigma_min=1e-7, noise_std=0.02, contrast="none")
    start = classical_baseline(op, y, 0.02)
    by_hand = solver.solve(
        y,
        op,
        schedule="full",
        steps=1,
        sigma_max=1e-6,
        sigma_min=1e-7,
        init=start,
        init_sigma=1e-6,
        noise_std=0.02,
        contrast="none",
    )
    np.testing.assert_allclose(tiny.images, by_hand.images, rtol=0, atol=1e-6)
    full = solver.solve(
        y, op, schedule="full", steps=1, sigma_max=1e-6, sigma_min=1e-7, noise_std=0.02, contrast="none"
    )
    assert np.abs(full.images - tiny.images).max() > 0.05  # from noise alone it is another image


def test_full_schedule_stays_a_setting(packages):
    _, pkg = packages["image"]
    op = operator_for("sr", {"factor": 2})
    y = op.measure(clean_images(), 0.01, seed=[1, 2])
    sol = Solver.load(pkg, backend="onnxruntime").solve(y, op, schedule="full", steps=3)
    assert sol.nfe == 3 and sol.extra["schedule"] == "full"


def test_bad_schedules_are_refused(packages, tmp_path):
    _, pkg = packages["image"]
    op = operator_for("gaussian_blur", {"sigma": 1.5})
    y = op.measure(clean_images(), 0.01, seed=[1, 2])
    solver = Solver.load(pkg, backend="onnxruntime")
    with pytest.raises(InputError, match=r"schedule must be one of \('fast', 'full'\)"):
        solver.solve(y, op, schedule="quick")
    with pytest.raises(InputError, match="has no fast schedule"):
        Solver.load(packages["mri"][1], backend="onnxruntime").solve(*_mri_problem(), schedule="fast")
    for bad in (
        {"steps": 0, "sigma_max": 1.0, "sigma_min": 0.01},
        {"steps": 4, "sigma_max": 0.01, "sigma_min": 1.0},
        {"steps": 4, "sigma_max": 1.0},
        {"steps": 4, "sigma_max": 1.0, "sigma_min": 0.1, "start": "noise"},
    ):
        copy = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        shutil.copytree(pkg.path, copy)
        m = json.loads((copy / "manifest.json").read_text())
        m["schedule"]["fast"] = bad
        write_manifest(copy, m, list(m["files"]))
        with pytest.raises(InputError, match="schedule.fast"):
            ModelPackage.open(copy)


def _mri_problem():
    from helpers import MRI_TASKS

    op = operator_for(*MRI_TASKS[0])
    return op.measure(clean_images(mri=True), 0.0, seed=[1, 2]), op


def test_stages_runs_fewer_unfolding_stages(packages):
    _, pkg = packages["image"]
    op = operator_for("gaussian_blur", {"sigma": 1.5})
    y = op.measure(clean_images(), 0.01, seed=[1, 2])
    solver = Solver.load(pkg, backend="onnxruntime")
    assert solver.solve(y, op, steps=3, stages=1).timing.network_calls == 3
    for bad in (0, pkg.stages + 1, 1.5, True):
        with pytest.raises(InputError, match="stages must be an integer from 1"):
            solver.solve(y, op, steps=3, stages=bad)


def test_fast_schedule_levels_follow_edm_spacing():
    fast = FastSchedule(steps=6, sigma_max=1.5, sigma_min=0.005)
    levels = edm.schedule(fast.steps, fast.sigma_min, fast.sigma_max, fast.rho)
    assert levels[0] == pytest.approx(1.5) and levels[-2] == pytest.approx(0.005) and len(levels) == 7


def _with_fast(pkg, folder, fast: dict) -> ModelPackage:
    """A copy of ``pkg`` whose manifest carries ``fast`` as its schedule.fast."""
    shutil.copytree(pkg.path, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["schedule"]["fast"] = fast
    write_manifest(folder, m, list(m["files"]))
    return ModelPackage.open(folder)


def test_a_fast_schedule_may_run_fewer_stages_at_a_level(packages, tmp_path):
    """``schedule.fast.stages``: the unfolding stages at each level, in the runtime as in the
    torch reference; a solve whose levels are overridden runs all K."""
    model, pkg = packages["image"]
    k = pkg.stages
    fast = {"steps": 3, "sigma_max": 1.5, "sigma_min": 0.002, "rho": 7.0, "start": "classical", "stages": [1, k, k]}
    few = _with_fast(pkg, tmp_path / "few", fast)
    op = operator_for("gaussian_blur", {"sigma": 1.5})
    y = op.measure(clean_images(), 0.01, seed=[1, 2])
    solver = Solver.load(few, backend="onnxruntime")
    got = solver.solve(y, op, seed=3, noise_std=0.01)
    assert got.nfe == 3 and got.timing.network_calls == 1 + 2 * k
    want = restore(model, torch.from_numpy(y), op, seed=3, noise_std=0.01, fast=few.fast_schedule)
    assert rel_err(got.images, want.images.numpy()) < REL_TOL
    every = solver.solve(y, op, seed=3, noise_std=0.01, stages=k)  # asked for: K at every level
    assert every.timing.network_calls == 3 * k and rel_err(every.images, got.images) > 1e-3
    assert solver.solve(y, op, seed=3, noise_std=0.01, steps=4).timing.network_calls == 4 * k


@pytest.mark.parametrize("stages", [[1, 2], [0, 2, 2], [True, 2, 2], [1.5, 2, 2], "122", [1, 2, 99]])
def test_bad_stage_counts_are_refused(packages, tmp_path, stages):
    _, pkg = packages["image"]
    fast = {"steps": 3, "sigma_max": 1.5, "sigma_min": 0.002, "rho": 7.0, "start": "classical", "stages": stages}
    with pytest.raises(InputError, match="schedule.fast.stages"):
        _with_fast(pkg, tmp_path / "bad", fast)


def test_the_exported_schedule_never_asks_for_more_stages_than_the_package_has():
    assert IMAGE_DEFAULT.for_stages(2).stages is None or max(IMAGE_DEFAULT.for_stages(2).stages) <= 2
    assert FastSchedule(3, 1.5, 0.002, stages=(1, 4, 4)).for_stages(2).stages == (1, 2, 2)


def test_noisy_measurements_may_run_fewer_stages(packages, tmp_path):
    """``schedule.fast.noisy``: its stages where every image's sigma_y is at least its sigma_y
    (given or estimated) and no side is longer than its up_to, the plain stages otherwise; in
    the runtime as in the torch reference."""
    model, pkg = packages["image"]
    k = pkg.stages
    noisy = {"sigma_y": 0.005, "up_to": SIZE, "stages": [1, 1, k]}
    fast = {"steps": 3, "sigma_max": 1.5, "sigma_min": 0.002, "start": "classical", "stages": [1, k, k], "noisy": noisy}
    few = _with_fast(pkg, tmp_path / "noisy", fast)
    assert few.fast_schedule.manifest_entry()["noisy"] == noisy
    op = operator_for("gaussian_blur", {"sigma": 1.5})
    y = op.measure(clean_images(), 0.01, seed=[1, 2])
    solver = Solver.load(few, backend="onnxruntime")
    for std, calls in ((0.01, 2 + k), ([0.01, 0.002], 1 + 2 * k), (0.0, 1 + 2 * k)):
        got = solver.solve(y, op, seed=3, noise_std=std)
        assert got.timing.network_calls == calls, std
        want = restore(model, torch.from_numpy(y), op, seed=3, noise_std=std, fast=few.fast_schedule)
        assert rel_err(got.images, want.images.numpy()) < REL_TOL
    assert solver.solve(y, op, seed=3).timing.network_calls == 2 + k  # sigma_y estimated from y: ~0.01
    big_op = make_operator("gaussian_blur", (SIZE + 8, SIZE), sigma=1.5)  # a side above up_to
    big = big_op.measure(np.pad(clean_images(), ((0, 0), (0, 0), (0, 8), (0, 0)), mode="reflect"), 0.01, seed=[1, 2])
    assert solver.solve(big, big_op, seed=3, noise_std=0.01).timing.network_calls == 1 + 2 * k


@pytest.mark.parametrize(
    "noisy",
    [
        [1, 2],
        {"sigma_y": 0.01},
        {"sigma_y": -1, "stages": [1, 1, 1]},
        {"sigma_y": "x", "stages": [1, 1, 1]},
        {"sigma_y": 0.01, "up_to": -8, "stages": [1, 1, 1]},
        {"sigma_y": 0.01, "up_to": 1.5, "stages": [1, 1, 1]},
        {"sigma_y": 0.01, "stages": [1, 1]},
        {"sigma_y": 0.01, "stages": [1, 0, 1]},
        {"sigma_y": 0.01, "stages": [1, 1, 99]},
        {"sigma_y": 0.01, "stages": [1, 1, 1], "size": 3},
    ],
)
def test_bad_noisy_stages_are_refused(packages, tmp_path, noisy):
    _, pkg = packages["image"]
    fast = {"steps": 3, "sigma_max": 1.5, "sigma_min": 0.002, "start": "classical", "noisy": noisy}
    with pytest.raises(InputError, match="schedule.fast.noisy"):
        _with_fast(pkg, tmp_path / "bad", fast)


def test_for_solve_picks_the_stages_and_for_stages_caps_both():
    fast = FastSchedule(3, 1.5, 0.002, stages=(2, 4, 4), noisy_stages=(2, 4, 2), noisy_from=0.005, noisy_up_to=128)
    assert fast.for_solve(np.array([0.01, 0.05]), (128, 96)).stages == (2, 4, 2)
    assert fast.for_solve(np.array([0.01, 0.001]), (64, 64)).stages == (2, 4, 4)
    assert fast.for_solve(np.array([0.05]), (64, 256)).stages == (2, 4, 4)  # larger than up_to
    assert fast.for_solve(None, (64, 64)).stages == (2, 4, 4)  # sigma_y unknown: the stages for noise-free data
    assert fast.for_stages(3).noisy_stages == (2, 3, 2) and fast.for_stages(3).stages == (2, 3, 3)
    assert FastSchedule.from_manifest(fast.manifest_entry(), "here") == fast

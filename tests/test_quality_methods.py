"""The comparison table of bench/quality.py: other methods (learned baselines, zero-shot
solvers) scored on the same cases as the Diff-Unfolding packages."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import quality  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGE_PKG = REPO / "samples" / "models" / "image-small"


class _Pseudo:
    """A stand-in learned baseline: the operator's pseudo-inverse, trained for Gaussian blur only."""

    label, kind, parameters, nfe = "pseudo-inverse", "image", 1234, 1

    def __init__(self):
        self.seen = []

    def fits(self, task: str, params: dict) -> bool:
        return task == "gaussian_blur"

    def restore(self, y, operator, noise_std, seed):
        self.seen.append((y.shape, float(noise_std), seed))
        return np.clip(np.asarray(operator.pinv(y)), 0, 1)


@pytest.fixture
def fake_module(monkeypatch):
    model = _Pseudo()
    mod = types.ModuleType("learned_baselines.pseudo")
    mod.load = lambda checkpoint: model
    monkeypatch.setitem(sys.modules, "learned_baselines.pseudo", mod)
    return model


def test_a_learned_baseline_joins_the_table_on_its_operators_only(tmp_path, fake_module):
    args = [str(IMAGE_PKG), "--quick", "--quiet", "--samples", "1", "--steps", "2", "--out", str(tmp_path)]
    args += ["--task", "gaussian_blur", "--task", "sr_x4", "--noise", "0.05", "--learned", "pseudo:none"]
    assert quality.main(args) == 0
    md = (tmp_path / "quality-methods-image.md").read_text()
    rows = json.loads((tmp_path / "quality-methods-image.json").read_text())["rows"]
    assert {r["task"] for r in rows} == {"gaussian_blur"}  # never scored on SR
    assert all(np.isfinite(r["psnr"]) for r in rows)
    assert fake_module.seen and all(s[1] == 0.05 for s in fake_module.seen)  # given the true noise level
    assert "| pseudo-inverse | learned baseline, none | 0.00 M | 1 |" in md
    sr_line = next(line for line in md.splitlines() if line.startswith("| SR x4"))
    assert sr_line.split("|")[4].strip() == "-"  # its cell on SR is empty, not a score
    assert "Diff-Unfolding (image-small)" in md


def test_an_sr_checkpoint_is_scored_at_the_factors_it_was_trained_on():
    """A cEDM for SR x8 says so in the table and is not scored on SR x4 (an operator it never saw);
    a checkpoint without a training config keeps the task-name rule."""
    from quality_harness import entrants
    from quality_harness.tasks import QualityTask

    def cedm(task, config):
        return types.SimpleNamespace(
            model=types.SimpleNamespace(task=task, space=types.SimpleNamespace(kind="image")), meta={"config": config}
        )

    x4 = QualityTask("sr_x4", "SR x4 (box)", "image", "sr", {"factor": 4, "kernel": "box"})
    x8 = QualityTask("sr_x8", "SR x8 (box)", "image", "sr", {"factor": 8, "kernel": "box"})
    blur = QualityTask("gaussian_blur", "Gaussian blur", "image", "gaussian_blur", {"sigma": 2.0})
    sr8 = cedm("sr", {"data": {"sr_factors": [8]}})
    applies = entrants._learned_applies(sr8)
    assert (applies(x8), applies(x4), applies(blur)) == (True, False, False)
    assert entrants._trained_for(sr8) == ("image", "trained on sr x8")
    unknown = entrants._learned_applies(cedm("sr", {}))
    assert (unknown(x8), unknown(x4), unknown(blur)) == (True, True, False)
    assert entrants._trained_for(cedm("gaussian_blur", {"data": {"sr_factors": [4]}}))[1] == "trained on gaussian_blur"


def test_bad_comparison_arguments_are_refused(tmp_path, capsys):
    base = [str(IMAGE_PKG), "--quick", "--quiet", "--out", str(tmp_path)]
    assert quality.main(base + ["--learned", "no-colon"]) == 2
    assert "MODULE:CHECKPOINT" in capsys.readouterr().err
    assert quality.main(base + ["--learned", "nosuchmodule:x"]) == 2
    assert "bench/learned_baselines/nosuchmodule.py" in capsys.readouterr().err
    assert quality.main(base + ["--zero-shot", str(IMAGE_PKG)]) == 2
    assert "denoiser" in capsys.readouterr().err


def test_scanner_harness_refuses_what_does_not_fit(tmp_path):
    import scanner_methods

    from diffunfold.errors import InputError

    with pytest.raises(InputError, match="MRI denoiser package"):
        scanner_methods.zero_shot(str(IMAGE_PKG), ["dds"], "onnxruntime")
    with pytest.raises(InputError, match="MODULE:CHECKPOINT"):
        scanner_methods.learned(["varnet"])
    with pytest.raises(InputError, match="no bench/learned_baselines/nothing.py"):
        scanner_methods.learned(["nothing:x"])


def test_scanner_harness_runs_a_zero_shot_solver_on_a_prepared_scan():
    import scanner_methods

    from diffunfold.physics.mri import MultiCoilMRI, birdcage_maps, mri_mask
    from diffunfold.scanner import prepare_kspace

    den = REPO / "samples" / "models" / "mri-denoiser"
    others = scanner_methods.zero_shot(str(den), ["dds"], "onnxruntime")
    (o,) = others.values()
    assert o.name == "DDS (mri-denoiser)" and o.calls == 50 and o.params > 3e6
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32] / 32
    image = ((np.hypot(yy - 0.5, xx - 0.5) < 0.35) * (1 + 0.3 * np.sin(6 * xx))).astype(np.complex64)
    maps = birdcage_maps(8, (32, 32))
    mask = mri_mask("gaussian1d", (32, 32), 4.0, seed=1)
    y = np.asarray(MultiCoilMRI(maps, mask).A(image[None, None]))[0]
    y = (y + 1e-3 * rng.standard_normal(y.shape) * mask).astype(np.complex64)
    p = prepare_kspace(y, mask)
    got = o.run(p, 0)
    assert got.shape == (1, 1, 32, 32) and np.all(np.isfinite(got))


def test_a_zero_shot_solver_joins_the_table_with_its_calls(tmp_path):
    den = REPO / "samples" / "models" / "image-denoiser"
    args = [str(IMAGE_PKG), "--quick", "--quiet", "--samples", "1", "--steps", "2", "--out", str(tmp_path)]
    args += ["--task", "gaussian_blur", "--noise", "0.05", "--zero-shot", str(den), "--method", "diffpir"]
    assert quality.main(args) == 0
    md = (tmp_path / "quality-methods-image.md").read_text()
    rows = json.loads((tmp_path / "quality-methods-image.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["DiffPIR"] and np.isfinite(rows[0]["psnr"])
    assert rows[0]["psnr"] > 18  # a restoration, not noise (the measurement alone is ~20 dB)
    assert "| DiffPIR | zero-shot, image-denoiser | 3.24 M | 100 |" in md


def test_slice_scores_ignore_scale_and_phase_and_add_lpips_when_given(tmp_path):
    import scanner_quality
    from helpers import lpips_checkpoint
    from safetensors.numpy import save_file
    from scanner_metrics import SliceScores

    from diffunfold.data import lpips_weights
    from diffunfold.metrics_lpips import LPIPS

    rng = np.random.default_rng(0)
    truth = (rng.random((48, 48)) + 0.5).astype(np.complex64)
    est = truth + 0.05 * rng.standard_normal((48, 48))
    plain = SliceScores()(est, truth)
    assert set(plain) == {"", " ssim"} and 20 < plain[""] < 40
    turned = SliceScores()(3.0 * np.exp(1j * 0.7) * est, truth)  # estimated maps: any scale and phase
    assert turned[""] == pytest.approx(plain[""], abs=1e-4) and turned[" ssim"] == pytest.approx(
        plain[" ssim"], abs=1e-4
    )
    save_file(lpips_weights.torch_layout(lpips_checkpoint()), str(tmp_path / lpips_weights.WEIGHTS))
    scores = SliceScores(LPIPS(tmp_path))
    assert scores(2 * truth, truth)[" lpips"] == pytest.approx(0, abs=1e-6)
    assert scores(est, truth)[" lpips"] > 0
    rows = [
        {"mask": "m", "noise": 0.0, "maps": "espirit", "A": 30.0, **{"A" + k: v for k, v in scores(est, truth).items()}}
    ]
    assert "SSIM / LPIPS" in scanner_quality.perceptual_table({("m", 0.0, "espirit"): rows}, ["A"])


def test_scanner_quality_scores_the_masks_it_is_asked_for(capsys):
    import scanner

    from diffunfold.physics.mri import birdcage_maps
    from diffunfold.runtime.solver import Solver

    with pytest.raises(SystemExit):
        scanner._parser().parse_args(["--part", "quality", "--masks", "spiral:4"])
    assert "want KIND:ACCELERATION" in capsys.readouterr().err
    assert scanner._parser().parse_args(["--part", "quality", "--masks", "gaussian2d:4"]).masks == [("gaussian2d", 4.0)]
    yy, xx = np.mgrid[:32, :32] / 32
    image = ((np.hypot(yy - 0.5, xx - 0.5) < 0.35) * (1 + 0.3 * np.sin(6 * xx))).astype(np.complex64)
    item = {"image": image[None], "coil_maps": birdcage_maps(8, (32, 32)), "name": "disc"}
    solver = Solver.load(REPO / "samples" / "models" / "mri-small", backend="onnxruntime")
    rows = scanner.quality_rows({"m": solver}, [item], [0.0], 0, map_kinds=("true",), masks=[("gaussian2d", 4.0)])
    assert [r["mask"] for r in rows] == ["gaussian2d 4x"]
    assert rows[0]["m"] > 20 and rows[0]["m calls"] == 4  # the 2-D default: one denoiser call (K = 4 network calls)
    assert rows[0]["cg_sense"] > 20 and rows[0]["l1_wavelet"] > 20  # the oracles from the new module


def test_scanner_quality_compares_samplers_in_one_run():
    import scanner

    from diffunfold.physics.mri import birdcage_maps
    from diffunfold.runtime.solver import Solver

    assert scanner._parser().parse_args(["--part", "quality", "--sampler", "own", "native"]).sampler == [None, "native"]
    assert scanner._parser().parse_args(["--part", "quality"]).sampler == [None]
    yy, xx = np.mgrid[:32, :32] / 32
    image = ((np.hypot(yy - 0.5, xx - 0.5) < 0.35) * (1 + 0.3 * np.sin(6 * xx))).astype(np.complex64)
    item = {"image": image[None], "coil_maps": birdcage_maps(8, (32, 32)), "name": "disc"}
    solver = Solver.load(REPO / "samples" / "models" / "mri-small", backend="onnxruntime")
    rows = scanner.quality_rows(
        {"m": solver},
        [item],
        [0.0],
        0,
        ("noise",),
        map_kinds=("true",),
        masks=[("gaussian1d", 4.0)],
        samplers=(None, "heun"),
    )
    # the package's own sampler is Euler: 18 steps of K = 4 calls; Heun adds a second call to all but the last
    assert rows[0]["m (own sampler) calls"] == 72 and rows[0]["m (heun sampler) calls"] == 4 * 35
    assert rows[0]["m (own sampler)"] != rows[0]["m (heun sampler)"] and rows[0]["m (heun sampler)"] > 15

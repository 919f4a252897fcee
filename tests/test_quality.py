"""The quality harness (bench/quality.py) and its oracle baselines (diffunfold.quality_baselines).

The harness runs once per module in its --quick setting on the two bundled packages (one
held-out image, two tasks and two noise levels per kind, 4 steps, 2 samples: ~20 s on 2 cores);
the tests read what it wrote.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import quality  # noqa: E402

from diffunfold import quality_baselines as qb  # noqa: E402
from diffunfold.physics import make_operator  # noqa: E402
from diffunfold.physics.blur import GaussianBlur  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGE_PKG = REPO / "samples" / "models" / "image-small"
MRI_PKG = REPO / "samples" / "models" / "mri-small"
FIELDS = ("psnr", "ssim", "residual", "noise_residual")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from helpers import lpips_checkpoint

    from diffunfold.data import lpips_weights

    out = tmp_path_factory.mktemp("quality")
    lpips = tmp_path_factory.mktemp("lpips")  # random weights in LPIPS's layout: the plumbing, not the values
    from safetensors.numpy import save_file

    save_file(lpips_weights.torch_layout(lpips_checkpoint()), str(lpips / lpips_weights.WEIGHTS))
    rc = quality.main([str(IMAGE_PKG), str(MRI_PKG), "--quick", "--quiet", "--out", str(out), "--lpips", str(lpips)])
    assert rc == 0
    return out, {kind: json.loads((out / f"quality-{kind}-small.json").read_text()) for kind in ("image", "mri")}


def rows_of(result, task, noise, method):
    found = [r for r in result["rows"] if r["task"] == task and r["noise"] == noise and r["method"] == method]
    assert len(found) == 1, (task, noise, method)
    return found[0]


def test_writes_one_report_per_package_a_figure_and_the_comparison(quick_run):
    out, results = quick_run
    try:
        import matplotlib  # noqa: F401  (the eval extra; without it the figure is skipped, with a message)

        figures = True
    except ImportError:
        figures = False
    for name in ("image-small", "mri-small"):
        for ext in (".md", ".json"):
            assert (out / f"quality-{name}{ext}").stat().st_size > 0
        assert (out / f"quality-{name}.png").exists() == figures
        md = (out / f"quality-{name}.md").read_text()
        assert "command:" in md and "machine:" in md and "wall time" in md and "(oracle)" in md
        assert ("- LPIPS: AlexNet" in md) == (name == "image-small")
    if figures:
        assert (out / "quality-image-small.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compare = (out / "quality-compare-image-mri.md").read_text()
    assert "image-small" in compare and "mri-small" in compare
    image = results["image"]
    assert image["package"]["manifest_source"]["step"] > 0 and image["package"]["kind"] == "image"
    assert image["settings"]["samples"] == 2 and image["settings"]["images"] == 1


def test_every_method_has_finite_scores_on_every_case(quick_run):
    _, results = quick_run
    expected = {
        ("image", "gaussian_blur"): {"model_mean", "model_sample", "wiener", "tikhonov", "pinv"},
        ("image", "inpainting_40"): {
            "model_mean",
            "model_sample",
            "tikhonov",
            "biharmonic",
            "normalised_convolution",
            "pinv",
        },
        ("mri", "mri_gaussian1d_4x"): {
            "model_mean",
            "model_sample",
            "zero_filled",
            "cg_sense",
            "l1_espirit",
            "l1_true_maps",
        },
        ("mri", "mri_gaussian2d_8x"): {
            "model_mean",
            "model_sample",
            "zero_filled",
            "cg_sense",
            "l1_espirit",
            "l1_true_maps",
        },
    }
    sigpy_ok = qb.sigpy_status() is None
    for (kind, task), methods in expected.items():
        result = results[kind]
        for noise in result["settings"]["image_noise" if kind == "image" else "mri_noise"]:
            for method in methods:
                row = rows_of(result, task, noise, method)
                if method in quality.SIGPY_METHODS and not sigpy_ok:
                    assert row["skipped"]
                    continue
                for f in FIELDS:
                    assert math.isfinite(row[f]), (task, noise, method, f)
                assert ("lpips" in row) == (kind == "image")  # LPIPS is an image metric
                assert kind == "mri" or (row["lpips"] >= 0 and row["lpips"] == row["per_image"][0]["lpips"])
                assert len(row["per_image"]) == 1
                # the truth's residual is the realised noise: 0 without noise (up to the float32
                # rounding of y), > 0 with it
                assert (row["noise_residual"] < 1e-6) == (noise == 0)
            summary = [s for s in result["summary"] if s["task"] == task and s["noise"] == noise]
            assert len(summary) == 1 and summary[0]["best_baseline"] in methods


def test_baselines_behave_as_their_maths_says(quick_run):
    _, results = quick_run
    image = results["image"]
    # Without noise, normalised convolution keeps every observed pixel as measured: A x_hat = y.
    for method in ("normalised_convolution", "biharmonic", "pinv"):
        row = rows_of(image, "inpainting_40", 0.0, method)
        assert row["residual"] == pytest.approx(row["noise_residual"], abs=1e-6)
    # The oracle picks among many filters; K*/(|K|^2 + 1e-3) (pinv) amplifies the noise.
    tik, pinv = rows_of(image, "gaussian_blur", 0.05, "tikhonov"), rows_of(image, "gaussian_blur", 0.05, "pinv")
    assert tik["psnr"] > pinv["psnr"] + 2
    # The best baseline is the best of the baselines.
    for s in image["summary"]:
        cands = [
            r["psnr"] for r in image["rows"] if r["baseline"] and r["task"] == s["task"] and r["noise"] == s["noise"]
        ]
        assert s["best_baseline_psnr"] == max(cands)
    # The oracle's choice is recorded per image, from the grid.
    setting = rows_of(image, "gaussian_blur", 0.05, "tikhonov")["per_image"][0]["setting"]
    assert setting["lam"] in image["settings"]["tikhonov_grid"]


def test_mri_baselines_through_sigpy(quick_run):
    pytest.importorskip("sigpy", reason="the SigPy baselines need the eval extra")
    _, results = quick_run
    mri = results["mri"]
    assert mri["meta"]["sigpy_forward_check_rel_err"] < 1e-10
    for task in ("mri_gaussian1d_4x", "mri_gaussian2d_8x"):
        zf = rows_of(mri, task, 0.0, "zero_filled")
        for method in ("cg_sense", "l1_true_maps"):
            row = rows_of(mri, task, 0.0, method)
            # an inversion with the true maps beats A^H y and fits the noise-free data closely
            assert row["psnr"] > zf["psnr"] + 3
            assert row["residual"] < 0.2 * zf["residual"]
        setting = rows_of(mri, task, 0.0, "l1_espirit")["per_image"][0]["setting"]
        assert setting["calib_width"] >= 2 and setting["kernel_width"] <= setting["calib_width"]


def test_model_rows_pass_the_noise_level_and_the_single_sample_is_draw_zero(quick_run):
    _, results = quick_run
    for kind, task in (("image", "gaussian_blur"), ("mri", "mri_gaussian2d_8x")):
        result = results[kind]
        noise = result["settings"]["image_noise" if kind == "image" else "mri_noise"][-1]
        mean = rows_of(result, task, noise, "model_mean")
        one = rows_of(result, task, noise, "model_sample")
        assert mean["per_image"][0]["seed"] == one["per_image"][0]["seed"] == 0
        assert mean["per_image"][0]["noise_std"] > 0
        # averaging two posterior draws typically helps; at least it does not wreck the result
        assert mean["psnr"] > one["psnr"] - 1.0


def test_sigpy_missing_skips_its_baselines_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(qb, "sigpy_status", lambda: "sigpy is not usable (test)")
    rc = quality.main(
        [
            str(MRI_PKG),
            "--quick",
            "--quiet",
            "--task",
            "mri_gaussian2d_8x",
            "--mri-noise",
            "0",
            "--steps",
            "1",
            "--samples",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    result = json.loads((tmp_path / "quality-mri-small.json").read_text())
    for method in quality.SIGPY_METHODS:
        assert rows_of(result, "mri_gaussian2d_8x", 0.0, method)["skipped"] == "sigpy is not usable (test)"
    assert math.isfinite(rows_of(result, "mri_gaussian2d_8x", 0.0, "zero_filled")["psnr"])
    md = (tmp_path / "quality-mri-small.md").read_text()
    assert "skipped: sigpy is not usable (test)" in md


def test_bad_input_is_refused_with_a_message(tmp_path, capsys):
    assert quality.main([str(tmp_path / "nothing"), "--quick", "--quiet", "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert quality.main([str(IMAGE_PKG), "--quick", "--quiet", "--task", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_sigma_min_sets_where_the_sampler_stops(tmp_path, capsys):
    """--sigma-min is the last denoiser call's noise level: recorded, printed, and it changes the
    estimate (at sigma 5 the last D sees mostly noise); zero is refused."""
    args = [
        str(IMAGE_PKG),
        "--quick",
        "--quiet",
        "--task",
        "sr_x8",
        "--noise",
        "0",
        "--steps",
        "2",
        "--samples",
        "1",
        "--schedule",
        "full",
    ]
    assert quality.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert quality.main(args + ["--sigma-min", "5", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "quality-image-small.json").read_text()) for d in "ab")
    assert a["settings"]["sigma_min"] is None and b["settings"]["sigma_min"] == 5.0
    assert rows_of(a, "sr_x8", 0.0, "model_mean")["psnr"] != rows_of(b, "sr_x8", 0.0, "model_mean")["psnr"]
    assert "ending at sigma 5;" in (tmp_path / "b" / "quality-image-small.md").read_text()
    assert "ending at sigma" not in (tmp_path / "a" / "quality-image-small.md").read_text()
    assert quality.main(args + ["--sigma-min", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--sigma-min must be > 0" in capsys.readouterr().err


def test_sampler_option_overrides_the_packages_and_is_recorded(tmp_path, capsys):
    """--sampler heun runs Heun's method instead of the package's own (ancestral): recorded in the
    JSON and the header, and a different estimate at the same steps; a sampler that does not exist
    is refused."""
    args = [str(IMAGE_PKG), "--quick", "--quiet", "--task", "sr_x8", "--noise", "0", "--steps", "2", "--samples", "1"]
    args += ["--lpips", str(tmp_path / "no-weights")]
    assert quality.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert quality.main(args + ["--sampler", "heun", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "quality-image-small.json").read_text()) for d in "ab")
    assert a["meta"]["sampler"] == {"image-small": "ancestral"} and b["meta"]["sampler"] == {"image-small": "heun"}
    assert rows_of(a, "sr_x8", 0.0, "model_mean")["psnr"] != rows_of(b, "sr_x8", 0.0, "model_mean")["psnr"]
    assert "2 heun steps" in (tmp_path / "b" / "quality-image-small.md").read_text()
    # without LPIPS weights: PSNR / SSIM only, and the report says why and how to get them
    assert "lpips" not in rows_of(a, "sr_x8", 0.0, "model_mean")
    assert "LPIPS not computed: " in a["meta"]["lpips"] and "diffunfold data lpips" in a["meta"]["lpips"]
    with pytest.raises(SystemExit):
        quality.main(args + ["--sampler", "rk4", "--out", str(tmp_path / "c")])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.torch
def test_a_training_run_is_exported_and_scored(tmp_path):
    torch = pytest.importorskip("torch", reason="exporting a run needs torch (the train extra)")
    pytest.importorskip("onnx", reason="exporting a run needs onnx (the export extra)")
    from helpers import tiny_model
    from torch.optim.swa_utils import AveragedModel

    from diffunfold.training.checkpoint import save_checkpoint

    model = tiny_model(shared=True, stages=2)
    save_checkpoint(
        tmp_path / "myrun" / "checkpoints",
        5,
        model,
        AveragedModel(model),
        torch.optim.Adam(model.parameters()),
        {"name": "tiny", "data": {"tasks": ["gaussian_blur"]}},
    )
    rc = quality.main(
        [
            str(tmp_path / "myrun"),
            "--quick",
            "--quiet",
            "--task",
            "gaussian_blur",
            "--noise",
            "0.05",
            "--size",
            "32",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    result = json.loads((tmp_path / "out" / "quality-myrun-step5.json").read_text())
    assert result["package"]["source"].startswith("checkpoint ") and result["package"]["manifest_source"]["step"] == 5
    assert math.isfinite(rows_of(result, "gaussian_blur", 0.05, "model_mean")["psnr"])


# -- the baselines against brute force on tiny problems --------------------------------------------


def _dense(fn, shape):
    """The matrix of a linear map on arrays of ``shape``, column by column."""
    n = int(np.prod(shape))
    cols = [np.asarray(fn(np.eye(n)[j].reshape(shape)), dtype=np.float64).ravel() for j in range(n)]
    return np.stack(cols, axis=1)


def _neumann_d(h, w):
    """Forward differences that stop at the border, as a dense matrix on (H, W) images."""
    rows = []
    for i in range(h):
        for j in range(w):
            for di, dj in ((1, 0), (0, 1)):
                if i + di < h and j + dj < w:
                    r = np.zeros((h, w))
                    r[i, j], r[i + di, j + dj] = -1.0, 1.0
                    rows.append(r.ravel())
    return np.stack(rows)


def _periodic_d(h, w):
    rows = []
    for i in range(h):
        for j in range(w):
            for di, dj in ((1, 0), (0, 1)):
                r = np.zeros((h, w))
                r[i, j] -= 1.0
                r[(i + di) % h, (j + dj) % w] += 1.0
                rows.append(r.ravel())
    return np.stack(rows)


def test_tikhonov_fft_solves_the_normal_equations_with_periodic_differences():
    rng = np.random.default_rng(0)
    op = GaussianBlur((8, 8), 1.0)
    y = rng.random((1, 1, 8, 8))
    a = _dense(lambda v: op.A(v[None, None])[0, 0], (8, 8))
    d = _periodic_d(8, 8)
    for lam in (1e-3, 0.1):
        want = np.linalg.solve(a.T @ a + lam * d.T @ d, a.T @ y.ravel())
        np.testing.assert_allclose(qb.tikhonov_fft(op, y, lam).ravel(), want, atol=1e-10)


@pytest.mark.parametrize("task,params", [("sr", {"factor": 2}), ("inpainting", {"missing": 0.5, "seed": 3})])
def test_tikhonov_cg_solves_the_normal_equations_with_border_differences(task, params):
    rng = np.random.default_rng(1)
    op = make_operator(task, (8, 8), **params)
    x = rng.random((1, 1, 8, 8))
    y = np.asarray(op.A(x)) + 0.01 * rng.standard_normal(op.measurement_shape(x.shape))
    a = _dense(lambda v: op.A(v[None, None])[0, 0], (8, 8))
    d = _neumann_d(8, 8)
    for lam in (1e-4, 0.1):
        want = np.linalg.solve(a.T @ a + lam * d.T @ d, a.T @ y.ravel())
        np.testing.assert_allclose(qb.tikhonov_cg(op, y, lam).ravel(), want, atol=1e-5)


def test_oracle_picks_the_best_grid_value_per_image():
    from diffunfold.demo_data import held_out_images
    from diffunfold.metrics import psnr

    _, x = held_out_images(32, 2)
    op = make_operator("gaussian_blur", (32, 32), sigma=1.5)
    y = op.measure(x, 0.05, seed=[0, 1]).astype(np.float32)
    grid = (1e-4, 1e-2, 1.0)
    res = qb.oracle_tikhonov(op, y, x, grid)
    for i in range(2):
        scores = [float(psnr(np.clip(qb.tikhonov_fft(op, y[i : i + 1], g), 0, 1)[0], x[i], 1.0)) for g in grid]
        assert res.lam[i] == grid[int(np.argmax(scores))]
        assert res.psnr[i] == pytest.approx(max(scores))


def test_fully_sampled_centre_is_centred_as_sigpy_crops():
    mask = np.zeros((16, 16))
    mask[:, 6:11] = 1  # columns 6..10: centred on 8 with width 5
    assert qb.fully_sampled_centre(mask) == 5
    mask[:, 10] = 0  # 6..9: width 4 starts at 8 - 2 = 6
    assert qb.fully_sampled_centre(mask) == 4
    assert qb.fully_sampled_centre(np.zeros((16, 16))) == 0


def test_sigpy_sense_matches_our_operator():
    pytest.importorskip("sigpy", reason="the SigPy baselines need the eval extra")
    for kind in ("gaussian1d", "gaussian2d"):
        op = make_operator("mri", (32, 24), kind=kind, acceleration=4.0, ncoils=4, seed=1)
        assert qb.check_sigpy_forward(op) < 1e-12


def test_reports_count_the_images_each_case_really_had():
    """``--images 5`` on a source of 4 photos scores 4: the report says 4, not the request."""
    from types import SimpleNamespace

    rows = [{"task": "sr", "per_image": [{}] * 4}, {"task": "sr", "note": "skipped"}]
    assert quality.images_used(rows, SimpleNamespace(images=5)) == 4
    assert quality.images_used([], SimpleNamespace(images=5)) == 5

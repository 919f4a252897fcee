"""`diffunfold demo`: the bundled packages, through the runtime, on held-out data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffunfold.cli import main
from diffunfold.demo import DEFAULT_IMAGE_PACKAGE, DEFAULT_MRI_PACKAGE, TASKS
from diffunfold.demo_data import held_out_phantoms
from diffunfold.package import ModelPackage


@pytest.mark.parametrize("path", [DEFAULT_IMAGE_PACKAGE, DEFAULT_MRI_PACKAGE], ids=["image", "mri"])
def test_bundled_packages_verify_and_are_small(path):
    pkg = ModelPackage.open(path)  # every checksum
    size = sum(f.stat().st_size for f in path.iterdir())
    # the ONNX graphs and the torch backend's weights (the GPU path), both float16: ~6.5 MB each
    assert size < 16e6, f"{path.name} is {size / 1e6:.1f} MB; the repository ships it"
    assert pkg.torch_weights_file == "model.safetensors"
    assert pkg.manifest["networks"]["weights_dtype"] == "float16"
    record = path / "TRAINING.md"
    assert record.exists(), "each bundled package records how it was trained"
    text = record.read_text()
    for word in ("diffunfold train", "steps", "PSNR"):
        assert word in text


def test_demo_writes_figures_and_tables_and_beats_the_baselines(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--out",
                str(out),
                "--images",
                "1",
                "--samples",
                "2",
                "--quiet",
                "--task",
                "sr_x4",
                "--task",
                "mri_gaussian1d_4x",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert [t["key"] for t in results["tasks"]] == ["sr_x4", "mri_gaussian1d_4x"]
    sr, mri = results["tasks"]
    assert sr["baseline"] == "pinv" and mri["baseline"] == "zero-filled SENSE"
    for t in (sr, mri):
        m = t["mean"]
        assert np.isfinite([m["psnr"], m["ssim"], m["psnr_baseline"]]).all()
        assert m["seconds"] > 0 and t["rows"][0]["nfe"] == (18 if t is mri else 6)  # image-small: the fast schedule
        assert t["rows"][0]["std_mean"] > 0  # two samples differ: a real uncertainty map
    assert sr["mean"]["psnr"] > sr["mean"]["psnr_baseline"]
    assert mri["mean"]["psnr"] > mri["mean"]["psnr_baseline"] + 5  # 4x MRI: far above zero-filled
    fig = Image.open(out / "sr_x4.png")
    assert fig.width > 5 * 192 and fig.height > 192  # five panels of one image
    table = (out / "results.md").read_text()
    assert "super-resolution x4" in table and "zero-filled SENSE" in table
    assert "The image package restores a flat image (std below 0.09)" in table  # it asks for the stretch
    assert "each colour channel's level to mid-grey and back (colour centring)" in table  # and the centring
    image_contrast = results["packages"]["image"]["contrast"]
    assert image_contrast["flat_std"] == 0.09 and image_contrast["colour"] is True
    assert results["packages"]["mri"]["contrast"] is None
    assert "| task |" in capsys.readouterr().out


def test_demo_refuses_unknown_tasks_and_missing_packages(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--task", "deconvolve_everything"]) != 0
    assert "unknown demo task(s) ['deconvolve_everything']; choose from" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--task", "sr_x4", "--image-package", str(tmp_path / "nope")]) != 0
    assert "is missing" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_demo_covers_the_issue_tasks_and_holds_out_its_data():
    keys = {t.key for t in TASKS}
    assert keys == {
        "gaussian_blur",
        "anisotropic_blur",
        "sr_x4",
        "inpainting",
        "motion_blur",
        "mri_gaussian1d_4x",
        "mri_gaussian2d_8x",
    }
    assert [t.key for t in TASKS if not t.trained] == ["motion_blur"]
    trained = ModelPackage.open(DEFAULT_IMAGE_PACKAGE).tasks
    assert "motion_blur" not in trained and {"gaussian_blur", "sr", "inpainting"} <= set(trained)
    _, a = held_out_phantoms(32, 2)
    _, b = held_out_phantoms(32, 2)
    assert np.array_equal(a, b) and not np.array_equal(a[0], a[1])  # fixed, and not one phantom twice


def test_demo_runs_without_torch(run_without_torch, tmp_path):
    run_without_torch(f"""
        from diffunfold.cli import main
        assert main(["demo", "--out", {str(tmp_path)!r}, "--images", "1", "--samples", "1", "--steps", "4",
                     "--quiet", "--task", "gaussian_blur"]) == 0
    """)


@pytest.mark.parametrize("path", [DEFAULT_IMAGE_PACKAGE, DEFAULT_MRI_PACKAGE], ids=["image", "mri"])
def test_bundled_packages_take_stable_data_steps(path):
    """Over the whole default schedule (and beyond it, where the weights are clamped) the learned
    steps stay where the data step cannot amplify an error: the proximal step's relaxation in
    (0, 2) and a positive prox weight; the paper's gradient step below 2."""
    from diffunfold import edm
    from diffunfold.runtime import Solver

    solver = Solver.load(path, backend="onnxruntime", threads=1)
    sigmas = np.concatenate([edm.schedule(18)[:-1], np.geomspace(1e-3, 200, 40)])
    weights = solver.weights_for(sigmas)
    tau = np.array([w[0] for w in weights.values()])
    gamma = np.array([w[1] for w in weights.values()])
    assert np.all(np.isfinite(tau)) and np.all(np.isfinite(gamma))
    if solver.package.data_step == "proximal":
        assert np.all((tau > 0) & (tau < 2)) and np.all(gamma > 0)
    else:
        assert np.all(gamma < 2), f"gradient steps up to {gamma.max():.2f} (> 2 amplifies errors)"

"""Every sample runs as a user would run it, and says something true."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, SAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_simulate_measurements(tmp_path):
    scores = load("simulate_measurements").main(["--size", "64", "--out", str(tmp_path)])
    assert set(scores) == {"gaussian_blur", "anisotropic_blur", "motion_blur", "sr", "inpainting", "box_inpainting"}
    assert all(np.isfinite(s["psnr"]) and 0 < s["ssim"] <= 1 for s in scores.values())
    # A 0.3 x 0.3 box removes 9 % of the pixels, 60 % dust removes 60 %: pinv keeps more of the first.
    assert scores["box_inpainting"]["psnr"] > scores["inpainting"]["psnr"]
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.size == (3 * 64, 6 * 64)


def test_mri_phantom_roundtrip(tmp_path):
    scores = load("mri_phantom_roundtrip").main(
        ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "fig"), "--size", "64", "--coils", "4"])
    assert len(list((tmp_path / "data").glob("*.h5"))) == 1
    for name, s in scores.items():
        acc = float(name.split()[1].rstrip("x"))
        assert abs(s["acceleration"] / acc - 1) <= 0.05
        assert 10 < s["psnr"] < 40, f"zero-filled SENSE at {name} should be visibly degraded, not broken"
    assert Image.open(tmp_path / "fig" / "mri_zero_filled.png").size == (3 * 64, 3 * 64)

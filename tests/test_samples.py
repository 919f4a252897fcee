"""Every sample runs as a user would run it, and says something true."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, SAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # not installed, or a wheel whose native library cannot load
        return False
    return True


def _gpu_visible() -> bool:
    from diffunfold.engines import current_gpu

    try:
        return current_gpu(0) is not None
    except Exception:
        return False


@pytest.mark.parametrize(
    "name",
    [
        "simulate_measurements",
        "mri_phantom_roundtrip",
        "restore_one_image",
        "swap_operator",
        "mri_from_fastmri",
        "posterior_samples",
        "tensorrt_engines",
    ],
)
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        load(name).main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "python samples/" in out, "--help shows the docstring's examples"


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
        ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "fig"), "--size", "64", "--coils", "4"]
    )
    assert len(list((tmp_path / "data").glob("*.h5"))) == 1
    for name, s in scores.items():
        acc = float(name.split()[1].rstrip("x"))
        assert abs(s["acceleration"] / acc - 1) <= 0.05
        assert 10 < s["psnr"] < 40, f"zero-filled SENSE at {name} should be visibly degraded, not broken"
    assert Image.open(tmp_path / "fig" / "mri_zero_filled.png").size == (3 * 64, 3 * 64)


def test_restore_one_image(tmp_path):
    result = load("restore_one_image").main(["--out", str(tmp_path)])  # 64 px, 18 steps: the defaults
    for name in ("restored", "wiener", "pinv", "measured"):
        assert np.isfinite(result[name]["psnr"]) and 0 < result[name]["ssim"] <= 1
    # The learned solver restores: better than the blurred measurement and than the noise-amplifying
    # pinv. (Against Wiener it is printed, not asserted: the bundled CPU model roughly ties it.)
    assert result["restored"]["psnr"] > result["measured"]["psnr"] + 0.5
    assert result["restored"]["ssim"] > result["measured"]["ssim"]
    assert result["restored"]["psnr"] > result["pinv"]["psnr"] + 3
    assert set(result["files"]) == {"restored", "baseline", "measured", "clean"}
    assert all(png_size(p) == (64, 64) for p in result["files"].values())
    assert result["timing"]["network_calls"] == 18 * 4  # NFE 18 x K = 4 stages


def test_swap_operator(tmp_path):
    results = load("swap_operator").main(["--out", str(tmp_path)])
    assert [r["trained"] for r in results.values()] == [True, False, False, False]
    for label, r in results.items():
        assert np.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1
        # Without retraining, every operator's restoration is better than its measurement. A
        # large hole (box inpainting) is one posterior draw of what it hides, which PSNR
        # barely rewards (camera: the man's coat filled as background, +0.4 dB) while SSIM
        # shows the rest restored (0.53 -> 0.79).
        hole = label.startswith("box inpainting")
        assert r["psnr"] > r["measured_psnr"] + (0.0 if hole else 0.5), label
        assert r["ssim"] > r["measured_ssim"] + (0.1 if hole else 0.0), label
    assert png_size(tmp_path / "swap_operator.png") == (4 * 64, 4 * 64)


def test_mri_from_fastmri(tmp_path):
    result = load("mri_from_fastmri").main(["--out", str(tmp_path)])  # writes its own phantom file
    (h5,) = tmp_path.glob("*.h5")
    assert result["file"] == str(h5) and result["coils"] == 15 and result["size"] == [64, 64]
    assert abs(result["acceleration"] / 4 - 1) <= 0.05
    # Learned prior + physics against A^H y: a clear margin, not a rounding difference.
    assert result["psnr"] > result["psnr_zero_filled"] + 5
    assert result["ssim"] > result["ssim_zero_filled"] + 0.1
    assert all(png_size(p) == (64, 64) for p in result["files"].values())
    # The same file given with --file is read back the same way, and nothing is written over it.
    again = load("mri_from_fastmri").main(["--file", str(h5), "--out", str(tmp_path / "again")])
    assert again["psnr"] == pytest.approx(result["psnr"])
    assert not list((tmp_path / "again").glob("*.h5"))


def test_posterior_samples(tmp_path):
    result = load("posterior_samples").main(["--samples", "4", "--out", str(tmp_path)])  # box inpainting
    assert result["samples"] == 4 and np.isfinite(result["psnr_mean"]) and result["std_max"] > 0
    # The std is an uncertainty map: large where the error is large, largest in the hole.
    assert result["corr_error_std"] > 0.3
    assert result["std_missing"] > 3 * result["std_observed"]
    sizes = {name: png_size(p) for name, p in result["files"].items()}
    assert sizes.pop("posterior") == (5 * 64, 64)
    assert set(sizes) == {"measured", "mean", "std", "error"} and set(sizes.values()) == {(64, 64)}
    std_png = np.asarray(Image.open(result["files"]["std"]))
    assert std_png.ndim == 3 and std_png.shape[-1] == 3, "the std map is a colour map"


def test_tensorrt_engines_says_what_is_missing(tmp_path, monkeypatch, capsys):
    sample = load("tensorrt_engines")
    assert "h100" in sample.main(["--list"])["targets"]  # listing needs no GPU
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # TensorRT made unimportable, even where it is
    with pytest.raises(sample.TensorRTUnavailable) as exc:
        sample.main(["--out", str(tmp_path)])
    message = str(exc.value)
    assert "TensorRT" in message and "pip install -e '.[trt]'" in message
    assert not list(tmp_path.iterdir()), "nothing is built or written"
    # As a script: exit status 1 and the message, no traceback.
    code = (
        "import runpy, sys; sys.modules['tensorrt'] = None; "
        f"runpy.run_path({str(SAMPLES / 'tensorrt_engines.py')!r}, run_name='__main__')"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert "pip install -e '.[trt]'" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.gpu
@pytest.mark.skipif(
    not (_importable("tensorrt") and _importable("cupy") and _gpu_visible()),
    reason="needs TensorRT 10, CuPy and an NVIDIA GPU (pip install -e '.[trt,gpu]' on a GPU machine)",
)
def test_tensorrt_engines(tmp_path):
    result = load("tensorrt_engines").main(["--out", str(tmp_path)])  # builds for this GPU's target
    assert result["built_s"], "engines were built into --out"
    assert list((tmp_path / "engines" / result["target"]).glob("*.engine"))
    assert np.isfinite(result["psnr"]) and result["timing"]["network_s"] > 0
    # FP16 engines against FP32 ONNX Runtime from the same start: the same restoration.
    assert result["psnr_vs_onnxruntime"] > 30
    assert png_size(result["files"]["restored"]) == (64, 64)
    again = load("tensorrt_engines").main(["--out", str(tmp_path), "--no-compare"])
    assert again["built_s"] == [], "the engines of the first run are reused"

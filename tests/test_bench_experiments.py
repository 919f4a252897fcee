"""The experiment scripts (bench/experiments/): each imports cleanly and shows its --help; the
one without a model (compare_per_photo.py) also runs on a small quality JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "bench" / "experiments"
SCRIPTS = sorted(EXPERIMENTS.glob("*.py"))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_experiments():
    assert {p.name for p in SCRIPTS} >= {
        "calibrate_tau.py",
        "compare_per_photo.py",
        "export_with_weights.py",
        "make_soup.py",
        "make_validation_folder.py",
        "scanner_start.py",
    }


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_imports_and_shows_help(script):
    module = _load(script)
    assert callable(module.main) and module.__doc__
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"bench/experiments/{script.name}" in done.stdout


def _quality_json(psnr_model: list[float], psnr_base: list[float]) -> dict:
    images = [f"photo_{i}" for i in range(len(psnr_model))]
    rows = [
        {
            "task": "sr_x8",
            "noise": 0.0,
            "method": method,
            "per_image": [{"image": name, "psnr": p} for name, p in zip(images, ps)],
        }
        for method, ps in (("model_mean", psnr_model), ("tikhonov", psnr_base))
    ]
    meta = {
        "command": "python bench/quality.py pkg",
        "date": "today",
        "machine": "here",
        "wall_seconds": 1.0,
        "seed": 0,
    }
    return {"rows": rows, "meta": meta, "summary": [{"task": "sr_x8", "noise": 0.0, "best_baseline": "tikhonov"}]}


def test_compare_per_photo(tmp_path, capsys):
    cmp = _load(EXPERIMENTS / "compare_per_photo.py")
    earlier, now = tmp_path / "earlier.json", tmp_path / "now.json"
    (tmp_path / "a.json").write_text(json.dumps(_quality_json([20.0, 21.0, 22.0], [20.5, 20.5, 20.5])))
    (tmp_path / "b.json").write_text(json.dumps(_quality_json([21.0, 21.0, 23.0], [20.5, 20.5, 20.5])))
    assert cmp.main([str(tmp_path / "a.json"), str(earlier)]) == 0
    assert cmp.main([str(tmp_path / "b.json"), str(now), str(earlier)]) == 0
    table = capsys.readouterr().out.strip().splitlines()[-1]
    assert table.startswith("| sr_x8 | 0 | 21.67 | tikhonov 20.50 | +1.17 | 3 of 3 |")
    assert table.endswith("21.00 | +0.67 |")
    assert json.loads(now.read_text())["per_image"][0]["model_psnr"] == [21.0, 21.0, 23.0]


def test_paired_packages(tmp_path, capsys):
    pair = _load(EXPERIMENTS / "paired_packages.py")
    a, b = tmp_path / "quality-a.json", tmp_path / "quality-b.json"
    a.write_text(json.dumps(_quality_json([20.0, 21.0, 22.0], [20.5, 20.5, 20.5])))
    b.write_text(json.dumps(_quality_json([21.0, 21.0, 23.5], [20.5, 20.5, 20.5])))
    assert pair.main([str(a), str(b)]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    # differences 1, 0, 1.5: mean 0.83, sample std 0.764, standard error 0.44; 2 of 3 ahead
    assert row == "| sr_x8 | 0 | 21.00 | +0.83 +- 0.44 (2/3 ahead) |"
    with pytest.raises(SystemExit):
        pair.main([str(a)])


def test_few_calls_variants_set_the_stages_at_every_noise_level(tmp_path):
    """``fast_stages=`` in few_calls.py runs a copy of the package with those stages and without
    its stages for noisy measurements, so a variant means the same at every sigma_y."""
    pytest.importorskip("onnxruntime", reason="the runtime backend")
    few_calls = _load(EXPERIMENTS / "few_calls.py")
    package = EXPERIMENTS.parents[1] / "samples" / "models" / "image-small"
    label, kwargs = few_calls.parse_variant("a22:fast_stages=2.4.4.4.4.4,steps=6")
    assert label == "a22" and kwargs == {"fast_stages": "2.4.4.4.4.4", "steps": 6}
    solver = few_calls.variant_solver(str(package), "onnxruntime", {"fast_stages": "2.4.4.4.4.4"}, tmp_path, 1)
    fast = solver.package.fast_schedule
    assert fast.stages == (2, 4, 4, 4, 4, 4) and fast.noisy_stages is None
    with pytest.raises(SystemExit, match="unknown variant key"):
        few_calls.parse_variant("x:stagez=2")

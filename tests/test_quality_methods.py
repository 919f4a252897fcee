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


def test_bad_comparison_arguments_are_refused(tmp_path, capsys):
    base = [str(IMAGE_PKG), "--quick", "--quiet", "--out", str(tmp_path)]
    assert quality.main(base + ["--learned", "no-colon"]) == 2
    assert "MODULE:CHECKPOINT" in capsys.readouterr().err
    assert quality.main(base + ["--learned", "nosuchmodule:x"]) == 2
    assert "bench/learned_baselines/nosuchmodule.py" in capsys.readouterr().err
    assert quality.main(base + ["--zero-shot", str(IMAGE_PKG)]) == 2
    assert "denoiser" in capsys.readouterr().err

"""The command line, and the boundary that keeps the light parts free of torch."""

from __future__ import annotations

import pytest

from diffunfold.cli import main
from diffunfold.physics import GaussianBlur


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("selfcheck", "tasks", "mask", "phantom", "info", "examples:"):
        assert word in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_selfcheck_passes(capsys):
    assert main(["selfcheck", "--size", "32", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "all 10 operators passed" in out and "| mri |" in out


def test_selfcheck_fails_on_a_broken_adjoint(monkeypatch, capsys):
    # An adjoint off by a factor of two must be caught.
    monkeypatch.setattr(GaussianBlur, "_adjoint", lambda self, y: 2 * self._forward(y))
    assert main(["selfcheck", "--size", "32", "--quiet", "--no-images"]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.err and "| NO |" in captured.out


def test_selfcheck_json_and_bad_backend(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["selfcheck", "--size", "32", "--quiet", "--no-images", "--backends", "numpy", "--json", str(out)]) == 0
    import json

    rows = json.loads(out.read_text())
    assert len(rows) == 10 and all(r["ok"] for r in rows)
    assert main(["selfcheck", "--backends", "jax"]) == 2
    assert "unknown backend" in capsys.readouterr().err


def test_tasks_lists_every_task(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("gaussian_blur", "anisotropic_blur", "motion_blur", "sr", "inpainting", "box_inpainting", "mri"):
        assert name in out


def test_mask_reports_acceleration_and_writes_png(tmp_path, capsys):
    png = tmp_path / "mask.png"
    assert main(["mask", "gaussian1d", "--shape", "64", "128", "--acceleration", "4", "--out", str(png)]) == 0
    assert "realised 4.000x" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(png).size == (128, 64)


def test_mask_error_is_reported_not_raised(capsys):
    assert main(["mask", "uniform1d", "--shape", "64", "64", "--acceleration", "4", "--center-fraction", "0.9"]) == 2
    assert "error:" in capsys.readouterr().err


def test_phantom_command_writes_readable_files(tmp_path, capsys):
    from diffunfold.data.fastmri import FastMRIFile

    assert (
        main(["phantom", str(tmp_path), "--files", "1", "--slices", "2", "--size", "32", "--coils", "4", "--quiet"])
        == 0
    )
    files = sorted(tmp_path.glob("*.h5"))
    assert len(files) == 1
    with FastMRIFile(files[0]) as f:
        assert f.num_slices == 2 and f.kspace(0).shape == (4, 32, 32)


def test_info_runs(capsys):
    assert main(["info"]) == 0
    assert "array backends" in capsys.readouterr().out


def test_physics_data_and_metrics_run_without_torch(tmp_path, run_without_torch):
    """The runtime's foundations must never import torch (architecture, boundary 2)."""
    run_without_torch(f"""
        import numpy as np
        import diffunfold, diffunfold.physics, diffunfold.metrics, diffunfold.data
        from diffunfold.physics import make_operator
        from diffunfold.data.image_datasets import BundledImages
        from diffunfold.data.phantom import write_phantom_dataset
        from diffunfold.data.fastmri import FastMRISlices
        x = BundledImages(size=32, split="val")[0][None].astype(np.float64)
        for task in ("gaussian_blur", "sr", "inpainting", "motion_blur"):
            op = make_operator(task, (32, 32))
            y = op.measure(x, 0.01, seed=0)
            assert np.isfinite(diffunfold.metrics.psnr(op.pinv(y), x, data_range=1.0)).all()
        write_phantom_dataset({str(tmp_path)!r}, num_files=1, slices_per_file=1, shape=(32, 32), ncoils=2,
                              progress=False)
        item = FastMRISlices({str(tmp_path)!r}, ncoils=2)[0]
        op = make_operator("mri", (32, 32), coil_maps=item["coil_maps"])
        op.pinv(op.measure(item["image"][None], 0.0))
        from diffunfold import edm, spaces, baselines
        x_model = spaces.DataSpace("image", 3).to_model(x)
        edm.sample_loop(lambda v, s: 0 * v, x_model, edm.schedule(3))
        blur = make_operator("gaussian_blur", (32, 32), sigma=1.0)
        assert np.isfinite(baselines.classical_baseline(blur, blur.A(x), 0.01)).all()
        try:
            import diffunfold.training
        except ImportError as exc:
            assert "diffunfold[train]" in str(exc), exc
        else:
            raise AssertionError("diffunfold.training imported without torch")
    """)


def test_presets_and_train_help(capsys):
    pytest.importorskip("torch", reason="the presets are training configs (the train extra)")
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "| paper | bundled | 256 | 6 | False | 46.65M |" in out and "| tiny |" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for word in ("--config", "--resume", "--set", "torchrun"):
        assert word in out


def test_train_reports_config_errors(capsys):
    pytest.importorskip("torch", reason="training needs the train extra")
    assert main(["train", "--config", "no-such-preset"]) == 2
    assert "preset" in capsys.readouterr().err
    assert main(["train", "--config", "tiny", "--set", "train.nonsense=1"]) == 2
    assert "unknown setting" in capsys.readouterr().err

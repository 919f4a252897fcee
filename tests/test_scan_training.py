"""Self-supervised training from a site's own undersampled raw scans: ``diffunfold prepare-scans``
(the inference pipeline run once per slice), exact readout windows, refused prepared files, and
batches and a training step with no image anywhere."""

import json
import math
import os

import numpy as np
import pytest

pytest.importorskip("ismrmrd", reason="raw MRD files need ismrmrd")
h5py = pytest.importorskip("h5py")

from helpers import TINY_MRI_TRAINING  # noqa: E402

from diffunfold.cli import main  # noqa: E402
from diffunfold.data import raw_scans as rs  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402
from diffunfold.mrd.rawfile import read_raw  # noqa: E402
from diffunfold.mrd.writer import write_phantom_mrd  # noqa: E402
from diffunfold.physics.mri import MultiCoilMRI, birdcage_maps  # noqa: E402


def _problem(h=48, w=40, coils=4, seed=0):
    g = np.random.default_rng(seed)
    x = (g.standard_normal((1, 1, h, w)) + 1j * g.standard_normal((1, 1, h, w))).astype(np.complex64)
    sampled = g.random(w) < 0.4
    mask = np.broadcast_to(sampled[None], (h, w)).astype(np.float32)
    op = MultiCoilMRI(birdcage_maps(coils, (h, w)), mask)
    return x, op, sampled


@pytest.mark.parametrize("h,start,rows", [(48, 0, 16), (48, 20, 16), (48, 16, 32), (49, 5, 17)])
def test_a_readout_window_is_an_exact_scan_of_its_rows(h, start, rows):
    x, op, sampled = _problem(h=h)
    y = np.asarray(op.A(x))[0]
    yw, mw = rs.readout_window(y, op.coil_maps[0], start, rows)
    window = MultiCoilMRI(mw, np.broadcast_to(sampled[None], (rows, sampled.size)).astype(np.float32))
    expected = np.asarray(window.A(x[..., start : start + rows, :]))[0]
    assert np.abs(yw - expected).max() <= 1e-4 * np.abs(expected).max()
    assert np.all(yw[..., ~sampled] == 0) or np.abs(yw[..., ~sampled]).max() < 1e-5 * np.abs(yw).max()


def test_disjoint_windows_share_the_slices_energy():
    x, op, _ = _problem()
    y = np.asarray(op.A(x))[0]
    parts = [rs.readout_window(y, op.coil_maps[0], s, 16)[0] for s in (0, 16, 32)]
    assert math.isclose(sum(float(np.sum(np.abs(p) ** 2)) for p in parts), float(np.sum(np.abs(y) ** 2)), rel_tol=1e-4)
    profile = rs.readout_profile(y)
    assert profile.shape == (48,) and math.isclose(profile.sum(), float(np.sum(np.abs(y) ** 2)), rel_tol=1e-4)


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    write_phantom_mrd(folder / "exam1.h5", slices=3, size=64, coils=10, acceleration=4.0, noise_std=0.01, seed=1)
    write_phantom_mrd(folder / "exam2.h5", slices=2, size=64, coils=6, acceleration=4.0, noise_std=0.01, seed=2)
    (folder / "notes.txt").write_text("not a scan")
    return folder


@pytest.fixture(scope="module")
def prepared(raw_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    rows = rs.prepare_scans(raw_dir, out, virtual_coils=8, say=lambda *a: None).rows
    assert [r["file"] for r in rows] == ["exam1.h5", "exam2.h5"]
    return out


def test_prepare_keeps_the_acquired_lines_the_maps_and_a_noise_level(raw_dir, prepared):
    scans = rs.PreparedScans(prepared)
    assert len(scans) == 5
    assert sorted(scans.groups()) == [(6, 64), (8, 64)]  # 10 coils compressed to 8; 6 kept
    raw = read_raw(raw_dir / "exam1.h5")
    item = scans.read(0)
    assert item["kspace"].shape == item["maps"].shape == (8, 64, 64)
    assert np.array_equal(item["sampled"], raw.slices[0].sampled)
    assert np.all(item["kspace"][..., ~item["sampled"]] == 0) and np.abs(item["kspace"]).max() > 0
    assert 0 < item["data_std"] < 1
    coverage = np.sum(np.abs(item["maps"]) ** 2, axis=0)
    assert np.allclose(coverage[coverage > 0.5], 1, atol=1e-4)


def test_prepare_refuses_to_overwrite_and_passes_over_links(raw_dir, prepared, tmp_path):
    with pytest.raises(InputError, match="already exists"):
        rs.prepare_scans(raw_dir, prepared, say=lambda *a: None)
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(raw_dir / "exam2.h5", linked / "exam2.h5")
    with pytest.raises(InputError, match="no raw scans"):
        rs.raw_files(linked)


def test_a_fastmri_layout_file_is_read_as_acquired_and_its_readout_cut_exactly(tmp_path):
    from diffunfold.data.fastmri_write import write_fastmri_file
    from diffunfold.physics.mri import fft2c

    g = np.random.default_rng(3)
    x = g.standard_normal((2, 32, 40)) + 1j * g.standard_normal((2, 32, 40))
    padded = np.pad(x, ((0, 0), (16, 16), (0, 0)))  # the readout oversampled twice, as distributed
    maps = birdcage_maps(6, (64, 40))
    sampled = np.zeros(40, bool)
    sampled[16:24] = sampled[::4] = True
    kspace = (fft2c(maps[None] * padded[:, None]) * sampled).astype(np.complex64)
    path = write_fastmri_file(tmp_path / "raw" / "knee.h5", kspace, rss=np.ones((2, 32, 40), np.float32))
    assert rs.raw_files(path.parent) == [path]
    slices = rs.fastmri_slices(path)
    assert [s.index for s in slices] == [0, 1] and np.array_equal(slices[1].sampled, sampled)
    expected = fft2c(maps[None, :, 16:48] * x[:, None]) * sampled
    for s, e in zip(slices, expected, strict=True):
        assert s.kspace.shape == (6, 32, 40) and np.abs(s.kspace - e).max() <= 1e-4 * np.abs(e).max()
    rows = rs.prepare_scans(path.parent, tmp_path / "scans", virtual_coils=4, say=lambda *a: None).rows
    assert rows[0]["format"] == "fastmri" and rows[0]["grid"] == [32, 40] and rows[0]["acceleration"] == 2.5
    assert rs.PreparedScans(tmp_path / "scans").read(1)["kspace"].shape == (4, 32, 40)


def test_the_command_writes_the_prepared_files_and_its_summary(raw_dir, tmp_path, capsys):
    out, summary = tmp_path / "scans", tmp_path / "summary.json"
    assert main(["prepare-scans", str(raw_dir), str(out), "--virtual-coils", "0", "--json", str(summary)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["exam1.scans.h5", "exam2.scans.h5"]
    assert sorted(rs.PreparedScans(out).groups()) == [(6, 64), (10, 64)]  # every coil kept
    said = capsys.readouterr().out
    assert "exam1.h5 (mrd): 3 slice(s)" in said and summary.is_file()
    assert "passed over 1 entr(ies)" in said and "notes.txt" in said


def test_a_scan_that_cannot_be_prepared_costs_only_itself(raw_dir, tmp_path, capsys):
    """One bad exam in a site's folder: named with its reason, the others written, exit 1; --resume
    keeps what was written; a folder of bad exams only is one error (exit 2); OUT_DIR != RAW_DIR."""
    from diffunfold.data.fastmri_write import write_fastmri_file

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "exam1.h5").write_bytes((raw_dir / "exam1.h5").read_bytes())
    tiny = np.ones((1, 4, 8, 8), np.complex64)  # a fastMRI-layout file too small to be a scan
    write_fastmri_file(raw / "broken.h5", tiny, rss=np.ones((1, 8, 8), np.float32))
    out, summary = tmp_path / "scans", tmp_path / "summary.json"
    assert main(["prepare-scans", str(raw), str(out), "--json", str(summary)]) == 1
    err = capsys.readouterr().err
    assert "failed: broken.h5:" in err and "outside the limits" in err and "1 raw file(s) failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["exam1.scans.h5"]
    report = json.loads(summary.read_text())
    assert [r["file"] for r in report["files"]] == ["exam1.h5"] and report["failed"][0]["file"] == "broken.h5"
    before = (out / "exam1.scans.h5").stat().st_mtime_ns
    assert main(["prepare-scans", str(raw), str(out), "--resume", "--json", str(summary)]) == 1
    assert "kept 1 file(s)" in capsys.readouterr().out and (out / "exam1.scans.h5").stat().st_mtime_ns == before
    (raw / "exam1.h5").unlink()
    assert main(["prepare-scans", str(raw), str(tmp_path / "none")]) == 2
    assert "broken.h5" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert main(["prepare-scans", str(raw), str(raw)]) == 2
    assert "OUT_DIR" in (err := capsys.readouterr().err) and "folder of the input" in err


def _tampered(prepared, tmp_path, change):
    folder = tmp_path / "tampered"
    folder.mkdir()
    target = folder / f"exam2{rs.SUFFIX}"
    target.write_bytes((prepared / f"exam2{rs.SUFFIX}").read_bytes())
    with h5py.File(target, "r+") as f:
        change(f)
    return folder


def _huge(f):
    del f["kspace"]
    f.create_dataset("kspace", shape=(rs.MAX_SLICES + 1, 6, 64, 64), dtype=np.complex64)


def _nan(f):
    f["kspace"][0, 0, 0, 0] = np.nan


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda f: f.attrs.__setitem__("format", "other"), "not a prepared-scans file"),
        (lambda f: f.attrs.__setitem__("version", 99), "not a prepared-scans file"),
        (lambda f: f.attrs.__setitem__("version", "one"), "not a prepared-scans file"),
        (_huge, "outside the limits"),
        (lambda f: f.__delitem__("maps"), "'maps' is missing"),
    ],
)
def test_a_tampered_prepared_file_is_refused_before_it_is_read(prepared, tmp_path, change, words):
    with pytest.raises(InputError, match=words):
        rs.PreparedScans(_tampered(prepared, tmp_path, change))


def test_a_slice_with_nan_is_refused_when_drawn(prepared, tmp_path):
    scans = rs.PreparedScans(_tampered(prepared, tmp_path, _nan))
    with pytest.raises(InputError, match="NaN or Inf"):
        scans.read(0)
    assert scans.read(1)["kspace"].shape == (6, 64, 64)


torch_only = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is None, reason="training needs torch (the train extra)"
)


def _config(prepared, *extra):
    from diffunfold.training.config import load_config

    return load_config("mri-small", TINY_MRI_TRAINING + ['data.source="scans"', f'data.path="{prepared}"', *extra])


@torch_only
def test_scans_need_self_supervision(prepared):
    with pytest.raises(InputError, match="train.supervision = 'ssdu'"):
        _config(prepared)


@torch_only
def test_a_batch_is_windows_of_one_shape_split_for_ssdu_and_fixed_by_its_seed(prepared):
    from diffunfold.training.data import TrainingBatches, validation_set

    cfg = _config(prepared, 'train.supervision="ssdu"')
    batches = TrainingBatches(cfg)
    a, b = batches[3], batches[3]
    assert "x" not in a and "loss_operator" in a and validation_set(cfg) is None
    assert a["y"].shape[-2:] == (32, 64) and a["y"].shape[1] in (6, 8)
    assert np.array_equal(a["y"], b["y"]) and np.array_equal(a["noise"], b["noise"])
    theta, lam = np.asarray(a["operator"].mask), np.asarray(a["loss_operator"].mask)
    assert not np.any((theta > 0) & (lam > 0)) and lam.sum() > 0
    assert np.all(a["y"][np.broadcast_to(theta, a["y"].shape) == 0] == 0)
    shapes = {batches[s]["y"].shape[1] for s in range(12)}
    assert shapes == {6, 8}  # both groups are drawn, each batch within one


@torch_only
def test_training_on_prepared_scans_runs_and_lowers_nothing_to_nan(prepared, tmp_path):
    from diffunfold.training.trainer import train

    cfg = _config(prepared, 'train.supervision="ssdu"', "train.steps=2", "train.checkpoint_every=2")
    result = train(cfg, out_dir=tmp_path / "run", progress=False)
    assert math.isfinite(result["loss"])
    assert (tmp_path / "run" / "checkpoints" / "ckpt-00000002.json").is_file()


@torch_only
def test_the_held_out_line_error_is_zero_db_for_nothing_and_tiny_for_the_truth():
    from diffunfold.training.scan_validation import held_out_nmse_db

    x, op, _ = _problem()
    y = np.asarray(op.A(x))
    assert math.isclose(held_out_nmse_db(np.zeros_like(x), op, y), 0.0, abs_tol=1e-9)
    assert held_out_nmse_db(x, op, y) < -60
    assert held_out_nmse_db(x, op, y + 0.1 * np.abs(y).max()) > -60


@torch_only
def test_scans_validate_on_the_held_out_lines_of_held_out_scans(prepared, tmp_path):
    from diffunfold.training.data import validation_set
    from diffunfold.training.trainer import train

    extra = ['train.supervision="ssdu"', f'data.val_path="{prepared}"', "val.images=2", "val.steps=2"]
    first, again = validation_set(_config(prepared, *extra)), validation_set(_config(prepared, *extra))
    assert len(first.windows) == 2 and np.array_equal(first.windows[1]["y"], again.windows[1]["y"])
    cfg = _config(prepared, *extra, "train.steps=1", "train.checkpoint_every=1")
    result = train(cfg, out_dir=tmp_path / "run", progress=False)
    row = result["validation"][0]
    assert row["windows"] == 2 and math.isfinite(row["nmse_model_db"]) and math.isfinite(row["nmse_sense_db"])
    assert math.isclose(row["gain_db"], row["nmse_sense_db"] - row["nmse_model_db"])
    lines = (tmp_path / "run" / "val_scans.csv").read_text().splitlines()
    assert lines[0] == "step,windows,nmse_model_db,nmse_sense_db,gain_db" and lines[1].startswith("1,2,")


@torch_only
def test_the_bench_scores_packages_on_held_out_lines(prepared, tiny_packages, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import held_out_lines

    pkg = str(tiny_packages["mri"][1].path)
    args = ["--scans", str(prepared), "--package", pkg, "--windows", "2", "--rows", "32", "--no-write"]
    assert held_out_lines.main(args) == 0
    out = capsys.readouterr().out
    assert "| mri | " in out and "s / window" in out

"""Issue 14's reliability cases: nothing lost or overwritten, no half-written file, a batch
that keeps its good results and resumes, accurate messages, and the CLI's last guard.

Bad values (task parameters, seeds, shapes, slices, factors, --task before INPUT, files given
as folders) are in ``test_cli_malformed.py``; here are the cases that need a run to show.
The restores use the bundled image package at 64 px with 2 sampler steps.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from diffunfold import cli
from diffunfold.cli import main
from diffunfold.data.images import save_image
from diffunfold.data.phantom import write_phantom_dataset
from diffunfold.runtime.solver import Solver
from diffunfold.safe_io import open_atomic, remove_temporaries, temporary_name, write_json

REPO = Path(__file__).resolve().parents[1]
IMAGE_PKG = str(REPO / "samples" / "models" / "image-small")
MRI_PKG = str(REPO / "samples" / "models" / "mri-small")
FAST = ["--steps", "2", "--quiet", "--backend", "onnxruntime", "--threads", "1"]


def photo(path: Path, seed: int = 0) -> Path:
    save_image(path, np.random.default_rng(seed).random((3, 64, 64)))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def hidden(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*")]


# -- nothing written over without --overwrite --------------------------------------------------


def test_mask_never_replaces_an_existing_image(tmp_path, capsys):
    face = photo(tmp_path / "face64.png")
    before = digest(face)
    argv = ["mask", "gaussian1d", "--shape", "64", "64", "--acceleration", "4", "--out", str(face)]
    assert main(argv) == 2
    assert "face64.png already exists" in capsys.readouterr().err and digest(face) == before
    assert main(argv + ["--overwrite"]) == 0 and digest(face) != before


def test_phantom_never_replaces_its_files(tmp_path, capsys):
    argv = ["phantom", str(tmp_path / "ph"), "--files", "1", "--slices", "1", "--size", "16", "--coils", "2", "--quiet"]
    assert main(argv) == 0
    first = digest(tmp_path / "ph" / "phantom_0000.h5")
    assert main(argv + ["--seed", "1"]) == 2
    assert "phantom_0000.h5 already exists" in capsys.readouterr().err
    assert digest(tmp_path / "ph" / "phantom_0000.h5") == first
    assert main(argv + ["--seed", "1", "--overwrite"]) == 0
    assert digest(tmp_path / "ph" / "phantom_0000.h5") != first and not hidden(tmp_path)


def test_demo_refuses_a_used_folder_and_never_mixes_two_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "results.md").write_text("an earlier run")
    (out / "sr_x4.png").write_bytes(b"an earlier figure")
    (out / "notes.txt").write_text("the user's own")
    argv = [
        "demo",
        "--out",
        str(out),
        "--task",
        "gaussian_blur",
        "--images",
        "1",
        "--samples",
        "1",
        "--steps",
        "2",
        "--size",
        "32",
        "--quiet",
    ]
    assert main(argv) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (out / "results.md").read_text() == "an earlier run"
    assert main(argv + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["gaussian_blur.png", "notes.txt", "results.json", "results.md"]
    assert "an earlier run" not in (out / "results.md").read_text()


# -- written whole or not at all -----------------------------------------------------------------


def test_an_interrupted_image_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "x.png"
    save_image(target, np.zeros((8, 8)))
    before = digest(target)

    def half_then_ctrl_c(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        save_image(target, np.ones((8, 8)))
    assert digest(target) == before and [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_an_interrupted_stream_or_json_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "r.npy"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), open_atomic(target) as f:
        f.write(b"new, half")
        raise RuntimeError("the disk is full")
    report = write_json(tmp_path / "r.json", {"a": 1})
    with pytest.raises(TypeError):
        write_json(report, {"a": object()})
    assert target.read_bytes() == b"old" and json.loads(report.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.npy"]


# -- batches: the good inputs are kept, the bad ones listed, a rerun resumes -------------------


def test_a_batch_with_a_corrupt_file_keeps_the_good_ones_and_resumes(tmp_path, capsys):
    folder, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    photo(folder / "a.png", 1), photo(folder / "b.png", 2)
    (folder / "c.png").write_bytes(photo(tmp_path / "c_full.png", 3).read_bytes()[:200])  # truncated
    argv = [
        "restore",
        IMAGE_PKG,
        str(folder),
        "--task",
        "gaussian_blur",
        "sigma=2",
        "--out",
        str(out),
        "--json",
        str(report),
        *FAST,
    ]
    assert main(argv) == 1
    text, err = capsys.readouterr()
    assert "| a.png |" in text and "| b.png |" in text and "c.png" in err and "failed" in err
    data = json.loads(report.read_text())
    assert [r["name"] for r in data["rows"]] == ["a", "b"] and [f["name"] for f in data["failures"]] == [
        str(folder / "c.png")
    ]
    # a plain rerun says how to go on; --resume redoes nothing that is finished
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    done = stamps(out)
    assert main(argv + ["--resume"]) == 1
    assert stamps(out) == done and [r["name"] for r in json.loads(report.read_text())["rows"]] == ["a", "b"]
    # once the bad file is replaced, --resume does just that one
    (folder / "c.png").write_bytes((tmp_path / "c_full.png").read_bytes())
    assert main(argv + ["--resume"]) == 0
    assert {k: v for k, v in stamps(out).items() if k in done} == done
    data = json.loads(report.read_text())
    assert [r["name"] for r in data["rows"]] == ["a", "b", "c"] and data["failures"] == []
    assert data["skipped"] == ["a", "b"] and not hidden(tmp_path)


def test_ctrl_c_in_a_batch_keeps_the_finished_images_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    folder, out = tmp_path / "in", tmp_path / "out"
    for i, name in enumerate("abc"):
        photo(folder / f"{name}.png", i)
    real, calls = Solver.solve, []

    def stop_at_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Solver, "solve", stop_at_the_second)
    argv = ["restore", IMAGE_PKG, str(folder), "--task", "sr", "factor=2", "--out", str(out), *FAST]
    assert main(argv) == 130
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "1 of 3 image(s) finished" in err[0] and "--resume" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["a_baseline.png", "a_measured.png", "a_restored.png"]
    monkeypatch.setattr(Solver, "solve", real)
    first = stamps(out)
    assert main(argv + ["--resume"]) == 0
    assert len(list(out.iterdir())) == 9 and {k: stamps(out)[k] for k in first} == first


def test_mri_names_the_file_and_slice_with_nan_kspace_and_keeps_the_others(tmp_path, capsys):
    (path,) = write_phantom_dataset(tmp_path, num_files=1, slices_per_file=2, shape=(32, 32), ncoils=2, progress=False)
    with h5py.File(path, "r+") as f:
        k = f["kspace"][...]
        k[1, 0, 5, 5] = np.nan
        f["kspace"][...] = k
    out = tmp_path / "recon"
    assert main(["mri", MRI_PKG, str(path), "--slices", "all", "--out", str(out), *FAST]) == 1
    err = capsys.readouterr().err
    assert "phantom_0000.h5 slice 1" in err and "NaN" in err
    assert (out / "phantom_0000_s000_recon.npy").is_file() and not (out / "phantom_0000_s001_recon.npy").exists()
    assert main(["mri", MRI_PKG, str(path), "--slices", "1", "--out", str(tmp_path / "r2"), *FAST]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "slice 1" in line and not (tmp_path / "r2").exists()


# -- accurate messages ---------------------------------------------------------------------------


def test_a_bad_acceleration_is_refused_before_any_note(tmp_path, capsys):
    (path,) = write_phantom_dataset(tmp_path, num_files=1, slices_per_file=1, shape=(32, 32), ncoils=2, progress=False)
    assert main(["mri", MRI_PKG, str(path), "--acceleration", "nan"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--acceleration" in err and "'nan'" in err


def test_threads_0_means_all_cores_on_every_command(tmp_path, capsys):
    face = photo(tmp_path / "face.png")
    fast = [a for a in FAST if a not in ("--threads", "1")]
    assert (
        main(
            [
                "restore",
                IMAGE_PKG,
                str(face),
                "--task",
                "sr",
                "factor=2",
                "--out",
                str(tmp_path / "o"),
                "--threads",
                "0",
                *fast,
            ]
        )
        == 0
    )
    (path,) = write_phantom_dataset(
        tmp_path / "ph", num_files=1, slices_per_file=1, shape=(32, 32), ncoils=2, progress=False
    )
    assert main(["mri", MRI_PKG, str(path), "--out", str(tmp_path / "r"), "--threads", "0", *fast]) == 0


# -- the last guard ------------------------------------------------------------------------------


def test_an_unexpected_error_is_one_line_with_a_hint_and_debug_shows_it(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("something no one foresaw\non two lines")

    monkeypatch.setattr(cli, "_cmd_tasks", broken)
    assert main(["tasks"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "RuntimeError: something no one foresaw" in err[0] and "--debug" in err[0]
    with pytest.raises(RuntimeError):
        main(["tasks", "--debug"])


def test_ctrl_c_anywhere_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_tasks", interrupted)
    assert main(["tasks"]) == 130
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted")


def test_temporaries_of_gone_processes_are_removed_and_nothing_else(tmp_path):
    """What a worker killed mid-write left (its pid in the name) goes; another process's
    temporary, a user's file of a similar name, a link and a folder stay."""
    left = temporary_name(tmp_path / "a.png")
    left.write_bytes(b"half")
    pid = int(left.name.split(".")[-3])
    other = tmp_path / f".a.png.{pid + 1}.0123abcd.tmp"
    user = tmp_path / f"a.png.{pid}.0123abcd.tmp"  # not hidden: not one of ours
    folder = tmp_path / f".b.png.{pid}.89abcdef.tmp"
    link = tmp_path / f".c.png.{pid}.00000000.tmp"
    for p in (other, user):
        p.write_bytes(b"keep")
    folder.mkdir()
    link.symlink_to(other)
    assert remove_temporaries(tmp_path, [pid]) == [left]
    assert not left.exists() and all(p.exists() for p in (other, user, folder, link))
    assert remove_temporaries(tmp_path / "missing", [pid]) == [] and remove_temporaries(tmp_path, []) == []

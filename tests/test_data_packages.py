"""`diffunfold data photos|mri-volumes` on small fixture packages (helpers.py builds them; nothing
is downloaded): reading .deb/.whl archives and Qt resource bundles, the photo filter, duplicates,
licences, the held-out split, and the MRI slices the volumes give for training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import COPYRIGHT, drawing, photo_like, photo_packages, volume_packages, write_rcc
from PIL import Image

from diffunfold.cli import main
from diffunfold.data.held_out import SCORED_AT_MOST, _spread, validation_indices
from diffunfold.data.licences import licence_of, parse_copyright
from diffunfold.data.photos import held_out, not_a_photo
from diffunfold.data.qt_rcc import QtResource
from diffunfold.errors import InputError


def test_qt_resource_reader_walks_folders_and_reads_payloads():
    files = {"one.png": b"\x89PNG first", "two.webp": b"RIFF second"}
    rcc = QtResource.from_bytes(write_rcc(files))
    assert sorted(rcc.entries()) == ["a/b/one.png", "a/b/two.webp"]
    assert rcc.files((".webp",)) == {"a/b/two.webp": b"RIFF second"}


def test_dep5_licences_last_matching_stanza_wins():
    stanzas = parse_copyright(COPYRIGHT)
    assert licence_of(stanzas, "Media/Backgrounds/Nature/x.jpg")[0] == "CC-BY-SA-3.0"
    assert licence_of(stanzas, "Media/Backgrounds/Indoors/x.jpg")[0] == "GPL-2+"


def test_photo_filter_tells_photographs_from_drawings():
    assert not_a_photo(photo_like(0)) is None
    assert "flat" in not_a_photo(drawing()) or "colours" in not_a_photo(drawing())
    assert "too small" in not_a_photo(photo_like(0, (200, 150)))
    rgba = photo_like(0).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 0))
    assert "transparent" in not_a_photo(rgba)


def test_held_out_split_depends_on_the_hash_alone():
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    share = np.mean([held_out(h) for h in hashes])
    assert 0.12 < share < 0.18
    assert [held_out(h) for h in hashes] == [held_out(h) for h in hashes]


def test_data_photos_command_on_fixture_packages(tmp_path, capsys):
    pk = tmp_path / "pk"
    photo_packages(pk)
    out = tmp_path / "photos"
    assert main(["data", "photos", str(out), "--packages", str(pk), "--offline", "--max-side", "1024"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    kept = {p["path"]: p for p in m["photos"]}
    # 6 scratch photos + the horse from the .rcc + apple + the big one kept; the drawing, one
    # of a photo and its re-encoded copy, and the tiny image dropped, each with its reason.
    assert len(kept) == 9, sorted(kept)
    reasons = {d["path"]: d["reason"] for d in m["dropped"]}
    # of a photo and its re-encoded copy the first in path order is kept
    assert "near-duplicate" in reasons["Media/Backgrounds/Nature/n0.jpg"]
    assert "Indoors/copy.jpg" in reasons["Media/Backgrounds/Nature/n0.jpg"]
    assert "too small" in reasons["a/b/tiny.png"]
    assert "drawing" in reasons["Media/Backgrounds/Indoors/cartoon.jpg"]
    assert kept["Media/Backgrounds/Nature/n1.jpg"]["licence"] == "CC-BY-SA-3.0"
    assert kept["Media/Backgrounds/Indoors/copy.jpg"]["licence"] == "GPL-2+"
    for p in m["photos"]:
        f = out / p["file"]
        assert f.exists() and f.parent.name == p["split"]
        assert max(Image.open(f).size) <= 1024
    assert {a["package"] for a in m["packages"]} == {"gcompris-qt-data", "scratch", "opencv-doc", "mate-backgrounds"}
    # a rerun refuses to write over it; --overwrite writes the same split
    assert main(["data", "photos", str(out), "--packages", str(pk), "--offline"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_split_is_stable_when_sources_change(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    photo_packages(a)
    photo_packages(b, extra_seed=7)  # a different opencv photo
    for pk in (a, b):
        assert main(["data", "photos", str(pk / "out"), "--packages", str(pk), "--offline"]) == 0
    split = [
        {p["sha256"]: p["split"] for p in json.loads((pk / "out" / "manifest.json").read_text())["photos"]}
        for pk in (a, b)
    ]
    common = set(split[0]) & set(split[1])
    assert len(common) == 8 and all(split[0][h] == split[1][h] for h in common)


def test_offline_without_the_archive_says_what_is_missing(tmp_path, capsys):
    assert main(["data", "photos", str(tmp_path / "o"), "--packages", str(tmp_path), "--offline"]) == 2
    assert "gcompris-qt-data" in capsys.readouterr().err


def test_mri_volumes_command_and_the_slices_it_trains_on(tmp_path):
    pytest.importorskip("torch")
    from diffunfold.data.held_out import held_out_slices
    from diffunfold.data.mri_slices import COIL_COUNTS, VolumeSlices
    from diffunfold.training.config import load_config
    from diffunfold.training.data import TrainingBatches, validation_set

    volume_packages(tmp_path / "pk")
    out = tmp_path / "mri"
    assert main(["data", "mri-volumes", str(out), "--packages", str(tmp_path / "pk"), "--offline"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    splits = {v["name"]: v["split"] for v in m["volumes"]}
    assert sorted(splits.values()) == ["held-out", "train", "train"]
    assert {v["licence"] for v in m["volumes"]} == {"GPL-2+", "BSD-3-Clause"}
    cfg = load_config(
        "mri-small",
        [
            'data.source="volumes"',
            f'data.path="{out}/train"',
            f'data.val_path="{out}/held-out"',
            "data.size=32",
            "train.batch_size=4",
        ],
    )
    batches = TrainingBatches(cfg)
    for step in (0, 1, 2):
        b = batches[step]
        x, y, op = b["x"], b["y"], b["operator"]
        assert x.shape == (4, 1, 32, 32) and x.dtype == np.complex64
        mag = np.abs(x).reshape(4, -1)
        assert np.allclose(np.percentile(mag, 99, axis=1), 1.0, atol=1e-3)  # 99th-percentile normalised
        assert np.abs(np.angle(x[np.abs(x) > 0.5])).max() > 0.1  # a phase, not a real image
        maps = np.asarray(op.coil_maps)
        ncoils = maps.shape[-3]
        assert ncoils in COIL_COUNTS and y.shape == (4, ncoils, 32, 32)
        rss = (np.abs(maps) ** 2).sum(axis=-3)
        assert np.allclose(rss[rss > 0.5], 1.0, atol=1e-4)  # normalised coil maps
        assert np.all(y[..., ~np.asarray(op.mask, bool).reshape(32, 32)] == 0)  # unsampled k-space empty
    assert np.array_equal(batches[1]["x"], TrainingBatches(cfg)[1]["x"])  # fixed by (seed, step)
    held, maps = validation_set(cfg)
    assert held.shape == (cfg.val.images, 1, 32, 32) and maps.shape == (15, 32, 32)
    # Training validates on other slices than the harnesses score, and says so for a bad band.
    slices = VolumeSlices(out / "held-out", 32)
    test = {it["name"] for it in slices.fixed(12)}
    validation = [it["name"] for it in slices.fixed(12, band="validation")]
    assert len(set(validation)) == 12 and not test & set(validation)
    scored = held_out_slices(out / "held-out", 32, cfg.val.images)[1]
    assert not any(np.allclose(np.abs(v), np.abs(t)) for v in held[:, 0] for t in scored[:, 0])
    with pytest.raises(InputError, match="band must be one of"):
        slices.fixed(1, band="train")


def test_validation_photos_are_never_the_scored_ones(tmp_path):
    pytest.importorskip("torch")
    from diffunfold.training.config import load_config
    from diffunfold.training.data import _validation_picks, validation_set

    for name in ("train", "held-out"):
        (tmp_path / name).mkdir()
        for i in range(20):
            photo_like(i, (96, 80)).save(tmp_path / name / f"p{i:02d}.png")
    folders = [f'data.path="{tmp_path / "train"}"', f'data.val_path="{tmp_path / "held-out"}"']
    cfg = load_config("tiny", ['data.source="folder"', *folders, "val.images=5"])
    assert _validation_picks(cfg, 20) == validation_indices(20)
    assert validation_set(cfg)[0].shape[0] == 5
    assert _validation_picks(load_config("tiny", []), 20) == list(range(20))  # phantoms: nothing is scored
    for n in (12, 20, 39, 200):
        picks = set(validation_indices(n))
        assert picks, n
        for count in range(1, SCORED_AT_MOST + 1):
            assert not picks & set(_spread(n, count)), (n, count)
    assert validation_indices(11) == []  # every photo of a folder this small is scored by some count


def test_demo_restores_the_held_out_photos_and_credits_them(tmp_path, capsys):
    photo_packages(tmp_path / "pk")
    data = tmp_path / "data"
    assert main(["data", "photos", str(data / "photos"), "--packages", str(tmp_path / "pk"), "--offline"]) == 0
    held = [
        p for p in json.loads((data / "photos" / "manifest.json").read_text())["photos"] if p["split"] == "held-out"
    ]
    assert held  # the fixture's content hashes put one photo on the held-out side
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--data",
                str(data),
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
                "--quiet",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert "held-out photographs" in results["data"]["image"]["source"]
    last = capsys.readouterr().out.strip().splitlines()[-2:]  # the log ends naming the backend and data
    assert last[0].startswith(f"backend: {results['backend']} (auto: ")
    assert last[1].startswith("image data: held-out photographs") and Path(held[0]["path"]).stem in last[1]
    credit = results["data"]["image"]["credits"][0]
    assert held[0]["package"] in credit and held[0]["licence"] in credit
    assert held[0]["path"] in (out / "results.md").read_text()
    # without the folder the demo says what it uses instead, and how to get the real data
    assert (
        main(
            [
                "demo",
                "--data",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "d2"),
                "--task",
                "gaussian_blur",
                "--images",
                "1",
                "--samples",
                "1",
                "--steps",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        "diffunfold data photos"
        in json.loads((tmp_path / "d2" / "results.json").read_text())["data"]["image"]["source"]
    )


def fake_fetchers(monkeypatch, archives: Path, calls: list) -> None:
    """Stand-ins for apt-get and pip that copy a fixture archive where the real tools would
    write it: apt-get into its working directory, pip into ``-d`` taken relative to its own."""
    import shutil as sh
    import subprocess

    from diffunfold.data import packages

    def run(cmd, cwd=None, **kwargs):
        calls.append((list(cmd), cwd))
        name = cmd[-1]
        where = Path(cwd or ".") / (cmd[cmd.index("-d") + 1] if "-d" in cmd else ".")
        found = [a for a in archives.iterdir() if a.name.startswith((f"{name}_", f"{name}-"))]
        where.mkdir(parents=True, exist_ok=True)
        for a in found:
            sh.copy(a, where / a.name)
        return subprocess.CompletedProcess(cmd, 0 if found else 1, "", "" if found else f"E: no {name}\n")

    monkeypatch.setattr(packages.subprocess, "run", run)
    monkeypatch.setattr(packages.shutil, "which", lambda tool: f"/usr/bin/{tool}")


def test_data_commands_download_into_a_relative_folder(tmp_path, monkeypatch, capsys):
    archives = tmp_path / "archives"
    photo_packages(archives)
    volume_packages(archives)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    calls = []
    fake_fetchers(monkeypatch, archives, calls)
    assert main(["data", "photos", "data/photos"]) == 0, capsys.readouterr().err
    assert main(["data", "mri-volumes", "data/mri"]) == 0, capsys.readouterr().err
    assert {Path(c[-1]).name for c, _ in calls} >= {"gcompris-qt-data", "nilearn", "mricron-data"}
    assert all(Path(cwd).is_absolute() for _, cwd in calls)
    assert sorted(p.name for p in (work / "data/mri/packages").iterdir()) == [
        "insighttoolkit5-examples_1.0_all.deb",
        "mricron-data_1.0_all.deb",
        "nilearn-1.0-py3-none-any.whl",
    ]
    m = json.loads((work / "data/mri/manifest.json").read_text())
    assert [v["name"] for v in m["volumes"] if v["split"] == "held-out"] == ["itk-t1"]
    assert (work / "data/photos/manifest.json").exists()


def test_a_failed_download_names_the_error_not_a_warning(tmp_path, monkeypatch, capsys):
    import subprocess

    from diffunfold.data import packages

    def run(cmd, cwd=None, **kwargs):
        return subprocess.CompletedProcess(
            cmd,
            1,
            "",
            "WARNING: Location 'x' is ignored\n"
            "ERROR: No matching distribution found for nilearn\n"
            "WARNING: pip is old\n",
        )

    monkeypatch.setattr(packages.subprocess, "run", run)
    monkeypatch.setattr(packages.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.chdir(tmp_path)
    assert main(["data", "mri-volumes", "out", "--packages", "pk"]) == 2
    err = capsys.readouterr().err
    assert "status 1" in err and "No matching distribution found for nilearn" in err
    assert "Location" not in err and "pip is old" not in err


def test_the_whole_photos_folder_is_refused_where_held_out_photos_are_meant(tmp_path):
    """`--photos data/photos` once spread its picks over the training photos too: the root of
    `diffunfold data photos` is refused with the folder to pass instead."""
    from diffunfold.data.held_out import held_out_photos

    for name in ("train", "held-out"):
        (tmp_path / name).mkdir()
        for i in range(3):
            photo_like(i, (96, 80)).save(tmp_path / name / f"p{i:02d}.png")
    with pytest.raises(InputError, match=r"training photos too.*held-out"):
        held_out_photos(tmp_path, 32, 2)
    names, x = held_out_photos(tmp_path / "held-out", 32, 2)
    assert len(names) == 2 and x.shape == (2, 3, 32, 32)

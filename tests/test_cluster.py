"""`diffunfold restore --ray` and `diffunfold mri --ray` on a local Ray (loopback, 2 CPUs), started
once for the module: the same files and bytes as the single-process path, resume, a worker killed
with SIGKILL mid-run, a bad input among good ones.

Tiny packages at 32x32 and a few sampler steps: these tests check the plumbing, not quality.
"""

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="building test packages needs torch (the export extra)")
pytest.importorskip("onnx", reason="building test packages needs onnx (the export extra)")
ray = pytest.importorskip("ray", reason="ray is not installed (the cluster extra: pip install 'diffunfold[cluster]')")
pytestmark = pytest.mark.torch

from helpers import tiny_model  # noqa: E402

from diffunfold.cli import main  # noqa: E402
from diffunfold.data.images import bundled_image, save_image  # noqa: E402
from diffunfold.data.phantom import write_phantom_dataset  # noqa: E402
from diffunfold.export import export_model  # noqa: E402

FAST = ["--steps", "2", "--quiet"]
BLUR = ["--task", "gaussian_blur", "sigma=1.5", "--noise", "0.05"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module, on loopback; the commands join it (they find it initialised)."""
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("packages")
    quiet = dict(log=lambda s: None)
    image = export_model(tiny_model(shared=True, stages=2), root / "image", tasks=["gaussian_blur"], **quiet)
    mri = export_model(tiny_model(shared=True, data="mri", channels=1, stages=2, seed=2), root / "mri", **quiet)
    return {"image": str(image.path), "mri": str(mri.path)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four small images: RGB, grey, RGB again, a grey crop of another size."""
    folder = tmp_path_factory.mktemp("photos")
    save_image(folder / "astro.png", bundled_image("astronaut")[:, ::16, ::16])
    save_image(folder / "camera.png", bundled_image("camera", channels=1)[:, 200:232, 200:240])
    save_image(folder / "coffee.png", bundled_image("coffee")[:, ::12, ::16][:, :32, :32])
    save_image(folder / "moon.png", bundled_image("camera", channels=1)[:, 300:332, 100:132])
    return folder


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def restore(pkg, inputs, out, *extra) -> int:
    return main(["restore", pkg, *map(str, inputs), *BLUR, "--out", str(out), *FAST, *extra])


def test_restore_on_ray_writes_the_same_files_as_one_process(packages, photos, tmp_path, capsys):
    assert restore(packages["image"], [photos], tmp_path / "one", "--samples", "2") == 0
    report = tmp_path / "ray.json"
    args = ["--samples", "2", "--ray", "--ray-actors", "2", "--json", str(report)]
    assert restore(packages["image"], [photos], tmp_path / "ray", *args) == 0
    text = capsys.readouterr().out
    one, on_ray = digests(tmp_path / "one"), digests(tmp_path / "ray")
    assert len(one) == 4 * 4 and on_ray == one  # restored, baseline, measured, std: same names, same bytes
    assert "ray: 2 actor(s) (1 CPU each) on 1 of 1 node(s) of a local Ray" in text
    assert "ray: 4 image(s) done, 0 skipped (finished before), 0 failed" in text and "s per task" in text
    data = json.loads(report.read_text())
    assert data["cluster"]["done"] == 4 and data["cluster"]["actors"] == 2 and len(data["rows"]) == 4
    assert [r["seed"] for r in sorted(data["rows"], key=lambda r: r["seed"])] == [0, 1, 2, 3]


def test_resume_on_ray_skips_the_finished_and_redoes_a_half_unit(packages, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert restore(packages["image"], [photos], out, "--ray") == 0
    full = digests(out)
    (out / "camera_baseline.png").unlink()  # as if the run stopped between camera's outputs
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir() if not p.name.startswith("camera")}
    assert restore(packages["image"], [photos], out, "--ray") == 2  # refused: outputs exist, no --resume
    capsys.readouterr()
    assert restore(packages["image"], [photos], out, "--ray", "--resume") == 0
    text = capsys.readouterr().out
    assert "ray: 1 image(s) done, 3 skipped (finished before), 0 failed" in text
    assert digests(out) == full  # camera's outputs whole again, nothing else
    assert {n: (p.stat().st_ino, p.stat().st_mtime_ns) for n, p in ((n, out / n) for n in kept)} == kept
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # nothing half-written left
    assert restore(packages["image"], [photos], out, "--ray", "--resume") == 0  # all done: no actor started
    assert "ray: nothing left to do, no actor started; 4 image(s) skipped" in capsys.readouterr().out


def _actor_pids() -> set[int]:
    """The processes of live diffunfold actors (Ray titles them ``ray::Worker...``)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::Worker"):
                    found.add(int(entry.name))
            except OSError:
                pass
    return found


def test_a_worker_killed_mid_run_costs_only_its_task(packages, photos, tmp_path, capsys):
    """SIGKILL one actor's process once the first output appears: Ray restarts it and retries its
    task; every image is written, the same as without the kill."""
    out, killed = tmp_path / "out", []

    def kill_one():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            pids = _actor_pids()
            if pids and out.is_dir() and any(p.suffix == ".png" for p in out.iterdir()):
                os.kill(min(pids), signal.SIGKILL)
                killed.append(min(pids))
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    assert restore(packages["image"], [photos], out, "--ray", "--ray-actors", "2", "--steps", "12") == 0
    killer.join()
    text = capsys.readouterr().out
    assert killed, "no actor process was found to kill"
    assert "ray: 4 image(s) done, 0 skipped (finished before), 0 failed" in text
    assert "died and were restarted" in text
    assert restore(packages["image"], [photos], tmp_path / "ref", "--steps", "12") == 0
    assert digests(out) == digests(tmp_path / "ref")


def test_a_bad_input_fails_alone_with_its_reason(packages, photos, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("astro", "camera"):
        (folder / f"{name}.png").write_bytes((photos / f"{name}.png").read_bytes())
    (folder / "broken.png").write_bytes((photos / "coffee.png").read_bytes()[:120])  # header reads, data does not
    report = tmp_path / "r.json"
    assert (
        restore(packages["image"], [folder], tmp_path / "out", "--ray", "--ray-actors", "3", "--json", str(report)) == 1
    )
    captured = capsys.readouterr()
    assert "ray: 3 actor(s) (0.666667 CPU each)" in captured.out  # more actors than cores: they share
    assert "ray: 2 image(s) done, 0 skipped (finished before), 1 failed" in captured.out
    assert "failed: " in captured.err and "broken.png" in captured.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{n}_{k}.png" for n in ("astro", "camera") for k in ("baseline", "measured", "restored")
    ]
    (failure,) = json.loads(report.read_text())["failures"]
    assert failure["name"].endswith("broken.png") and failure["reason"]


def test_mri_on_ray_matches_one_process(packages, tmp_path, capsys):
    files = write_phantom_dataset(
        tmp_path / "phantoms", num_files=2, slices_per_file=2, shape=(32, 32), ncoils=4, progress=False
    )
    opts = ["--slices", "all", "--coil-maps", "estimate", *FAST]
    for f in files:
        assert main(["mri", packages["mri"], str(f), "--out", str(tmp_path / "one"), *opts]) == 0
    report = tmp_path / "r.json"
    args = ["mri", packages["mri"], *map(str, files), "--out", str(tmp_path / "ray"), "--ray", "--json", str(report)]
    assert main(args + opts) == 0
    text = capsys.readouterr().out
    assert "ray: 4 task(s) done, 0 skipped (finished before), 0 failed" in text
    assert digests(tmp_path / "ray") == digests(tmp_path / "one")
    assert len(digests(tmp_path / "one")) == 2 * (2 * 4 + 1)  # per slice 3 PNGs and a .npy; a mask per file
    rows = json.loads(report.read_text())["rows"]
    assert sorted((Path(r["file"]).name, r["slice"]) for r in rows) == [(f.name, s) for f in files for s in (0, 1)]
    assert all(np.isfinite(r["psnr"]) for r in rows)


NO_RAY = """
import sys

class NoRay:  # behave as if the cluster extra were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ray":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

sys.meta_path.insert(0, NoRay())
from diffunfold.cli import main
"""


def test_without_ray_help_works_and_ray_says_which_extra(packages, photos, tmp_path):
    """The core install stays Ray-free: --help explains --ray and the tasks without importing
    ray; --ray without it is one error naming the extra (exit status 2), nothing written."""
    import subprocess
    import sys

    code = NO_RAY + (
        "import contextlib, io\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
        "    main(['mri', '--help'])\n"
        "assert 'One task is one slice of a fastMRI file' in buf.getvalue(), buf.getvalue()\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'ray']\n"
        f"sys.exit(main(['restore', {packages['image']!r}, {str(photos)!r}, '--task', 'gaussian_blur', "
        f"'--out', {str(tmp_path / 'out')!r}, '--ray', '--quiet']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install 'diffunfold[cluster]'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_raw_mrd_file_is_one_task_beside_fastmri_slices(packages, tmp_path, capsys):
    """Mixed inputs: a raw MRD file (one task: its slices as acquired) and a fastMRI file (a task
    per slice) in one run; the MRD images and PNGs equal the single-process run's."""
    pytest.importorskip("ismrmrd", reason="raw MRD files need the mrd extra")
    from diffunfold.mrd.outputs import image_values
    from diffunfold.mrd.writer import write_phantom_mrd

    raw = write_phantom_mrd(tmp_path / "in" / "scan.h5", slices=2, size=32, coils=4, acceleration=4, seed=2)
    (fastmri,) = write_phantom_dataset(tmp_path / "in", num_files=1, slices_per_file=2, shape=(32, 32), ncoils=4)
    assert main(["mri", packages["mri"], str(raw), "--out", str(tmp_path / "one"), *FAST]) == 0
    assert main(["mri", packages["mri"], str(tmp_path / "in"), "--out", str(tmp_path / "ray"), "--ray", *FAST]) == 0
    text = capsys.readouterr().out
    assert "ray: 2 task(s) done" in text and "scan.h5: MRD raw data, 2 slice(s)" in text  # middle slice + file
    assert digests(tmp_path / "ray" / "scan_png") == digests(tmp_path / "one" / "scan_png")
    import ismrmrd

    def images(path):
        dset = ismrmrd.Dataset(str(path), "dataset", mode="r")
        try:
            return [image_values(dset.read_image("image_1", i)) for i in range(2)]
        finally:
            dset.close()

    for a, b in zip(images(tmp_path / "one" / "scan_images.h5"), images(tmp_path / "ray" / "scan_images.h5")):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "ray" / f"{fastmri.stem}_s001_recon.npy").is_file()

"""Hostile files: image bombs, crafted archives and packages, links planted at output paths.

Every crafted input is built here, small: the image bombs are PNG headers that declare a huge
size (their pixels are never there, and the tests fail if anything decodes them), the archive
bombs are ~100 KB of compressed zeros that would expand to 100 MiB. Each test is bounded in time,
so code that loops on a crafted input fails instead of hanging.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import tarfile
import tempfile
import tracemalloc
import zipfile
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from helpers import photo_packages, volume_packages

from diffunfold.cli import main
from diffunfold.data.packages import Package, read_members
from diffunfold.data.qt_rcc import QtResource
from diffunfold.errors import InputError
from diffunfold.package import ModelPackage, _manifest_digest, write_manifest

REPO = Path(__file__).resolve().parents[1]
IMAGE_PKG = str(REPO / "samples" / "models" / "image-small")
MRI_PKG = str(REPO / "samples" / "models" / "mri-small")
BOMB = 100 << 20  # what each archive bomb expands to: above the 64 MiB a small archive may give


def one_line(err: str) -> str:
    """The one line a refusal prints (progress bars aside)."""
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not re.search(r"\d+%\|", line)]
    assert len(lines) == 1, err
    return lines[0]


# -- case 5: image bombs ---------------------------------------------------------------------------


def png_header(width: int, height: int, rows: int = 0) -> bytes:
    """An 8-bit RGB PNG declaring ``width x height`` whose data holds only ``rows`` rows."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(bytes((3 * width + 1) * rows))) if rows else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch):
    """Any attempt to decode pixels fails the test (so nothing can allocate gigabytes)."""
    from diffunfold.data import image_io

    def refuse(path):
        raise AssertionError(f"{path} was decoded")

    monkeypatch.setattr(image_io, "_decode", refuse)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side, words", [(9000, ["9000x9000", "available"]), (30000, ["900000000 pixels", "bomb"])])
def test_image_bombs_are_refused_from_the_header(tmp_path, monkeypatch, capsys, no_decoding, side, words):
    from diffunfold.runtime import tiling

    monkeypatch.setattr(tiling, "available_memory", lambda device_kind="cpu": 8 << 30)  # any machine alike
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(side, side, rows=4))
    out = tmp_path / "out"
    code = main(["restore", IMAGE_PKG, str(bomb), "--task", "gaussian_blur", "sigma=2", "--out", str(out), "--quiet"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and all(w in line for w in words), line
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.timeout(30)
def test_pillows_bomb_warning_range_is_refused_too(tmp_path, no_decoding):
    from diffunfold.data.image_io import read_image

    bomb = tmp_path / "warn.png"
    bomb.write_bytes(png_header(10000, 10000))  # 100 Mpx: Pillow only warns, and would decode
    with pytest.raises(InputError, match="bomb"):
        read_image(bomb)


@pytest.mark.timeout(30)
def test_a_bomb_given_as_a_mask_or_training_image_is_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile

    from diffunfold.data.images import load_image

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    bomb = tmp_path / "mask.png"
    bomb.write_bytes(png_header(10000, 10000))
    with pytest.raises(InputError, match="bomb"):
        load_image(bomb, channels=1)


# -- case 6: `diffunfold data` outputs -------------------------------------------------------------


@pytest.mark.timeout(120)
def test_data_photos_never_writes_through_a_planted_link_nor_over_files(tmp_path, capsys):
    pk = tmp_path / "pk"
    photo_packages(pk)
    ref = tmp_path / "ref"
    assert main(["data", "photos", str(ref), "--packages", str(pk), "--offline"]) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    out = tmp_path / "out"
    for f in ref.glob("*/*"):
        (out / f.parent.name).mkdir(parents=True, exist_ok=True)
        (out / f.parent.name / f.name).symlink_to(victim)
    assert main(["data", "photos", str(out), "--packages", str(pk), "--offline"]) == 2
    assert "--overwrite" in one_line(capsys.readouterr().err)
    assert victim.read_text() == "mine"
    assert main(["data", "photos", str(out), "--packages", str(pk), "--offline", "--overwrite"]) == 0
    assert victim.read_text() == "mine"
    written = sorted(out.glob("*/*"))
    assert written and not any(p.is_symlink() for p in written)
    assert [p.relative_to(out) for p in written] == [p.relative_to(ref) for p in sorted(ref.glob("*/*"))]
    assert not list(out.glob(".staging-*"))


@pytest.mark.timeout(120)
def test_a_failed_data_run_leaves_nothing_behind(tmp_path, capsys):
    pk = tmp_path / "pk"
    photo_packages(pk)
    last = pk / "mate-backgrounds_1.26_all.deb"  # the last source: the others are read first
    last.write_bytes(last.read_bytes()[:-2000])
    out = tmp_path / "out"
    assert main(["data", "photos", str(out), "--packages", str(pk), "--offline"]) == 2
    assert "mate-backgrounds" in one_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.timeout(120)
def test_data_mri_volumes_never_writes_through_a_planted_link(tmp_path, capsys):
    pytest.importorskip("nibabel")
    volume_packages(tmp_path / "pk")
    victim = tmp_path / "victim.h5"
    victim.write_text("mine")
    out = tmp_path / "mri"
    (out / "held-out").mkdir(parents=True)
    (out / "held-out" / "itk-t1.h5").symlink_to(victim)
    args = ["data", "mri-volumes", str(out), "--packages", str(tmp_path / "pk"), "--offline"]
    assert main(args) == 2
    one_line(capsys.readouterr().err)
    assert main(args + ["--overwrite"]) == 0
    assert victim.read_text() == "mine" and not (out / "held-out" / "itk-t1.h5").is_symlink()


# -- case 7: `diffunfold mri --json` on a raw MRD file ----------------------------------------------


@pytest.mark.timeout(180)
def test_mri_raw_json_is_never_written_through_a_link(tmp_path, capsys):
    pytest.importorskip("ismrmrd")
    from diffunfold.mrd.writer import write_phantom_mrd

    raw = write_phantom_mrd(tmp_path / "raw.h5", slices=1, size=32, coils=4)
    target = tmp_path / "elsewhere.json"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(target)
    base = ["mri", MRI_PKG, str(raw), "--steps", "2", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "a"), "--json", str(dangling)]) == 2
    assert "already exists" in one_line(capsys.readouterr().err) and not target.exists()
    target.write_text("mine")
    assert main(base + ["--out", str(tmp_path / "b"), "--json", str(dangling), "--overwrite"]) == 0
    assert target.read_text() == "mine"
    assert not dangling.is_symlink() and json.loads(dangling.read_text())["format"] == "mrd"


# -- case 8: crafted archives ---------------------------------------------------------------------


def ar_archive(members: list[tuple[str, bytes, str | None]]) -> bytes:
    """An ar archive; a member's third field, when given, replaces its declared size."""
    out = b"!<arch>\n"
    for name, blob, size in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{size or len(blob):<10}`\n".encode() + blob
        out += b"\n" if len(blob) % 2 else b""
    return out


def deb(tmp_path: Path, data: bytes, size: str | None = None, member: str = "data.tar.xz") -> Package:
    path = tmp_path / "x_1.0_all.deb"
    path.write_bytes(ar_archive([("debian-binary", b"2.0\n", None), (member, data, size)]))
    return Package("deb", "x", "1.0", path)


class Zeros(io.RawIOBase):
    """``n`` zero bytes, made as they are read (a bomb is built without holding it)."""

    def __init__(self, n: int):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def peak_while(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.timeout(20)
@pytest.mark.parametrize("size", ["-60", "-100", "12ab", "99999999"])
def test_ar_sizes_that_are_negative_not_numbers_or_too_long_are_refused(tmp_path, size):
    with pytest.raises(InputError, match="x_1.0_all.deb"):
        read_members(deb(tmp_path, b"\0" * 200, size=size), ["*"])


@pytest.mark.timeout(20)
def test_truncated_deb_is_a_clean_error_from_the_cli(tmp_path, capsys):
    pk = tmp_path / "pk"
    photo_packages(pk)
    first = pk / "gcompris-qt-data_3.1-2_all.deb"
    first.write_bytes(first.read_bytes()[:300])
    assert main(["data", "photos", str(tmp_path / "o"), "--packages", str(pk), "--offline"]) == 2
    assert "gcompris-qt-data_3.1-2_all.deb" in one_line(capsys.readouterr().err)


@pytest.mark.timeout(60)
def test_a_tar_member_bomb_is_not_read_whole(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("./usr/share/big.jpg")
        info.size = BOMB
        tar.addfile(info, io.BufferedReader(Zeros(BOMB)))
    package = deb(tmp_path, buf.getvalue(), member="data.tar.gz")
    assert len(buf.getvalue()) < BOMB // 100  # above the expansion ratio a small archive may have

    def read():
        with pytest.raises(InputError, match="expands to more than"):
            read_members(package, ["usr/share/*"])

    assert peak_while(read) < 80 << 20


@pytest.mark.timeout(60)
def test_a_wheel_member_bomb_is_not_read_whole(tmp_path):
    path = tmp_path / "x-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("x/big.nii.gz", "w", force_zip64=True) as m:
        shutil.copyfileobj(io.BufferedReader(Zeros(BOMB)), m, 1 << 20)

    def read():
        with pytest.raises(InputError, match="expands to more than"):
            read_members(Package("wheel", "x", "1.0", path), ["x/*"])

    assert peak_while(read) < 80 << 20


def rcc(entries: list[bytes], payloads: bytes = b"", names: bytes = b"") -> bytes:
    """A format-2 Qt resource: header, tree entries, payloads, names."""
    tree = b"".join(entries)
    return b"qres" + struct.pack(">4I", 2, 20, 20 + len(tree), 20 + len(tree) + len(payloads)) + tree + payloads + names


def rcc_dir(name_at: int, count: int, first: int) -> bytes:
    return struct.pack(">IHII", name_at, 0x02, count, first) + bytes(8)


def rcc_file(name_at: int, data_at: int, flags: int = 0) -> bytes:
    return struct.pack(">IHHHI", name_at, flags, 0, 0, data_at) + bytes(8)


NAME = struct.pack(">HI", 1, 0) + "a".encode("utf-16-be")


@pytest.mark.timeout(20)
def test_rcc_self_loop_and_fan_out_are_refused():
    with pytest.raises(InputError, match="loops back"):
        QtResource.from_bytes(rcc([rcc_dir(0, 1, 0)], names=NAME), "loop.rcc").entries()
    # entry i lists entries i+1 and i+2: 2^40-ish paths if entries could be visited twice
    fan = [rcc_dir(0, 2, i + 1) for i in range(40)] + [rcc_file(0, 0), rcc_file(0, 0)]
    with pytest.raises(InputError, match="fan.rcc"):
        QtResource.from_bytes(rcc(fan, struct.pack(">I", 1) + b"x", NAME), "fan.rcc").entries()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("declared", [BOMB, 1000])  # qCompress's length: the truth, or a lie
def test_truncated_and_bomb_rcc_payloads_are_refused(declared):
    payload = zlib.compressobj(9)
    blob = payload.compress(bytes(BOMB)) + payload.flush()
    data = struct.pack(">I", len(blob) + 4) + struct.pack(">I", declared) + blob
    bundle = rcc([rcc_dir(0, 1, 1), rcc_file(0, 0, flags=0x01)], data, NAME)
    res = QtResource.from_bytes(bundle, "bomb.rcc")
    assert res.entries() == ["a"]

    def read():
        with pytest.raises(InputError, match="expands to more than"):
            res.files()

    assert peak_while(read) < 80 << 20
    for cut in (10, 30, len(bundle) - len(NAME) - 10):
        with pytest.raises(InputError, match="cut.rcc"):
            QtResource.from_bytes(bundle[:cut], "cut.rcc").files()


@pytest.mark.timeout(30)
def test_a_nifti_declaring_a_huge_volume_is_refused_before_reading(monkeypatch):
    nibabel = pytest.importorskip("nibabel")
    import gzip

    from diffunfold.data.mri_volumes import load_nifti

    monkeypatch.setattr(
        nibabel.arrayproxy.ArrayProxy, "__array__", lambda self, *a, **k: pytest.fail("the voxels were read")
    )
    header = nibabel.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.int16)
    blob = gzip.compress(header.binaryblock + bytes(4) + bytes(1000))  # 16 GiB declared, 1 KB held
    with pytest.raises(InputError, match="declares a volume"):
        load_nifti(blob, "head.nii.gz")
    with pytest.raises(InputError, match="not a readable NIfTI"):
        load_nifti(blob[:40], "cut.nii.gz")


# -- cases 9 and 10: model packages ---------------------------------------------------------------


def fake_package(folder: Path, **changes) -> Path:
    """A package the loader accepts (its networks are stand-in bytes: only checksums are read)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "regularizer.onnx").write_bytes(b"regulariser")
    (folder / "weights.onnx").write_bytes(b"weights")
    manifest = {
        "model": {},
        "stages": 2,
        "shared": True,
        "tasks": ["sr"],
        "data": {"kind": "image", "channels": 3, "size_multiple": 8},
        "networks": {"regularizers": ["regularizer.onnx"], "weights": "weights.onnx", "torch_weights": None},
    }
    write_manifest(folder, manifest, ["regularizer.onnx", "weights.onnx"])
    if changes:
        rewrite(folder, lambda m: m.update(changes))
    return folder


def rewrite(folder: Path, edit) -> None:
    """Edit the manifest and recompute its digest, as anyone can."""
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    m["manifest_sha256"] = _manifest_digest(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _rename_weights(m: dict, name: str) -> None:
    m["files"][name] = m["files"].pop("weights.onnx")
    m["networks"]["weights"] = name


@pytest.mark.timeout(20)
def test_package_file_names_stay_inside_the_package(tmp_path):
    ModelPackage.open(fake_package(tmp_path / "ok"))
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(tmp_path / "ok" / "weights.onnx", outside / "w.onnx")
    for name in ("../outside/w.onnx", str(outside / "w.onnx"), "sub/../../outside/w.onnx"):
        pkg = fake_package(tmp_path / "p")
        rewrite(pkg, partial(_rename_weights, name=name))
        with pytest.raises(InputError, match="leaves the package|absolute"):
            ModelPackage.open(pkg)
    linked = fake_package(tmp_path / "linked")
    (linked / "weights.onnx").unlink()
    (linked / "weights.onnx").symlink_to(outside / "w.onnx")  # same bytes: only the link gives it away
    with pytest.raises(InputError, match="outside the package"):
        ModelPackage.open(linked)


@pytest.mark.timeout(20)
def test_package_declared_sizes_are_checked(tmp_path):
    pkg = fake_package(tmp_path / "p")
    rewrite(pkg, lambda m: m["files"]["weights.onnx"].update(bytes=10**12))
    with pytest.raises(InputError, match="bytes"):
        ModelPackage.open(pkg)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: m["files"].update({"weights.onnx": "abc"}), ["files['weights.onnx']", "object"]),
        (lambda m: m.pop("networks"), ["networks"]),
        (lambda m: m.update(data=None), ["data", "null"]),
        (lambda m: m.update(data=None, stages="4", files=[]), ["data", "stages", "files"]),
    ],
)
def test_malformed_manifests_get_one_line_and_exit_2(tmp_path, capsys, edit, words):
    from PIL import Image

    pkg = fake_package(tmp_path / "p")
    rewrite(pkg, edit)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    assert main(["restore", str(pkg), str(img), "--task", "sr", "factor=2", "--out", str(tmp_path / "o")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "not a valid package manifest" in line and all(w in line for w in words), line


# -- the package loader under fuzzing ---------------------------------------------------------------


def _fuzz_loader():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 2**40),
        st.floats(allow_nan=True),
        st.text(max_size=12),
        st.sampled_from(["../w.onnx", "/etc/passwd", "weights.onnx", ""]),
    )
    values = st.recursive(
        leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8
    )
    paths = st.sampled_from(
        [
            ("files",),
            ("files", "weights.onnx"),
            ("files", "weights.onnx", "bytes"),
            ("files", "weights.onnx", "sha256"),
            ("networks",),
            ("networks", "regularizers"),
            ("networks", "weights"),
            ("data",),
            ("data", "kind"),
            ("data", "channels"),
            ("data", "size_multiple"),
            ("stages",),
            ("shared",),
            ("model",),
            ("schedule",),
            ("tasks",),
            ("format",),
            ("manifest_sha256",),
            ("files", "../x"),
        ]
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(paths, values), min_size=1, max_size=3), st.booleans())
    def fuzz(edits, redigest):
        with tempfile.TemporaryDirectory() as tmp:
            folder = fake_package(Path(tmp) / "p")
            m = json.loads((folder / "manifest.json").read_text())
            for path, value in edits:
                node = m
                for key in path[:-1]:
                    node = node.setdefault(key, {}) if isinstance(node, dict) else {}
                if isinstance(node, dict):
                    node[path[-1]] = value
            if redigest:
                m["manifest_sha256"] = _manifest_digest(m)
            (folder / "manifest.json").write_text(json.dumps(m))
            try:
                pkg = ModelPackage.open(folder)
                pkg.space, pkg.stages, pkg.shared, pkg.size_multiple, pkg.schedule, pkg.tasks  # noqa: B018
            except InputError:  # refused cleanly; anything else fails the test
                return
            root = os.path.realpath(folder)
            for name in pkg.regularizer_files + [pkg.weights_file]:
                assert os.path.realpath(pkg.file(name)).startswith(root + os.sep)

    return fuzz


@pytest.mark.timeout(120)
def test_the_package_loader_refuses_every_malformed_manifest_cleanly():
    pytest.importorskip("hypothesis")
    _fuzz_loader()()

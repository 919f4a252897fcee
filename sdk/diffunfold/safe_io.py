"""Writing outputs safely: never over what the user did not ask to replace, never half a file.

Every output goes to a hidden temporary name in its own folder and is renamed into place
(``os.replace``, atomic within a filesystem), so an interrupted run (Ctrl-C, a crash, a full
disk) leaves either the previous file or the complete new one, never a truncated one. The
temporary name ends in ``.tmp``, so no reader's ``*.png`` or ``*.h5`` scan picks one up: a
writer that picks its format by the suffix (Pillow, numpy) is given the format instead.

The ``refuse_*`` checks run before any work: they name what exists and how to go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InputError

__all__ = [
    "atomic_write",
    "open_atomic",
    "write_bytes",
    "write_json",
    "write_text",
    "refuse_existing",
    "refuse_nonempty_folder",
    "remove_temporaries",
    "staged_outputs",
    "temporary_name",
]


def temporary_name(path: Path) -> Path:
    """A unique hidden sibling of ``path``: ``.NAME.<pid>.<hex>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def remove_temporaries(folder: str | os.PathLike, pids: Iterable[int]) -> list[Path]:
    """Remove the temporaries (:func:`temporary_name`) that processes ``pids``, all gone, left in
    ``folder``: a process killed mid-write (a Ray worker on SIGKILL) never renames or removes its
    own. Only plain files of that name and those pids go; anything else stays. Returns them."""
    pids = {int(p) for p in pids}
    folder = Path(folder)
    if not pids or not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        m = _TEMPORARY.match(p.name)
        if m and int(m.group(1)) in pids and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some systems cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacing(path: Path, mode: int | None = None, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success flush it to disk and rename
    it over ``path``, on any failure or interrupt remove it (``path`` untouched). ``durable``
    also flushes the folder, so the rename itself survives a power cut (checkpoints): it costs
    about 50 ms a file here, so outputs that a rerun can remake skip it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], Any], mode: int | None = None, durable: bool = False
) -> Path:
    """``write(tmp)`` writes a temporary file, which then replaces ``path`` whole (see the module
    docstring); parent folders are created. ``mode``: the final file's permissions; ``durable``:
    see ``_replacing``. Returns ``path``."""
    path = Path(path)
    with _replacing(path, mode, durable) as tmp:
        write(tmp)
    return path


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with open_atomic(path) as f:`` a file object whose content replaces ``path`` whole
    when the block ends without an error."""
    with _replacing(Path(path)) as tmp, open(tmp, mode) as f:
        yield f


def write_bytes(path: str | os.PathLike, data: bytes | memoryview, mode: int | None = None) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), mode)


def write_text(path: str | os.PathLike, text: str, durable: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=durable)


def write_json(
    path: str | os.PathLike, data: Any, indent: int = 2, default: Callable | None = None, durable: bool = False
) -> Path:
    return write_text(path, json.dumps(data, indent=indent, default=default) + "\n", durable)


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite: bool, how: str = "choose another --out") -> None:
    """Refuse (InputError) when any of ``paths`` exists and ``overwrite`` is false; the message
    names the first one, counts the others and says what to do (``how``: the alternative)."""
    if overwrite:
        return
    existing = [Path(p) for p in paths if os.path.lexists(p)]  # a symlink counts, dangling or not
    if existing:
        more = f" (and {len(existing) - 1} more of the outputs)" if len(existing) > 1 else ""
        raise InputError(f"{existing[0]} already exists{more}; pass --overwrite to replace, or {how}")


def refuse_nonempty_folder(folder: str | os.PathLike, overwrite: bool, option: str = "--out", how: str = "") -> None:
    """``folder`` must be a folder (or not exist yet) and, unless ``overwrite``, be empty.
    ``how``: what to do instead, when it is more than --overwrite or another folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {str(folder)!r} is a file, not a folder; give a folder to write into")
    if overwrite or not folder.exists():
        return
    names = sorted(p.name for p in folder.iterdir())
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        how = how or f"pass --overwrite to replace them, or choose another {option}"
        raise InputError(f"{option} {str(folder)!r} already holds files ({shown}); {how}")


@contextlib.contextmanager
def staged_outputs(folder: str | os.PathLike, names: Iterable[str]) -> Iterator[Path]:
    """Yield a new private folder inside ``folder`` to write ``names`` (files or folders) into;
    when the block succeeds each one written there replaces ``folder/NAME`` (the old one, even a
    symlink, is moved aside and removed, never written through; in the order given, so put the
    one that marks a complete set last). On any error the staging folder is removed, and
    ``folder`` too when this call created it and it is still empty: nothing half-made is left.
    Check ``refuse_existing`` first: this replaces whatever is at ``folder/NAME``."""
    folder = Path(folder)
    created = not os.path.lexists(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", suffix=".tmp", dir=folder))
    try:
        yield stage
        old = stage / ".replaced"
        old.mkdir()
        for name in names:
            if not os.path.lexists(stage / name):
                continue
            if os.path.lexists(folder / name):
                os.replace(folder / name, old / name)  # renames the link itself, not its target
            os.replace(stage / name, folder / name)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise
    shutil.rmtree(stage, ignore_errors=True)

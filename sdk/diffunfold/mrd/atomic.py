"""Outputs appear whole or not at all (:mod:`diffunfold.safe_io`), folders included."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ..safe_io import atomic_write, refuse_existing, temporary_name

__all__ = ["atomic_write", "atomic_folder", "refuse_existing"]


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield a temporary folder beside ``path`` to fill; it replaces ``path`` when the block
    succeeds and is removed on any error (``path`` untouched)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    tmp.mkdir()
    try:
        yield tmp
        if final.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

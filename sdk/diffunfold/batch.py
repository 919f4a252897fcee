"""Batch runs that lose nothing: ``diffunfold restore`` over images, ``diffunfold mri`` over slices.

Each unit of work (an image, a slice) either writes all of its outputs or none: a bad input
is recorded and the batch goes on, so the good ones are still restored, reported and kept.
A rerun with ``--resume`` skips the units whose outputs all exist (files are written
atomically, so an existing one is complete) and keeps their rows from the earlier JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["Batch", "Unit", "check_outputs", "finish", "run_units"]


@dataclass
class Unit:
    name: str  # the row's key: an image's output stem, "slice 3"
    outputs: dict[str, Path]  # every file the unit writes
    payload: Any = None  # what the work function needs (a path, a slice index)
    label: str = ""  # how failures name it (default: name), e.g. the input file

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs.values())


@dataclass
class Batch:
    rows: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (name, one-line reason)
    skipped: list[str] = field(default_factory=list)


def check_outputs(
    out_dir: Path,
    units: list[Unit],
    inputs: list[Path],
    input_dirs: set[Path],
    extra: list[Path],
    overwrite: bool,
    resume: bool,
    out_name: str = "--out",
) -> None:
    """Before any work: never write into an input folder or over an input file; without
    --overwrite or --resume, never over an existing output. ``extra``: outputs outside the
    units (the --json report, an MRI mask), rewritten on --resume. ``out_name``: how the
    command names its output folder in messages."""
    out_r = out_dir.resolve()
    if out_r in input_dirs:
        raise InputError(
            f"{out_name} {str(out_dir)!r} is the folder of the input(s); write the outputs to "
            "another folder so they never mix with or replace the inputs"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_name} {str(out_dir)!r} exists and is not a folder")
    inputs_r = {p.resolve() for p in inputs}
    targets = [p for u in units for p in u.outputs.values()] + list(extra)
    clash = [p for p in targets if p.resolve() in inputs_r]
    if clash:
        raise InputError(f"{clash[0]} is an input file; it is never overwritten: choose another {out_name}/--json")
    if len({p.resolve() for p in targets}) != len(targets):
        raise InputError(f"two outputs would have the same name (is --json inside {out_name} with an output's name?)")
    existing = [p for p in targets if p.exists()]
    if existing and not (overwrite or resume):
        more = f" (and {len(existing) - 1} more of the outputs)" if len(existing) > 1 else ""
        raise InputError(
            f"{existing[0]} already exists{more}; pass --resume to keep the finished outputs and "
            f"do only the rest, --overwrite to replace them, or choose another {out_name}"
        )


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, InputError) else f"{type(exc).__name__}: {text or 'no message'}"


def run_units(
    units: list[Unit], work: Callable[[Unit], dict], resume: bool, progress, what: str, out_dir: Path
) -> Batch:
    """``work(unit) -> row`` for each unit not already done (``resume``); a unit that raises
    is recorded as a failure and the others go on. ``progress(units)`` wraps the iteration
    (a progress bar). Ctrl-C stops with a KeyboardInterrupt that says what is complete."""
    batch = Batch()
    todo = []
    for u in units:
        (batch.skipped.append(u.name) if resume and u.done() else todo.append(u))
    debug = os.environ.get("DIFFUNFOLD_DEBUG", "") not in ("", "0")
    try:
        for u in progress(todo):
            try:
                batch.rows.append(work(u))
            except Exception as exc:  # noqa: BLE001 - one bad input must not cost the others
                if debug:
                    raise
                batch.failures.append((u.label or u.name, _reason(exc)))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"{len(batch.rows)} of {len(todo)} {what}(s) finished and written to {out_dir}/ before the stop; "
            "rerun the same command with --resume to do the rest"
        ) from None
    return batch


def earlier_rows(json_path: str | None, names: list[str], key: str) -> list[dict]:
    """The rows of ``names`` in an earlier run's JSON report (``row[key]`` names a row), for
    a resumed run's report; none when there is no readable report."""
    if not json_path or not names or not Path(json_path).is_file():
        return []
    try:
        rows = json.loads(Path(json_path).read_text()).get("rows", [])
    except (OSError, ValueError, AttributeError):
        return []
    wanted = set(names)
    return [r for r in rows if isinstance(r, dict) and r.get(key) in wanted]


def finish(batch: Batch, what: str) -> int:
    """After the report: 0 when every unit was done; 1 (the failures listed on stderr) when
    some failed. Call ``refuse_if_nothing_done`` first, before any report is written."""
    import sys

    for name, reason in batch.failures:
        print(f"failed: {name}: {reason}", file=sys.stderr)
    if batch.failures:
        print(f"error: {len(batch.failures)} {what}(s) failed (listed above); the others were written", file=sys.stderr)
        return 1
    return 0


def refuse_if_nothing_done(batch: Batch, what: str) -> None:
    """Every unit failed: one error (exit status 2), nothing written."""
    if batch.failures and not batch.rows and not batch.skipped:
        name, reason = batch.failures[0]
        more = f" (and {len(batch.failures) - 1} more {what}(s) failed)" if len(batch.failures) > 1 else ""
        raise InputError(f"{name}: {reason}{more}")

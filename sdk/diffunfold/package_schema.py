"""What a model package's manifest must hold before anything in it is used.

A package can come from anyone, and its manifest digest (``manifest_sha256``) only shows that the
manifest was not changed by accident after export: anyone can recompute it, so it is an integrity
check, not proof of who built the package (docs/packages-and-trust.md). The loader therefore
trusts nothing in the manifest: :func:`manifest_problems` checks its structure field by field
(one message per violation), and :func:`member_path` keeps every file name inside the package
folder (no ``..``, no absolute path, no symlink that leads out).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from .edm import SAMPLERS
from .errors import InputError
from .fast_schedule import FastSchedule
from .formulations import DEFAULT as DEFAULT_FORMULATION
from .formulations import NAMES as FORMULATIONS

_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_STAGES = 1024
MODEL_KINDS = ("unfolding", "denoiser")  # model.kind: Diff-Unfolding, or a plain EDM denoiser


def _is_int(v, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _kind(v) -> str:
    return (
        "null"
        if v is None
        else {
            dict: "an object",
            list: "a list",
            str: "a string",
            bool: "a boolean",
            int: "a number",
            float: "a number",
        }.get(type(v), type(v).__name__)
    )


def name_problem(name) -> str | None:
    """Why ``name`` cannot be a file of a package (None when it can): a relative POSIX path
    below the package folder, without ``..``, backslashes or NUL."""
    if not isinstance(name, str) or not name:
        return f"a file name must be a non-empty string, not {_kind(name)}"
    if "\\" in name or "\0" in name or name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return f"the file name {name!r} is absolute or not a plain relative path"
    if any(part in ("", ".", "..") for part in PurePosixPath(name).parts) or name.endswith("/"):
        return f"the file name {name!r} leaves the package folder or is not a plain relative path"
    return None


def _files_problems(files) -> list[str]:
    if not isinstance(files, dict) or not files:
        return [f"'files' must be a non-empty object of file name -> {{sha256, bytes}}, not {_kind(files)}"]
    out = []
    for name, rec in files.items():
        bad = name_problem(name)
        if bad:
            out.append(f"files: {bad}")
        elif not isinstance(rec, dict):
            out.append(f"files[{name!r}] must be an object with sha256 and bytes, not {_kind(rec)}")
        else:
            if not (isinstance(rec.get("sha256"), str) and _SHA256.fullmatch(rec["sha256"])):
                out.append(f"files[{name!r}].sha256 must be 64 lower-case hex digits")
            if not _is_int(rec.get("bytes")):
                out.append(f"files[{name!r}].bytes must be a whole number >= 0, not {rec.get('bytes')!r}")
    return out


def _networks_problems(networks, files, stages, shared) -> list[str]:
    if not isinstance(networks, dict):
        return [f"'networks' must be an object naming the regularizers and weights, not {_kind(networks)}"]
    out = []
    regs = networks.get("regularizers")
    if not isinstance(regs, list) or not regs or not all(isinstance(r, str) for r in regs):
        out.append("networks.regularizers must be a non-empty list of file names")
        regs = []
    elif _is_int(stages, 1) and isinstance(shared, bool) and len(regs) != (1 if shared else stages):
        out.append(
            f"networks.regularizers lists {len(regs)} file(s); a {'shared' if shared else 'per-stage'} "
            f"package of {stages} stages has {1 if shared else stages}"
        )
    if not isinstance(networks.get("weights"), str):
        out.append("networks.weights must be a file name")
    torch_weights = networks.get("torch_weights")
    if torch_weights is not None and not isinstance(torch_weights, str):
        out.append("networks.torch_weights must be a file name or null")
    named = regs + [n for n in (networks.get("weights"), torch_weights) if isinstance(n, str)]
    if isinstance(files, dict):
        out += [f"networks names {n!r}, which 'files' does not list (no checksum)" for n in named if n not in files]
    return out


def _data_problems(data) -> list[str]:
    if not isinstance(data, dict):
        return [f"'data' must be an object (kind, channels, size_multiple), not {_kind(data)}"]
    out = []
    if not isinstance(data.get("kind"), str):
        out.append("data.kind must be a string (image or mri)")
    for key in ("channels", "size_multiple"):
        if not _is_int(data.get(key), 1):
            out.append(f"data.{key} must be a whole number >= 1, not {data.get(key)!r}")
    return out


def _formulation_problems(schedule) -> list[str]:
    if not isinstance(schedule, dict):
        return []
    name, sampler = schedule.get("formulation", DEFAULT_FORMULATION), schedule.get("sampler", "euler")
    out = [] if name in FORMULATIONS else [f"schedule.formulation must be one of {list(FORMULATIONS)}, not {name!r}"]
    return out + ([] if sampler in SAMPLERS else [f"schedule.sampler must be one of {list(SAMPLERS)}, not {sampler!r}"])


def manifest_problems(m: dict) -> list[str]:
    """Every violation of the package format in the manifest ``m`` (empty when it is sound)."""
    out = []
    if not isinstance(m.get("manifest_sha256"), str):
        out.append("'manifest_sha256' must be a string")
    if not (_is_int(m.get("stages"), 1) and m["stages"] <= MAX_STAGES):
        out.append(f"'stages' must be a whole number from 1 to {MAX_STAGES}, not {m.get('stages')!r}")
    if not isinstance(m.get("shared"), bool):
        out.append(f"'shared' must be true or false, not {m.get('shared')!r}")
    if not isinstance(m.get("model"), dict):
        out.append(f"'model' must be an object of model settings, not {_kind(m.get('model'))}")
    elif m["model"].get("kind", "unfolding") not in MODEL_KINDS:
        out.append(f"model.kind must be one of {MODEL_KINDS}, not {m['model'].get('kind')!r}")
    for key in ("schedule", "source"):
        if key in m and not isinstance(m[key], dict):
            out.append(f"'{key}' must be an object, not {_kind(m[key])}")
    tiling = m.get("tiling", {})
    whole = tiling.get("whole_up_to", 0) if isinstance(tiling, dict) else None
    if isinstance(whole, bool) or not isinstance(whole, int) or whole < 0:
        out.append(f"'tiling' must be an object with whole_up_to, a whole number >= 0, not {tiling!r}")
    elif isinstance(tiling, dict) and (problem := tile_record_problem(tiling)):
        out.append(problem)
    if isinstance(m.get("schedule"), dict) and "fast" in m["schedule"]:
        try:
            fast = FastSchedule.from_manifest(m["schedule"]["fast"], "the manifest")
            k = m.get("stages")
            for name, counts in (("stages", fast.stages), ("noisy.stages", fast.noisy_stages)):
                if counts and isinstance(k, int) and max(counts) > k:
                    out.append(f"schedule.fast.{name} asks for more stages than the package's {k}: {list(counts)}")
        except InputError as exc:
            out.append(str(exc))
    out += _formulation_problems(m.get("schedule"))
    if "tasks" in m and not (isinstance(m["tasks"], list) and all(isinstance(t, str) for t in m["tasks"])):
        out.append("'tasks' must be a list of task names")
    out += _data_problems(m.get("data"))
    out += _files_problems(m.get("files"))
    out += _networks_problems(m.get("networks"), m.get("files"), m.get("stages"), m.get("shared"))
    return out


def member_path(folder: Path, name: str) -> Path:
    """``folder/name`` once it is sure to stay inside ``folder`` (symlinks resolved)."""
    bad = name_problem(name)
    if bad:
        raise InputError(f"model package {str(folder)!r}: {bad}; the package is not usable")
    path = folder / name
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise InputError(
            f"model package {str(folder)!r}: {name} is a link that leads outside the package "
            "folder; copy the real file into the package (or export it again)"
        )
    return path


def tile_record_problem(tiling: dict) -> str | None:
    """What is wrong with a manifest's recorded tile (``tiling.tile``, ``tiling.overlap``), if
    anything; None where it records none."""
    if "tile" not in tiling:
        return None
    side, overlap = tiling["tile"], tiling.get("overlap", 0)
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (side, overlap))
    if ok and side > 0 and 0 <= overlap < side:
        return None
    return f"'tiling' tile and overlap must be whole numbers with 0 <= overlap < tile, not {tiling!r}"

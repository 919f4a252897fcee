"""TensorRT engine targets, GPUs and engine records: what an engine was built for, and the
check the runtime makes before it loads one (architecture.md: export/, engines/).

A *target* is a small TOML file in ``engines/targets/`` (name, the GPU's compute capability,
precision, workspace, hardware compatibility and the optimisation profiles for batch and image
size). ``diffunfold.engines.build_engines(package, target)`` builds one engine per regulariser
ONNX of the package *on that GPU* and writes, inside the package::

    engines/<target>/<onnx stem>.engine     the serialized TensorRT plan
    engines/<target>/<onnx stem>.json       its record (written last): what it was built from,
                                            with which TensorRT, on which GPU, and its sha256

An engine is only valid for the TensorRT version and GPU it was built with, and for the exact
ONNX it came from. ``check_record`` refuses anything else, saying what differs; the runtime
(``diffunfold.runtime.backend_tensorrt``) calls it before it deserialises a single byte.

Everything here is a pure function (target parsing, profiles, record checks), tested on
machines without a GPU. This module imports neither TensorRT nor torch.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .engine_gpus import _CC, GPUInfo, cc_tuple, cupy_gpu, current_gpu  # noqa: F401 (re-exported)
from .errors import InputError
from .package import sha256_file

RECORD_FORMAT = "diffunfold-engine/1"
ENGINES_ROOT = Path(__file__).resolve().parents[2] / "engines"  # <repo>/engines in a checkout
TARGETS_DIR = ENGINES_ROOT / "targets"
PRECISIONS = ("fp16", "fp32", "bf16")
HARDWARE_COMPATIBILITY = ("none", "ampere_plus", "same_compute_capability")
_TARGET_KEYS = (
    "name",
    "description",
    "compute_capability",
    "precision",
    "workspace_gib",
    "hardware_compatibility",
    "profile",
    "profiles",
)
_PROFILE_KEYS = ("batch", "height", "width")
_RANGE_KEYS = ("min", "opt", "max")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def rebuild_hint(package: str | Path = "PACKAGE", target: str = "TARGET") -> str:
    return f"rebuild with `diffunfold build-engines {package} --target {target}`"


# -- targets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int

    def covers(self, n: int) -> bool:
        return self.min <= n <= self.max

    def __str__(self) -> str:
        return f"{self.min}..{self.max} (opt {self.opt})" if self.min != self.max else str(self.min)


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimisation profile: ranges of batch, height and width."""

    batch: DimRange
    height: DimRange
    width: DimRange

    def covers(self, b: int, h: int, w: int) -> bool:
        return self.batch.covers(b) and self.height.covers(h) and self.width.covers(w)

    def x_shapes(self, channels: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of the image input ``x`` (B, C, H, W)."""
        return tuple(
            (getattr(self.batch, a), channels, getattr(self.height, a), getattr(self.width, a)) for a in _RANGE_KEYS
        )  # type: ignore[return-value]

    def batch_shapes(self) -> tuple[tuple[int], tuple[int], tuple[int]]:
        """(min, opt, max) shapes of the per-sample inputs ``sigma`` and ``stage`` (B,)."""
        return (self.batch.min,), (self.batch.opt,), (self.batch.max,)

    def to_dict(self) -> dict:
        return {k: asdict(getattr(self, k)) for k in _PROFILE_KEYS}

    def describe(self) -> str:
        return f"batch {self.batch}, height {self.height}, width {self.width}"


@dataclass(frozen=True)
class EngineTarget:
    """A GPU target: what to build, for which GPU. Load one with :func:`load_target`."""

    name: str
    description: str
    compute_capability: str | None
    precision: str
    workspace_gib: float
    hardware_compatibility: str
    profiles: tuple[Profile, ...]
    path: Path | None = None

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * (1 << 30))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "compute_capability": self.compute_capability,
            "precision": self.precision,
            "workspace_gib": self.workspace_gib,
            "hardware_compatibility": self.hardware_compatibility,
            "profiles": [p.to_dict() for p in self.profiles],
        }

    def check_sizes(self, size_multiple: int) -> None:
        """Every height/width bound must be a multiple of the package's ``size_multiple`` (the
        U-Net halves the image that many times); refuse the target otherwise."""
        m = int(size_multiple)
        bad = [
            f"profile {i} {dim}.{a} = {getattr(getattr(p, dim), a)}"
            for i, p in enumerate(self.profiles)
            for dim in ("height", "width")
            for a in _RANGE_KEYS
            if getattr(getattr(p, dim), a) % m
        ]
        if bad:
            raise InputError(
                f"target {self.name!r} ({self._where()}) does not fit this package: "
                f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a multiple of {m}, the "
                f"package's size multiple (data.size_multiple in its manifest); edit the "
                f"target's profiles"
            )

    def _where(self) -> str:
        return str(self.path) if self.path else "in memory"

    def summary(self) -> str:
        cc = f"sm {self.compute_capability}" if self.compute_capability else "any GPU"
        lines = [
            f"{self.name:12s} {self.precision}, {cc}, workspace {self.workspace_gib:g} GiB, "
            f"hardware compatibility {self.hardware_compatibility}: {self.description}"
        ]
        lines += [f"{'':12s}   profile {i}: {p.describe()}" for i, p in enumerate(self.profiles)]
        return "\n".join(lines)


def _range(value: Any, where: str) -> DimRange:
    if isinstance(value, bool):
        raise InputError(f"{where} must be an integer or {{min, opt, max}}, got {value!r}")
    if isinstance(value, int):
        value = {"min": value, "opt": value, "max": value}
    if not isinstance(value, dict):
        raise InputError(f"{where} must be an integer or a table {{ min = .., opt = .., max = .. }}, got {value!r}")
    unknown = sorted(set(value) - set(_RANGE_KEYS))
    missing = [k for k in _RANGE_KEYS if k not in value]
    if unknown:
        raise InputError(f"{where} has unknown key(s) {unknown}; known keys: {list(_RANGE_KEYS)}")
    if missing:
        raise InputError(f"{where} is missing {missing}; give all of min, opt and max")
    for k in _RANGE_KEYS:
        v = value[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{where}.{k} must be a positive integer, got {v!r}")
    r = DimRange(int(value["min"]), int(value["opt"]), int(value["max"]))
    if not r.min <= r.opt <= r.max:
        raise InputError(f"{where} needs min <= opt <= max, got min={r.min}, opt={r.opt}, max={r.max}")
    return r


def _profile(value: Any, where: str) -> Profile:
    if not isinstance(value, dict):
        raise InputError(f"{where} must be a table with batch, height and width, got {value!r}")
    unknown = sorted(set(value) - set(_PROFILE_KEYS))
    if unknown:
        raise InputError(f"{where} has unknown key(s) {unknown}; known keys: {list(_PROFILE_KEYS)}")
    missing = [k for k in _PROFILE_KEYS if k not in value]
    if missing:
        raise InputError(f"{where} is missing {missing}; a profile gives batch, height and width")
    return Profile(*(_range(value[k], f"{where}.{k}") for k in _PROFILE_KEYS))


def parse_target(data: dict, name: str | None = None, path: Path | None = None) -> EngineTarget:
    """Validate a target's TOML table (see ``engines/targets/h100.toml``) into an EngineTarget."""
    where = f"target {str(path) if path else name or '?'}"
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a TOML table")
    unknown = sorted(set(data) - set(_TARGET_KEYS))
    if unknown:
        raise InputError(f"{where} has unknown key(s) {unknown}; known keys: {list(_TARGET_KEYS)}")
    tname = data.get("name", name)
    if not isinstance(tname, str) or not _NAME.match(tname):
        raise InputError(
            f"{where}: name must be letters, digits, '-', '_' or '.' (it names the engines folder), got {tname!r}"
        )
    precision = data.get("precision", "fp16")
    if precision not in PRECISIONS:
        raise InputError(f"{where}: unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    hw = data.get("hardware_compatibility", "none")
    if hw not in HARDWARE_COMPATIBILITY:
        raise InputError(
            f"{where}: unknown hardware_compatibility {hw!r}; choose one of {list(HARDWARE_COMPATIBILITY)}"
        )
    cc = data.get("compute_capability")
    if cc is not None:
        cc = f"{cc:.1f}" if isinstance(cc, float) else cc
        if not isinstance(cc, str) or not _CC.match(cc):
            raise InputError(f'{where}: compute_capability must look like "9.0" (major.minor), got {cc!r}')
    ws = data.get("workspace_gib", 4)
    if isinstance(ws, bool) or not isinstance(ws, (int, float)) or not ws > 0:
        raise InputError(f"{where}: workspace_gib must be a positive number (GiB), got {ws!r}")
    if "profile" in data and "profiles" in data:
        raise InputError(f"{where}: give either [profile] or [[profiles]], not both")
    raw = data.get("profiles", [data["profile"]] if "profile" in data else None)
    if raw is None:
        raise InputError(
            f"{where} has no optimisation profile; add [[profiles]] with batch, height and width "
            "= { min = .., opt = .., max = .. }"
        )
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{where}: profiles must be a non-empty array of tables ([[profiles]])")
    profiles = tuple(_profile(p, f"{where} profile {i}") for i, p in enumerate(raw))
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise InputError(f"{where}: description must be a string")
    return EngineTarget(tname, desc, cc, precision, float(ws), hw, profiles, path)


def _targets_dir() -> Path:
    return TARGETS_DIR


def list_targets(directory: str | Path | None = None) -> list[EngineTarget]:
    """The shipped targets (``engines/targets/*.toml``), sorted by name."""
    d = Path(directory) if directory else _targets_dir()
    if not d.is_dir():
        return []
    return [load_target(p) for p in sorted(d.glob("*.toml"))]


def load_target(name_or_path: str | Path) -> EngineTarget:
    """A target by name (``h100`` -> ``engines/targets/h100.toml``) or by path to a TOML file."""
    if isinstance(name_or_path, EngineTarget):
        return name_or_path
    s = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or s.endswith(".toml") or os.sep in s or "/" in s
    path = Path(s) if looks_like_path else _targets_dir() / f"{s}.toml"
    if not path.is_file():
        if looks_like_path:
            raise InputError(f"target file {s!r} does not exist")
        names = sorted(p.stem for p in _targets_dir().glob("*.toml")) if _targets_dir().is_dir() else []
        if not names:
            raise InputError(
                f"unknown target {s!r}: no target folder at {_targets_dir()} (an installed package "
                "has none); give the path of a target .toml file instead"
            )
        raise InputError(
            f"unknown target {s!r}; known targets: {', '.join(names)} (or give the path of a "
            f".toml file; see `diffunfold build-engines --list`)"
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"target file {path} is not valid TOML: {exc}") from None
    return parse_target(data, name=path.stem, path=path)


def choose_profile(ranges: Sequence[Profile], b: int, h: int, w: int) -> int:
    """Index of the profile covering ``(b, h, w)`` whose optimum is nearest to it (TensorRT tuned
    each profile at its ``opt``); InputError naming every profile's ranges when none covers it."""
    best, best_cost = -1, None
    for i, p in enumerate(ranges):
        if p.covers(b, h, w):
            cost = abs(b * h * w - p.batch.opt * p.height.opt * p.width.opt)
            if best_cost is None or cost < best_cost:
                best, best_cost = i, cost
    if best < 0:
        have = "; ".join(f"profile {i}: {p.describe()}" for i, p in enumerate(ranges)) or "none"
        raise InputError(
            f"no optimisation profile of the engines covers batch {b} at {h}x{w} (have {have}); "
            "split the batch, or build engines for a target whose [[profiles]] cover this size"
        )
    return best


# -- GPUs (GPUInfo, cupy_gpu, current_gpu, cc_tuple: engine_gpus.py) ------------------------


def check_gpu_for_target(target: EngineTarget, gpu: GPUInfo) -> str | None:
    """At build time: refuse a GPU whose compute capability is not the target's (engines are built
    for the GPU they are built on) unless the target asks for hardware compatibility; then
    return a warning instead. None when all is well."""
    if target.hardware_compatibility == "ampere_plus" and cc_tuple(gpu.compute_capability) < (8, 0):
        raise InputError(
            f"target {target.name!r} asks for hardware_compatibility = 'ampere_plus', which "
            f"TensorRT builds only on Ampere or newer GPUs; this GPU is {gpu}"
        )
    if target.compute_capability is None or target.compute_capability == gpu.compute_capability:
        return None
    msg = f"target {target.name!r} is for compute capability {target.compute_capability} but this GPU is {gpu}"
    if target.hardware_compatibility == "none":
        raise InputError(
            f"{msg}: an engine runs only on the kind of GPU it was built on. Build on a "
            f"{target.compute_capability} GPU, choose the target of this GPU "
            f"(`diffunfold build-engines --list`), or write a target file for it"
        )
    return f"warning: {msg}; building anyway with hardware_compatibility = {target.hardware_compatibility!r}"


# -- records --------------------------------------------------------------------------------


@dataclass
class EngineRecord:
    """What an engine was built from and for; the JSON beside each ``.engine``."""

    target: str
    onnx: str
    onnx_sha256: str
    engine: str
    engine_sha256: str
    engine_bytes: int
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    hardware_compatibility: str
    precision: str
    profiles: list[dict]
    built: str
    build_seconds: float
    fp32_layers: int
    inputs: list[str] = field(default_factory=list)
    diffunfold_version: str = ""
    format: str = RECORD_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "engine record") -> EngineRecord:
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InputError(f"{where} has format {got!r}, expected {RECORD_FORMAT!r}; {rebuild_hint()}")
        names = [f.name for f in fields(cls)]
        missing = [
            f.name for f in fields(cls) if f.name not in data and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise InputError(f"{where} lacks {missing}; it is damaged: {rebuild_hint()}")
        return cls(**{n: data[n] for n in names if n in data})

    @classmethod
    def load(cls, path: str | Path) -> EngineRecord:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(
                f"{path} is missing: the engine beside it has no record (an interrupted build?); {rebuild_hint()}"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not valid JSON ({exc}); {rebuild_hint()}") from None
        return cls.from_dict(data, where=str(path))

    def profile_ranges(self) -> list[Profile]:
        return [_profile(p, f"{self.engine} profile {i}") for i, p in enumerate(self.profiles)]


def check_record(
    record: EngineRecord,
    engine_path: str | Path,
    trt_version: str,
    gpu: GPUInfo,
    onnx_sha256: str | None = None,
    package: str | Path | None = None,
) -> None:
    """Refuse an engine that cannot be trusted here, saying exactly what differs.

    * the engine file's sha256 is not the recorded one (changed, truncated, half written);
    * ``onnx_sha256`` (the package's checksum of the ONNX now) is not the one it was built from:
      the package was exported again since;
    * the TensorRT version differs (plans are only valid for the exact version);
    * the GPU differs: its compute capability, or with hardware_compatibility "none" also its
      name; "ampere_plus" engines run on any compute capability >= 8.0.

    ``onnx_sha256=None`` reads the package manifest three folders up from the engine
    (``<package>/engines/<target>/x.engine``) when there is one.
    """
    engine_path = Path(engine_path)
    hint = rebuild_hint(_package_of(engine_path, package), record.target)
    where = f"engine {engine_path}"
    _check_engine_file(record, engine_path, where, hint)
    _check_onnx(record, engine_path, onnx_sha256, where, hint)
    if str(trt_version) != record.tensorrt_version:
        raise InputError(
            f"{where} was built with TensorRT {record.tensorrt_version} but TensorRT {trt_version} "
            f"is installed; a plan runs only with the exact TensorRT version that built it; {hint}"
        )
    _check_gpu(record, gpu, where, hint)


def _package_of(engine_path: Path, package: str | Path | None) -> str:
    """The package folder to name in the rebuild hint: ``package``, else three folders up from a
    ``<package>/engines/<target>/x.engine``, else a placeholder."""
    return (
        str(package)
        if package
        else str(engine_path.parent.parent.parent)
        if engine_path.parent.parent.name == "engines"
        else "PACKAGE"
    )


def _check_engine_file(record: EngineRecord, engine_path: Path, where: str, hint: str) -> None:
    """The engine file is there and its sha256 is the recorded one."""
    if not engine_path.is_file():
        raise InputError(f"{where} is missing though its record exists; {hint}")
    digest = sha256_file(engine_path)
    if digest != record.engine_sha256:
        raise InputError(
            f"{where} does not match its record (sha256 {digest[:12]} != recorded "
            f"{record.engine_sha256[:12]}): the file was changed or its build was interrupted; {hint}"
        )


def _check_onnx(record: EngineRecord, engine_path: Path, onnx_sha256: str | None, where: str, hint: str) -> None:
    """The engine was built from the package's ONNX as it is now (``onnx_sha256``, else the one the
    package manifest three folders up lists, where there is one)."""
    if onnx_sha256 is None:
        manifest = engine_path.parent.parent.parent / "manifest.json"
        if manifest.is_file():
            try:
                onnx_sha256 = json.loads(manifest.read_text())["files"][record.onnx]["sha256"]
            except (KeyError, TypeError, json.JSONDecodeError):
                raise InputError(
                    f"{where} was built from {record.onnx}, which the package manifest {manifest} "
                    f"no longer lists; {hint}"
                ) from None
    if onnx_sha256 is not None and onnx_sha256 != record.onnx_sha256:
        raise InputError(
            f"{where} was built from another {record.onnx} (sha256 {record.onnx_sha256[:12]}; "
            f"the package's is now {onnx_sha256[:12]}): the package was exported again since; {hint}"
        )


def _check_gpu(record: EngineRecord, gpu: GPUInfo, where: str, hint: str) -> None:
    """This GPU runs the engine: any compute capability >= 8.0 for "ampere_plus", else the
    recorded one, and with hardware_compatibility "none" also the recorded GPU name."""
    hw = record.hardware_compatibility
    built_on = f"{record.gpu_name} (sm {record.compute_capability})"
    if hw == "ampere_plus":
        if cc_tuple(gpu.compute_capability) < (8, 0):
            raise InputError(
                f"{where} was built for Ampere and newer GPUs (hardware_compatibility ampere_plus, "
                f"on {built_on}) but this GPU is {gpu}; {hint} on a supported GPU"
            )
        return
    if gpu.compute_capability != record.compute_capability:
        raise InputError(
            f"{where} was built on {built_on}, compute capability {record.compute_capability}, but "
            f"this GPU is {gpu}; {hint} on this GPU (choose its target with --list)"
        )
    if hw == "none" and gpu.name != record.gpu_name:
        raise InputError(
            f"{where} was built on {record.gpu_name} but this GPU is {gpu.name} (same compute "
            f"capability {gpu.compute_capability}, but the target has hardware_compatibility 'none'); "
            f"{hint} on this GPU, or set hardware_compatibility = 'same_compute_capability' in the target"
        )


def engine_paths(directory: str | Path, onnx_name: str) -> tuple[Path, Path]:
    """``(engine, record)`` paths for one ONNX file of a package in a target's folder."""
    stem = Path(onnx_name).stem
    d = Path(directory)
    return d / f"{stem}.engine", d / f"{stem}.json"

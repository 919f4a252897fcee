"""TensorRT engines of a model package, per GPU target (architecture.md: export/, engines/).

A *target* is a small TOML file in ``engines/targets/`` (name, the GPU's compute capability,
precision, workspace, hardware compatibility and the optimisation profiles for batch and image
size). ``build_engines(package, target)`` builds one engine per regulariser ONNX of the package
*on that GPU* and writes, inside the package::

    engines/<target>/<onnx stem>.engine     the serialized TensorRT plan
    engines/<target>/<onnx stem>.json       its record (written last): what it was built from,
                                            with which TensorRT, on which GPU, and its sha256

An engine is only valid for the TensorRT version and GPU it was built with, and for the exact
ONNX it came from. ``check_record`` refuses anything else, saying what differs; the runtime
(``diffunfold.runtime.tensorrt``) calls it before it deserialises a single byte.

Everything here that does not need TensorRT is a pure function (target parsing, the FP32 layer
policy, record checks), tested on machines without a GPU. TensorRT is imported only inside the
functions that build, via ``require("tensorrt", "trt")``. This module never imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import cli_values as V
from .errors import InputError, require
from .package import ModelPackage, sha256_file, write_json_atomic

RECORD_FORMAT = "diffunfold-engine/1"
ENGINES_ROOT = Path(__file__).resolve().parents[2] / "engines"   # <repo>/engines in a checkout
TARGETS_DIR = ENGINES_ROOT / "targets"
PRECISIONS = ("fp16", "fp32", "bf16")
HARDWARE_COMPATIBILITY = ("none", "ampere_plus", "same_compute_capability")
_TARGET_KEYS = ("name", "description", "compute_capability", "precision", "workspace_gib",
                "hardware_compatibility", "profile", "profiles")
_PROFILE_KEYS = ("batch", "height", "width")
_RANGE_KEYS = ("min", "opt", "max")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CC = re.compile(r"^\d+\.\d+$")


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
        return tuple((getattr(self.batch, a), channels, getattr(self.height, a), getattr(self.width, a))
                     for a in _RANGE_KEYS)  # type: ignore[return-value]

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
        return {"name": self.name, "description": self.description,
                "compute_capability": self.compute_capability, "precision": self.precision,
                "workspace_gib": self.workspace_gib, "hardware_compatibility": self.hardware_compatibility,
                "profiles": [p.to_dict() for p in self.profiles]}

    def check_sizes(self, size_multiple: int) -> None:
        """Every height/width bound must be a multiple of the package's ``size_multiple`` (the
        U-Net halves the image that many times); refuse the target otherwise."""
        m = int(size_multiple)
        bad = [f"profile {i} {dim}.{a} = {getattr(getattr(p, dim), a)}"
               for i, p in enumerate(self.profiles) for dim in ("height", "width") for a in _RANGE_KEYS
               if getattr(getattr(p, dim), a) % m]
        if bad:
            raise InputError(f"target {self.name!r} ({self._where()}) does not fit this package: "
                             f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a multiple of {m}, the "
                             f"package's size multiple (data.size_multiple in its manifest); edit the "
                             f"target's profiles")

    def _where(self) -> str:
        return str(self.path) if self.path else "in memory"

    def summary(self) -> str:
        cc = f"sm {self.compute_capability}" if self.compute_capability else "any GPU"
        lines = [f"{self.name:12s} {self.precision}, {cc}, workspace {self.workspace_gib:g} GiB, "
                 f"hardware compatibility {self.hardware_compatibility}: {self.description}"]
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
        raise InputError(f"{where}: name must be letters, digits, '-', '_' or '.' (it names the engines "
                         f"folder), got {tname!r}")
    precision = data.get("precision", "fp16")
    if precision not in PRECISIONS:
        raise InputError(f"{where}: unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    hw = data.get("hardware_compatibility", "none")
    if hw not in HARDWARE_COMPATIBILITY:
        raise InputError(f"{where}: unknown hardware_compatibility {hw!r}; choose one of "
                         f"{list(HARDWARE_COMPATIBILITY)}")
    cc = data.get("compute_capability")
    if cc is not None:
        cc = f"{cc:.1f}" if isinstance(cc, float) else cc
        if not isinstance(cc, str) or not _CC.match(cc):
            raise InputError(f"{where}: compute_capability must look like \"9.0\" (major.minor), got {cc!r}")
    ws = data.get("workspace_gib", 4)
    if isinstance(ws, bool) or not isinstance(ws, (int, float)) or not ws > 0:
        raise InputError(f"{where}: workspace_gib must be a positive number (GiB), got {ws!r}")
    if "profile" in data and "profiles" in data:
        raise InputError(f"{where}: give either [profile] or [[profiles]], not both")
    raw = data.get("profiles", [data["profile"]] if "profile" in data else None)
    if raw is None:
        raise InputError(f"{where} has no optimisation profile; add [[profiles]] with batch, height and width "
                         "= { min = .., opt = .., max = .. }")
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
            raise InputError(f"unknown target {s!r}: no target folder at {_targets_dir()} (an installed package "
                             "has none); give the path of a target .toml file instead")
        raise InputError(f"unknown target {s!r}; known targets: {', '.join(names)} (or give the path of a "
                         f".toml file; see `diffunfold build-engines --list`)")
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
        raise InputError(f"no optimisation profile of the engines covers batch {b} at {h}x{w} (have {have}); "
                         "split the batch, or build engines for a target whose [[profiles]] cover this size")
    return best


# -- GPUs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GPUInfo:
    name: str
    compute_capability: str   # "9.0"

    def __str__(self) -> str:
        return f"{self.name} (sm {self.compute_capability})"


def cupy_gpu(index: int = 0) -> GPUInfo | None:
    """The CUDA device ``index`` as CuPy sees it; None without CuPy or a visible device."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return None
    if n < 1:
        return None
    if not 0 <= index < n:
        raise InputError(f"GPU index {index} does not exist: CuPy sees {n} device(s) (0..{n - 1})")
    props = cupy.cuda.runtime.getDeviceProperties(index)
    name = props["name"]
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return GPUInfo(name.strip("\x00").strip(), f"{props['major']}.{props['minor']}")


def _gpu_from_nvidia_smi(index: int) -> GPUInfo | None:
    """Fallback for build machines with TensorRT but without CuPy."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    if not 0 <= index < len(rows) or len(rows[index]) < 2 or not _CC.match(rows[index][1]):
        return None
    return GPUInfo(rows[index][0], rows[index][1])


def current_gpu(index: int = 0) -> GPUInfo | None:
    """The CUDA device ``index`` (name, compute capability) through CuPy, else nvidia-smi; None when
    no GPU is visible. InputError when GPUs are visible but ``index`` is not one of them."""
    return cupy_gpu(index) or _gpu_from_nvidia_smi(index)


def cc_tuple(cc: str) -> tuple[int, int]:
    major, minor = cc.split(".")
    return int(major), int(minor)


def check_gpu_for_target(target: EngineTarget, gpu: GPUInfo) -> str | None:
    """At build time: refuse a GPU whose compute capability is not the target's (engines are built
    for the GPU they are built on) unless the target asks for hardware compatibility; then
    return a warning instead. None when all is well."""
    if target.hardware_compatibility == "ampere_plus" and cc_tuple(gpu.compute_capability) < (8, 0):
        raise InputError(f"target {target.name!r} asks for hardware_compatibility = 'ampere_plus', which "
                         f"TensorRT builds only on Ampere or newer GPUs; this GPU is {gpu}")
    if target.compute_capability is None or target.compute_capability == gpu.compute_capability:
        return None
    msg = (f"target {target.name!r} is for compute capability {target.compute_capability} but this GPU is "
           f"{gpu}")
    if target.hardware_compatibility == "none":
        raise InputError(f"{msg}: an engine runs only on the kind of GPU it was built on. Build on a "
                         f"{target.compute_capability} GPU, choose the target of this GPU "
                         f"(`diffunfold build-engines --list`), or write a target file for it")
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
    def from_dict(cls, data: Any, where: str = "engine record") -> "EngineRecord":
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InputError(f"{where} has format {got!r}, expected {RECORD_FORMAT!r}; {rebuild_hint()}")
        names = [f.name for f in fields(cls)]
        missing = [f.name for f in fields(cls) if f.name not in data
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise InputError(f"{where} lacks {missing}; it is damaged: {rebuild_hint()}")
        return cls(**{n: data[n] for n in names if n in data})

    @classmethod
    def load(cls, path: str | Path) -> "EngineRecord":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{path} is missing: the engine beside it has no record (an interrupted build?); "
                             f"{rebuild_hint()}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not valid JSON ({exc}); {rebuild_hint()}") from None
        return cls.from_dict(data, where=str(path))

    def profile_ranges(self) -> list[Profile]:
        return [_profile(p, f"{self.engine} profile {i}") for i, p in enumerate(self.profiles)]


def check_record(record: EngineRecord, engine_path: str | Path, trt_version: str, gpu: GPUInfo,
                 onnx_sha256: str | None = None, package: str | Path | None = None) -> None:
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
    pkg = str(package) if package else str(engine_path.parent.parent.parent) if engine_path.parent.parent.name == "engines" else "PACKAGE"
    hint = rebuild_hint(pkg, record.target)
    where = f"engine {engine_path}"
    if not engine_path.is_file():
        raise InputError(f"{where} is missing though its record exists; {hint}")
    digest = sha256_file(engine_path)
    if digest != record.engine_sha256:
        raise InputError(f"{where} does not match its record (sha256 {digest[:12]} != recorded "
                         f"{record.engine_sha256[:12]}): the file was changed or its build was interrupted; {hint}")
    if onnx_sha256 is None:
        manifest = engine_path.parent.parent.parent / "manifest.json"
        if manifest.is_file():
            try:
                onnx_sha256 = json.loads(manifest.read_text())["files"][record.onnx]["sha256"]
            except (KeyError, TypeError, json.JSONDecodeError):
                raise InputError(f"{where} was built from {record.onnx}, which the package manifest {manifest} "
                                 f"no longer lists; {hint}") from None
    if onnx_sha256 is not None and onnx_sha256 != record.onnx_sha256:
        raise InputError(f"{where} was built from another {record.onnx} (sha256 {record.onnx_sha256[:12]}; "
                         f"the package's is now {onnx_sha256[:12]}): the package was exported again since; {hint}")
    if str(trt_version) != record.tensorrt_version:
        raise InputError(f"{where} was built with TensorRT {record.tensorrt_version} but TensorRT {trt_version} "
                         f"is installed; a plan runs only with the exact TensorRT version that built it; {hint}")
    hw = record.hardware_compatibility
    built_on = f"{record.gpu_name} (sm {record.compute_capability})"
    if hw == "ampere_plus":
        if cc_tuple(gpu.compute_capability) < (8, 0):
            raise InputError(f"{where} was built for Ampere and newer GPUs (hardware_compatibility ampere_plus, "
                             f"on {built_on}) but this GPU is {gpu}; {hint} on a supported GPU")
        return
    if gpu.compute_capability != record.compute_capability:
        raise InputError(f"{where} was built on {built_on}, compute capability {record.compute_capability}, but "
                         f"this GPU is {gpu}; {hint} on this GPU (choose its target with --list)")
    if hw == "none" and gpu.name != record.gpu_name:
        raise InputError(f"{where} was built on {record.gpu_name} but this GPU is {gpu.name} (same compute "
                         f"capability {gpu.compute_capability}, but the target has hardware_compatibility 'none'); "
                         f"{hint} on this GPU, or set hardware_compatibility = 'same_compute_capability' in the target")


def engine_paths(directory: str | Path, onnx_name: str) -> tuple[Path, Path]:
    """``(engine, record)`` paths for one ONNX file of a package in a target's folder."""
    stem = Path(onnx_name).stem
    d = Path(directory)
    return d / f"{stem}.engine", d / f"{stem}.json"


# -- FP32 layers in a reduced-precision build -------------------------------------------------
#
# Why: diffusion U-Nets are the textbook case of FP16 TensorRT engines that return NaN or
# garbage. Three places overflow or lose everything in half precision:
#   * GroupNorm: the variance is a mean of squares over (C/G) * H * W values; activations of a
#     few hundred squared and summed leave FP16's range (max 65504) and the output is inf/NaN.
#     The exporter writes each GroupNorm as Reshape -> InstanceNormalization -> Reshape -> Mul ->
#     Add, which TensorRT imports as one NORMALIZATION layer: pinning that layer's compute
#     precision (and output) to FP32 is enough; the affine Mul/Add after it is harmless.
#   * attention: the logits q.k sum head_dim products over every pixel pair and exp() of them
#     overflows; the two MatMuls around the softmax, the scale between them and the softmax
#     itself stay FP32 (the network computes them in float32 on purpose, see training/unet.py).
#   * the EDM preconditioning around the network (c_in, c_noise = log(sigma)/4, r = c_skip x +
#     c_out F): a handful of elementwise ops on the input image at sigma up to 80, where the
#     unfolding step then uses x - r. Kept FP32: it costs nothing and keeps r's full precision.
# Reductions and powers anywhere (a decomposed norm would use them) are pinned as well. The
# convolutions, which are nearly all of the time, run in FP16.

# ONNX op -> the TensorRT layer type the ONNX parser makes of it (the main layer): for previews
# and tests on machines without TensorRT.
ONNX_TO_TRT_LAYER = {
    "InstanceNormalization": "NORMALIZATION", "GroupNormalization": "NORMALIZATION",
    "LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX", "MatMul": "MATRIX_MULTIPLY",
    "Gemm": "MATRIX_MULTIPLY", "Conv": "CONVOLUTION", "ConvTranspose": "DECONVOLUTION",
    "Add": "ELEMENTWISE", "Sub": "ELEMENTWISE", "Mul": "ELEMENTWISE", "Div": "ELEMENTWISE",
    "Pow": "ELEMENTWISE", "Max": "ELEMENTWISE", "Min": "ELEMENTWISE",
    "Sqrt": "UNARY", "Exp": "UNARY", "Log": "UNARY", "Reciprocal": "UNARY", "Cos": "UNARY", "Sin": "UNARY",
    "Abs": "UNARY", "Neg": "UNARY", "ReduceMean": "REDUCE", "ReduceSum": "REDUCE", "ReduceMax": "REDUCE",
    "Sigmoid": "ACTIVATION", "Relu": "ACTIVATION", "Tanh": "ACTIVATION", "AveragePool": "POOLING",
    "MaxPool": "POOLING", "Resize": "RESIZE", "Reshape": "SHUFFLE", "Transpose": "SHUFFLE",
    "Cast": "CAST", "Concat": "CONCATENATION", "Gather": "GATHER", "Slice": "SLICE", "Shape": "SHAPE",
    "Constant": "CONSTANT", "Unsqueeze": "SHUFFLE", "Squeeze": "SHUFFLE",
}
_ATTENTION_WORDS = ("attn", "attention")
_NORM_OPS = ("InstanceNormalization", "GroupNorm", "LayerNorm")
_ARITHMETIC = ("ELEMENTWISE", "UNARY", "REDUCE")


def _split(layer_name: str) -> tuple[str, str]:
    """``"/reg/unet/mid/mid.1/MatMul_1"`` -> ``("/reg/unet/mid/mid.1", "MatMul_1")``."""
    if "/" not in layer_name:
        return "", layer_name
    scope, op = layer_name.rsplit("/", 1)
    return scope, op


def attention_scopes(layers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The module scopes that hold an attention: those with a SOFTMAX layer in them (the exporter
    names layers after the torch module path, e.g. ``/reg/unet/mid/mid.1/Softmax``)."""
    return frozenset(_split(name)[0] for kind, name in layers if kind == "SOFTMAX" and "/" in name)


def fp32_layer_policy(layer_type_name: str, layer_name: str,
                      attention: frozenset[str] | set[str] | None = None) -> bool:
    """Whether a layer of a reduced-precision (FP16/BF16) build is pinned to FP32.

    ``layer_type_name`` is ``trt.LayerType`` 's name (``"NORMALIZATION"``), ``layer_name`` the
    layer's name (the ONNX node's, e.g. ``/reg/unet/enc.2/enc.2.1/MatMul``); ``attention`` the
    scopes from :func:`attention_scopes` (without it, attention is recognised by MatMul nodes
    and by module names containing "attn"/"attention"). See the comment above for why.
    """
    t = layer_type_name.upper()
    scope, op = _split(layer_name)
    if t == "NORMALIZATION" or t == "SOFTMAX":
        return True
    if t.startswith("PLUGIN") and op.startswith(_NORM_OPS):   # InstanceNormalization_TRT plugin
        return True
    if t == "REDUCE" or (t == "ELEMENTWISE" and op.startswith("Pow")):
        return True
    in_attention = (scope in attention if attention else False) or \
        any(w in scope.lower() for w in _ATTENTION_WORDS)
    if t == "MATRIX_MULTIPLY":
        # A conv U-Net has no MatMul outside attention (its Linear layers export as Gemm).
        return in_attention or (not attention and op.startswith("MatMul"))
    if t in _ARITHMETIC and in_attention:
        return True
    # The EDM preconditioning: the graph's top scope (one module deep, "/reg/Mul_3"), outside
    # the network body.
    if t in _ARITHMETIC and scope.count("/") == 1:
        return True
    return False


def preview_fp32_layers(nodes: Iterable[tuple[str, str]]) -> list[str]:
    """Names of the ONNX nodes ``(op_type, name)`` whose layers a FP16 build pins to FP32."""
    typed = [(ONNX_TO_TRT_LAYER.get(op, op.upper()), name) for op, name in nodes]
    scopes = attention_scopes(typed)
    return [name for kind, name in typed if fp32_layer_policy(kind, name, scopes)]


# -- building (needs TensorRT and the GPU) ----------------------------------------------------

def default_timing_cache(target: EngineTarget) -> Path:
    """``<repo>/engines/built/<target>.timing.cache`` in a checkout (git-ignored), else
    ``~/.cache/diffunfold/engines/``."""
    base = ENGINES_ROOT / "built" if TARGETS_DIR.is_dir() else Path.home() / ".cache" / "diffunfold" / "engines"
    return base / f"{target.name}.timing.cache"


def _write_bytes_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _trt_logger(trt, verbose: bool):
    return trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)


def _parse_onnx(trt, builder, logger, onnx_path: Path):
    network = builder.create_network(0)   # TensorRT 10: every network is explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(_tensorrt_onnx(onnx_path), str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            node = getattr(e, "node_name", lambda: "")() or f"node {e.node()}"
            op = getattr(e, "node_operator", lambda: "")()
            errors.append(f"  {node}{f' ({op})' if op else ''}: {e.desc()}")
        raise InputError(f"TensorRT's ONNX parser cannot read {onnx_path} ({parser.num_errors} error(s)):\n"
                         + "\n".join(errors) + "\nexport the package again with this diffunfold, or report it")
    return network, parser


def _tensorrt_onnx(onnx_path: Path) -> bytes:
    """The graph's bytes as TensorRT's parser can read them: fused attention nodes (which it
    does not read, ``attention_graph.py``) spelled out as MatMul-Softmax-MatMul, which it fuses
    itself; a graph without them as it is."""
    data = onnx_path.read_bytes()
    if b"MultiHeadAttention" not in data:
        return data
    onnx = require("onnx", "export")
    from .attention_graph import spell_out

    return spell_out(onnx.load_from_string(data)).SerializeToString()


def _is_float(trt, tensor) -> bool:
    return tensor is not None and tensor.dtype in (trt.float32, trt.float16, getattr(trt, "bfloat16", trt.float16))


def _pin_fp32(trt, network) -> list[str]:
    """Apply :func:`fp32_layer_policy` to every layer of ``network``; return the pinned names."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    scopes = attention_scopes((layer.type.name, layer.name) for layer in layers)
    pinned = []
    for layer in layers:
        if not fp32_layer_policy(layer.type.name, layer.name, scopes):
            continue
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not all(_is_float(trt, t) for t in outs) or not any(_is_float(trt, t) for t in ins if t is not None):
            continue  # shape arithmetic on integers: nothing to pin
        if layer.type == trt.LayerType.NORMALIZATION:
            layer.__class__ = trt.INormalizationLayer   # the python binding hands out ILayer
            if hasattr(layer, "compute_precision"):
                layer.compute_precision = trt.float32   # the variance is accumulated in FP32
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


def _builder_config(trt, builder, target: EngineTarget):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_bytes)
    if target.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif target.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if target.precision != "fp32":
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)  # the pinned layers really stay FP32
    if target.hardware_compatibility != "none":
        level = {"ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}
        value = getattr(trt.HardwareCompatibilityLevel, level[target.hardware_compatibility], None)
        if value is None:
            raise InputError(f"TensorRT {trt.__version__} has no hardware compatibility level "
                             f"{level[target.hardware_compatibility]}; use a newer TensorRT 10 or set "
                             "hardware_compatibility = 'none'")
        config.hardware_compatibility_level = value
    return config


def _add_profiles(trt, builder, config, network, target: EngineTarget, channels: int) -> list[str]:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in inputs]
    unknown = sorted(set(names) - {"x", "sigma", "stage"})
    if "x" not in names or "sigma" not in names or unknown:
        raise InputError(f"the regulariser's inputs are {names}; expected x, sigma and (shared network) stage: "
                         "export the package again with this diffunfold")
    c = int(inputs[names.index("x")].shape[1])
    if c not in (-1, channels):
        raise InputError(f"the ONNX input x has {c} channels but the manifest says {channels}; export again")
    for p in target.profiles:
        prof = builder.create_optimization_profile()
        prof.set_shape("x", *p.x_shapes(channels))
        for n in names:
            if n != "x":
                prof.set_shape(n, *p.batch_shapes())
        config.add_optimization_profile(prof)
    return names


def _use_device(device: int) -> None:
    """Make GPU ``device`` current: TensorRT builds on the current CUDA device."""
    try:
        import cupy

        cupy.cuda.Device(device).use()
    except ImportError:
        if device != 0:
            raise InputError("building on a GPU other than 0 needs CuPy (or set CUDA_VISIBLE_DEVICES)") from None


def _set_timing_cache(config, cache, blob: bytes, cache_path: Path, log: Callable[[str], None]):
    """Give ``config`` the run's one timing cache: ``cache`` once made, else one from ``blob`` (the
    saved cache) when it fits this TensorRT and GPU, else a new one. Returns the cache."""
    if cache is not None:
        config.set_timing_cache(cache, ignore_mismatch=False)
        return cache
    cache = config.create_timing_cache(blob) if blob else None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if blob:
            log(f"  timing cache {cache_path} does not fit this TensorRT/GPU; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _engine_record(pkg: ModelPackage, tgt: EngineTarget, onnx_name: str, engine_path: Path, trt_version: str,
                   gpu, seconds: float, fp32_layers: int, inputs) -> EngineRecord:
    """What an engine was built from, for what and how: checked before it is ever loaded."""
    from . import __version__

    return EngineRecord(target=tgt.name, onnx=onnx_name, onnx_sha256=pkg.manifest["files"][onnx_name]["sha256"],
                        engine=engine_path.name, engine_sha256=sha256_file(engine_path),
                        engine_bytes=engine_path.stat().st_size, tensorrt_version=trt_version,
                        gpu_name=gpu.name, compute_capability=gpu.compute_capability,
                        hardware_compatibility=tgt.hardware_compatibility, precision=tgt.precision,
                        profiles=[p.to_dict() for p in tgt.profiles],
                        built=time.strftime("%Y-%m-%dT%H:%M:%S"), build_seconds=round(seconds, 2),
                        fp32_layers=fp32_layers, inputs=inputs, diffunfold_version=__version__)


def build_engines(package: str | Path | ModelPackage, target: str | Path | EngineTarget,
                  out_dir: str | Path | None = None, timing_cache: str | Path | None = None,
                  progress: bool = True, log: Callable[[str], None] = print, device: int = 0,
                  verbose: bool = False) -> list[EngineRecord]:
    """Build one TensorRT engine per regulariser ONNX of ``package`` for ``target`` on GPU
    ``device``, into ``out_dir`` (default ``<package>/engines/<target>``), each with its record.

    The timing cache ``<repo>/engines/built/<target>.timing.cache`` (or ``timing_cache``) is read
    first and saved after each engine, so rebuilds and the next package are much faster.
    """
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.open(package)
    tgt = load_target(target)
    tgt.check_sizes(pkg.size_multiple)
    trt = require("tensorrt", "trt")
    gpu = current_gpu(device)
    if gpu is None:
        raise InputError("no CUDA GPU is visible (neither CuPy nor nvidia-smi sees one): engines are built on the "
                         "GPU they will run on")
    warning = check_gpu_for_target(tgt, gpu)
    if warning:
        log(warning)
    _use_device(device)
    out = Path(out_dir) if out_dir else pkg.engine_dir(tgt.name)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(tgt)
    channels = int(pkg.manifest["data"]["model_channels"])
    logger = _trt_logger(trt, verbose)
    builder = trt.Builder(logger)
    log(f"building {len(pkg.regularizer_files)} engine(s) of {pkg.path} for target {tgt.name} "
        f"({tgt.precision}, {len(tgt.profiles)} profile(s)) on {gpu} with TensorRT {trt.__version__}")
    if progress:
        for i, p in enumerate(tgt.profiles):
            log(f"  profile {i}: {p.describe()}")

    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = None
    records: list[EngineRecord] = []
    t_all = time.perf_counter()
    for i, onnx_name in enumerate(pkg.regularizer_files):
        t0 = time.perf_counter()
        # the parser owns the weights the network points to: keep it alive until the build is done
        network, _parser = _parse_onnx(trt, builder, logger, pkg.file(onnx_name))
        config = _builder_config(trt, builder, tgt)
        cache = _set_timing_cache(config, cache, blob, cache_path, log)
        inputs = _add_profiles(trt, builder, config, network, tgt, channels)
        pinned = _pin_fp32(trt, network) if tgt.precision != "fp32" else []
        engine_path, record_path = engine_paths(out, onnx_name)
        record_path.unlink(missing_ok=True)   # a half-done rebuild must not look valid
        if progress:
            log(f"[{i + 1}/{len(pkg.regularizer_files)}] {onnx_name}: {network.num_layers} layers, "
                f"{len(pinned)} pinned to FP32; building (minutes on a cold timing cache) ...")
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise InputError(f"TensorRT could not build {onnx_name} for target {tgt.name} (see its messages above); "
                             "a larger workspace_gib or smaller profiles in the target may help")
        data = memoryview(plan)
        _write_bytes_atomic(engine_path, data)
        _write_bytes_atomic(cache_path, memoryview(config.get_timing_cache().serialize()))
        seconds = time.perf_counter() - t0
        rec = _engine_record(pkg, tgt, onnx_name, engine_path, str(trt.__version__), gpu, seconds, len(pinned), inputs)
        write_json_atomic(record_path, rec.to_dict())   # the record last: its presence means "complete"
        os.chmod(record_path, 0o644)
        records.append(rec)
        log(f"  wrote {engine_path} ({rec.engine_bytes / 1e6:.1f} MB) in {seconds:.1f} s")
    log(f"built {len(records)} engine(s) in {time.perf_counter() - t_all:.1f} s; timing cache {cache_path}")
    return records


# -- command line ---------------------------------------------------------------------------

DESCRIPTION = """\
Build TensorRT engines of a model package's regulariser(s) for one GPU target, on that GPU.

A target (engines/targets/<name>.toml) gives the GPU's compute capability, the precision (FP16:
normalisation, attention and the EDM preconditioning stay FP32), the workspace and the
optimisation profiles (batch, height, width ranges) the engines accept. Engines land in
PACKAGE/engines/<target>/ with a JSON record each; the runtime refuses an engine whose
record does not match the package, the TensorRT version or the GPU. Needs the trt extra.
"""

EPILOG = """\
examples:
  diffunfold build-engines --list                            the shipped targets
  diffunfold build-engines models/demo --target h100
  diffunfold build-engines models/demo --target my_gpu.toml  a target file of your own
  diffunfold build-engines models/demo --target l4 --timing-cache /tmp/l4.cache
"""


def add_build_engines_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("package", nargs="?", help="the model package folder (from `diffunfold export`)")
    parser.add_argument("--target", help="a target name (see --list) or the path of a target .toml file")
    parser.add_argument("--list", action="store_true", help="list the shipped targets and exit")
    parser.add_argument("--timing-cache", metavar="PATH",
                        help="TensorRT timing cache to read and update (default engines/built/<target>.timing.cache)")
    parser.add_argument("--out", metavar="DIR", help="where to write the engines (default PACKAGE/engines/<target>)")
    parser.add_argument("--gpu", type=V.Bounded(0, 63, integer=True), default=0,
                        help="CUDA device index to build on (default 0)")
    parser.add_argument("--verbose", action="store_true", help="show TensorRT's own INFO messages")


def run_build_engines(args: argparse.Namespace) -> int:
    if getattr(args, "list", False):
        targets = list_targets()
        if not targets:
            print(f"no targets in {TARGETS_DIR}; give --target PATH.toml")
            return 1
        for t in targets:
            print(t.summary())
        return 0
    if not args.package or not args.target:
        raise InputError("give a package and --target NAME|PATH (or --list to see the targets), e.g. "
                         "`diffunfold build-engines models/demo --target h100`")
    build_engines(args.package, args.target, out_dir=args.out, timing_cache=args.timing_cache,
                  device=getattr(args, "gpu", 0), verbose=getattr(args, "verbose", False))
    return 0

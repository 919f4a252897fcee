"""The TensorRT backend: a package's prebuilt engines on an NVIDIA GPU, arrays in CuPy.

Engines are built per GPU target with ``diffunfold build-engines`` (``diffunfold.engines``) into
``<package>/engines/<target>/``; each has a record, and nothing is deserialised before
:func:`diffunfold.engine_targets.check_record` accepted it (same ONNX, same TensorRT, same GPU).

Execution follows TensorRT 10's name-based API: ``set_input_shape`` then ``set_tensor_address``
for every I/O tensor, then ``execute_async_v3`` on a CUDA stream. The small per-sample inputs
(``sigma``, and ``stage`` for a shared network) live in persistent device buffers, one per
batch size, refilled in place with ``buf.fill(value)``. With ``cuda_graphs=True`` the image
input and output live in persistent buffers too, so one CUDA graph captured per engine and
shape is replayed for every noise level and stage of the schedule: the solver's K x N network
calls become graph launches without per-call host work.

Torch-free: TensorRT, CuPy and (for the weight generators, on the CPU) ONNX Runtime only.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine_targets import (
    DimRange,
    EngineRecord,
    GPUInfo,
    Profile,
    check_record,
    choose_profile,
    cupy_gpu,
    engine_paths,
    rebuild_hint,
)
from ..errors import InputError, require
from ..package import ModelPackage
from .backend_base import Backend

TRT_MISSING = (
    "tensorrt is not installed (pip install 'diffunfold[trt,gpu]': TensorRT, Polygraphy and CuPy; needs an NVIDIA GPU)"
)


def _tensorrt_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt
    except Exception:  # a stub wheel or a missing libnvinfer
        return None
    return str(getattr(tensorrt, "__version__", "") or "") or None


def _engine_roots(package: ModelPackage, engines: str | Path | None) -> list[Path]:
    return [Path(engines)] if engines else [package.path / "engines"]


def _target_dirs(root: Path) -> list[Path]:
    """A folder of targets (``engines/``), or one target's folder itself (has ``*.json``)."""
    if not root.is_dir():
        return []
    if any(root.glob("*.json")):
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def find_engines(
    package: ModelPackage, gpu: GPUInfo, trt_version: str, engines: str | Path | None = None
) -> tuple[str, list[tuple[Path, EngineRecord]]]:
    """``(target, [(engine path, record) per regulariser file])`` of the first target folder whose
    records all pass :func:`check_record` here. InputError saying why each folder was refused
    (or that there is none) otherwise."""
    reasons: list[str] = []
    roots = _engine_roots(package, engines)
    for root in roots:
        for d in _target_dirs(root):
            found, why = [], None
            for onnx_name in package.regularizer_files:
                engine_path, record_path = engine_paths(d, onnx_name)
                try:
                    if not record_path.is_file():
                        raise InputError(f"no {record_path.name} (engine of {onnx_name}) in {d}")
                    record = EngineRecord.load(record_path)
                    check_record(
                        record,
                        engine_path,
                        trt_version,
                        gpu,
                        onnx_sha256=package.manifest["files"][onnx_name]["sha256"],
                        package=package.path,
                    )
                except InputError as exc:
                    why = str(exc)
                    break
                found.append((engine_path, record))
            if why is None:
                return (found[0][1].target if found else d.name), found
            reasons.append(f"{d.name}: {why}")
    where = " or ".join(str(r) for r in roots)
    if not reasons:
        raise InputError(
            f"no engines built for this GPU in {where}; run `diffunfold build-engines {package.path} "
            f"--target TARGET` on this {gpu.name} (targets: `diffunfold build-engines --list`)"
        )
    raise InputError(f"no usable engines for {gpu} in {where}:\n  " + "\n  ".join(reasons))


def tensorrt_status(package: ModelPackage | None = None, device_index: int = 0) -> str:
    """ "ok ..." only when TensorRT imports, CuPy sees the GPU and the package has engines for it
    whose records pass; otherwise the reason."""
    version = _tensorrt_version()
    if version is None:
        return TRT_MISSING
    try:
        gpu = cupy_gpu(device_index)
    except InputError as exc:
        return str(exc)
    if gpu is None:
        return "CuPy cannot see a CUDA device (install 'diffunfold[gpu]' on a GPU machine)"
    if package is None:
        return f"TensorRT {version} is installed; usable with a package that has engines for {gpu.name}"
    try:
        target, found = find_engines(package, gpu, version)
    except InputError as exc:
        return str(exc)
    return f"ok (TensorRT {version}, target {target}, {len(found)} engine(s) for {gpu})"


@dataclass
class _Engine:
    """One deserialised engine, its execution context and what is bound to it now."""

    name: str
    engine: Any
    context: Any
    inputs: list[str]
    dtypes: dict[str, Any]
    profiles: list[Profile]
    profile: int = -1
    shape: tuple[int, ...] | None = None
    graph: Any = None  # the CUDA graph captured at ``shape``
    x_buf: Any = None  # persistent I/O for the graph
    r_buf: Any = None
    extra: dict = field(default_factory=dict)


class TensorRTBackend(Backend):
    """FP16 TensorRT engines from ``<package>/engines/<target>/`` (or ``engines``) on a CUDA GPU.

    ``cuda_graphs``: capture one CUDA graph per engine and image shape (after one warm-up run,
    as TensorRT requires) and replay it for every noise level; the shape of a captured engine
    changing drops its graph (it is captured again at the new shape)."""

    name = "tensorrt"

    def __init__(
        self,
        package: ModelPackage,
        device: str = "cuda",
        engines: str | Path | None = None,
        cuda_graphs: bool = False,
        threads: int | None = None,
        verbose: bool = False,
    ):
        super().__init__(package, device)
        if self.device_kind != "cuda":
            raise InputError(
                "the tensorrt backend runs prebuilt engines on an NVIDIA GPU (device='cuda'); on the "
                "CPU use backend='onnxruntime'"
            )
        trt = require("tensorrt", "trt")
        cp = require("cupy", "gpu")
        self.trt, self.cp = trt, cp
        gpu = cupy_gpu(self.device_index)
        if gpu is None:
            raise InputError("CuPy cannot see a CUDA device; the tensorrt backend needs one")
        self.gpu = gpu
        self.target, found = find_engines(package, gpu, str(trt.__version__), engines)
        self.records = [rec for _, rec in found]
        self.cuda_graphs = bool(cuda_graphs)
        self.channels = int(package.manifest["data"]["model_channels"])
        self._logger = trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with cp.cuda.Device(self.device_index):
            self._stream = cp.cuda.Stream(non_blocking=True)  # TensorRT work and graph capture
            self._engines = [self._load(path, rec) for path, rec in found]
        self._small: dict[int, dict[str, Any]] = {}
        ort = require("onnxruntime", "core")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        self._weights = ort.InferenceSession(
            str(package.file(package.weights_file)), opts, providers=["CPUExecutionProvider"]
        )

    # -- loading ------------------------------------------------------------------------------
    def _load(self, path: Path, record: EngineRecord) -> _Engine:
        trt = self.trt
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise InputError(
                f"TensorRT could not deserialise {path} (see its messages above) although its record "
                f"matches; {rebuild_hint(self.package.path, record.target)}"
            )
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if "x" not in inputs or "sigma" not in inputs or outputs != ["r"]:
            raise InputError(
                f"{path} has inputs {inputs} and outputs {outputs}; expected x, sigma[, stage] -> r: "
                f"{rebuild_hint(self.package.path, record.target)}"
            )
        dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        profiles = []
        for p in range(engine.num_optimization_profiles):
            lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape("x", p))
            profiles.append(Profile(*(DimRange(int(lo[i]), int(opt[i]), int(hi[i])) for i in (0, 2, 3))))
        context = engine.create_execution_context()
        if context is None:
            raise InputError(f"TensorRT could not create an execution context for {path} (out of GPU memory?)")
        return _Engine(path.name, engine, context, inputs, dtypes, profiles)

    # -- running ------------------------------------------------------------------------------
    def _small_inputs(self, b: int, eng: _Engine) -> dict[str, Any]:
        """Persistent device buffers of ``sigma`` (and ``stage``) for batch size ``b``: their addresses
        stay fixed, so a captured graph reads whatever ``fill`` put in them before the launch."""
        bufs = self._small.get(b)
        if bufs is None:
            bufs = {n: self.cp.zeros(b, dtype=eng.dtypes[n]) for n in eng.inputs if n != "x"}
            self._small[b] = bufs
        return bufs

    def _bind(self, eng: _Engine, b: int, h: int, w: int, stream) -> bool:
        """Select a profile and set the input shapes for ``(b, h, w)``; True when they changed."""
        shape = (b, self.channels, h, w)
        if eng.shape == shape:
            return False
        p = choose_profile(eng.profiles, b, h, w)
        ctx = eng.context
        if p != eng.profile:
            if not ctx.set_optimization_profile_async(p, stream.ptr):
                raise InputError(f"TensorRT could not switch {eng.name} to optimisation profile {p}")
            eng.profile = p
        ok = ctx.set_input_shape("x", shape)
        for n in eng.inputs:
            if n != "x":
                ok = ctx.set_input_shape(n, (b,)) and ok
        if not ok:
            raise InputError(
                f"TensorRT refused the input shape {shape} for {eng.name} (profile {p}: {eng.profiles[p].describe()})"
            )
        out = tuple(ctx.get_tensor_shape("r"))
        if out != shape:
            raise InputError(f"{eng.name} would return r of shape {out} for x of shape {shape}; rebuild its engine")
        eng.shape, eng.graph = shape, None  # a graph captured at another shape is no longer valid
        return True

    def _set_addresses(self, eng: _Engine, x, r, small: dict[str, Any]) -> None:
        ctx = eng.context
        ctx.set_tensor_address("x", int(x.data.ptr))
        ctx.set_tensor_address("r", int(r.data.ptr))
        for n, buf in small.items():
            ctx.set_tensor_address(n, int(buf.data.ptr))

    def _enqueue(self, eng: _Engine, stream) -> None:
        if not eng.context.execute_async_v3(stream.ptr):
            raise InputError(f"TensorRT failed to run {eng.name} (see its messages above)")

    def regularize(self, x, sigma: float, k: int):
        self._check_stage(k)
        cp = self.cp
        if not isinstance(x, cp.ndarray):
            raise InputError(
                f"the tensorrt backend takes CuPy arrays on the GPU, got {type(x).__name__}; use cupy.asarray(x)"
            )
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise InputError(f"x must be (B, {self.channels}, H, W), got shape {tuple(x.shape)}")
        eng = self._engines[0 if self.shared else k]
        b, _, h, w = (int(n) for n in x.shape)
        with cp.cuda.Device(self.device_index):
            x = cp.ascontiguousarray(x, dtype=cp.float32)
            current = cp.cuda.get_current_stream()
            out = cp.empty_like(x)  # allocated on the caller's stream: it owns the result
            s = self._stream
            s.wait_event(current.record())  # x (and out's memory) are ready on the caller's stream
            with s:
                changed = self._bind(eng, b, h, w, s)
                small = self._small_inputs(b, eng)
                small["sigma"].fill(sigma)
                if "stage" in small:
                    small["stage"].fill(k)
                if self.cuda_graphs:
                    self._run_graph(eng, x, out, small, changed, s)
                else:
                    self._set_addresses(eng, x, out, small)
                    self._enqueue(eng, s)
            current.wait_event(s.record())  # the caller's next work sees r
        return out

    def _run_graph(self, eng: _Engine, x, out, small, changed: bool, s) -> None:
        cp = self.cp
        if eng.graph is None or changed:
            eng.x_buf = cp.empty(eng.shape, dtype=cp.float32)
            eng.r_buf = cp.empty(eng.shape, dtype=cp.float32)
            self._set_addresses(eng, eng.x_buf, eng.r_buf, small)
            eng.x_buf[...] = x
            self._enqueue(eng, s)  # TensorRT's warm-up run: it may allocate or sync, not allowed
            s.synchronize()  # inside a capture
            s.begin_capture()
            try:
                ok = eng.context.execute_async_v3(s.ptr)
            finally:
                graph = s.end_capture()
            if not ok:
                raise InputError(
                    f"TensorRT failed to run {eng.name} while capturing a CUDA graph; use cuda_graphs=False"
                )
            eng.graph = graph
            eng.extra["captures"] = eng.extra.get("captures", 0) + 1
        else:
            eng.x_buf[...] = x
        eng.graph.launch(stream=s)
        out[...] = eng.r_buf  # on s, before the caller's stream is allowed on

    def weights(self, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tau, gamma = self._weights.run(None, {"sigma": np.asarray(sigmas, dtype=np.float32).reshape(-1)})
        return tau, gamma

    def describe(self) -> str:
        rec = self.records[0]
        graphs = ", CUDA graphs" if self.cuda_graphs else ""
        return f"tensorrt ({rec.precision}, target {self.target}, TensorRT {rec.tensorrt_version}, {self.gpu}{graphs})"


__all__ = ["TensorRTBackend", "find_engines", "tensorrt_status"]

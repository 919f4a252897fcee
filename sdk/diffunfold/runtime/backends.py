"""Interchangeable network backends behind one small interface (architecture.md, boundary 5).

A backend runs the two learned parts of a package:

* ``regularize(x, sigma, k)``: ``R_k(x; sigma)`` on a model-space batch ``x`` (float32
  ``(B, C, H, W)``, numpy on the CPU or CuPy on a GPU) at one noise level ``sigma``;
* ``weights(sigmas)``: ``(tau, gamma)``, float32 ``(N, K)``, for N noise levels at once (the
  solver calls it once per schedule and caches the result).

Backends here: ONNX Runtime (CPU, or CUDA with IOBinding on CuPy arrays) and the torch
reference (for tests and GPU machines without ONNX Runtime CUDA). TensorRT lives in
``runtime/tensorrt.py``, OpenVINO (CPU, bf16 where the CPU has it) in
``runtime/openvino_backend.py``. No module here imports torch at import time.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from ..errors import InputError, MissingDependencyError, require
from ..package import ModelPackage

BACKENDS = ("auto", "tensorrt", "openvino", "onnxruntime", "torch")


def parse_device(device: str | None) -> tuple[str, int]:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> ``(kind, index)``."""
    d = (device or "cpu").lower()
    if d == "cpu":
        return "cpu", 0
    if d == "cuda" or d == "gpu":
        return "cuda", 0
    if d.startswith("cuda:") and d[5:].isdigit():
        return "cuda", int(d[5:])
    raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        return False


def cuda_available() -> bool:
    """A CUDA device that CuPy can use (CuPy is how the runtime holds GPU arrays)."""
    if not installed("cupy"):
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # driver missing or broken: no GPU for us
        return False


class Backend:
    """Base class: see the module docstring for the contract."""

    name = "backend"

    def __init__(self, package: ModelPackage, device: str = "cpu"):
        self.package = package
        self.device_kind, self.device_index = parse_device(device)
        self.stages = package.stages
        self.shared = package.shared

    @property
    def xp(self):
        """The array module the solver should hold its state in (numpy or CuPy)."""
        if self.device_kind == "cuda":
            import cupy

            return cupy
        return np

    def regularize(self, x, sigma: float, k: int):
        raise NotImplementedError

    def weights(self, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work (so timings are honest); a no-op on the CPU."""
        if self.device_kind == "cuda":
            import cupy

            cupy.cuda.get_current_stream().synchronize()

    def describe(self) -> str:
        return f"{self.name} on {self.device_kind}"

    def _check_stage(self, k: int) -> None:
        if not 0 <= k < self.stages:
            raise InputError(f"stage {k} out of range [0, {self.stages})")


# -- ONNX Runtime ---------------------------------------------------------------------------

# ORT's intra-op threads spin for a while after each call when allowed: the next call starts
# sooner, but the spinning threads take the cores from the numpy physics between calls and from
# any other process. Measured end to end (bench/run.py --spinning, README "Spinning"): see there.
SPINNING_DEFAULT = False


def onnxruntime_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime: the CPU execution provider on numpy arrays, or the CUDA execution provider
    with IOBinding on CuPy arrays (inputs and outputs stay on the GPU, no host copies).

    The weight generators always run on the CPU: they are evaluated once per schedule.
    ``spinning``: whether ORT's intra-op threads spin for work after each call (default
    :data:`SPINNING_DEFAULT`, see there)."""

    name = "onnxruntime"

    def __init__(self, package: ModelPackage, device: str = "cpu", threads: int | None = None,
                 iobinding: bool | None = None, spinning: bool | None = None):
        super().__init__(package, device)
        self.iobinding = self.device_kind == "cuda" if iobinding is None else bool(iobinding)
        ort = require("onnxruntime", "gpu" if self.device_kind == "cuda" else "core")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.spinning = SPINNING_DEFAULT if spinning is None else bool(spinning)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.device_kind == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise MissingDependencyError(
                    "ONNX Runtime here has no CUDA execution provider (the CPU wheel `onnxruntime` is "
                    "installed); on a GPU machine run `pip uninstall -y onnxruntime && pip install "
                    "onnxruntime-gpu`, or use backend='torch' or 'tensorrt'")
            providers = [("CUDAExecutionProvider", {"device_id": self.device_index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self._sessions = [ort.InferenceSession(str(package.file(f)), opts, providers=providers)
                          for f in package.regularizer_files]
        cpu_opts = ort.SessionOptions()
        cpu_opts.log_severity_level = 3
        self._weights = ort.InferenceSession(str(package.file(package.weights_file)), cpu_opts,
                                             providers=["CPUExecutionProvider"])
        self._feeds: dict[tuple, dict[str, Any]] = {}

    def _inputs(self, b: int, sigma: float, k: int) -> dict[str, np.ndarray]:
        key = (b, float(sigma), k)  # the small sigma/stage inputs, rebuilt only when they change
        feeds = self._feeds.get(key)
        if feeds is None:
            feeds = {"sigma": np.full(b, sigma, dtype=np.float32)}
            if self.shared:
                feeds["stage"] = np.full(b, k, dtype=np.int64)
            if len(self._feeds) > 256:
                self._feeds.clear()
            self._feeds[key] = feeds
        return feeds

    def regularize(self, x, sigma: float, k: int):
        self._check_stage(k)
        sess = self._sessions[0 if self.shared else k]
        small = self._inputs(int(x.shape[0]), sigma, k)
        if self.device_kind == "cpu" and not self.iobinding:
            (r,) = sess.run(["r"], {"x": np.ascontiguousarray(x, dtype=np.float32), **small})
            return r
        return self._run_bound(sess, x, small)

    def _run_bound(self, sess, x, small):
        """Run with IOBinding: ``x`` and the output stay where they are (CuPy on the GPU, no host
        copies); ORT reads and writes them by address. Also usable on the CPU (tests)."""
        if self.device_kind == "cuda":
            import cupy

            x = cupy.ascontiguousarray(x, dtype=cupy.float32)
            out = cupy.empty_like(x)
            x_ptr, out_ptr, device = x.data.ptr, out.data.ptr, "cuda"
        else:
            x = np.ascontiguousarray(x, dtype=np.float32)
            out = np.empty_like(x)
            x_ptr, out_ptr, device = x.ctypes.data, out.ctypes.data, "cpu"
        binding = sess.io_binding()
        binding.bind_input("x", device, self.device_index, np.float32, list(x.shape), x_ptr)
        for name, value in small.items():  # tiny host inputs; ORT copies them
            binding.bind_cpu_input(name, value)
        binding.bind_output("r", device, self.device_index, np.float32, list(out.shape), out_ptr)
        if self.device_kind == "cuda":
            import cupy

            cupy.cuda.get_current_stream().synchronize()  # ORT runs on its own stream: x must be ready
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out

    def weights(self, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tau, gamma = self._weights.run(None, {"sigma": np.asarray(sigmas, dtype=np.float32).reshape(-1)})
        return tau, gamma

    def describe(self) -> str:
        prov = self._sessions[0].get_providers()[0]
        return f"onnxruntime ({prov})"


# -- torch reference ------------------------------------------------------------------------

class TorchBackend(Backend):
    """The training side's own modules, rebuilt from the package's ``model.safetensors``.

    The reference the other backends are checked against, and the GPU path where neither
    TensorRT nor ONNX Runtime CUDA is installed: CuPy arrays cross to torch through DLPack
    without copies."""

    name = "torch"

    def __init__(self, package: ModelPackage, device: str = "cpu", threads: int | None = None):
        super().__init__(package, device)
        torch = require("torch", "train")
        from safetensors.torch import load_file

        from ..training.model import DiffUnfolding, ModelSettings

        if package.torch_weights_file is None:
            raise InputError(f"package {package.path} was exported without model.safetensors; export it "
                             "again without --no-torch-weights to use the torch backend")
        self.torch = torch
        if self.device_kind == "cuda" and not torch.cuda.is_available():
            raise MissingDependencyError(f"torch {torch.__version__} cannot use CUDA here; install a CUDA build "
                                         "of torch, or use backend='onnxruntime' or 'tensorrt'")
        if threads:
            torch.set_num_threads(int(threads))
        self.torch_device = torch.device("cuda", self.device_index) if self.device_kind == "cuda" else torch.device("cpu")
        model = DiffUnfolding(ModelSettings.from_dict(package.settings))
        model.load_state_dict(load_file(str(package.file(package.torch_weights_file))))
        self.model = model.to(self.torch_device).eval()

    def _to_torch(self, x):
        if self.device_kind == "cuda":
            return self.torch.from_dlpack(x)
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def _from_torch(self, t):
        if self.device_kind == "cuda":
            import cupy

            return cupy.from_dlpack(t)
        return t.numpy()

    def regularize(self, x, sigma: float, k: int):
        self._check_stage(k)
        with self.torch.inference_mode():
            xt = self._to_torch(x)
            s = self.torch.full((xt.shape[0],), float(sigma), dtype=self.torch.float32, device=self.torch_device)
            return self._from_torch(self.model.regularize(xt, s, k).contiguous())

    def weights(self, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            s = self.torch.from_numpy(np.asarray(sigmas, dtype=np.float32).reshape(-1)).to(self.torch_device)
            tau, gamma = self.model.weights(s)
            return tau.cpu().numpy(), gamma.cpu().numpy()

    def synchronize(self) -> None:
        if self.device_kind == "cuda":
            self.torch.cuda.synchronize(self.torch_device)


# -- choosing one ---------------------------------------------------------------------------

def _torch_cuda() -> bool:
    """Whether the installed torch is a CUDA build, read from its version (``2.13.0+cpu`` is not)
    so that choosing a backend never imports torch; TorchBackend checks the device itself."""
    if not installed("torch"):
        return False
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "+cpu" not in version("torch")
    except PackageNotFoundError:
        return False


def available_backends(package: ModelPackage | None = None, device: str = "cpu") -> dict[str, str]:
    """``{backend: why it is or is not usable}`` for ``device``; usable ones say "ok ..."."""
    kind, index = parse_device(device)
    out: dict[str, str] = {}
    providers = onnxruntime_providers()
    if kind == "cpu":
        out["tensorrt"] = "needs a CUDA device"
        out["openvino"] = openvino_status()
        out["onnxruntime"] = "ok (CPUExecutionProvider)" if providers else "onnxruntime is not installed"
        out["torch"] = ("ok (CPU)" if installed("torch") else
                        "torch is not installed (pip install 'diffunfold[train]')")
        return out
    gpu = cuda_available()
    from .tensorrt import tensorrt_status

    out["tensorrt"] = tensorrt_status(package, index) if gpu else "CuPy cannot see a CUDA device"
    out["openvino"] = "runs on the CPU only"
    out["onnxruntime"] = ("ok (CUDAExecutionProvider)" if gpu and "CUDAExecutionProvider" in providers else
                          "no CUDA device" if not gpu else
                          "the installed onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    out["torch"] = ("ok (CUDA)" if gpu and _torch_cuda() else
                    "no CUDA device" if not gpu else "torch is not installed or has no CUDA")
    return out


def openvino_status() -> str:
    """Whether the openvino backend can run here, and in which precision. Without native bf16 it
    runs float32, no faster than ONNX Runtime (1.5-1.9x its time per call measured here, 1.02-1.07x
    in issue 16's quiet runs): it is then "usable", taken when asked for, and ``auto`` passes it by."""
    if not installed("openvino"):
        return "openvino is not installed (pip install 'diffunfold[openvino]')"
    from ..hardware import has_native_bf16

    if has_native_bf16():
        return "ok (CPU, bf16: the CPU has AVX-512 BF16 or AMX)"
    return ("usable (CPU, f32: no native bf16 on this CPU, where OpenVINO is no faster than ONNX Runtime; "
            "auto passes it by, backend='openvino' takes it)")


# Fastest first: FP16 TensorRT engines; on a CPU OpenVINO (bf16 where the CPU computes it, about
# half ONNX Runtime's time per call; bench/run.py), then ONNX Runtime (it fuses and runs the graph
# without Python overhead), then torch.
_PREFERENCE = ("tensorrt", "openvino", "onnxruntime", "torch")
# Options each backend takes besides device and threads.
_OPTIONS = {"tensorrt": {"cuda_graphs", "engines"}, "openvino": {"precision", "cache_dir", "attention",
                                                                         "group_norm"},
            "onnxruntime": {"spinning"}, "torch": set()}


def create_backend(package: ModelPackage, backend: str = "auto", device: str = "cpu",
                   threads: int | None = None, **options) -> tuple[Backend, str]:
    """``(backend, why it was chosen)``. ``auto`` takes the first usable one of
    tensorrt > openvino > onnxruntime > torch for the device. ``options``: TensorRT's
    ``cuda_graphs=True``, ``engines=DIR``; OpenVINO's ``precision="bf16"|"f32"``,
    ``cache_dir=DIR``, ``attention="fused"|"spelled"``, ``group_norm="reduce"|"exported"``; ONNX Runtime's ``spinning=True|False``; others are refused."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    kind, _ = parse_device(device)
    if kind == "cuda" and not cuda_available():
        raise InputError(f"device {device!r} asked for, but CuPy cannot see a CUDA device; install "
                         "'diffunfold[gpu]' (CuPy) on a GPU machine, or use device='cpu'")
    if backend == "auto":
        status = available_backends(package, device)
        usable = [b for b in _PREFERENCE if status.get(b, "").startswith("ok")]
        if not usable:
            raise MissingDependencyError("no backend is usable here: " +
                                         "; ".join(f"{b}: {why}" for b, why in status.items()))
        backend = usable[0]
        why = f"auto: {backend} is the fastest usable backend on {device} (" + \
              "; ".join(f"{b}: {s}" for b, s in status.items()) + ")"
    else:
        why = f"{backend} (asked for)"
    foreign = sorted(set(options) - _OPTIONS[backend])
    if foreign:
        owners = {o: b for b, names in _OPTIONS.items() for o in names}
        raise InputError(f"option(s) {foreign} do not apply to the {backend} backend (they belong to "
                         + ", ".join(sorted({owners.get(o, '?') for o in foreign})) + ")")
    if backend == "openvino":
        from .openvino_backend import OpenVinoBackend

        return OpenVinoBackend(package, device, threads, **options), why
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(package, device, threads, **options), why
    if backend == "torch":
        return TorchBackend(package, device, threads), why
    from .tensorrt import TensorRTBackend

    return TensorRTBackend(package, device, threads=threads, **options), why

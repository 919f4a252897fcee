"""ONNX Runtime backend: the CPU execution provider on numpy arrays, or the CUDA execution
provider with IOBinding on CuPy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import MissingDependencyError, require
from ..package import ModelPackage
from .backend_base import Backend

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

    def __init__(
        self,
        package: ModelPackage,
        device: str = "cpu",
        threads: int | None = None,
        iobinding: bool | None = None,
        spinning: bool | None = None,
    ):
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
                    "onnxruntime-gpu`, or use backend='torch' or 'tensorrt'"
                )
            providers = [("CUDAExecutionProvider", {"device_id": self.device_index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self._sessions = [
            ort.InferenceSession(str(package.file(f)), opts, providers=providers) for f in package.regularizer_files
        ]
        cpu_opts = ort.SessionOptions()
        cpu_opts.log_severity_level = 3
        self._weights = ort.InferenceSession(
            str(package.file(package.weights_file)), cpu_opts, providers=["CPUExecutionProvider"]
        )
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

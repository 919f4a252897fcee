"""The OpenVINO backend: the package's ONNX regularisers through OpenVINO's own runtime on a CPU.

Why it exists: on CPUs with native bfloat16 (AVX-512 BF16, AMX) OpenVINO runs the U-Net in
bf16, which ONNX Runtime's CPU provider cannot (ONNX ``Conv`` has no bf16 kernel there), for
about half the time per call (``bench/run.py``). Elsewhere it runs float32.

* precision: ``"bf16"`` where :func:`diffunfold.hardware.has_native_bf16`, else ``"f32"``;
  ``precision=`` overrides it. What the compiled model really uses is
  :meth:`OpenVinoBackend.inference_precision`.
* shapes: each input shape is compiled as a static model (dynamic shapes were 10-19 % slower),
  kept in an in-process cache keyed by (network, shape, precision), and OpenVINO's
  ``CACHE_DIR`` keeps the compiled blobs on disk, so another process skips the compile too.
* the weight generators run once per schedule, in float32.
* attention: a package's fused ``MultiHeadAttention`` nodes are read as they are
  (``attention="fused"``), or first spelled out as MatMul-Softmax-MatMul (``"spelled"``, needs
  ``onnx``), which OpenVINO fuses into its own kernel. ``ATTENTION_DEFAULT`` is the measured
  choice (``bench/attention.py``; the README's *CPU backends*).
* group norms: computed from per-channel statistics (``group_norm="reduce"``, the default,
  needs ``onnx``), which keeps OpenVINO's blocked layout between the convolutions: 0.71-0.84x
  of the exported Reshape-InstanceNorm-Reshape form per call (``diffunfold.group_norm_graph``);
  ``"exported"`` reads the graph as exported. Without ``onnx`` the exported form is used, and
  :meth:`OpenVinoBackend.describe` says so.

Nothing here imports torch; ``openvino`` is the optional extra ``diffunfold[openvino]``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import InputError, require
from ..hardware import has_native_bf16
from ..package import ModelPackage
from .backend_base import Backend

PRECISIONS = ("bf16", "f32")
ATTENTION_FORMS = ("fused", "spelled")
ATTENTION_DEFAULT = "fused"
GROUP_NORM_FORMS = ("reduce", "exported")
COMPILED_KEPT = 16  # compiled (network, shape, precision) models kept in memory, least recent dropped
_CORE = None


def shared_core():
    """The process's one ``openvino.Core``, never released.

    Why one: OpenVINO's CPU plugin gives the thread that compiles an alternate signal stack
    (``sigaltstack``) and unmaps it when the plugin unloads, which happens when the last Core
    goes. Released on another thread (the MRD server's, the garbage collector's), it left the
    compiling thread with a dangling signal stack, and that thread's next Python signal handler
    (SIGCHLD from a DataLoader worker or a subprocess, SIGTERM) killed the process with SIGSEGV.
    A Core that lives as long as the process keeps the plugin, and the stack, loaded.
    """
    global _CORE
    if _CORE is None:
        _CORE = require("openvino", "openvino").Core()
    return _CORE


def default_precision() -> str:
    """``bf16`` on a CPU that computes it natively, ``f32`` elsewhere."""
    return "bf16" if has_native_bf16() else "f32"


def default_cache_dir() -> Path:
    """``$DIFFUNFOLD_CACHE/openvino``, else ``~/.cache/diffunfold/openvino``."""
    root = os.environ.get("DIFFUNFOLD_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "diffunfold") / "openvino"


class OpenVinoBackend(Backend):
    """OpenVINO on the CPU (``openvino.Core``, ``compile_model``), one static compile per shape."""

    name = "openvino"

    def __init__(
        self,
        package: ModelPackage,
        device: str = "cpu",
        threads: int | None = None,
        precision: str | None = None,
        cache_dir: str | Path | None = None,
        attention: str | None = None,
        group_norm: str = "reduce",
    ):
        super().__init__(package, device)
        if self.device_kind != "cpu":
            raise InputError(
                "the openvino backend runs on the CPU; use device='cpu', or tensorrt / onnxruntime on a GPU"
            )
        self.precision = precision or default_precision()
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.attention = attention or ATTENTION_DEFAULT
        if self.attention not in ATTENTION_FORMS:
            raise InputError(f"attention must be one of {ATTENTION_FORMS}, got {attention!r}")
        if group_norm not in GROUP_NORM_FORMS:
            raise InputError(f"group_norm must be one of {GROUP_NORM_FORMS}, got {group_norm!r}")
        self.group_norm = group_norm
        self.core = shared_core()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home: compile every process, still cached in memory
            self.cache_dir = None
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": self.precision}
        if self.cache_dir is not None:  # per compile: the Core is shared by backends with other folders
            self.config["CACHE_DIR"] = str(self.cache_dir)
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self._models = [self._read(package.file(f)) for f in package.regularizer_files]
        weights = self.core.compile_model(
            self.core.read_model(str(package.file(package.weights_file))), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )
        self._weights = weights.create_infer_request()
        self._compiled: OrderedDict[tuple, object] = OrderedDict()
        self.compiles = 0  # compiles done by this backend (a disk-cache hit counts: it is a load)

    def _read(self, path: Path):
        """The regulariser graph at ``path`` as an OpenVINO model, in this backend's attention and
        group-norm forms. Sets ``group_norm_used`` to the group-norm form really read."""
        spell = self.attention == "spelled" and self.package.manifest.get("networks", {}).get("attention") == "fused"
        try:
            import onnx
        except ImportError:
            onnx = None
        if onnx is None and not spell:
            self.group_norm_used = (
                "exported (onnx is not installed: pip install onnx)" if self.group_norm == "reduce" else "exported"
            )
            return self.core.read_model(str(path))
        if onnx is None:
            require("onnx", "openvino")  # raises, saying what to install
        from ..attention_graph import spell_out
        from ..group_norm_graph import reduce_form

        model = onnx.load(str(path))
        model = spell_out(model) if spell else model
        model = reduce_form(model) if self.group_norm == "reduce" else model
        self.group_norm_used = self.group_norm
        return self.core.read_model(model.SerializeToString())

    def _request(self, index: int, shape: tuple[int, ...]):
        """The infer request of network ``index`` compiled for ``x`` of ``shape`` (cached)."""
        key = (index, shape, self.precision)
        req = self._compiled.get(key)
        if req is not None:
            self._compiled.move_to_end(key)
            return req
        model = self._models[index].clone()
        b = shape[0]
        model.reshape({p.get_any_name(): (list(shape) if p.get_any_name() == "x" else [b]) for p in model.inputs})
        req = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        self.compiles += 1
        self._compiled[key] = req
        if len(self._compiled) > COMPILED_KEPT:
            self._compiled.popitem(last=False)
        return req

    def regularize(self, x, sigma: float, k: int):
        self._check_stage(k)
        x = np.ascontiguousarray(x, dtype=np.float32)
        b = int(x.shape[0])
        req = self._request(0 if self.shared else k, tuple(int(s) for s in x.shape))
        feeds = {"x": x, "sigma": np.full(b, sigma, dtype=np.float32)}
        if self.shared:
            feeds["stage"] = np.full(b, k, dtype=np.int64)
        req.infer(feeds, share_inputs=True)
        return req.get_output_tensor(0).data.copy()  # the request reuses its output buffer

    def weights(self, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._weights.infer({"sigma": np.asarray(sigmas, dtype=np.float32).reshape(-1)})
        tau, gamma = (np.array(out[o]) for o in self._weights.model_outputs)
        return tau, gamma

    def inference_precision(self, size: int = 32) -> str:
        """The precision OpenVINO really computes in (its compiled model's
        ``INFERENCE_PRECISION_HINT``), for a network compiled at ``size`` px."""
        m = self.package.size_multiple
        hw = m * -(-size // m)
        req = self._request(0, (1, self.package.space.model_channels, hw, hw))
        return req.get_compiled_model().get_property("INFERENCE_PRECISION_HINT").to_string()

    def describe(self) -> str:
        return f"openvino (CPU, {self.precision}, attention {self.attention}, group norms {self.group_norm_used})"

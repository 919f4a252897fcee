"""The network backend interface (architecture.md, boundary 5), and the device helpers every
backend shares.

A backend runs the two learned parts of a package:

* ``regularize(x, sigma, k)``: ``R_k(x; sigma)`` on a model-space batch ``x`` (float32
  ``(B, C, H, W)``, numpy on the CPU or CuPy on a GPU) at one noise level ``sigma``;
* ``weights(sigmas)``: ``(tau, gamma)``, float32 ``(N, K)``, for N noise levels at once (the
  solver calls it once per schedule and caches the result).

The backends: ``backend_onnxruntime``, ``backend_openvino``, ``backend_tensorrt`` and
``backend_torch``; ``backends`` chooses one. No module here imports torch at import time.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ..errors import InputError
from ..package import ModelPackage


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

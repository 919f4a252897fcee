"""Shared fixtures: the array backends the physics must agree on, the tiny exported packages the
runtime tests share. Plain helper functions live in ``helpers.py``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from helpers import quiet, tiny_model

# The suite must never reach the network (scikit-image data, hubs).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _signal_stack_is_dangling() -> bool:
    """Whether this thread's alternate signal stack points at unmapped memory (Linux).

    A library that unmaps a thread's signal stack without unregistering it (OpenVINO's CPU plugin
    freed on another thread did: backend_openvino.shared_core) kills the process with SIGSEGV at
    the next Python signal handler, tests later; checked after each test, it fails where it began.
    """
    import ctypes

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    ss = StackT()
    if ctypes.CDLL(None).sigaltstack(None, ctypes.byref(ss)) != 0 or not ss.ss_sp or ss.ss_flags & 2:  # SS_DISABLE
        return False
    with open("/proc/self/maps") as maps:
        spans = [line.split()[0].split("-") for line in maps]
    return not any(int(a, 16) <= ss.ss_sp < int(b, 16) for a, b in spans)


@pytest.fixture(autouse=True)
def _signal_stack_stays_mapped():
    yield
    if os.path.exists("/proc/self/maps"):
        assert not _signal_stack_is_dangling(), (
            "this test left the main thread's signal stack unmapped: the next signal handler would "
            "crash the process (SIGSEGV); an openvino.Core was freed on another thread?"
        )


@dataclass
class Backend:
    name: str
    asarray: Callable[[np.ndarray], object]  # numpy -> backend array


def _torch_backend() -> Backend:
    torch = pytest.importorskip("torch", reason="torch not installed (the train extra)")
    return Backend("torch", lambda a: torch.from_numpy(np.ascontiguousarray(a)))


def _cupy_backend() -> Backend:
    cupy = pytest.importorskip("cupy", reason="CuPy not installed (the gpu extra)")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("CuPy is installed but no CUDA device is visible")
    except Exception as exc:  # CUDA driver missing
        pytest.skip(f"CuPy is installed but CUDA is unusable: {exc}")
    return Backend("cupy", cupy.asarray)


@pytest.fixture(params=["numpy", "torch", "cupy"])
def backend(request) -> Backend:
    if request.param == "numpy":
        return Backend("numpy", np.asarray)
    if request.param == "torch":
        return _torch_backend()
    return _cupy_backend()


@pytest.fixture
def torch_backend() -> Backend:
    return _torch_backend()


_NO_TORCH_PRELUDE = """
import sys

class NoTorch:  # behave as if torch were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

sys.meta_path.insert(0, NoTorch())
# and asked whether torch is there (as SigPy asks), say no, as a machine without it would
import importlib.util
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] == "torch" else _find_spec(name, package))
"""

_NO_TORCH_EPILOGUE = """
assert not [m for m in sys.modules if m.split(".")[0] == "torch"], "torch was imported"
print("ok")
"""


@pytest.fixture
def run_without_torch():
    """``run(code) -> stdout``: run ``code`` in a fresh interpreter where torch cannot be
    imported, check it exited cleanly without importing torch (architecture, boundary 2)."""
    import subprocess
    import sys
    import textwrap

    def run(code: str, timeout: float = 120) -> str:
        program = _NO_TORCH_PRELUDE + textwrap.dedent(code) + _NO_TORCH_EPILOGUE
        result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip().endswith("ok"), result.stdout
        return result.stdout

    return run


@pytest.fixture(scope="session")
def tiny_packages(tmp_path_factory):
    """``{"shared" | "separate" | "mri": (model, package)}``: three tiny models and their exported
    packages, exported once for the whole session (test_runtime.py, test_runtime_contrast.py)."""
    pytest.importorskip("torch", reason="the tiny models need torch (the train extra)")
    pytest.importorskip("onnx", reason="building test packages needs onnx (the export extra)")
    from diffunfold.export import export_model

    root = tmp_path_factory.mktemp("packages")
    models = {
        "shared": tiny_model(shared=True, stages=2),
        "separate": tiny_model(shared=False, stages=2, seed=1),
        "mri": tiny_model(shared=True, data="mri", channels=1, stages=2, seed=2),
    }
    return {name: (model, export_model(model, root / name, **quiet)) for name, model in models.items()}

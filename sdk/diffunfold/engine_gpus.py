"""The GPU an engine is built on or loaded on: its name and compute capability, through CuPy,
else nvidia-smi. Imports neither TensorRT nor torch; :mod:`diffunfold.engine_targets` (which
checks a GPU against a target or an engine record) re-exports these names.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from .errors import InputError

_CC = re.compile(r"^\d+\.\d+$")


@dataclass(frozen=True)
class GPUInfo:
    name: str
    compute_capability: str  # "9.0"

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
        out = subprocess.run(
            [exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
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

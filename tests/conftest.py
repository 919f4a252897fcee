"""Shared fixtures: the array backends the physics must agree on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

# The suite must never reach the network (scikit-image data, hubs).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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

"""The light runtime: restore images with a model package, without torch.

    from diffunfold.runtime import Solver
    solver = Solver.load("models/small", backend="auto")   # a folder from `diffunfold export`
    result = solver.solve(y, operator, steps=18, seed=0)

Runs on numpy + ONNX Runtime on a CPU, and on CuPy + TensorRT / ONNX Runtime CUDA on an NVIDIA
GPU; the torch backend (tests, GPU machines without either) imports torch only when chosen.
"""

from ..package import ModelPackage
from .backends import BACKENDS, Backend, available_backends, create_backend
from .solver import Solution, Solver, Timing

__all__ = [
    "BACKENDS",
    "Backend",
    "ModelPackage",
    "Solution",
    "Solver",
    "Timing",
    "available_backends",
    "create_backend",
]

"""Choosing a network backend: what is usable on a device, and ``create_backend``.

The interface is :class:`~diffunfold.runtime.backend_base.Backend`; the backends live in
``backend_onnxruntime.py``, ``backend_openvino.py`` (CPU, bf16 where the CPU has it),
``backend_tensorrt.py`` and ``backend_torch.py`` (the reference, for tests, and the GPU path on
machines without the others: fp16, CUDA graphs (``backend_torch_graphs.py``), torch.compile).
No module here imports torch at import time.
"""

from __future__ import annotations

from ..errors import InputError, MissingDependencyError
from ..package import ModelPackage
from .backend_base import Backend, cuda_available, installed, parse_device
from .backend_onnxruntime import SPINNING_DEFAULT, OnnxRuntimeBackend, onnxruntime_providers
from .backend_torch import TorchBackend

BACKENDS = ("auto", "tensorrt", "openvino", "onnxruntime", "torch")


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
        out["torch"] = "ok (CPU)" if installed("torch") else "torch is not installed (pip install 'diffunfold[train]')"
        return out
    gpu = cuda_available()
    from .backend_tensorrt import tensorrt_status

    out["tensorrt"] = tensorrt_status(package, index) if gpu else "CuPy cannot see a CUDA device"
    out["openvino"] = "runs on the CPU only"
    out["onnxruntime"] = (
        "ok (CUDAExecutionProvider)"
        if gpu and "CUDAExecutionProvider" in providers
        else "no CUDA device"
        if not gpu
        else "the installed onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    )
    out["torch"] = (
        "ok (CUDA)"
        if gpu and _torch_cuda()
        else "no CUDA device"
        if not gpu
        else "torch is not installed or has no CUDA"
    )
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
    return (
        "usable (CPU, f32: no native bf16 on this CPU, where OpenVINO is no faster than ONNX Runtime; "
        "auto passes it by, backend='openvino' takes it)"
    )


# Fastest first: FP16 TensorRT engines; on a CPU OpenVINO (bf16 where the CPU computes it, about
# half ONNX Runtime's time per call; bench/run.py), then ONNX Runtime (it fuses and runs the graph
# without Python overhead), then torch.
_PREFERENCE = ("tensorrt", "openvino", "onnxruntime", "torch")
# Options each backend takes besides device and threads.
_OPTIONS = {
    "tensorrt": {"cuda_graphs", "engines"},
    "openvino": {"precision", "cache_dir", "attention", "group_norm"},
    "onnxruntime": {"spinning"},
    "torch": {"precision", "cuda_graphs", "compile"},
}


def create_backend(
    package: ModelPackage, backend: str = "auto", device: str = "cpu", threads: int | None = None, **options
) -> tuple[Backend, str]:
    """``(backend, why it was chosen)``. ``auto`` takes the first usable one of
    tensorrt > openvino > onnxruntime > torch for the device. ``options``: TensorRT's
    ``cuda_graphs=True``, ``engines=DIR``; OpenVINO's ``precision="bf16"|"f32"``,
    ``cache_dir=DIR``, ``attention="fused"|"spelled"``, ``group_norm="reduce"|"exported"``; ONNX Runtime's
    ``spinning=True|False``; torch's ``precision="fp32"|"fp16"`` (fp16: CUDA only),
    ``cuda_graphs=True`` (CUDA only), ``compile=True``; others are refused."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    kind, _ = parse_device(device)
    if kind == "cuda" and not cuda_available():
        raise InputError(
            f"device {device!r} asked for, but CuPy cannot see a CUDA device; install "
            "'diffunfold[gpu]' (CuPy) on a GPU machine, or use device='cpu'"
        )
    if backend == "auto":
        status = available_backends(package, device)
        usable = [b for b in _PREFERENCE if status.get(b, "").startswith("ok")]
        if not usable:
            raise MissingDependencyError(
                "no backend is usable here: " + "; ".join(f"{b}: {why}" for b, why in status.items())
            )
        backend = usable[0]
        why = (
            f"auto: {backend} is the fastest usable backend on {device} ("
            + "; ".join(f"{b}: {s}" for b, s in status.items())
            + ")"
        )
    else:
        why = f"{backend} (asked for)"
    foreign = sorted(set(options) - _OPTIONS[backend])
    if foreign:
        owners = sorted({b for o in foreign for b, names in _OPTIONS.items() if o in names})
        raise InputError(
            f"option(s) {foreign} do not apply to the {backend} backend (they belong to "
            + (", ".join(owners) or "no backend")
            + ")"
        )
    if backend == "openvino":
        from .backend_openvino import OpenVinoBackend

        return OpenVinoBackend(package, device, threads, **options), why
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(package, device, threads, **options), why
    if backend == "torch":
        return TorchBackend(package, device, threads, **options), why
    from .backend_tensorrt import TensorRTBackend

    return TensorRTBackend(package, device, threads=threads, **options), why


__all__ = [
    "BACKENDS",
    "SPINNING_DEFAULT",
    "Backend",
    "OnnxRuntimeBackend",
    "TorchBackend",
    "available_backends",
    "create_backend",
    "cuda_available",
    "installed",
    "onnxruntime_providers",
    "openvino_status",
    "parse_device",
]

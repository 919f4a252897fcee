"""What every benchmark records next to its numbers: the machine, the versions, the settings."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import socket
from datetime import datetime, timezone
from pathlib import Path

from diffunfold.hardware import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"

# Modules whose versions a result records when they are installed (read from the installed
# distributions, so nothing heavy is imported just to name its version).
VERSIONED = ("onnxruntime", "torch", "cupy", "tensorrt", "polygraphy", "onnx", "scipy")


def module_version(module: str) -> str | None:
    """The installed version of ``module`` (``cupy`` from ``cupy-cuda12x``, ``onnxruntime`` from
    ``onnxruntime-gpu``, ...), or None when it is not installed."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    for dist in packages_distributions().get(module, []):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    try:  # e.g. TensorRT from JetPack's Debian packages: no distribution metadata
        return str(getattr(__import__(module), "__version__", "unknown"))
    except Exception:  # a stub wheel or a missing shared library
        return "unknown (does not import)"


def gpu_info() -> dict:
    """``{"gpu": name, "gpu_compute_capability": "9.0"}`` of CUDA device 0, through torch, CuPy
    or nvidia-smi; empty when no GPU is visible."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "gpu_compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    try:
        from diffunfold.engines import current_gpu

        gpu = current_gpu(0)
    except Exception:  # no GPU, or a broken driver
        gpu = None
    return {"gpu": gpu.name, "gpu_compute_capability": gpu.compute_capability} if gpu else {}


def machine_info() -> dict:
    import numpy

    info = {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)  # > 0 before the run: something else is busy
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    info.update(gpu_info())
    for module, v in versions().items():
        info.setdefault(module, v)
    return info


def versions() -> dict:
    """``{module: version}`` for the runtime's optional parts that are installed."""
    return {m: v for m in VERSIONED if (v := module_version(m)) is not None}


def machine_slug(info: dict) -> str:
    """A file name for the machine: GPU name if any, else CPU model and core count."""
    base = info.get("gpu") or f"{info['cpu']}-{info['cores']}cores"
    return re.sub(r"[^A-Za-z0-9]+", "-", base).strip("-").lower()


def write_results(name: str | None, info: dict, settings: dict, rows, markdown: str,
                  out_dir: str | Path | None = None, title: str | None = None) -> Path:
    """Write ``<out_dir>/<name>-<machine>.md`` and ``.json`` (``<machine>.md`` when ``name`` is
    None; ``out_dir`` defaults to bench/results). Returns the Markdown path."""
    out = Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    slug = machine_slug(info)
    stem = out / (f"{name}-{slug}" if name else slug)
    payload = {"benchmark": name or "run", "machine": info, "settings": settings, "results": rows}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    header = "\n".join(f"- {k}: {v}" for k, v in info.items())
    settings_md = "\n".join(f"- {k}: {v}" for k, v in settings.items())
    stem.with_suffix(".md").write_text(f"# {title or name or slug}\n\nMachine:\n{header}\n\nSettings:\n{settings_md}"
                                       f"\n\n{markdown}\n")
    return stem.with_suffix(".md")

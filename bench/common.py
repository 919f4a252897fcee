"""Pieces the benchmarks share: a random-weight model of a preset exported as a package, the torch
reference model of a package, TensorRT engines for the GPU at hand, timing and tables.

Speed does not depend on the weights, so the benchmarks run random weights of a preset's
architecture unless they are given a package.
"""

from __future__ import annotations

import importlib.util
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from diffunfold.errors import InputError
from diffunfold.package import ModelPackage

# -- models ---------------------------------------------------------------------------------


def random_model(preset: str, seed: int = 0, overrides: Sequence[str] = ()):
    """The ``DiffUnfolding`` model of ``preset`` (with ``table.key=value`` ``overrides``) with
    random weights (torch, eval mode)."""
    import torch

    from diffunfold.training.config import load_config
    from diffunfold.training.model import DiffUnfolding

    torch.manual_seed(seed)
    model = DiffUnfolding(load_config(preset, list(overrides)).model)
    with torch.no_grad():  # zero-initialised layers would make parts of the network trivial
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def random_package(
    preset: str,
    directory: str | Path,
    tasks: Sequence[str] = ("gaussian_blur",),
    log: Callable[[str], None] = lambda s: None,
) -> ModelPackage:
    """``random_model(preset)`` exported (and checked) as a package in ``directory/preset``."""
    from diffunfold.export import export_model

    return export_model(random_model(preset), Path(directory) / preset, tasks=list(tasks), log=log)


def reference_model(pkg: ModelPackage, device: str = "cpu"):
    """The torch model of a package (its ``model.safetensors``), for the reference sampler."""
    from safetensors.torch import load_file

    from diffunfold.training.model import DiffUnfolding, ModelSettings

    if pkg.torch_weights_file is None:
        raise InputError(f"{pkg.path} has no model.safetensors: the torch reference needs it")
    model = DiffUnfolding(ModelSettings.from_dict(pkg.settings))
    model.load_state_dict(load_file(str(pkg.file(pkg.torch_weights_file))))
    return model.to(device).eval()


# -- TensorRT engines -----------------------------------------------------------------------


def tensorrt_version() -> str | None:
    """TensorRT's version when it imports here, else None (without it nothing is built)."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt
    except Exception:  # a stub wheel, or libnvinfer missing
        return None
    return str(getattr(tensorrt, "__version__", "") or "") or None


def _alnum(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def target_for_gpu(gpu):
    """The shipped engine target (``engines/targets/*.toml``) of ``gpu``: the one named in the
    GPU's name (``NVIDIA H100 80GB HBM3`` -> ``h100``), else the first of the same compute
    capability; None when no target fits."""
    from diffunfold.engines import list_targets

    same_cc = [t for t in list_targets() if t.compute_capability in (None, gpu.compute_capability)]
    name = _alnum(gpu.name)
    for t in same_cc:
        if _alnum(t.name) in name or _alnum(t.name.split("-")[-1]) in name:
            return t
    return same_cc[0] if same_cc else None


def prepare_engines(
    pkg: ModelPackage,
    device_index: int,
    directory: str | Path,
    target: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Path | None, str]:
    """FP16 TensorRT engines of ``pkg`` for the GPU here: ``(engines folder, status)``.

    The package's own engines when they fit (folder None: the backend finds them); otherwise,
    where TensorRT imports, engines built now with ``diffunfold.engines.build_engines`` into
    ``directory/engines/<target>`` (the target from ``target`` or the GPU's name). The status
    starts with "ok" when the tensorrt backend can run; otherwise it says why not."""
    from diffunfold.engines import build_engines, cupy_gpu, load_target
    from diffunfold.runtime.backend_tensorrt import find_engines, tensorrt_status

    status = tensorrt_status(pkg, device_index)
    version = tensorrt_version()
    if status.startswith("ok") or version is None:
        return None, status
    gpu = cupy_gpu(device_index)
    if gpu is None:
        return None, status
    try:
        tgt = load_target(target) if target else target_for_gpu(gpu)
        if tgt is None:
            return None, (f"no engine target in engines/targets/ fits {gpu}; write one and pass --target FILE.toml")
        out = Path(directory) / "engines" / tgt.name
        log(f"building TensorRT engines of {pkg.path.name} for target {tgt.name} on {gpu} (minutes) ...")
        build_engines(pkg, tgt, out_dir=out, log=log, device=device_index)
        found_target, found = find_engines(pkg, gpu, version, engines=out)
    except InputError as exc:
        return None, f"TensorRT engines could not be built here: {exc}"
    return out, f"ok (TensorRT {version}, target {found_target}, {len(found)} engine(s) built for this run on {gpu})"


# -- timing and tables ----------------------------------------------------------------------


def median_time(
    fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None, warmup: int = 1
) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs (allocators, FFT
    plans, thread pools, device constants); ``sync`` waits for queued device work."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(max(1, int(repeats))):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the high-water mark) of this process in MB; 0 where
    /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak_memory() -> float:
    """Reset this process's peak resident memory to the current one (Linux: ``clear_refs``),
    so :func:`peak_memory_mb` then tells what came after. Returns the current RSS in MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def peak_memory_mb() -> float:
    """This process's peak resident memory in MB, since the start or :func:`reset_peak_memory`."""
    return _status_mb("VmHWM")


def fmt_number(v, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant digits (no exponent between 1e-4 and 1e6)."""
    if isinstance(v, bool) or not isinstance(v, float):
        return "" if v is None else str(v)
    if v == 0:
        return "0"
    if 1e-4 <= abs(v) < 1e6:
        decimals = max(0, digits - 1 - int(f"{abs(v):e}".split("e")[1]))
        return f"{v:.{decimals}f}"
    return f"{v:.{digits - 1}e}"


def markdown_table(
    rows: list[dict],
    cols: Sequence[str] | None = None,
    headers: Sequence[str] | None = None,
    fmt: Callable[[object], str] = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v),
) -> str:
    """Rows of dicts as a Markdown table: ``cols`` (default: the first row's keys) under
    ``headers`` (default: the column names), each cell through ``fmt``."""
    if not rows:
        return "(no rows)"
    cols = list(cols or rows[0])
    heads = list(headers or cols)
    return "\n".join(
        ["| " + " | ".join(heads) + " |", "|" + "---|" * len(cols)]
        + ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    )

"""The backends bench/run.py times and how it times them: which variants start (``VARIANTS``),
the torch reference, the seeded measurement, and the timed solves and regulariser calls."""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    median_time,
    peak_memory_mb,
    prepare_engines,
    reference_model,
    reset_peak_memory,
)

from diffunfold.package import ModelPackage  # noqa: E402
from diffunfold.runtime import Solver, available_backends  # noqa: E402
from diffunfold.runtime.backends import parse_device  # noqa: E402


def say(msg: str) -> None:
    print(msg, flush=True)


# -- pieces -----------------------------------------------------------------------------------

# What is timed: (label, backend, options). OpenVINO in both precisions, ONNX Runtime with its
# intra-op threads spinning and not (the backend option's default is measured here).
VARIANTS = (
    ("tensorrt", "tensorrt", {}),
    ("openvino bf16", "openvino", {"precision": "bf16"}),
    ("openvino f32", "openvino", {"precision": "f32"}),
    ("onnxruntime", "onnxruntime", {"spinning": False}),
    ("onnxruntime spinning", "onnxruntime", {"spinning": True}),
    ("torch", "torch", {}),
)
BASELINE = "onnxruntime"  # the runtime's path before the openvino backend: "vs ORT" ratios are against it
BASELINE_PACKAGE = "onnxruntime, baseline package"  # --baseline-package: "vs base pkg" ratios are against it


def _tensorrt_options(pkg: ModelPackage, args, tmp: Path, status: dict) -> dict:
    if "tensorrt" not in args.backends or args.device_kind != "cuda":
        return {}
    engines, status["tensorrt"] = prepare_engines(pkg, parse_device(args.device)[1], tmp, args.target, log=say)
    return {
        **({"engines": engines} if engines is not None else {}),
        **({"cuda_graphs": True} if args.cuda_graphs else {}),
    }


def ort_openvino_ep_status() -> str:
    """ONNX Runtime's own OpenVINO execution provider, for the comparison the backend's choice
    rests on (the plain onnxruntime wheel has none: it comes with onnxruntime-openvino)."""
    from diffunfold.runtime.backends import onnxruntime_providers

    if "OpenVINOExecutionProvider" in onnxruntime_providers():
        return "present, but not timed: the runtime has no backend on it (OpenVINO's own API is used)"
    return "not available: this onnxruntime has no OpenVINOExecutionProvider (it comes with onnxruntime-openvino)"


def start_backends(pkg: ModelPackage, args, tmp: Path) -> tuple[dict, dict]:
    """``({label: Solver}, {label: status})`` for the variants asked for; the status says "ok ..."
    for the ones started and why for the others."""
    base = dict(available_backends(pkg, args.device))
    trt = _tensorrt_options(pkg, args, tmp, base)
    status = {"onnxruntime OpenVINO EP": ort_openvino_ep_status()} if args.device_kind == "cpu" else {}
    solvers = {}
    for label, name, options in VARIANTS:
        if name not in args.backends:
            status[label] = "not asked for (--backends)"
            continue
        status[label] = base.get(name, "unknown backend")
        if not status[label].startswith(("ok", "usable")):
            say(f"skipped {label}: {status[label]}")
            continue
        try:
            solvers[label] = Solver.load(
                pkg, backend=name, device=args.device, threads=args.threads, **(trt if name == "tensorrt" else options)
            )
            status[label] = f"ok: {solvers[label].backend_name}"
            say(f"backend {label}: {solvers[label].backend_name}")
        except Exception as exc:  # a backend that is present but does not start is reported, not fatal
            status[label] = f"did not start: {type(exc).__name__}: {exc}"
            say(f"skipped {label}: {status[label]}")
    if args.baseline_package:
        solvers[BASELINE_PACKAGE] = Solver.load(
            args.baseline_package, backend="onnxruntime", device=args.device, threads=args.threads, spinning=False
        )
        status[BASELINE_PACKAGE] = f"ok: {solvers[BASELINE_PACKAGE].backend_name} on {args.baseline_package}"
        say(f"baseline package: {status[BASELINE_PACKAGE]}")
    return solvers, status


def start_reference(pkg: ModelPackage, args):
    """``(model, torch device, reason)``: the torch reference model on the device, or None and why."""
    if args.no_reference:
        return None, None, "skipped (--no-reference)"
    try:
        import torch
    except ImportError:
        return None, None, "torch is not installed (the train extra)"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device_kind == "cuda":
        if not torch.cuda.is_available():
            return None, None, f"torch {torch.__version__} has no CUDA here"
        device = torch.device("cuda", parse_device(args.device)[1])
    else:
        device = torch.device("cpu")
    try:
        return reference_model(pkg, device), device, f"ok (torch {torch.__version__} on {device})"
    except Exception as exc:
        return None, None, f"did not start: {exc}"


def measurement(pkg: ModelPackage, op, batch: int, noise: float) -> np.ndarray:
    """A seeded measurement of random images (a random image's restoration costs the same)."""
    rng = np.random.default_rng(0)
    shape = (batch, pkg.space.channels, *op.image_shape)
    x = rng.uniform(0, 1, shape).astype(np.float32)
    if pkg.space.complex:
        x = (x * np.exp(2j * np.pi * rng.uniform(0, 1, shape))).astype(np.complex64)
    return op.measure(x, noise, seed=list(range(batch)))


def time_reference(model, device, y: np.ndarray, op, args) -> tuple[float, np.ndarray]:
    """Median seconds of the torch reference sampler on ``y``, and its output."""
    import torch

    from diffunfold.training.sampler import restore

    yt = torch.from_numpy(y).to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    restore(model, yt, op, steps=2, seed=0)  # warm-up: allocators, thread pools, device constants
    sync()
    times, out = [], None
    fast = None
    if args.schedule == "fast":  # the runtime's schedule="fast" with --steps steps, as the solvers run
        fast = dataclasses.replace(args.package_fast, steps=args.steps)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = restore(model, yt, op, steps=args.steps, seed=0, fast=fast).images
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out.cpu().numpy()


def time_solvers(solvers: dict, y: np.ndarray, op, args) -> dict:
    """Every solver on one case in interleaved rounds (each round runs each solver once, so a
    drift of the machine's speed touches them alike): ``{label: (median run by total time,
    median wall seconds, peak MB, peak MB above the start)}``, after a warm-up solve each."""
    for sv in solvers.values():  # warm-up: sessions, engines' profiles, FFT plans
        sv.solve(y, op, steps=2, seed=0, tile=args.tile, schedule=args.schedule)
    runs = {n: [] for n in solvers}
    walls = {n: [] for n in solvers}
    peaks = {n: (0.0, 0.0) for n in solvers}
    for _ in range(args.repeats):
        for n, sv in solvers.items():
            before = reset_peak_memory()
            t0 = time.perf_counter()
            runs[n].append(sv.solve(y, op, steps=args.steps, seed=0, tile=args.tile, schedule=args.schedule))
            walls[n].append(time.perf_counter() - t0)
            peak = peak_memory_mb()
            peaks[n] = (max(peaks[n][0], peak), max(peaks[n][1], peak - before))
    return {
        n: (sorted(runs[n], key=lambda r: r.timing.total)[len(runs[n]) // 2], statistics.median(walls[n]), *peaks[n])
        for n in solvers
    }


def time_call(solver: Solver, size: int, repeats: int) -> float:
    """Median seconds of one regulariser call R_0(x; sigma=1) on one image, on the backend's device."""
    pkg = solver.package
    m = pkg.size_multiple
    hw = m * math.ceil(size / m)
    rng = np.random.default_rng(0)
    x = solver.xp.asarray((0.5 * rng.standard_normal((1, pkg.space.model_channels, hw, hw))).astype(np.float32))
    be = solver.backend
    return median_time(lambda: be.regularize(x, 1.0, 0), repeats, sync=be.synchronize, warmup=2)

"""The benchmark: end-to-end speed of the runtime on every backend present, against the torch
reference and against the floor, on the machine it runs on.

What it does, in one run:

1. builds a random-weight model of ``--preset`` (speed does not depend on the weights) and
   exports it to a temporary package (or opens ``--package``); on a GPU with TensorRT it
   builds FP16 engines for the GPU (``diffunfold.engines.build_engines``);
2. for every backend present (``diffunfold.runtime.available_backends``; the ones absent
   are listed with the reason; OpenVINO in bf16 and f32, ONNX Runtime with its threads
   spinning and not: ``VARIANTS``), times ``Solver.solve`` on a measurement of ``--task``
   (default a Gaussian blur), ``--steps`` Euler steps, at every ``--size`` and ``--batch``:
   a warm-up solve each, then ``--repeats`` interleaved rounds (each backend solves once per
   round, so a drift of the machine touches all alike), the median run kept. Batch 1 is the latency (seconds
   per image), larger batches the throughput (images per second). Reported per image: the
   total and its split into network (the regulariser calls), physics (data-fidelity
   gradients) and sampler (the rest), the process's peak memory during the case, and the
   time over ONNX Runtime's (spinning off) in the same case; with ``--baseline-package`` also
   over ONNX Runtime's on that package (e.g. the model that shipped before), in the same rounds;
3. in the same run, the torch reference sampler (``diffunfold.training.sampler.restore``,
   torch physics and networks) on the same measurements and seeds: ratio = reference time /
   backend time (> 1: the backend is faster), and the largest difference of the outputs;
4. per backend and size, the time of one regulariser call (batch 1, median of
   ``--call-repeats``) next to its floor: its FLOPs (bench/flops.py) over the matrix-multiply
   rate this machine reached in this run in the row's precision (bench/matmul_rate.py: the best
   GEMM of numpy, torch, ONNX Runtime and OpenVINO; the nominal peak of the
   detected microarchitecture printed beside it, never used as "perfect"; on a GPU the
   datasheet peak); efficiency = floor / measured. The solve rows carry the same for the
   network time (K x NFE calls per image).

Results: ``<out>/<machine>.md`` and ``.json`` (default bench/results/), with the machine, the
versions, the settings and the load (average at the start and the end, the cores other
processes used meanwhile). A busy run writes nothing unless ``--allow-busy``, which marks it.

    python bench/run.py                                  # CPU: small preset, 64, 128, 256 px, batch 1 and 4
    python bench/run.py --device cuda                    # GPU: paper preset, 256 px, batch 1 and 8
    python bench/run.py --device cuda --preset paper --size 256 --batch 1 8
    python bench/run.py --backends onnxruntime --size 64 --batch 1 --repeats 1 --no-write
    python bench/run.py --package models/small --task sr factor=4
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops as flopcount  # noqa: E402
import matmul_rate  # noqa: E402
from common import random_package  # noqa: E402
from machine import RESULTS, LoadWatch, machine_info, may_write, write_results  # noqa: E402

# The backends and their timing (run_backends) and the report (run_report) live beside this
# entry point; their names are imported here, as `import run` gave them before the split.
from run_backends import (  # noqa: E402
    BASELINE,
    BASELINE_PACKAGE,
    VARIANTS,
    measurement,
    say,
    start_backends,
    start_reference,
    time_call,
    time_reference,
    time_solvers,
)
from run_report import to_markdown  # noqa: E402

from diffunfold import edm  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402
from diffunfold.package import ModelPackage  # noqa: E402
from diffunfold.physics import make_operator  # noqa: E402
from diffunfold.physics.tasks import parse_task_words  # noqa: E402
from diffunfold.runtime import Solver  # noqa: E402
from diffunfold.runtime.backends import parse_device  # noqa: E402

BACKEND_ORDER = ("tensorrt", "openvino", "onnxruntime", "torch")
DEFAULTS = {  # per device kind: preset, sizes, batches, repeats
    "cpu": ("small", [64, 128, 256], [1, 4], 3),
    "cuda": ("paper", [256], [1, 8], 10),
}


def _add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """The device, the model and the cases: which sizes, batches and backends."""
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument(
        "--preset",
        help="architecture of the random-weight model: tiny, small, paper, ... (default: small on cpu, paper on cuda)",
    )
    ap.add_argument("--package", help="time this model package instead of a random-weight preset")
    ap.add_argument("--size", type=int, nargs="+", help="image sizes, square (default: 64 128 on cpu, 256 on cuda)")
    ap.add_argument(
        "--batch",
        type=int,
        nargs="+",
        help="batch sizes: 1 is the latency, larger the throughput (default: 1 4 on cpu, 1 8 on cuda)",
    )
    ap.add_argument(
        "--backends",
        nargs="+",
        choices=BACKEND_ORDER,
        default=list(BACKEND_ORDER),
        help="backends to time where present (default: all; absent ones are listed as skipped)",
    )


def _add_solve_arguments(ap: argparse.ArgumentParser) -> None:
    """How each case is timed and solved: repeats, steps, the operator, the tiles, the reference."""
    ap.add_argument(
        "--repeats", type=int, help="timed solves per case, the median is kept (default 3 on cpu, 10 on cuda)"
    )
    ap.add_argument(
        "--call-repeats", type=int, default=20, help="timed single regulariser calls per backend and size (default 20)"
    )
    ap.add_argument("--steps", type=int, default=18, help="Euler steps of a solve (default 18)")
    ap.add_argument(
        "--schedule",
        choices=["full", "fast"],
        default="full",
        help="full (default): --steps from pure noise, the paper's loop; fast: --steps from the classical "
        "estimate at the package's fast schedule's levels (image packages; bench/latency.py compares the two)",
    )
    ap.add_argument(
        "--task",
        nargs="+",
        default=["gaussian_blur"],
        metavar="WORD",
        help="the operator: a task name and name=value parameters, e.g. --task sr factor=4 (default gaussian_blur)",
    )
    ap.add_argument("--noise", type=float, default=0.05, help="measurement noise std (default 0.05)")
    ap.add_argument(
        "--tile",
        default="auto",
        type=lambda v: None if v in ("none", "0") else (v if v == "auto" else int(v)),
        help="the regulariser's tiles, as Solver.solve takes them: auto (default, the runtime's "
        "choice: images over twice the training size run in tiles), a side in px, or none "
        "(whole, as the torch reference runs)",
    )
    ap.add_argument("--no-reference", action="store_true", help="skip the torch reference sampler")
    ap.add_argument(
        "--baseline-package",
        metavar="PACKAGE",
        help="also time ONNX Runtime (spinning off) on this package in the same run, e.g. the model "
        "that shipped before, and report every row's time over it (vs base pkg)",
    )
    ap.add_argument("--threads", type=int, help="CPU threads for ONNX Runtime and torch (default: theirs)")


def _add_floor_arguments(ap: argparse.ArgumentParser) -> None:
    """The GPU's engines and the peak the floor is held to."""
    ap.add_argument("--target", help="TensorRT engine target to build (default: the GPU's, from engines/targets)")
    ap.add_argument("--cuda-graphs", action="store_true", help="TensorRT: replay each engine call as a CUDA graph")
    ap.add_argument(
        "--peak-gflops",
        type=float,
        help="peak FLOP/s (in GFLOP/s) for the floor, instead of the CPU's estimate or the GPU's datasheet value",
    )


def _add_output_arguments(ap: argparse.ArgumentParser) -> None:
    """Where the results go, and whether a busy run may write them."""
    ap.add_argument("--out", default=str(RESULTS), help="folder for <machine>.md and .json (default bench/results)")
    ap.add_argument("--no-write", action="store_true", help="print only; write no results")
    ap.add_argument(
        "--allow-busy",
        action="store_true",
        help="write results even when the machine was busy (marked so in them); by default a busy run writes nothing",
    )


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_model_arguments(ap)
    _add_solve_arguments(ap)
    _add_floor_arguments(ap)
    _add_output_arguments(ap)
    return _apply_device_defaults(ap.parse_args(argv))


def _apply_device_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset with the device kind's defaults (``DEFAULTS``)."""
    kind, _ = parse_device(args.device)
    preset, sizes, batches, repeats = DEFAULTS[kind]
    args.preset = args.preset or preset
    args.size = args.size or sizes
    args.batch = args.batch or batches
    args.repeats = args.repeats or repeats
    args.device_kind = kind
    return args


# -- the run ----------------------------------------------------------------------------------


def regularizer_flops(solvers: dict, sizes: list[int]) -> tuple[dict, str]:
    """``({label: {size: FLOPs of one regulariser call}}, what was counted)``, each on its solver's own
    package (a ``--baseline-package`` may be another network)."""
    try:
        per_package = {}
        for sv in solvers.values():
            pkg, m = sv.package, sv.package.size_multiple  # the network runs on sizes padded to a multiple of m
            if pkg.path not in per_package:
                per_package[pkg.path] = {
                    s: flopcount.regularizer_flops(pkg.settings, m * math.ceil(s / m)) for s in sizes
                }
        return {n: per_package[sv.package.path] for n, sv in solvers.items()}, flopcount.COUNTED
    except ImportError:
        return {n: {} for n in solvers}, "not counted: torch is not installed"


def floors(args, solvers: dict, info: dict) -> tuple[dict, dict, str, dict]:
    """``({label: FLOPs per size}, {label: Peak}, what was counted, the matmul measurement)``. On a CPU the
    floor is the matrix-multiply rate measured now (``matmul_rate.measure``, per precision), the nominal peak of
    the detected microarchitecture only printed beside it; on a GPU the datasheet peak."""
    flops_of, note = regularizer_flops(solvers, args.size)
    if args.device_kind == "cuda" or args.peak_gflops:
        return (
            flops_of,
            {
                n: flopcount.peak_for(args.device, b, info.get("gpu"), args.peak_gflops, args.threads)
                for n, b in _bases(solvers)
            },
            note,
            {},
        )
    nominal = flopcount.cpu_peak(threads=args.threads)
    precisions = {label: ("bf16" if "bf16" in label else "fp32") for label in solvers}
    mm = {p: matmul_rate.measure(p) for p in sorted(set(precisions.values()))}
    for p, m in mm.items():
        say(f"measured {p} matmul rate: {matmul_rate.describe(m)}")
    say(f"nominal FP32 peak {nominal.flops / 1e9:.0f} GFLOP/s ({nominal.source}), not used as a floor")
    peaks = {
        p: flopcount.Peak(
            nominal.device,
            f"{p.upper()} GEMM, measured",
            m["gflops"] * 1e9,
            f"{m['library']} GEMM in this run, the best of the libraries at hand",
        )
        for p, m in mm.items()
    }
    return flops_of, {n: peaks[p] for n, p in precisions.items()}, note, {"rates": mm, "nominal": nominal.describe()}


def _bases(solvers: dict):
    names = {label: name for label, name, _ in VARIANTS} | {BASELINE_PACKAGE: "onnxruntime"}
    return [(label, names.get(label, label)) for label in solvers]


def call_row(solver: Solver, name: str, size: int, args, flops_of: dict, peak) -> dict:
    t = time_call(solver, size, args.call_repeats)
    row = {"size": size, "batch": 1, "backend": name, "ms_per_call": 1e3 * t}
    f = flops_of.get(size)
    if f:
        row["gflop_per_call"] = f["flops"] / 1e9
    if f and peak:
        row.update(
            peak_tflops=peak.flops / 1e12,
            peak_precision=peak.precision,
            floor_ms=1e3 * peak.floor(f["flops"]),
            efficiency=peak.floor(f["flops"]) / t,
        )
    say(
        f"{size}px one regulariser call, {name}: {1e3 * t:.2f} ms"
        + (
            f" (floor {row['floor_ms']:.2f} ms, efficiency {100 * row['efficiency']:.1f} %)"
            if "floor_ms" in row
            else ""
        )
    )
    return row


def solve_row(timed: tuple, solver: Solver, name: str, case: dict, args, ref: tuple, f, peak) -> dict:
    """One timed case of ``time_solvers`` as a row: the split, the peak memory and the ratios."""
    batch = case["batch"]
    best, wall, peak_mb, peak_above = timed
    tm, per = best.timing, best.timing.total / batch
    row = {
        "size": case["size"],
        "batch": batch,
        "mode": case["mode"],
        "backend": name,
        "backend_detail": solver.backend_name,
        "s_per_image": per,
        "images_per_s": 1 / per,
        "network_s": tm.network / batch,
        "physics_s": tm.physics / batch,
        "sampler_s": tm.sampler / batch,
        "wall_s_per_image": wall / batch,
        "network_calls": tm.network_calls,
        "nfe": best.nfe,
        "peak_mb": peak_mb,
        "peak_above_mb": peak_above,
        "tiling": best.tiling,
    }
    if f and peak:
        floor = peak.floor(flopcount.solve_flops(f["flops"], solver.package.stages, args.steps))
        row.update(floor_network_s=floor, network_efficiency=floor / max(row["network_s"], 1e-12))
    ref_s, ref_out = ref
    if ref_s is not None:
        row.update(
            reference_s_per_image=ref_s,
            ratio=ref_s / per,
            max_rel_diff=float(np.max(np.abs(best.images - ref_out)) / max(float(np.max(np.abs(ref_out))), 1e-12)),
        )
    say(
        f"{case['size']}px batch {batch} {name}: {per:.4f} s/image (network {row['network_s']:.4f}, physics "
        f"{row['physics_s']:.4f}, sampler {row['sampler_s']:.4f}), peak +{row['peak_above_mb']:.0f} MB"
        + (f"; reference {ref_s:.4f} s/image, ratio x{row['ratio']:.2f}" if ref_s else "")
    )
    return row


def reference_row(model, device, case: dict, args) -> tuple[dict, tuple]:
    t, out = time_reference(model, device, case["y"], case["op"], args)
    ref_s = t / case["batch"]
    say(f"{case['size']}px batch {case['batch']} torch reference: {ref_s:.4f} s/image")
    return (
        {
            "size": case["size"],
            "batch": case["batch"],
            "mode": case["mode"],
            "backend": "torch reference",
            "s_per_image": ref_s,
            "images_per_s": 1 / ref_s,
            "reference_s_per_image": ref_s,
            "ratio": 1.0,
        },
        (ref_s, out),
    )


def against_baseline(rows: list[dict]) -> None:
    """``vs_ort``: each row's time per image over ONNX Runtime's (spinning off) in the same case;
    ``vs_base_pkg``: over ONNX Runtime's on the ``--baseline-package``, where it was timed."""
    for key, label in (("vs_ort", BASELINE), ("vs_base_pkg", BASELINE_PACKAGE)):
        base = {(r["size"], r["batch"]): r["s_per_image"] for r in rows if r["backend"] == label}
        for r in rows:
            b = base.get((r["size"], r["batch"]))
            if b:
                r[key] = r["s_per_image"] / b


def _open_package(args, tmp: str, task: str) -> ModelPackage:
    """The ``--package`` asked for, or the preset's random weights exported into ``tmp``."""
    if args.package:
        pkg = ModelPackage.open(args.package)
    else:
        say(f"exporting random weights of the {args.preset} preset ...")
        pkg = random_package(args.preset, tmp, tasks=[task])
    say(
        f"model: {pkg.manifest['parameters']['total'] / 1e6:.2f}M parameters, K = {pkg.stages}, "
        f"{'shared' if pkg.shared else 'separate'} regularisers"
    )
    return pkg


def _time_case(pkg, solvers: dict, reference: tuple, case: dict, args, flops_of: dict, peaks: dict) -> list[dict]:
    """The rows of one (size, batch) case: the torch reference's (when it runs), then every backend's."""
    ref_model, ref_device = reference
    rows, ref = [], (None, None)
    if ref_model is not None:
        row, ref = reference_row(ref_model, ref_device, case, args)
        rows.append(row)
    timed = time_solvers(solvers, case["y"], case["op"], args)
    rows += [
        solve_row(
            timed[n],
            sv,
            n,
            case,
            args,
            (None, None) if n == BASELINE_PACKAGE else ref,
            flops_of[n].get(case["size"]),
            peaks[n],
        )
        for n, sv in solvers.items()
    ]
    return rows


def _time_sizes(pkg, solvers: dict, reference: tuple, args, task: str, params: dict, flops_of, peaks):
    """``(call rows, solve rows)`` over every ``--size`` and, per size, every ``--batch``."""
    calls, solves = [], []
    for size in args.size:
        calls += [call_row(sv, n, size, args, flops_of[n], peaks[n]) for n, sv in solvers.items()]
        op = make_operator(task, (size, size), **params)
        for batch in args.batch:
            case = {
                "size": size,
                "batch": batch,
                "op": op,
                "y": measurement(pkg, op, batch, args.noise),
                "mode": "latency" if batch == 1 else "throughput",
            }
            solves += _time_case(pkg, solvers, reference, case, args, flops_of, peaks)
    return calls, solves


def _settings(args, pkg, task: str, params: dict, flops_note: str, mm: dict, peaks: dict) -> dict:
    """What the run was: the model, the task, the cases and the floor's peaks, as written with the results."""
    return {
        "model": args.package or f"{args.preset} preset, random weights",
        "baseline_package": args.baseline_package,
        "parameters": pkg.manifest["parameters"]["total"],
        "K": pkg.stages,
        "shared": pkg.shared,
        "attention": pkg.manifest["networks"].get("attention", "spelled"),
        "task": f"{task} {params}" if params else task,
        "noise": args.noise,
        "steps": args.steps,
        "sampler": "euler",
        "nfe": edm.nfe_of(args.steps, "euler"),
        "sizes": args.size,
        "batches": args.batch,
        "device": args.device,
        "repeats": args.repeats,
        "call_repeats": args.call_repeats,
        "threads": args.threads,
        "statistic": "median run after a warm-up; seconds per image",
        "flops": flops_note,
        "matmul": mm,
        "peaks": {name: (p.describe() if p else "unknown GPU: pass --peak-gflops") for name, p in peaks.items()},
    }


def run(args) -> dict:
    task, params = parse_task_words(args.task)
    watch, info = LoadWatch(), machine_info()
    say(f"machine: {info.get('gpu') or info['cpu']}, {info['cores']} cores, load average {watch.start_load}")
    with tempfile.TemporaryDirectory(prefix="diffunfold-bench-") as tmp:
        pkg = _open_package(args, tmp, task)
        if args.schedule == "fast" and pkg.fast_schedule is None:
            raise InputError(f"--schedule fast: {pkg.path} has no fast schedule (an MRI package?); use full")
        args.package_fast = pkg.fast_schedule  # the reference sampler runs the same levels
        solvers, status = start_backends(pkg, args, Path(tmp))
        ref_model, ref_device, ref_status = start_reference(pkg, args)
        say(f"torch reference: {ref_status}")
        flops_of, peaks, flops_note, mm = floors(args, solvers, info)
        calls, solves = _time_sizes(pkg, solvers, (ref_model, ref_device), args, task, params, flops_of, peaks)
    against_baseline(solves)
    info["load"] = watch.finish()
    return {
        "info": info,
        "settings": _settings(args, pkg, task, params, flops_note, mm, peaks),
        "status": status,
        "reference": ref_status,
        "calls": calls,
        "solves": solves,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    res = run(args)
    md = to_markdown(res)
    print()
    print(md)
    if not res["solves"]:
        print(f"\nnothing could be timed on {args.device} (see the reasons above); no results written")
        return 1
    if not args.no_write and may_write(res["info"]["load"], args.allow_busy, say=say):
        payload = {
            "backends": res["status"],
            "reference": res["reference"],
            "solve": res["solves"],
            "regularizer_call": res["calls"],
        }
        path = write_results(
            None, res["info"], res["settings"], payload, md, out_dir=args.out, title="Diff-Unfolding runtime benchmark"
        )
        print(f"\nwrote {path} and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

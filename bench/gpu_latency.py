"""Seconds per image of the torch GPU path: the torch backend on CUDA with the physics in CuPy,
where neither TensorRT nor ONNX Runtime CUDA can be installed (bench/gpu_session.sh PART=latency).

On a CUDA machine (``--device cuda``, the default) it times:

* image-small restoring a Gaussian blur (sigma 2 px, noise 0.02) at 64 and 256 px, batch 1 and
  8, with the network in eager fp32, fp16, and fp16 + CUDA graphs, each on the package's default
  schedule and on ``schedule="full"`` (18 steps from pure noise). Where ``Solver.solve`` does not
  take ``schedule=`` yet (the TypeError is caught), "full" falls back to ``steps=18``, the
  package's own 18-step schedule, so both rows time the same path; the output says so.
* one MRI slice of the scanner path (``diffunfold.scanner.reconstruct.reconstruct_kspace``) with
  mri-small: a 256 px random phantom seen by 15 simulated birdcage coils, a 1-D (4x) and a 2-D
  (8x) pattern, default scanner settings and start, eager fp32 and fp16 + CUDA graphs.

Each cell: one untimed solve (graph capture, cuDNN's and CuPy's first-use set-up), then the
median of ``--repeats`` timed solves, synchronised. A cell that would start after ``--budget-s``
seconds is listed as skipped, so the run fits its slot. Packages without ``model.safetensors``
are copied to a temporary folder and given it with ``diffunfold add-torch-weights`` first.
Writes ``gpu-latency.md`` (the table, under the device's name) and ``gpu-latency.json`` to
``--out``.

    python bench/gpu_latency.py --out /tmp/gpu-latency              # on the GPU machine
    python bench/gpu_latency.py --device cpu --out /tmp/dry          # the dry run: tiny sizes, fp32

The dry run (``--device cpu``) runs the same code with torch on the CPU and numpy physics at
16 px (MRI: 64 px, the 1-D pattern alone), one timed solve per cell; fp16 and CUDA graphs are
CUDA-only and listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_number, markdown_table  # noqa: E402

from diffunfold.package import ModelPackage  # noqa: E402
from diffunfold.physics import make_operator  # noqa: E402
from diffunfold.runtime import Solver  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fp32": {},
    "fp16": {"precision": "fp16"},
    "fp16+graphs": {"precision": "fp16", "cuda_graphs": True},
}
MRI_VARIANTS = ("fp32", "fp16+graphs")
MRI_MASKS = (("gaussian1d", 4.0), ("gaussian2d", 8.0))
SCHEDULES = {"default": {}, "full": {"schedule": "full"}}
FALLBACK = {"steps": 18}
COLUMNS = ["part", "variant", "schedule", "size", "batch", "s_per_image", "s_per_solve", "network_calls", "network_s"]
COLUMNS += ["physics_s", "note"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/gpu_latency.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cuda (default) or cpu (the dry run)")
    p.add_argument("--image-package", default=str(ROOT / "samples" / "models" / "image-small"))
    p.add_argument("--mri-package", default=str(ROOT / "samples" / "models" / "mri-small"))
    p.add_argument("--sizes", type=int, nargs="+", help="image sides in px (default 64 256; cpu: 16)")
    p.add_argument("--batches", type=int, nargs="+", help="images per solve (default 1 8; cpu: 1 2)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: all (on cpu fp32 alone runs)")
    p.add_argument("--mri-size", type=int, help="the MRI slice's side in px (default 256; cpu: 64)")
    p.add_argument("--coils", type=int, default=15, help="simulated receive coils (default 15)")
    p.add_argument("--repeats", type=int, help="timed solves per cell, their median is kept (default 3; cpu: 1)")
    p.add_argument("--budget-s", type=float, default=300.0, help="start no cell after this many seconds (300)")
    p.add_argument("--work", help="where package copies given model.safetensors go (default: a temporary folder)")
    p.add_argument("--out", default="gpu-latency", help="folder for gpu-latency.md and .json (default ./gpu-latency)")
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    args.sizes = args.sizes or ([16] if cpu else [64, 256])
    args.batches = args.batches or ([1, 2] if cpu else [1, 8])
    args.variants = args.variants or list(VARIANTS)
    args.mri_size = args.mri_size or (64 if cpu else 256)
    args.repeats = args.repeats or (1 if cpu else 3)
    return args


def with_torch_weights(path: str, work: Path, say=print) -> Path:
    """``path`` if its package has model.safetensors, else a copy in ``work`` given it."""
    from diffunfold.export.torch_weights import add_torch_weights

    if ModelPackage.open(path).torch_weights_file:
        return Path(path)
    copy = work / Path(path).name
    shutil.copytree(path, copy)
    _, check = add_torch_weights(copy, log=lambda s: None)
    say(f"{path} has no model.safetensors: added to a copy, {copy} (torch vs ONNX Runtime {check.worst:.1e})")
    return copy


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    import platform

    return f"CPU {platform.processor() or platform.machine()} (torch {torch.__version__}, dry run)"


class Clock:
    """The run's time budget: ``left()`` is False once ``budget_s`` has passed."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> bool:
        return self.elapsed() < self.budget_s


def timed(solve, sync, repeats: int) -> tuple[float, object]:
    """Median seconds of ``solve()`` over ``repeats`` runs after one untimed run, and its result."""
    result = solve()
    sync()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = solve()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _solve_kwargs(schedule: str, notes: dict) -> dict:
    return dict(FALLBACK) if notes.get("fallback") and schedule == "full" else dict(SCHEDULES[schedule])


def image_cell(solver: Solver, size: int, batch: int, schedule: str, repeats: int, notes: dict) -> dict:
    """One timed cell of image-small: seconds per image and the solve's split."""
    x = np.random.default_rng(size + batch).uniform(0, 1, (batch, 3, size, size)).astype(np.float32)
    op = make_operator("gaussian_blur", (size, size), sigma=2.0)
    y = solver.xp.asarray(op.measure(x, 0.02, seed=0))
    sync = solver.backend.synchronize

    def solve():
        return solver.solve(y, op, seed=0, **_solve_kwargs(schedule, notes))

    try:
        seconds, sol = timed(solve, sync, repeats)
    except TypeError as exc:
        if "schedule" not in str(exc) or notes.get("fallback"):
            raise
        notes["fallback"] = (
            f"Solver.solve does not take schedule= here ({exc}): 'full' ran steps=18, the package's own "
            "18-step schedule, so 'default' and 'full' time the same path"
        )
        seconds, sol = timed(solve, sync, repeats)
    tm = sol.timing
    return {
        "s_per_image": seconds / batch,
        "s_per_solve": seconds,
        "network_calls": tm.network_calls,
        "network_s": tm.network,
        "physics_s": tm.physics,
        "note": "steps=18 (no schedule= yet)" if notes.get("fallback") and schedule == "full" else "",
    }


def load(path: Path, device: str, variant: str) -> Solver:
    return Solver.load(path, backend="torch", device=device, **VARIANTS[variant])


def skipped(part: str, variant: str, schedule: str, size: int, batch: int, why: str) -> dict:
    row = dict.fromkeys(COLUMNS, None)
    row.update(part=part, variant=variant, schedule=schedule, size=size, batch=batch, note=f"skipped: {why}")
    return row


def image_rows(args, path: Path, clock: Clock, notes: dict, say=print) -> list[dict]:
    rows = []
    for variant in VARIANTS:
        wanted = variant in args.variants
        cuda_only = args.device != "cuda" and variant != "fp32"
        solver = load(path, args.device, variant) if wanted and not cuda_only and clock.left() else None
        for size in args.sizes:
            for batch in args.batches:
                for schedule in SCHEDULES:
                    cell = ("image-small", variant, schedule, size, batch)
                    if not wanted:
                        continue
                    if cuda_only or solver is None or not clock.left():
                        why = "CUDA only" if cuda_only else "time budget"
                        rows.append(skipped(*cell, why))
                        continue
                    row = dict(zip(COLUMNS, cell))
                    row.update(image_cell(solver, size, batch, schedule, args.repeats, notes))
                    rows.append(row)
                    say(f"[{clock.elapsed():5.0f} s] " + " ".join(f"{k}={fmt_number(v)}" for k, v in row.items()))
        del solver
        _release(args.device)
    return rows


def _release(device: str) -> None:
    """Free the last variant's graphs and caches before the next one is timed."""
    if device == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


def mri_scan(size: int, coils: int, kind: str, acceleration: float, seed: int = 0):
    """Multi-coil k-space ``(coils, H, W)`` of a random phantom through birdcage maps, and the mask."""
    from diffunfold.data.phantom import random_phantom
    from diffunfold.physics.mri import MultiCoilMRI, birdcage_maps, mri_mask

    image = random_phantom((size, size), rng=seed)[None, None].astype(np.complex64)
    maps = birdcage_maps(coils, (size, size)).astype(np.complex64)
    mask = mri_mask(kind, (size, size), acceleration, seed=1)
    return np.asarray(MultiCoilMRI(maps, mask).A(image))[0].astype(np.complex64), mask


def mri_cell(solver: Solver, args, kind: str, acc: float) -> dict:
    """One timed scan: seconds per slice through the scanner path, preparation included."""
    from diffunfold.scanner.reconstruct import reconstruct_kspace

    kspace, mask = mri_scan(args.mri_size, args.coils, kind, acc)
    seconds, result = timed(lambda: reconstruct_kspace(solver, kspace, mask, seed=0), lambda: None, args.repeats)
    tm = result.solution.timing
    return {
        "s_per_image": seconds,
        "s_per_solve": seconds,
        "network_calls": tm.network_calls,
        "network_s": tm.network,
        "physics_s": tm.physics,
        "note": f"{args.coils} coils; prepare {result.seconds['prepare']:.3f} s of it (CPU)",
    }


def mri_rows(args, path: Path, clock: Clock, say=print) -> list[dict]:
    rows = []
    for variant in MRI_VARIANTS:
        cuda_only = args.device != "cuda" and variant != "fp32"
        solver = None
        for kind, acc in MRI_MASKS if args.device == "cuda" else MRI_MASKS[:1]:
            cell = ("mri-small scan", variant, f"scanner default, {kind} {acc:g}x", args.mri_size, 1)
            if cuda_only or not clock.left():
                rows.append(skipped(*cell, "CUDA only" if cuda_only else "time budget"))
                continue
            solver = solver or load(path, args.device, variant)
            rows.append({**dict(zip(COLUMNS, cell)), **mri_cell(solver, args, kind, acc)})
            say(f"[{clock.elapsed():5.0f} s] " + " ".join(f"{k}={fmt_number(v)}" for k, v in rows[-1].items()))
        solver = None
        _release(args.device)
    return rows


def markdown(rows: list[dict], device: str, notes: dict, args) -> str:
    lines = [
        f"# The torch GPU path: seconds per image on {device}",
        "",
        f"`python bench/gpu_latency.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d %H:%M')}; "
        f"median of {args.repeats} timed solve(s) after one untimed; physics in "
        f"{'CuPy' if args.device == 'cuda' else 'numpy'}; image-small restores a Gaussian blur (sigma 2 px, "
        "noise 0.02); s_per_image is s_per_solve / batch (the scan: per slice, preparation included).",
        "",
    ]
    if notes.get("fallback"):
        lines += [f"Note: {notes['fallback']}.", ""]
    headers = ["part", "network", "schedule", "px", "batch", "s / image", "s / solve", "network calls"]
    headers += ["network s", "physics s", "note"]
    lines.append(markdown_table(rows, COLUMNS, headers, fmt=fmt_number))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock(args.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-latency-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        image_pkg = with_torch_weights(args.image_package, work)
        mri_pkg = with_torch_weights(args.mri_package, work)
        name, notes = device_name(args.device), {}
        print(f"timing the torch backend on {name}", flush=True)
        rows = image_rows(args, image_pkg, clock, notes)
        rows += mri_rows(args, mri_pkg, clock)
    text = markdown(rows, name, notes, args)
    (out / "gpu-latency.md").write_text(text)
    meta = {"device": name, "args": vars(args), "notes": notes, "seconds": clock.elapsed()}
    (out / "gpu-latency.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    print(text)
    print(f"wrote {out / 'gpu-latency.md'} and .json in {clock.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

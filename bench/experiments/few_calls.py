"""Few-call schedules against the 18-step default, one run, the same photos, seeds and measurements.

Each VARIANT is ``label:key=value,...`` with keys of ``Solver.solve`` (steps, sampler, sigma_min,
sigma_max, rho, churn, schedule, stages, tile); ``default`` is the package's own schedule. Two keys
change a copy of the package's manifest instead: ``fast_stages=2.4.4.4.4.4`` (the fast schedule's
stages per level, ``schedule.fast.stages``, at every noise level: its ``noisy`` stages dropped)
and ``tiles=72/8`` (the tile side and least overlap that ``tile="auto"`` uses above the whole
side, ``tiling.tile``/``tiling.overlap``). Scores one posterior sample per image (the product's
default, samples=1) at the true noise level, every task and noise level asked, and prints each
variant's network calls per image and PSNR per cell with its change from the first variant.

    python bench/experiments/few_calls.py samples/models/image-small --photos VAL/held-out \\
        --images 8 default "e6:steps=6" "e4s:steps=4,sigma_min=0.02"

Choose on validation photos (bench/experiments/make_validation_folder.py), report on the
harness's held-out ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NUMBER_KEYS = {
    "start_c": float,
    "start_w": float,
    "steps": int,
    "stages": int,
    "sigma_min": float,
    "sigma_max": float,
    "rho": float,
    "churn": float,
}
TEXT_KEYS = {"sampler", "schedule", "tile"}
PACKAGE_KEYS = {"fast_stages", "tiles"}  # set in a copy of the package's manifest
TASKS = ("gaussian_blur", "anisotropic_blur", "motion_blur", "sr_x4", "sr_x8", "inpainting_40")


def parse_variant(text: str) -> tuple[str, dict]:
    label, _, rest = text.partition(":")
    kwargs: dict = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key in NUMBER_KEYS:
            kwargs[key] = NUMBER_KEYS[key](value)
        elif key in TEXT_KEYS or key in PACKAGE_KEYS:
            kwargs[key] = value
        else:
            raise SystemExit(
                f"unknown variant key {key!r}; use {sorted(NUMBER_KEYS) + sorted(TEXT_KEYS) + sorted(PACKAGE_KEYS)}"
            )
    return label, kwargs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/experiments/few_calls.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("package", help="an image or MRI model package folder")
    p.add_argument("variants", nargs="+", help="label:key=value,... (the first is the reference)")
    p.add_argument("--photos", help="a folder of photos (held-out/ of `diffunfold data photos`)")
    p.add_argument(
        "--mri", help="instead: a folder of MRI volumes (`diffunfold data mri-volumes`: held-out/ or train/)"
    )
    p.add_argument("--images", type=int, default=8, help="photos per task (default 8)")
    p.add_argument("--size", type=int, default=64, help="image side in px (default 64)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"harness task keys (default {TASKS})")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.01, 0.05], help="sigma_y (default 0 0.01 0.05)")
    p.add_argument("--backend", default="auto", help="runtime backend (default auto)")
    p.add_argument("--threads", type=int, help="the backend's threads (default: its own; 1 beside another job)")
    p.add_argument("--json", help="write the per-image PSNRs here")
    return p.parse_args(argv)


def variant_solver(package: str, backend: str, kwargs: dict, scratch: Path, threads: int | None = None):
    """The solver a variant runs: the package itself, or a copy of it whose manifest carries the
    variant's ``fast_stages`` / ``tiles`` (in ``scratch``)."""
    from diffunfold.package import ModelPackage, write_manifest
    from diffunfold.runtime import Solver

    if not PACKAGE_KEYS & set(kwargs):
        return Solver.load(package, backend=backend, threads=threads)
    copy = Path(tempfile.mkdtemp(dir=scratch))
    shutil.copytree(package, copy, dirs_exist_ok=True)
    m = json.loads((copy / "manifest.json").read_text())
    if "fast_stages" in kwargs:
        m["schedule"]["fast"]["stages"] = [int(k) for k in kwargs["fast_stages"].split(".")]
        m["schedule"]["fast"].pop("noisy", None)  # these stages at every noise level
    if "tiles" in kwargs:
        side, _, overlap = kwargs["tiles"].partition("/")
        m["tiling"] = {**m.get("tiling", {}), "tile": int(side), "overlap": int(overlap or 0)}
    write_manifest(copy, m, list(m["files"]))
    return Solver.load(ModelPackage.open(copy), backend=backend, threads=threads)


def run_cells(solvers: dict, variants, cases) -> dict:
    """PSNR per (variant, task, noise) over the images, and each variant's calls and seconds."""
    from diffunfold.metrics import psnr

    out = {label: {"psnr": {}, "calls": 0, "seconds": 0.0} for label, _ in variants}
    for case in cases:
        for label, kwargs in variants:  # interleaved: every variant sees the machine alike
            t0 = time.perf_counter()
            kw = {k: v for k, v in kwargs.items() if k not in PACKAGE_KEYS}
            solver = solvers[label]
            w = kw.pop("start_w", None)
            if w is not None:  # start from the data's Tikhonov estimate around mid-grey
                kw["init"] = case.op.prox(np.full_like(case.x, 0.5), case.y, w).astype(np.float32)
                kw["init_sigma"] = kw["sigma_max"] * (1 + 1e-9)
            c = kw.pop("start_c", None)
            if c is not None:  # start from the classical estimate, counted as carrying noise c
                from diffunfold.baselines import classical_baseline

                kw["init"] = np.asarray(classical_baseline(case.op, case.y, list(case.noise_std)), case.y.dtype)
                kw["init_sigma"], kw["init_noise"] = kw["sigma_max"] * (1 + 1e-9), c
            sol = solver.solve(case.y, case.op, seed=case.seeds, noise_std=list(case.noise_std), **kw)
            out[label]["seconds"] += time.perf_counter() - t0
            out[label]["calls"] = sol.timing.network_calls
            key = f"{case.task.key}@{case.level:g}"
            rng = None if case.mri else 1.0  # MRI: magnitudes against the truth's maximum, as the harness
            out[label]["psnr"][key] = psnr(np.asarray(sol.images), case.x, rng).tolist()
    return out


def report(results: dict, images: int) -> str:
    labels = list(results)
    ref = results[labels[0]]["psnr"]
    lines = ["| cell | " + " | ".join(f"{v} ({results[v]['calls']} calls)" for v in labels) + " |"]
    lines.append("|---" * (len(labels) + 1) + "|")
    for cell in ref:
        row = [f"{np.mean(ref[cell]):.2f}"]
        row += [f"{np.mean(results[v]['psnr'][cell]) - np.mean(ref[cell]):+.2f}" for v in labels[1:]]
        lines.append(f"| {cell} | " + " | ".join(row) + " |")
    worst = [min(np.mean(results[v]["psnr"][c]) - np.mean(ref[c]) for c in ref) for v in labels[1:]]
    mean = [np.mean([np.mean(results[v]["psnr"][c]) - np.mean(ref[c]) for c in ref]) for v in labels[1:]]
    lines.append("| worst cell | | " + " | ".join(f"{w:+.2f}" for w in worst) + " |")
    lines.append("| mean | | " + " | ".join(f"{m:+.2f}" for m in mean) + " |")
    n = images * len(ref)
    lines.append("| s / image | " + " | ".join(f"{results[v]['seconds'] / n:.3f}" for v in labels) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from quality_harness.cases import make_case
    from quality_harness.tasks import TASK_BY_KEY, Settings

    from diffunfold.data.held_out import held_out_photos

    variants = [parse_variant(v) for v in a.variants]
    scratch = Path(tempfile.mkdtemp(prefix="few_calls-"))
    solvers = {label: variant_solver(a.package, a.backend, kw, scratch, a.threads) for label, kw in variants}
    solver = next(iter(solvers.values()))
    if a.mri:
        from diffunfold.data.held_out import held_out_slices

        names, x = held_out_slices(a.mri, a.size, a.images)
    else:
        names, x = held_out_photos(a.photos, a.size, a.images)
    s = Settings(size=a.size, images=a.images)
    cases = [make_case(TASK_BY_KEY[t], lvl, names, x, s, 0, 15) for t in a.tasks for lvl in a.noise]
    try:
        results = run_cells(solvers, variants, cases)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"# {a.package}, {len(names)} photos at {a.size} px, backend {solver.backend_name}, one sample each")
    print(" ".join(sys.argv))
    print(report(results, len(names)))
    if a.json:
        Path(a.json).write_text(json.dumps({"variants": dict(variants), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

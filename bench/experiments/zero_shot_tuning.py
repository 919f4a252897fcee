"""Sweeps each zero-shot solver's main step size on validation photos and writes the chosen values.

For a denoiser package (``model.kind = "denoiser"``), each method (``diffunfold.runtime.zero_shot``)
runs every setting of its grid on the same photos, measurements and seeds: DPS ``zeta``; DiffPIR
``lam`` x ``zeta``; PnP-EDM the annealing's floor ``rho_min`` (and start ``rho0``); DDS ``cg_steps``
x ``eta`` x ``lam``. Everything else stays at the method's defaults (the papers' step counts). The
choice per method is the setting with the best PSNR averaged over the tasks (and, beside it, the
best per task). Run it on validation photos, never on the harness's scored ones:

    PYTHONPATH=sdk python bench/experiments/make_validation_folder.py data/photos/held-out /tmp/val
    PYTHONPATH=sdk python bench/experiments/zero_shot_tuning.py samples/models/image-denoiser \\
        --photos /tmp/val/held-out --images 4 --out bench/results/zero-shot/tuning-image.md

``--grid method:key=v1/v2,key=v1/v2`` replaces a method's grid; ``--steps`` shortens every run
(a quick look only: the chosen values are meant for the default step counts).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

TASKS = ("gaussian_blur", "sr_x4", "inpainting_40")
GRIDS = {
    "dps": {"zeta": [0.1, 0.3, 1.0, 3.0]},
    "diffpir": {"lam": [0.3, 1.0, 3.0, 10.0], "zeta": [0.1, 0.3, 0.6, 1.0]},
    "pnp-edm": {"rho_min": [0.1, 0.2, 0.3, 0.5], "rho0": [10.0]},
    "dds": {"cg_steps": [1, 3, 5], "eta": [0.5, 0.85, 1.0], "lam": [1.0, 4.0]},
}


def parse_grid(text: str) -> tuple[str, dict]:
    method, _, rest = text.partition(":")
    grid = {}
    for item in filter(None, rest.split(",")):
        key, _, values = item.partition("=")
        grid[key] = [int(v) if v.isdigit() else float(v) for v in values.split("/")]
    return method, grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/experiments/zero_shot_tuning.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("package", help="a denoiser package folder (model.kind = denoiser)")
    p.add_argument("--photos", required=True, help="validation photos (make_validation_folder.py's OUT/held-out)")
    p.add_argument("--images", type=int, default=4, help="photos per task (default 4)")
    p.add_argument("--size", type=int, default=64, help="image side in px (default 64)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"harness task keys (default {TASKS})")
    p.add_argument("--noise", type=float, default=0.05, help="sigma_y (default 0.05)")
    p.add_argument("--methods", nargs="+", default=list(GRIDS), help=f"methods to sweep (default {list(GRIDS)})")
    p.add_argument("--grid", action="append", default=[], help="method:key=v1/v2,... replaces that method's grid")
    p.add_argument("--steps", type=int, help="every run's step count (default: each method's own)")
    p.add_argument("--backend", default="auto", help="runtime backend (default auto)")
    p.add_argument("--out", help="write the Markdown report here (and the JSON beside it)")
    return p.parse_args(argv)


def settings_grid(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def sweep(solver, method: str, grid: dict, cases, steps) -> list[dict]:
    """Mean PSNR per task (and calls, seconds per image) for every setting of the grid."""
    from diffunfold.metrics import psnr

    rows = []
    for options in settings_grid(grid):
        row = {"options": options, "psnr": {}, "seconds": 0.0}
        for case in cases:
            t0 = time.perf_counter()
            sol = solver.solve(
                case.y, case.op, method=method, seed=case.seeds, noise_std=list(case.noise_std),
                steps=steps, method_options=options,
            )  # fmt: skip
            row["seconds"] += (time.perf_counter() - t0) / len(case.seeds)
            row["calls"] = sol.nfe
            row["psnr"][case.task.key] = float(np.mean(psnr(np.asarray(sol.images), case.x, 1.0)))
        row["mean"] = float(np.mean(list(row["psnr"].values())))
        print(f"{method} {options}: " + ", ".join(f"{k} {v:.2f}" for k, v in row["psnr"].items()), flush=True)
        rows.append(row)
    return rows


def report(results: dict, tasks: list[str]) -> list[str]:
    lines = []
    for method, rows in results.items():
        best = max(rows, key=lambda r: r["mean"])
        lines += [f"## {method}", "", "| setting | " + " | ".join(tasks) + " | mean | calls | s / image |"]
        lines.append("|---" * (len(tasks) + 4) + "|")
        for r in rows:
            mark = " **chosen**" if r is best else ""
            cells = " | ".join(f"{r['psnr'][t]:.2f}" for t in tasks)
            lines.append(f"| {r['options']}{mark} | {cells} | {r['mean']:.2f} | {r['calls']} | {r['seconds']:.2f} |")
        per_task = {t: max(rows, key=lambda r, t=t: r["psnr"][t])["options"] for t in tasks}
        lines += ["", f"chosen: {best['options']} (mean PSNR {best['mean']:.2f} dB); best per task: {per_task}", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from quality_harness.cases import make_case
    from quality_harness.tasks import TASK_BY_KEY, Settings

    from diffunfold.data.held_out import held_out_photos
    from diffunfold.runtime import Solver

    grids = {m: dict(GRIDS[m]) for m in a.methods}
    grids.update(parse_grid(g) for g in a.grid)
    solver = Solver.load(a.package, backend=a.backend)
    names, x = held_out_photos(a.photos, a.size, a.images)
    cases = [
        make_case(TASK_BY_KEY[t], a.noise, names, x, Settings(size=a.size, images=a.images), 0, 15) for t in a.tasks
    ]
    t0 = time.perf_counter()
    results = {m: sweep(solver, m, grid, cases, a.steps) for m, grid in grids.items()}
    head = [
        f"# Zero-shot tuning: {a.package}, {len(names)} validation photos at {a.size} px, sigma_y {a.noise:g}",
        "",
        f"command: `{' '.join(sys.argv)}`",
        f"backend {solver.backend_name}; {time.perf_counter() - t0:.0f} s; photos: {', '.join(names)}",
        "",
    ]
    text = "\n".join(head + report(results, list(a.tasks)))
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
        Path(a.out).with_suffix(".json").write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

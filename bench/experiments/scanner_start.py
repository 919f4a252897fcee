"""Where a scan's sampling should start: the full schedule from pure noise against the SENSE
estimate plus noise of a fixed level, on slices of the *training* volumes (validation: the
held-out head is kept for the test). One JSON line per slice and cell on stdout.

    python bench/experiments/scanner_start.py --volumes data/mri/train --size 256 --slices 2 \
        --sigmas 0.05 0.2 0.5 1 --cells gaussian1d:0:espirit gaussian2d:0.02:espirit

A start level s picks the schedule up at its first level at or below s (``edm.start_at``);
``--steps N`` also runs that start with the tail re-spaced to N steps from the same level. The
levels chosen from these runs are in ``diffunfold.scanner.start``; the results are in
bench/results/scanner-start-validation.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from scanner_cells import cell_scans, run_cells, validation_parser  # noqa: E402
from scanner_metrics import magnitude_psnr  # noqa: E402

from diffunfold import edm  # noqa: E402
from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.scanner import StartSettings, prepare_kspace, sense_start  # noqa: E402


def cell_rows(solver: Solver, items: list[dict], cell: str, sigmas: list[float], steps: list[int], full=True):
    for i, item, y, mask, maps in cell_scans(items, cell):
        p = prepare_kspace(y, mask, coil_maps=maps)
        truth = item["image"][0]
        row = {"cell": cell, "slice": item["name"]}
        if full:
            t0 = time.perf_counter()
            sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i)
            row["noise start"], row["noise start s"] = magnitude_psnr(sol.images[0, 0], truth), time.perf_counter() - t0
        for s in sigmas:
            begin = sense_start(p, StartSettings(sigma=s, readout="sample"))
            sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i, **begin)
            row[f"sense start {s:g}"] = magnitude_psnr(sol.images[0, 0], truth)
            first = float(edm.start_at(edm.schedule(18), s)[0])
            for n in steps:  # the same start, the tail re-spaced to n steps (EDM's rho) from its first level
                sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i, steps=n, sigma_max=first, **begin)
                row[f"sense start {s:g} in {n}"] = magnitude_psnr(sol.images[0, 0], truth)
        yield row


def main(argv=None) -> int:
    ap = validation_parser(
        __doc__,
        size=256,
        slices=2,
        cells=[f"{k}:{n}:espirit" for k in ("gaussian1d", "gaussian2d") for n in ("0", "0.02")],
    )
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.05, 0.2, 0.5, 1.0], help="start levels")
    ap.add_argument("--no-noise-start", action="store_true", help="skip the full schedule from noise")
    ap.add_argument("--steps", type=int, nargs="*", default=[], help="also each start's tail re-spaced to N steps")
    args = ap.parse_args(argv)
    return run_cells(
        args,
        lambda solver, items, cell: cell_rows(solver, items, cell, args.sigmas, args.steps, not args.no_noise_start),
    )


if __name__ == "__main__":
    sys.exit(main())

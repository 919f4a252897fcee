"""What a scan should run where the data leave too much open for the SENSE start (held-out error
above ``OPEN_LIMIT``): the full 18-step schedule from pure noise (72 calls), against short
schedules that start from the SENSE estimate plus noise at a high level (the image model's fast
schedule does the same from its classical estimate), on slices of the *training* volumes
(validation; the held-out head is kept for the test). One JSON line per open slice and cell; slices
whose error is below the limit are skipped (the default start handles them).

    python bench/experiments/scanner_open_schedule.py --size 64 --slices 8 \
        --starts 1.5:6 3:6 1.5:5 0.8:6 \
        --cells gaussian1d:0 gaussian1d:0.02 gaussian2d:0 gaussian2d:0.02

Each ``--starts`` entry is ``LEVEL:STEPS``: the scanner's own open start
(``diffunfold.scanner.start``) with ``OPEN_START = LEVEL`` and ``OPEN_STEPS = STEPS``: the SENSE
estimate plus noise up to LEVEL (model units; at least twice the estimate's own noise), then STEPS
EDM steps from LEVEL to 0.002 (rho 7).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from scanner_cells import cell_scans, run_cells, validation_parser  # noqa: E402
from scanner_metrics import magnitude_psnr  # noqa: E402

from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.scanner import StartSettings, prepare_kspace, sense_start  # noqa: E402
from diffunfold.scanner import start as scanner_start  # noqa: E402


def parse_start(text: str) -> tuple[float, int]:
    level, _, steps = text.partition(":")
    return float(level), int(steps)


def cell_rows(solver: Solver, items: list[dict], cell: str, starts: list[tuple[float, int]]):
    settings = StartSettings()
    for i, item, y, mask, maps in cell_scans(items, cell):
        p = prepare_kspace(y, mask, coil_maps=maps)
        error = scanner_start.held_out_error(p, settings)
        if error <= scanner_start.OPEN_LIMIT:
            continue
        truth = item["image"][0]
        row = {"cell": cell, "slice": item["name"], "held_out_error": error}
        sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i)
        row["noise 18"] = magnitude_psnr(sol.images[0, 0], truth)
        row["noise 18 calls"] = sol.timing.network_calls
        for level, steps in starts:  # the product's open start, with this level and step count
            kept = scanner_start.OPEN_START, scanner_start.OPEN_STEPS
            scanner_start.OPEN_START, scanner_start.OPEN_STEPS = level, steps
            try:
                begin = sense_start(p, settings)
            finally:
                scanner_start.OPEN_START, scanner_start.OPEN_STEPS = kept
            sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i, **begin)
            row[f"sense {level:g}/{steps}"] = magnitude_psnr(sol.images[0, 0], truth)
            row[f"sense {level:g}/{steps} calls"] = sol.timing.network_calls
        yield row


def main(argv=None) -> int:
    ap = validation_parser(__doc__, size=64, slices=8, cells=["gaussian1d:0", "gaussian2d:0"])
    ap.add_argument("--starts", nargs="+", default=["1.5:6", "3:6"], help="LEVEL:STEPS (default 1.5:6 3:6)")
    args = ap.parse_args(argv)
    starts = [parse_start(s) for s in args.starts]
    return run_cells(args, lambda solver, items, cell: cell_rows(solver, items, cell, starts))


if __name__ == "__main__":
    sys.exit(main())

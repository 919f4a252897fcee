"""Where the SENSE start should give way to the full schedule from noise: each slice's held-out
error (``diffunfold.scanner.start.held_out_error``) next to the PSNR of the default start (taken
whatever the error) and of the full schedule from noise, on slices of the *training* volumes
(validation; the held-out head is kept for the test). One JSON line per slice and cell.

    python bench/experiments/scanner_open_limit.py --size 64 --slices 6 \
        --cells gaussian2d:0:true gaussian2d:0:espirit gaussian1d:0:true

A limit L sends every slice whose error is above L to the noise start; the best L is the one
that loses least against the better of the two on every slice.
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


def cell_rows(solver: Solver, items: list[dict], cell: str):
    for i, item, y, mask, maps in cell_scans(items, cell):
        p = prepare_kspace(y, mask, coil_maps=maps)
        truth = item["image"][0]
        row = {"cell": cell, "slice": item["name"], "held_out_error": scanner_start.held_out_error(p, StartSettings())}
        limit, scanner_start.OPEN_LIMIT = scanner_start.OPEN_LIMIT, float("inf")
        try:
            begin = sense_start(p)
        finally:
            scanner_start.OPEN_LIMIT = limit
        sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i, **begin)
        row["sense start"] = magnitude_psnr(sol.images[0, 0], truth)
        sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i)
        row["noise start"] = magnitude_psnr(sol.images[0, 0], truth)
        yield row


def main(argv=None) -> int:
    ap = validation_parser(__doc__, size=64, slices=6, cells=["gaussian2d:0:true", "gaussian2d:0:espirit"])
    args = ap.parse_args(argv)
    return run_cells(args, lambda solver, items, cell: cell_rows(solver, items, cell))


if __name__ == "__main__":
    sys.exit(main())

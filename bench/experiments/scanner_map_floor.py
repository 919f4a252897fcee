"""The weight of the coil maps' residual in the data step's noise level (``ScannerSettings.
map_floor``: ``data_std = sqrt(noise^2 + (map_floor * map residual)^2)``), re-chosen for the
default start and readout on slices of the *training* volumes (validation; it was first set on
held-out slices). ESPIRiT maps only: with the true maps the residual is 0. One JSON line per
slice and cell.

    python bench/experiments/scanner_map_floor.py --size 256 --slices 4 --floors 0 0.15 0.3 0.6
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from scanner_cells import cell_scans, run_cells, validation_parser  # noqa: E402
from scanner_metrics import magnitude_psnr  # noqa: E402

from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.scanner import ScannerSettings  # noqa: E402
from diffunfold.scanner.reconstruct import reconstruct_kspace  # noqa: E402


def cell_rows(solver: Solver, items: list[dict], cell: str, floors: list[float]):
    for i, item, y, mask, maps in cell_scans(items, cell):
        row = {"cell": cell, "slice": item["name"]}
        for floor in floors:
            res = reconstruct_kspace(solver, y, mask, ScannerSettings(map_floor=floor), coil_maps=maps, seed=i)
            row[f"floor {floor:g}"] = magnitude_psnr(res.image, item["image"][0])
        row["start"] = res.info.get("start")
        yield row


def main(argv=None) -> int:
    ap = validation_parser(
        __doc__, size=256, slices=4, cells=[f"{k}:{n}" for k in ("gaussian1d", "gaussian2d") for n in "0 0.02".split()]
    )
    ap.add_argument("--floors", type=float, nargs="+", default=[0.0, 0.15, 0.3, 0.6])
    args = ap.parse_args(argv)
    return run_cells(args, lambda solver, items, cell: cell_rows(solver, items, cell, args.floors))


if __name__ == "__main__":
    sys.exit(main())

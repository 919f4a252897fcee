"""The weight of the coil maps' residual in the data step's noise level (``ScannerSettings.
map_floor``: ``data_std = sqrt(noise^2 + (map_floor * map residual)^2)``), re-chosen for the
default start and readout on slices of the *training* volumes (validation; it was first set on
held-out slices). ESPIRiT maps only: with the true maps the residual is 0. One JSON line per
slice and cell.

    python bench/experiments/scanner_map_floor.py --size 256 --slices 4 --floors 0 0.15 0.3 0.6
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from scanner import magnitude_psnr, scan  # noqa: E402

from diffunfold.data.mri_slices import VolumeSlices  # noqa: E402
from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.scanner import ScannerSettings  # noqa: E402
from diffunfold.scanner.reconstruct import reconstruct_kspace  # noqa: E402


def cell_rows(solver: Solver, items: list[dict], cell: str, floors: list[float]):
    kind, level = cell.split(":")
    acc = 4.0 if kind.endswith("1d") else 8.0
    for i, item in enumerate(items):
        y, mask = scan(item, kind, acc, float(level), i)
        row = {"cell": cell, "slice": item["name"]}
        for floor in floors:
            res = reconstruct_kspace(solver, y, mask, ScannerSettings(map_floor=floor), seed=i)
            row[f"floor {floor:g}"] = magnitude_psnr(res.image, item["image"][0])
        row["start"] = res.info.get("start")
        yield row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default=str(ROOT / "samples" / "models" / "mri-small"))
    ap.add_argument("--volumes", default=str(ROOT / "data" / "mri" / "train"), help="validation volumes")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--floors", type=float, nargs="+", default=[0.0, 0.15, 0.3, 0.6])
    ap.add_argument(
        "--cells", nargs="+", default=[f"{k}:{n}" for k in ("gaussian1d", "gaussian2d") for n in "0 0.02".split()]
    )
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # numba's notes from SigPy
    solver = Solver.load(args.package)
    items = VolumeSlices(args.volumes, size=args.size).fixed(args.slices)
    for cell in args.cells:
        for row in cell_rows(solver, items, cell, args.floors):
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

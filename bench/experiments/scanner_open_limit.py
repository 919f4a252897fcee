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
from diffunfold.scanner import StartSettings, prepare_kspace, sense_start  # noqa: E402
from diffunfold.scanner import start as scanner_start  # noqa: E402


def cell_rows(solver: Solver, items: list[dict], cell: str):
    kind, level, maps = cell.split(":")
    acc = 4.0 if kind.endswith("1d") else 8.0
    for i, item in enumerate(items):
        y, mask = scan(item, kind, acc, float(level), i)
        p = prepare_kspace(y, mask, coil_maps=item["coil_maps"] if maps == "true" else None)
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default=str(ROOT / "samples" / "models" / "mri-small"))
    ap.add_argument("--volumes", default=str(ROOT / "data" / "mri" / "train"), help="validation volumes")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--slices", type=int, default=6)
    ap.add_argument("--cells", nargs="+", default=["gaussian2d:0:true", "gaussian2d:0:espirit"])
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # numba's notes from SigPy
    solver = Solver.load(args.package)
    items = VolumeSlices(args.volumes, size=args.size).fixed(args.slices)
    for cell in args.cells:
        for row in cell_rows(solver, items, cell):
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

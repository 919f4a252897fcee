"""Tile side against quality and time for scans at 256 px: the default plan (128 px tiles,
overlap 32: 9 tiles) against larger tiles (160 px: 4 tiles) and the whole slice, on slices of
the *training* volumes (validation). One JSON line per slice, cell and tile side.

    python bench/experiments/scanner_tiles.py --size 256 --slices 4 --tiles auto 160 0 \
        --cells gaussian1d:0:espirit gaussian1d:0.02:espirit gaussian2d:0:espirit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from scanner import magnitude_psnr, scan  # noqa: E402

from diffunfold.data.mri_slices import VolumeSlices  # noqa: E402
from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.scanner import prepare_kspace, sense_start  # noqa: E402


def tile_of(text: str):
    return text if text == "auto" else int(text) or None


def cell_rows(solver: Solver, items: list[dict], cell: str, tiles: list[str]):
    kind, level, maps = cell.split(":")
    acc = 4.0 if kind.endswith("1d") else 8.0
    for i, item in enumerate(items):
        y, mask = scan(item, kind, acc, float(level), i)
        p = prepare_kspace(y, mask, coil_maps=item["coil_maps"] if maps == "true" else None)
        begin = sense_start(p)
        for tile in tiles:  # interleaved on the same prepared scan
            t0 = time.perf_counter()
            sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i, tile=tile_of(tile), **begin)
            row = {"cell": cell, "slice": item["name"], "tile": tile, "tiling": sol.tiling}
            row["psnr"] = magnitude_psnr(sol.images[0, 0], item["image"][0])
            row["solve s"], row["network s"] = time.perf_counter() - t0, sol.timing.network
            yield row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default=str(ROOT / "samples" / "models" / "mri-small"))
    ap.add_argument("--volumes", default=str(ROOT / "data" / "mri" / "train"), help="validation volumes")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--tiles", nargs="+", default=["auto", "160", "0"], help="auto, a side in px, or 0 (whole)")
    ap.add_argument("--cells", nargs="+", default=["gaussian1d:0:espirit", "gaussian1d:0.02:espirit"])
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # numba's notes from SigPy
    solver = Solver.load(args.package)
    items = VolumeSlices(args.volumes, size=args.size).fixed(args.slices)
    for cell in args.cells:
        for row in cell_rows(solver, items, cell, args.tiles):
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

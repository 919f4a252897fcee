"""Tile side against quality and time for scans at 256 px: the default plan (128 px tiles,
overlap 32: 9 tiles) against larger tiles (160 px: 4 tiles) and the whole slice, on slices of
the *training* volumes (validation). One JSON line per slice, cell and tile side.

    python bench/experiments/scanner_tiles.py --size 256 --slices 4 --tiles auto 160 0 \
        --cells gaussian1d:0:espirit gaussian1d:0.02:espirit gaussian2d:0:espirit
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from scanner_cells import cell_scans, run_cells, validation_parser  # noqa: E402
from scanner_metrics import magnitude_psnr  # noqa: E402

from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.scanner import prepare_kspace, sense_start  # noqa: E402


def tile_of(text: str):
    return text if text == "auto" else int(text) or None


def cell_rows(solver: Solver, items: list[dict], cell: str, tiles: list[str]):
    for i, item, y, mask, maps in cell_scans(items, cell):
        p = prepare_kspace(y, mask, coil_maps=maps)
        begin = sense_start(p)
        for tile in tiles:  # interleaved on the same prepared scan
            t0 = time.perf_counter()
            sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i, tile=tile_of(tile), **begin)
            row = {"cell": cell, "slice": item["name"], "tile": tile, "tiling": sol.tiling}
            row["psnr"] = magnitude_psnr(sol.images[0, 0], item["image"][0])
            row["solve s"], row["network s"] = time.perf_counter() - t0, sol.timing.network
            yield row


def main(argv=None) -> int:
    ap = validation_parser(__doc__, size=256, slices=4, cells=["gaussian1d:0:espirit", "gaussian1d:0.02:espirit"])
    ap.add_argument("--tiles", nargs="+", default=["auto", "160", "0"], help="auto, a side in px, or 0 (whole)")
    args = ap.parse_args(argv)
    return run_cells(args, lambda solver, items, cell: cell_rows(solver, items, cell, args.tiles))


if __name__ == "__main__":
    sys.exit(main())

"""The 2-D one call's level: near the data (MEAN_SIGMA, or the SENSE estimate's noise) or high
(OPEN_SIGMA), and the share of the image's energy the pattern samples that chooses between them
(``diffunfold.scanner.start.sampled_energy``). Per slice and cell: that share, the held-out error
(above OPEN_LIMIT the full schedule runs from noise instead, and the row says so) and the PSNR
of the one call at either level; ``--others``: two calls (OPEN_SIGMA, then the near level) and
the full schedule from noise. On slices of the *training* volumes (validation). One JSON line
per slice and cell.

    python bench/experiments/scanner_open_level.py --size 64 --slices 8
    python bench/experiments/scanner_open_level.py --size 256 --slices 4

If the share is below SAMPLED_ENERGY_LIMIT exactly where the high level wins, the data choose it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from scanner_cells import cell_scans, run_cells, validation_parser  # noqa: E402
from scanner_metrics import magnitude_psnr  # noqa: E402

from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.scanner import StartSettings, prepare_kspace, sense_start  # noqa: E402
from diffunfold.scanner.start import MEAN_SIGMA, OPEN_SIGMA, estimate_noise  # noqa: E402

CELLS = ["gaussian2d:0:true", "gaussian2d:0.02:true", "gaussian2d:0:espirit", "gaussian2d:0.02:espirit"]


def cell_rows(solver: Solver, items: list[dict], cell: str, others: list[str]):
    for i, item, y, mask, maps in cell_scans(items, cell):
        p = prepare_kspace(y, mask, coil_maps=maps)
        default = sense_start(p)
        row = {"cell": cell, "slice": item["name"], "sampled_energy": p.info.get("sampled_energy")}
        row["held_out_error"], row["default"] = p.info["held_out_error"], p.info["start"]
        if "init" not in default:  # the data leave too much open: the full schedule from noise
            yield row
            continue
        noise = estimate_noise(p, StartSettings())
        near = max(MEAN_SIGMA, noise)
        for name, base in (("near", MEAN_SIGMA), ("open", OPEN_SIGMA)):
            begin = sense_start(p, StartSettings(sigma=max(base, noise), readout="mean"))
            row[f"psnr {name}"] = psnr(solver, p, item, i, begin)
        if "two" in others:  # the open start (the last begin), then the near level: two calls
            row["psnr two"] = psnr(solver, p, item, i, {**begin, "steps": 2, "sigma_min": near})
        if "noise" in others:  # the full schedule from pure noise
            row["psnr noise"] = psnr(solver, p, item, i, {})
        yield row


def psnr(solver: Solver, p, item: dict, seed: int, begin: dict) -> float:
    out = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=seed, **begin).images
    return magnitude_psnr(np.asarray(out)[0, 0], item["image"][0])


def main(argv=None) -> int:
    ap = validation_parser(__doc__, size=64, slices=4, cells=CELLS)
    ap.add_argument(
        "--others",
        nargs="*",
        default=[],
        choices=["two", "noise"],
        help="also: two calls (OPEN_SIGMA, then the near level), the full schedule from noise",
    )
    args = ap.parse_args(argv)
    return run_cells(args, lambda solver, items, cell: cell_rows(solver, items, cell, args.others))


if __name__ == "__main__":
    sys.exit(main())

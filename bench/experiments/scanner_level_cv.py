"""Can the data choose the one call's level? For each slice and candidate level: the PSNR of the
one call on all the data, and the cross-validation error of the same call made without a tenth
of the measured points (outside the calibration region), predicting them. On slices of the
*training* volumes (validation). One JSON line per slice and cell.

    python bench/experiments/scanner_level_cv.py --size 64 --slices 8 --cells gaussian2d:0:true
    python bench/experiments/scanner_level_cv.py --size 256 --slices 4 --cells gaussian2d:0:espirit

If the level of least cross-validation error is (nearly) the level of best PSNR at 64 and at
256 px, the data can choose it.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from scanner_cells import cell_scans, run_cells, validation_parser  # noqa: E402
from scanner_metrics import magnitude_psnr  # noqa: E402

from diffunfold.physics.mri import MultiCoilMRI  # noqa: E402
from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.scanner import StartSettings, prepare_kspace, sense_start  # noqa: E402
from diffunfold.scanner.start import _held_out  # noqa: E402


def one_call(solver: Solver, p, level: float, seed: int) -> np.ndarray:
    begin = sense_start(p, StartSettings(sigma=level, readout="mean"))
    return np.asarray(solver.solve(p.y, p.operator, noise_std=p.data_std, seed=seed, **begin).images)


def cell_rows(solver: Solver, items: list[dict], cell: str, levels: list[float]):
    for i, item, y, mask, maps in cell_scans(items, cell):
        p = prepare_kspace(y, mask, coil_maps=maps)
        op = p.operator
        full = np.asarray(op.mask, dtype=np.float32)[0, 0]
        held = _held_out(full, op.samples_lines)
        rest = MultiCoilMRI(np.asarray(op.coil_maps)[0], full - held)
        rest.row_prox = op.row_prox
        q = replace(p, operator=rest, y=(p.y * (full - held)).astype(np.complex64), info={})
        row = {"cell": cell, "slice": item["name"]}
        for level in levels:
            row[f"psnr {level:g}"] = magnitude_psnr(one_call(solver, p, level, i)[0, 0], item["image"][0])
            miss = (np.asarray(op.A(one_call(solver, q, level, i))) - p.y) * held
            row[f"cv {level:g}"] = float(np.sum(np.abs(miss) ** 2) / held.sum())
        yield row


def main(argv=None) -> int:
    ap = validation_parser(__doc__, size=64, slices=4, cells=["gaussian2d:0:true", "gaussian2d:0.02:true"])
    ap.add_argument("--levels", type=float, nargs="+", default=[0.0229, 0.05, 0.1, 0.2, 0.4, 0.8])
    args = ap.parse_args(argv)
    return run_cells(args, lambda solver, items, cell: cell_rows(solver, items, cell, args.levels), digits=5)


if __name__ == "__main__":
    sys.exit(main())

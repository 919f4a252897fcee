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

import argparse
import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from scanner import magnitude_psnr, scan  # noqa: E402

from diffunfold.data.mri_slices import VolumeSlices  # noqa: E402
from diffunfold.physics.mri import MultiCoilMRI  # noqa: E402
from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.scanner import StartSettings, prepare_kspace, sense_start  # noqa: E402
from diffunfold.scanner.start import _held_out  # noqa: E402


def one_call(solver: Solver, p, level: float, seed: int) -> np.ndarray:
    begin = sense_start(p, StartSettings(sigma=level, readout="mean"))
    return np.asarray(solver.solve(p.y, p.operator, noise_std=p.data_std, seed=seed, **begin).images)


def cell_rows(solver: Solver, items: list[dict], cell: str, levels: list[float]):
    kind, noise, maps = cell.split(":")
    acc = 4.0 if kind.endswith("1d") else 8.0
    for i, item in enumerate(items):
        y, mask = scan(item, kind, acc, float(noise), i)
        p = prepare_kspace(y, mask, coil_maps=item["coil_maps"] if maps == "true" else None)
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default=str(ROOT / "samples" / "models" / "mri-small"))
    ap.add_argument("--volumes", default=str(ROOT / "data" / "mri" / "train"), help="validation volumes")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--levels", type=float, nargs="+", default=[0.0229, 0.05, 0.1, 0.2, 0.4, 0.8])
    ap.add_argument("--cells", nargs="+", default=["gaussian2d:0:true", "gaussian2d:0.02:true"])
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # numba's notes from SigPy
    solver = Solver.load(args.package)
    items = VolumeSlices(args.volumes, size=args.size).fixed(args.slices)
    for cell in args.cells:
        for row in cell_rows(solver, items, cell, args.levels):
            print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a scan's sampling should start: the full schedule from pure noise against the SENSE
estimate plus noise of a fixed level, on slices of the *training* volumes (validation: the
held-out head is kept for the test). One JSON line per slice and cell on stdout.

    python bench/experiments/scanner_start.py --volumes data/mri/train --size 256 --slices 2 \
        --sigmas 0.05 0.2 0.5 1 --cells gaussian1d:0:espirit gaussian2d:0.02:espirit

A start level s picks the schedule up at its first level at or below s (``edm.start_at``);
``--steps N`` also runs that start with the tail re-spaced to N steps from the same level. The
levels chosen from these runs are in ``diffunfold.scanner.start``; the results are in
bench/results/scanner-start-validation.md.
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

from diffunfold import edm  # noqa: E402
from diffunfold.data.mri_slices import VolumeSlices  # noqa: E402
from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.scanner import StartSettings, prepare_kspace, sense_start  # noqa: E402


def cell_rows(solver: Solver, items: list[dict], cell: str, sigmas: list[float], steps: list[int], full=True):
    kind, level, maps = cell.split(":")
    acc = 4.0 if kind.endswith("1d") else 8.0
    for i, item in enumerate(items):
        y, mask = scan(item, kind, acc, float(level), i)
        p = prepare_kspace(y, mask, coil_maps=item["coil_maps"] if maps == "true" else None)
        truth = item["image"][0]
        row = {"cell": cell, "slice": item["name"]}
        if full:
            t0 = time.perf_counter()
            sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i)
            row["noise start"], row["noise start s"] = magnitude_psnr(sol.images[0, 0], truth), time.perf_counter() - t0
        for s in sigmas:
            begin = sense_start(p, StartSettings(sigma=s, readout="sample"))
            sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i, **begin)
            row[f"sense start {s:g}"] = magnitude_psnr(sol.images[0, 0], truth)
            first = float(edm.start_at(edm.schedule(18), s)[0])
            for n in steps:  # the same start, the tail re-spaced to n steps (EDM's rho) from its first level
                sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i, steps=n, sigma_max=first, **begin)
                row[f"sense start {s:g} in {n}"] = magnitude_psnr(sol.images[0, 0], truth)
        yield row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default=str(ROOT / "samples" / "models" / "mri-small"))
    ap.add_argument("--volumes", default=str(ROOT / "data" / "mri" / "train"), help="validation volumes")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--slices", type=int, default=2)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.05, 0.2, 0.5, 1.0], help="start levels")
    ap.add_argument("--no-noise-start", action="store_true", help="skip the full schedule from noise")
    ap.add_argument("--steps", type=int, nargs="*", default=[], help="also each start's tail re-spaced to N steps")
    ap.add_argument(
        "--cells",
        nargs="+",
        default=[f"{k}:{n}:espirit" for k in ("gaussian1d", "gaussian2d") for n in ("0", "0.02")],
        help="MASK:NOISE:MAPS (maps: espirit or true)",
    )
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # numba's notes from SigPy
    solver = Solver.load(args.package)
    items = VolumeSlices(args.volumes, size=args.size).fixed(args.slices)
    for cell in args.cells:
        for row in cell_rows(solver, items, cell, args.sigmas, args.steps, not args.no_noise_start):
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

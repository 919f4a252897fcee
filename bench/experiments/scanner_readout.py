"""What a scan's reconstruction returns: the end of a short sampled tail (a posterior sample)
against one denoiser call at the start level (an estimate of the posterior mean), on slices of
the *training* volumes (validation; the held-out head is kept for the test). One JSON line per
slice and cell on stdout.

    python bench/experiments/scanner_readout.py --size 256 --slices 4 \
        --cells gaussian2d:0.02:espirit gaussian2d:0:espirit

Variants, each from the SENSE estimate of ``diffunfold.scanner.start``:
- ``tail``: the default (noise of the start level s added, the schedule's steps below s);
- ``mean b|m``: one call of the denoiser at the level L = max(b, m x the noise the SENSE
  estimate carries), with white noise added to bring the estimate's noise up to L (none where
  it already carries L): the posterior mean's estimate given that start, which is what the
  last step of a sampler returns.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from scanner import magnitude_psnr, scan  # noqa: E402

from diffunfold import edm  # noqa: E402
from diffunfold.data.mri_slices import VolumeSlices  # noqa: E402
from diffunfold.runtime.solver import Solver  # noqa: E402
from diffunfold.scanner import StartSettings, prepare_kspace, sense_start  # noqa: E402
from diffunfold.scanner.start import estimate_noise  # noqa: E402


@contextmanager
def one_call(level: float, top_up: float):
    """Patch the solver's schedule tail to ``[level, 0]`` and its start noise to ``top_up``."""
    start_at, initial_noise = edm.start_at, edm.initial_noise
    edm.start_at = lambda sigmas, s: np.array([level, 0.0])
    edm.initial_noise = lambda seeds, shape, sigma_max=0.0, sample=0: initial_noise(seeds, shape, top_up, sample)
    try:
        yield
    finally:
        edm.start_at, edm.initial_noise = start_at, initial_noise


def cell_rows(solver: Solver, items: list[dict], cell: str, bases: list[float], multiples: list[float]):
    kind, level, maps = cell.split(":")
    acc = 4.0 if kind.endswith("1d") else 8.0
    for i, item in enumerate(items):
        y, mask = scan(item, kind, acc, float(level), i)
        p = prepare_kspace(y, mask, coil_maps=item["coil_maps"] if maps == "true" else None)
        truth = item["image"][0]
        row = {"cell": cell, "slice": item["name"]}
        begin = sense_start(p, StartSettings(readout="sample"))
        if not begin:
            row["start"] = p.info.get("start")
            yield row
            continue
        noise = estimate_noise(p, StartSettings())
        row["start sigma"], row["sense noise"] = begin["init_sigma"], noise
        row["held_out_error"] = p.info["held_out_error"]
        t0 = time.perf_counter()
        row["tail"] = magnitude_psnr(
            solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i, **begin).images[0, 0], truth
        )
        row["tail s"] = time.perf_counter() - t0
        for base in bases:
            for m in multiples:
                at = max(base, m * noise)
                with one_call(at, float(np.sqrt(max(at**2 - noise**2, 0.0)))):
                    sol = solver.solve(p.y, p.operator, noise_std=p.data_std, seed=i, **begin)
                row[f"mean {base:g}|{m:g}"] = magnitude_psnr(sol.images[0, 0], truth)
        yield row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default=str(ROOT / "samples" / "models" / "mri-small"))
    ap.add_argument("--volumes", default=str(ROOT / "data" / "mri" / "train"), help="validation volumes")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--bases", type=float, nargs="+", default=[0.0229, 0.05], help="least levels of the one call")
    ap.add_argument("--multiples", type=float, nargs="+", default=[1.0, 1.5], help="of the SENSE estimate's noise")
    ap.add_argument("--cells", nargs="+", default=["gaussian2d:0.02:espirit", "gaussian2d:0:espirit"])
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # numba's notes from SigPy
    solver = Solver.load(args.package)
    items = VolumeSlices(args.volumes, size=args.size).fixed(args.slices)
    for cell in args.cells:
        for row in cell_rows(solver, items, cell, args.bases, args.multiples):
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

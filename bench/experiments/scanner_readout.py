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

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from scanner_cells import cell_scans, run_cells, validation_parser  # noqa: E402
from scanner_metrics import magnitude_psnr  # noqa: E402

from diffunfold import edm  # noqa: E402
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
    for i, item, y, mask, maps in cell_scans(items, cell):
        p = prepare_kspace(y, mask, coil_maps=maps)
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
    ap = validation_parser(__doc__, size=256, slices=4, cells=["gaussian2d:0.02:espirit", "gaussian2d:0:espirit"])
    ap.add_argument("--bases", type=float, nargs="+", default=[0.0229, 0.05], help="least levels of the one call")
    ap.add_argument("--multiples", type=float, nargs="+", default=[1.0, 1.5], help="of the SENSE estimate's noise")
    args = ap.parse_args(argv)
    return run_cells(args, lambda solver, items, cell: cell_rows(solver, items, cell, args.bases, args.multiples))


if __name__ == "__main__":
    sys.exit(main())

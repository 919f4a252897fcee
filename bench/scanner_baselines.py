"""The oracle-tuned classical baselines of ``bench/scanner.py``'s quality part: CG-SENSE and
L1-wavelet with the given (estimated or true) maps, each image's regularisation weight and
iteration count picked by its PSNR against the truth, so each is as good as it can be."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scanner_metrics import magnitude_psnr

from diffunfold import quality_baselines as qb

SENSE_LAMS = (0.0, 1e-3, 1e-2, 3e-2, 0.1)
SENSE_ITERS = (5, 10, 20, 40, 80)
L1_RELATIVE = (3e-2, 1e-2, 3e-3, 1e-3, 1e-4)


def oracle_sense(op, y, truth) -> tuple[float, dict]:
    best = (-np.inf, {})
    for lam in SENSE_LAMS:
        for iters, est in qb.cg_sense(op, y, lam, SENSE_ITERS).items():
            best = max(best, (magnitude_psnr(est[0, 0], truth), {"lam": lam, "iterations": iters}), key=lambda b: b[0])
    return best


def oracle_l1(op, y, truth) -> tuple[float, dict]:
    scale = float(np.abs(np.asarray(op.AT(y))).max())
    best, prev = (-np.inf, {}), None
    for rel in L1_RELATIVE:  # strong to weak, each warm-started from the last
        prev = qb.l1_wavelet(y[0], op.coil_maps[0], op.mask[0, 0], rel * scale, 100, prev)
        best = max(best, (magnitude_psnr(prev[0, 0], truth), {"lam_relative": rel}), key=lambda b: b[0])
    return best


def known_baselines(path: str | None) -> dict:
    """The oracle baselines of an earlier quality run (its JSON), by (mask, noise, maps, slice):
    they depend only on the scan, which the seed fixes, and cost most of a run's time."""
    if not path:
        return {}
    rows = json.loads(Path(path).read_text())["results"]
    keys = ("cg_sense", "sense_at", "l1_wavelet", "l1_at")
    return {(r["mask"], r["noise"], r["maps"], r["slice"]): {k: r[k] for k in keys} for r in rows}

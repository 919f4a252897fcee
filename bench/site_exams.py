"""A site's archive of undersampled raw exams, simulated from the training head volumes, for
self-supervised training from raw scans (``diffunfold prepare-scans``, ``data.source = "scans"``).

Each exam is one raw MRD file as a prospectively accelerated scan writes it: whole-head slices
of the training volumes (random orientation, position, rotation and phase; never the held-out
head) at 256 px, 15 birdcage coils, an oversampled readout, only the lines of the exam's own
1-D mask (one per exam, as a protocol's pattern is fixed within a scan), noise correlated between
coils with noise-scan lines, and one noise level per exam, log-uniform over [0.002, 0.05] (the
image's 99th percentile is 1; the harness scores at 0 and 0.02). No fully sampled data is kept.

    python bench/site_exams.py --volumes data/mri/train --out runs/site-raw --exams 24 --slices 8
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))

from diffunfold.data.mri_slices import VolumeSlices  # noqa: E402
from diffunfold.mrd.writer import write_phantom_mrd  # noqa: E402
from diffunfold.scanner.simulate import random_noise_covariance  # noqa: E402

NOISE_RANGE = (0.002, 0.05)
COILS = 15


def write_exams(volumes, out: Path, exams: int, slices: int, size: int, mask: str, acceleration: float, seed: int):
    """``exams`` raw MRD files ``out/exam-NN.h5``; returns one row per exam."""
    source = VolumeSlices(volumes, size=size)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for e in tqdm(range(exams), desc="exams", unit="exam"):
        rng = np.random.default_rng([seed, e])
        images = np.stack([source.random(rng, COILS)["image"][0] for _ in range(slices)])
        level = math.exp(rng.uniform(*np.log(NOISE_RANGE)))
        path = write_phantom_mrd(
            out / f"exam-{e:02d}.h5",
            images=images,
            coils=COILS,
            mask=mask,
            acceleration=acceleration,
            noise_std=level,
            noise_scans=16,
            seed=int(rng.integers(2**31)),
            noise_covariance=random_noise_covariance(COILS, rng),
        )
        rows.append({"exam": path.name, "slices": slices, "noise_std": level})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", required=True, help="training volumes (diffunfold data mri-volumes DIR: DIR/train)")
    p.add_argument("--out", required=True, type=Path, help="folder for the raw exams (exam-NN.h5)")
    p.add_argument("--exams", type=int, default=24)
    p.add_argument("--slices", type=int, default=8, help="slices per exam")
    p.add_argument("--size", type=int, default=256, help="matrix (px, square)")
    p.add_argument("--mask", default="gaussian1d", choices=("uniform1d", "random1d", "gaussian1d"))
    p.add_argument("--acceleration", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rows = write_exams(a.volumes, a.out, a.exams, a.slices, a.size, a.mask, a.acceleration, a.seed)
    levels = [r["noise_std"] for r in rows]
    print(f"{len(rows)} exams x {a.slices} slices -> {a.out}; noise {min(levels):.4f}..{max(levels):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per schedule sigma, the tau (every stage, gamma = 1) that makes one denoiser call the best
denoiser: the mean one-shot PSNR of D(x + sigma eps) over tasks and noise levels, on validation
photos (`make_validation_folder.py`). Prints each sigma's scores; writes {sigma: best tau}.

    python bench/experiments/calibrate_tau.py samples/models/image-small val/held-out calibrated-tau.json

Through the runtime's public `Solver.denoise`, which takes the (tau, gamma) per sigma as an
argument. The results: bench/results/real-data/image-small-validation/README.md, section 3.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

TAUS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
CASES = (("sr", {"factor": 8}), ("gaussian_blur", {"sigma": 2.0}), ("inpainting", {"missing": 0.4, "seed": 0}))
NOISE = (0.0, 0.05)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/experiments/calibrate_tau.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("package", help="an image model package folder")
    p.add_argument("photos", help="a folder of photos (e.g. val/held-out)")
    p.add_argument("out", help="the JSON file for {sigma: best tau}")
    p.add_argument("--images", type=int, default=6, help="photos used (default 6)")
    p.add_argument("--size", type=int, default=64, help="image size in px (default 64)")
    p.add_argument("--steps", type=int, default=18, help="the schedule's steps (default 18)")
    p.add_argument("--backend", default="onnxruntime", help="runtime backend (default onnxruntime)")
    return p.parse_args(argv)


def measurements(x: np.ndarray, size: int) -> list[tuple]:
    """(operator, y, sigma_y^2 per image) for each task and noise level."""
    from diffunfold.physics import make_operator

    cases = []
    for task, kw in CASES:
        op = make_operator(task, (size, size), **kw)
        for nz in NOISE:
            y = op.measure(x, noise_std=nz, seed=0) if nz else op.A(x)
            cases.append((op, np.asarray(y, dtype=np.float32), np.full(len(x), max(nz, 1e-6) ** 2, np.float32)))
    return cases


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from diffunfold import edm
    from diffunfold.data.held_out import held_out_photos
    from diffunfold.metrics import psnr
    from diffunfold.runtime import Solver, Timing

    _names, x = held_out_photos(a.photos, a.size, a.images)
    s = Solver.load(a.package, backend=a.backend)
    sp = s.space
    xm = sp.to_model(x)
    cases = measurements(x, a.size)

    def mean_psnr(est) -> float:
        return float(np.mean([psnr(np.clip(sp.to_user(est[i : i + 1]), 0, 1), x[i : i + 1]) for i in range(len(x))]))

    best = {}
    for sig in [float(v) for v in edm.schedule(a.steps)[:-1]]:
        xt = (xm + sig * np.random.default_rng(1).standard_normal(xm.shape)).astype(np.float32)
        scores = [
            np.mean(
                [
                    mean_psnr(s.denoise(xt, sig, y, op, {sig: ([t] * s.stages, [1.0] * s.stages)}, Timing(), v))
                    for op, y, v in cases
                ]
            )
            for t in TAUS
        ]
        best[sig] = TAUS[int(np.argmax(scores))]
        print(
            f"sigma {sig:7.3f} " + " ".join(f"{t}:{v:.2f}" for t, v in zip(TAUS, scores)),
            "-> tau",
            best[sig],
            flush=True,
        )
    with open(a.out, "w") as f:
        json.dump(best, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one-shot denoiser of each package, noise level by noise level: the mean PSNR of
D(x + sigma eps; sigma, y, A) against x on held-out photos, for one task and measurement noise.
What a diffusion formulation's training noise distribution and loss weight taught the network,
apart from its sampler (bench/results/formulations/).

    python bench/experiments/denoiser_by_sigma.py runs/formulations/pkg/edm runs/formulations/pkg/vp \\
        --photos data/photos/held-out --images 5 --noise 0.05

Through the runtime's public ``Solver.denoise`` with each package's learned (tau, gamma). The
same noise eps (seed 1) and measurement (seed 0) for every package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SIGMAS = (0.01, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/experiments/denoiser_by_sigma.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("packages", nargs="+", help="image model package folders")
    p.add_argument("--photos", required=True, help="a folder of held-out photos (e.g. data/photos/held-out)")
    p.add_argument("--images", type=int, default=5, help="photos used (default 5)")
    p.add_argument("--size", type=int, default=64, help="image size in px (default 64)")
    p.add_argument("--blur", type=float, default=2.0, help="the Gaussian blur's sigma in px (default 2)")
    p.add_argument("--noise", type=float, default=0.05, help="the measurement noise sigma_y (default 0.05)")
    p.add_argument("--sigmas", type=float, nargs="+", default=SIGMAS, help=f"noise levels (default {SIGMAS})")
    p.add_argument("--backend", default="onnxruntime", help="runtime backend (default onnxruntime)")
    return p.parse_args(argv)


def scores(package: str, x: np.ndarray, a: argparse.Namespace) -> list[float]:
    """The mean PSNR of the one-shot denoiser at each of ``a.sigmas``."""
    from diffunfold.metrics import psnr
    from diffunfold.physics import make_operator
    from diffunfold.runtime import Solver, Timing

    s = Solver.load(package, backend=a.backend)
    op = make_operator("gaussian_blur", (a.size, a.size), sigma=a.blur)
    y = np.asarray(op.measure(x, noise_std=a.noise, seed=0), dtype=np.float32) if a.noise else op.A(x)
    var = np.full(len(x), max(a.noise, 1e-6) ** 2, np.float32)
    xm = s.space.to_model(x)
    eps = np.random.default_rng(1).standard_normal(xm.shape)
    out = []
    for sig in a.sigmas:
        d = s.denoise((xm + sig * eps).astype(np.float32), sig, y, op, s.weights_for([sig]), Timing(), var)
        est = np.clip(s.space.to_user(d), 0, 1)
        out.append(float(np.mean([psnr(est[i : i + 1], x[i : i + 1]) for i in range(len(x))])))
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from diffunfold.data.held_out import held_out_photos

    _names, x = held_out_photos(a.photos, a.size, a.images)
    print(f"one-shot D PSNR (dB), Gaussian blur sigma {a.blur}, sigma_y {a.noise}, {len(x)} photos at {a.size} px")
    print("| package | " + " | ".join(f"s={v:g}" for v in a.sigmas) + " |")
    print("|---|" + "---|" * len(a.sigmas))
    for pkg in a.packages:
        print(f"| {Path(pkg).name} | " + " | ".join(f"{v:.2f}" for v in scores(pkg, x, a)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

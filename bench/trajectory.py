"""Where along the sampler a restoration goes wrong: the PSNR of the denoised estimate at every step.

A posterior sample is only as good as its last steps. This runs the package's Euler sampler
by hand on held-out images, one draw per image, and at each noise level ``sigma_i`` scores
the denoiser's output ``D(x_i; sigma_i, y)`` against the truth, beside the same denoiser fed
the truth plus exactly ``sigma_i`` of Gaussian noise (what it was trained on). A model whose
one-shot estimates are good but whose trajectory estimates fall after some step is drifting
off the noise statistics it learned (exposure), rather than denoising badly.

    python bench/trajectory.py samples/models/image-small runs/pkg/other --photos data/photos/held-out \\
        --size 256 --noise 0.05
    python bench/trajectory.py samples/models/image-small --photos data/photos/held-out --task sr_x8 --size 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402
from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402
from quality import TASK_BY_KEY  # noqa: E402

from diffunfold import edm  # noqa: E402
from diffunfold.metrics import psnr  # noqa: E402
from diffunfold.physics import make_operator  # noqa: E402
from diffunfold.runtime import Solver  # noqa: E402
from diffunfold.runtime.solver import Timing  # noqa: E402


def _score(solver: Solver, d, x) -> float:
    u = np.clip(np.asarray(solver.space.to_user(d)), 0, 1)
    return float(np.mean([psnr(u[i], x[i]) for i in range(len(x))]))


def trajectory(solver: Solver, x, y, op, noise: float, steps: int, seed: int) -> list[dict]:
    """Per sampler step: sigma, the PSNR of D along the trajectory and of D on truth + sigma noise."""
    sigmas = [float(s) for s in edm.schedule(steps, 0.002, 80.0, 7.0)]
    weights = solver.weights_for(sigmas)
    y_dev, _ = solver._prepare(y, op)
    var = np.full(len(x), noise**2)
    rng = np.random.default_rng(seed)
    x_model = solver.space.to_model(x)
    xt = (sigmas[0] * rng.standard_normal(x_model.shape)).astype(np.float32)
    rows = []
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        d = solver.denoise(xt, s, y_dev, op, weights, Timing(), noise_var=var)
        fresh = (x_model + s * rng.standard_normal(x_model.shape)).astype(np.float32)
        d_fresh = solver.denoise(fresh, s, y_dev, op, weights, Timing(), noise_var=var)
        rows.append(
            {
                "step": i,
                "sigma": s,
                "psnr_trajectory": _score(solver, d, x),
                "psnr_one_shot": _score(solver, d_fresh, x),
            }
        )
        xt = xt + (sigmas[i + 1] - s) / s * (xt - d)  # Euler
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench/trajectory.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("packages", nargs="+", help="model packages (image)")
    ap.add_argument("--photos", required=True, help="held-out photos (DIR/held-out of `diffunfold data photos`)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.05, help="sigma_y (default 0.05)")
    ap.add_argument(
        "--task",
        default="gaussian_blur",
        choices=[k for k, t in TASK_BY_KEY.items() if t.kind == "image"],
        help="the measurement, as bench/quality.py makes it (default gaussian_blur)",
    )
    ap.add_argument("--blur", type=float, default=2.0, help="the Gaussian blur's sigma in px (default 2)")
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--seed", type=int, default=0)
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    from diffunfold.data import held_out as ho

    watch, info = LoadWatch(), machine_info()
    names, x = ho.held_out_photos(ho.check_folder(args.photos, "photo"), args.size, args.images)
    task = TASK_BY_KEY[args.task]
    params = {**task.params, **({"sigma": args.blur} if args.task == "gaussian_blur" else {})}
    label = f"Gaussian blur (sigma {args.blur})" if args.task == "gaussian_blur" else task.label
    op = make_operator(
        task.task, (args.size, args.size), **({"seed": args.seed} if task.task == "inpainting" else {}), **params
    )
    y = np.asarray(op.measure(x, [args.noise] * len(x), seed=list(range(len(x))))).astype(np.float32)
    rows = []
    for path in args.packages:
        solver = Solver.load(path, backend="onnxruntime")
        for r in trajectory(solver, x, y, op, args.noise, args.steps, args.seed):
            rows.append({"package": Path(path).name, **r})
            print(rows[-1], flush=True)
    text = (
        f"{label} at sigma_y = {args.noise}, {len(x)} held-out photos at {args.size} "
        f"px ({', '.join(names)}), one draw each, {args.steps} Euler steps: mean PSNR (dB) of the denoised "
        "estimate D at each step's sigma, along the sampler's own trajectory and on the truth plus exactly "
        "sigma of noise (one shot).\n\n" + markdown_table(rows)
    )
    record("trajectory", watch, info, args, rows, text, "Denoised estimates along the sampler", allow_busy=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Learned step weights against fixed ones: does a package's (tau, gamma) help or hurt a solve?

A package's weight generators give each stage its relaxation ``tau_k(s)`` and its prox weight
multiplier ``gamma_k(s)``. This scores whole solves (the runtime's sampler, one draw per image)
on held-out photos with the package's own weights and, in the same run on the same
measurements and seeds, with them replaced: the initial ``tau = gamma = 1`` (the MAP weight of
the noise-aware proximal step, no learned correction) and the learned ones with gamma scaled.
The learned weights per noise level are listed under the table.

    python bench/weight_generators.py runs/pkg/candidate --photos data/photos/held-out --size 256 --noise 0.05
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402
from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402

from diffunfold import edm  # noqa: E402
from diffunfold.metrics import psnr  # noqa: E402
from diffunfold.physics import make_operator  # noqa: E402
from diffunfold.runtime import Solver  # noqa: E402

TASKS = {"gaussian_blur": {"sigma": 2.0}, "sr": {"factor": 4}, "inpainting": {"missing": 0.4}}


def variants(learned: dict) -> dict[str, dict]:
    """The weight tables compared: {name: {sigma: (tau list, gamma list)}}."""
    return {
        "learned": learned,
        "tau = gamma = 1": {s: ([1.0] * len(t), [1.0] * len(g)) for s, (t, g) in learned.items()},
        "learned, gamma x 4": {s: (t, [4 * v for v in g]) for s, (t, g) in learned.items()},
        "learned, gamma / 4": {s: (t, [v / 4 for v in g]) for s, (t, g) in learned.items()},
    }


def score(solver: Solver, weights: dict, y, op, x, noise: float, seeds: list[int]) -> list[float]:
    solver.weights_for = lambda sigmas: weights  # this instance only: the solve reads its weights here
    out = np.asarray(solver.solve(y, op, seed=seeds, noise_std=[noise] * len(x)).images)
    return [float(psnr(out[i], x[i])) for i in range(len(x))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench/weight_generators.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("packages", nargs="+", help="image model packages")
    ap.add_argument("--photos", required=True, help="held-out photos (DIR/held-out of `diffunfold data photos`)")
    ap.add_argument("--task", choices=sorted(TASKS), default="gaussian_blur")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.05, help="sigma_y (default 0.05)")
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    from diffunfold.data import held_out as ho

    watch, info = LoadWatch(), machine_info()
    names, x = ho.held_out_photos(ho.check_folder(args.photos, "photo"), args.size, args.images)
    op = make_operator(args.task, (args.size, args.size), **TASKS[args.task])
    seeds = list(range(len(x)))
    y = np.asarray(op.measure(x, [args.noise] * len(x), seed=seeds)).astype(np.float32)
    rows, notes = [], []
    for path in args.packages:
        solver = Solver.load(path, backend="onnxruntime")
        sigmas = [float(s) for s in edm.schedule(solver.package.schedule["steps"])]
        learned = solver.weights_for(sigmas)
        notes.append(
            f"- `{Path(path).name}`, learned (tau_k; gamma_k) at sigma: "
            + "; ".join(
                f"{s:.3g}: ({', '.join(f'{v:.2f}' for v in t)}; {', '.join(f'{v:.2f}' for v in g)})"
                for s, (t, g) in learned.items()
                if s > 0
            )
        )
        for name, weights in variants(learned).items():
            per = score(solver, weights, y, op, x, args.noise, seeds)
            rows.append(
                {
                    "package": Path(path).name,
                    "weights": name,
                    "psnr_mean": round(float(np.mean(per)), 2),
                    "psnr_per_image": " / ".join(f"{v:.2f}" for v in per),
                }
            )
            print(rows[-1], flush=True)
    text = (
        f"{args.task} at sigma_y = {args.noise}, {len(x)} held-out photos at {args.size} px "
        f"({', '.join(names)}), one draw each, the package's sampler, ONNX Runtime: PSNR (dB) with "
        "the package's learned step weights and with fixed ones, same measurements and seeds.\n\n"
        + markdown_table(rows)
        + "\n\n"
        + "\n".join(notes)
    )
    record(
        "weight_generators", watch, info, args, rows, text, "Learned step weights against fixed ones", allow_busy=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

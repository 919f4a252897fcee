"""Posterior samples: a restoration with an uncertainty map, and where to distrust it.

    python samples/posterior_samples.py --samples 8 --out out/posterior
    python samples/posterior_samples.py --task inpainting missing=0.6 --samples 16 --out out/posterior

Diff-Unfolding is a diffusion model: each seed gives a different sample of the posterior
``p(x | y)``. ``solver.solve(y, op, samples=N)`` draws N of them (side by side in one batch
where the operator allows) and returns their mean (``images``, a better estimate than one
sample) and the per-pixel standard deviation (``std``): how much the samples disagree.

The std is only useful if it is large where the restoration is wrong. This sample measures
that on a held-out image: the correlation between the per-pixel |error| of the posterior mean
and the std, and for inpainting the mean std over the missing pixels against the observed
ones. Writes mean.png, std.png and error.png (a colour map made with numpy: dark = small,
yellow = large, each scaled to its own maximum), measured.png, and posterior.png (all side by
side with the clean image). Returns the numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diffunfold.data.images import BUNDLED_HELD_OUT, BUNDLED_NAMES, bundled_image, load_image, save_image
from diffunfold.figures import colormap
from diffunfold.metrics import psnr
from diffunfold.physics import make_operator
from diffunfold.physics.inpainting import Inpainting
from diffunfold.physics.tasks import parse_task_words
from diffunfold.runtime import Solver

REPO = Path(__file__).resolve().parents[1]
IMAGE_PACKAGE = REPO / "samples" / "models" / "image-small"


def colour_map(values: np.ndarray) -> np.ndarray:
    """(H, W) values -> (3, H, W) RGB in [0, 1], 0 black and the maximum pale yellow."""
    return colormap(values).transpose(2, 0, 1) / 255.0


def clean_image(image: str, size: int) -> np.ndarray:
    """A bundled image by name (the held-out ones were never trained on), or an image file:
    its centre square at ``size``, ``(1, 3, size, size)`` float32 in [0, 1]."""
    if image in BUNDLED_NAMES:
        return bundled_image(image, size=size)[None]
    return load_image(image, channels=3, size=size)[None]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--package",
        type=Path,
        default=IMAGE_PACKAGE,
        help="an image model package (default: the bundled samples/models/image-small)",
    )
    parser.add_argument(
        "--image",
        default="camera",
        help=f"a held-out bundled image ({', '.join(BUNDLED_HELD_OUT)}) or an image file (default: camera)",
    )
    parser.add_argument(
        "--task",
        nargs="+",
        default=["box_inpainting", "size=0.3"],
        metavar="WORD",
        help="task and parameters as for `diffunfold restore` (default: box_inpainting size=0.3)",
    )
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--noise", type=float, default=0.05, help="measurement noise std (default 0.05)")
    parser.add_argument("--samples", type=int, default=8, help="posterior samples (default 8; at least 2)")
    parser.add_argument("--steps", type=int, default=18, help="sampler steps per sample (default 18)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise; sample j starts from (seed, j)")
    parser.add_argument("--out", type=Path, default=Path("out/posterior"), help="output folder")
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error("--samples must be at least 2: a std needs two samples")

    solver = Solver.load(args.package)
    x = clean_image(args.image, args.size)
    task, params = parse_task_words(args.task)  # ("box_inpainting", {"size": 0.3})
    op = make_operator(task, x.shape[-2:], **params)
    y = op.measure(x, noise_std=args.noise, seed=args.seed).astype(np.float32)

    solution = solver.solve(
        y, op, steps=args.steps, seed=args.seed, samples=args.samples, noise_std=args.noise
    )  # sigma_y: how much the model may trust y
    mean, std = np.asarray(solution.images)[0], np.asarray(solution.std)[0]  # (3, H, W) each
    # One number per pixel: average the colour channels of |error| and of the std.
    error = np.abs(mean - x[0]).mean(axis=0)
    spread = std.mean(axis=0)
    corr = float(np.corrcoef(error.ravel(), spread.ravel())[0, 1])

    result = {
        "task": task,
        "params": params,
        "samples": args.samples,
        "steps": args.steps,
        "psnr_mean": float(psnr(mean, x[0], 1.0)),
        "std_max": float(spread.max()),
        "corr_error_std": corr,
        "timing": solution.timing.as_dict(),
    }
    print(
        f"{args.image} at {args.size}x{args.size}, {task} {params}, noise {args.noise:g}: "
        f"{args.samples} samples x {args.steps} steps in {solution.timing.total:.2f} s"
    )
    print(f"  posterior mean PSNR {result['psnr_mean']:.2f} dB")
    print(f"  correlation of |error| and std over the pixels: {corr:+.3f}")
    if isinstance(op, Inpainting):
        # The data term pins the observed pixels; in the holes only the prior speaks, and the
        # samples disagree there.
        missing = op.mask[0, 0] < 0.5
        result["std_missing"] = float(spread[missing].mean())
        result["std_observed"] = float(spread[~missing].mean())
        print(
            f"  mean std: {result['std_missing']:.4f} over the missing pixels, "
            f"{result['std_observed']:.4f} over the observed ones"
        )

    shown = np.clip(y[0], 0.0, 1.0) if y.shape == x.shape else np.clip(op.pinv(y)[0], 0.0, 1.0)
    pictures = {"measured": shown, "mean": mean, "std": colour_map(spread), "error": colour_map(error)}
    result["files"] = {name: str(save_image(args.out / f"{name}.png", im)) for name, im in pictures.items()}
    sheet = save_image(args.out / "posterior.png", np.concatenate([*pictures.values(), x[0]], axis=-1))
    result["files"]["posterior"] = str(sheet)
    print(
        f"wrote {', '.join(Path(p).name for p in result['files'].values())} to {args.out} "
        "(posterior.png: measured, mean, std, |error|, clean)"
    )
    return result


if __name__ == "__main__":
    main()

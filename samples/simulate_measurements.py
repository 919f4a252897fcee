"""Simulate every task's measurement of a held-out image and score the classical baseline.

    python samples/simulate_measurements.py --size 128 --noise 0.05 --out out/measurements

For each task: build its operator by name, measure a held-out bundled image (never used for
training) with Gaussian noise, invert with the operator's cheap ``pinv`` (Tikhonov for
blurs, exact pseudo-inverse for SR and inpainting) and report PSNR/SSIM. This is the
baseline a Diff-Unfolding model must beat. A contact sheet (rows: tasks; columns:
measurement shown at image size, pinv, ground truth) is written as PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diffunfold.data.image_datasets import BundledImages
from diffunfold.data.images import BUNDLED_HELD_OUT, save_image
from diffunfold.metrics import psnr, ssim
from diffunfold.physics import make_operator

TASKS = [
    ("gaussian_blur", {"sigma": 3.0}),
    ("anisotropic_blur", {"sigma": (4.0, 1.5), "angle": 0.8}),
    ("motion_blur", {"length": 11.0, "angle": 0.5}),
    ("sr", {"factor": 4}),
    ("inpainting", {"missing": 0.6, "seed": 1}),
    ("box_inpainting", {"size": 0.3}),
]


def show(measurement: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A measurement as a picture of the image's size (nearest upsampling for SR)."""
    reps = (shape[0] // measurement.shape[-2], shape[1] // measurement.shape[-1])
    return np.repeat(np.repeat(measurement, reps[0], axis=-2), reps[1], axis=-1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="image side (default 128)")
    parser.add_argument("--noise", type=float, default=0.05, help="measurement noise std (paper: 0.05)")
    parser.add_argument("--image", type=int, default=0, help=f"which held-out image: 0..{len(BUNDLED_HELD_OUT) - 1}")
    parser.add_argument("--out", type=Path, default=Path("out/measurements"))
    args = parser.parse_args(argv)

    held_out = BundledImages(size=args.size, split="val")  # deterministic centre crops
    x = held_out[args.image][None].astype(np.float64)  # (1, 3, H, W) in [0, 1]
    print(f"image: {held_out.names[args.image]} at {args.size}x{args.size}, noise std {args.noise}")

    rows, scores = [], {}
    for task, params in TASKS:
        op = make_operator(task, x.shape[-2:], **params)
        y = op.measure(x, args.noise, seed=0)  # seeded: the same y on every run and backend
        estimate = np.clip(op.pinv(y), 0, 1)
        scores[task] = {
            "psnr": float(psnr(estimate, x, data_range=1.0)[0]),
            "ssim": float(ssim(estimate, x, data_range=1.0)[0]),
        }
        print(f"  {task:17s} pinv  PSNR {scores[task]['psnr']:6.2f} dB  SSIM {scores[task]['ssim']:.4f}")
        rows.append(np.concatenate([np.clip(show(y, x.shape[-2:]), 0, 1)[0], estimate[0], x[0]], axis=-1))

    sheet = args.out / "contact_sheet.png"
    save_image(sheet, np.concatenate(rows, axis=-2))
    print(f"wrote {sheet}")
    return scores


if __name__ == "__main__":
    main()

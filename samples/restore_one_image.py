"""Restore one blurred, noisy image with the bundled model package, next to the Wiener filter.

    python samples/restore_one_image.py --out out/restore_one
    python samples/restore_one_image.py --image photo.jpg --sigma 2.5 --noise 0.02 --out out/mine

1. ``Solver.load`` opens a model package (checking every file's sha256) and starts the fastest
   backend present: TensorRT > ONNX Runtime > torch (on a CPU: ONNX Runtime).
2. A clean image (a held-out bundled image never used in training, or your own file, centre-
   cropped and resized to ``--size``) is measured with a Gaussian blur plus Gaussian noise.
3. ``solver.solve(y, op, noise_std=...)`` runs 18 EDM steps, each a call of the unfolded
   denoiser: K stages of "move towards the learned prior R(x; sigma), then solve the data term
   ||A x - y||^2 exactly, trusted as far as the noise level allows" (the bundled model's
   proximal step; the paper's gradient step is a model setting).
4. Scores (PSNR/SSIM against the clean image) for the restoration, the classical Wiener
   filter (natural-image prior), the plain ``pinv`` (Tikhonov inverse) and the blurred
   measurement itself; restored/baseline/measured/clean PNGs are written to ``--out``.

Returns ``{"restored": {...}, "wiener": {...}, "pinv": {...}, "measured": {...}, ...}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diffunfold.baselines import classical_baseline
from diffunfold.data.images import BUNDLED_HELD_OUT, BUNDLED_NAMES, bundled_image, load_image, save_image
from diffunfold.metrics import psnr, ssim
from diffunfold.physics import make_operator
from diffunfold.runtime import Solver

REPO = Path(__file__).resolve().parents[1]
IMAGE_PACKAGE = REPO / "samples" / "models" / "image-small"


def clean_image(image: str, size: int) -> np.ndarray:
    """A bundled image by name (the held-out ones were never trained on), or an image file:
    its centre square at ``size``, ``(1, 3, size, size)`` float32 in [0, 1]."""
    if image in BUNDLED_NAMES:
        return bundled_image(image, size=size)[None]
    return load_image(image, channels=3, size=size)[None]


def scores(estimate: np.ndarray, x: np.ndarray) -> dict:
    return {
        "psnr": float(psnr(estimate[0], x[0], data_range=1.0)),
        "ssim": float(ssim(estimate[0], x[0], data_range=1.0)),
    }


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
        "--size",
        type=int,
        default=64,
        help="image side in pixels (default 64, the model's training size; each doubling costs about 4x on a CPU)",
    )
    parser.add_argument("--sigma", type=float, default=2.0, help="Gaussian blur std in pixels (default 2)")
    parser.add_argument(
        "--noise", type=float, default=0.05, help="measurement noise std, images in [0, 1] (default 0.05)"
    )
    parser.add_argument("--steps", type=int, default=18, help="sampler steps (default 18, the paper's NFE)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and of the sampler's start")
    parser.add_argument("--backend", default="auto", help="auto, onnxruntime, torch or tensorrt (default auto)")
    parser.add_argument("--out", type=Path, default=Path("out/restore_one"), help="folder for the PNGs")
    args = parser.parse_args(argv)

    solver = Solver.load(args.package, backend=args.backend)
    print(f"{solver.package.summary()}\nbackend: {solver.backend_name}")

    x = clean_image(args.image, args.size)
    op = make_operator("gaussian_blur", x.shape[-2:], sigma=args.sigma)
    # The same seed gives the same noise on every machine and backend (drawn on the host).
    y = op.measure(x, noise_std=args.noise, seed=args.seed).astype(np.float32)

    # noise_std: the measurement's noise level, which the model weighs y by (None: estimated from y)
    solution = solver.solve(y, op, steps=args.steps, seed=args.seed, noise_std=args.noise, progress=False)
    restored = np.asarray(solution.images)  # (1, 3, H, W) in [0, 1]: one posterior sample
    # Wiener needs the noise level too (the same one).
    wiener = np.asarray(classical_baseline(op, y, args.noise))
    pinv = np.clip(op.pinv(y), 0.0, 1.0)  # Tikhonov inverse: sharp, but it amplifies the noise
    measured = np.clip(y, 0.0, 1.0)  # a blur keeps the image size: y can be shown and scored as is

    result = {
        name: scores(est, x)
        for name, est in (("restored", restored), ("wiener", wiener), ("pinv", pinv), ("measured", measured))
    }
    print(
        f"{args.image} at {args.size}x{args.size}: Gaussian blur sigma {args.sigma:g}, noise {args.noise:g}, "
        f"{args.steps} steps"
    )
    for name, s in result.items():
        print(f"  {name:9s} PSNR {s['psnr']:6.2f} dB  SSIM {s['ssim']:.4f}")
    print(f"  solver time {solution.timing} (NFE {solution.nfe} x K={solver.stages} network calls)")

    for name, image in (("restored", restored), ("baseline", wiener), ("measured", measured), ("clean", x)):
        path = save_image(args.out / f"{name}.png", image[0])
        result.setdefault("files", {})[name] = str(path)
    print(f"wrote {', '.join(Path(p).name for p in result['files'].values())} to {args.out}")
    result["timing"] = solution.timing.as_dict()
    return result


if __name__ == "__main__":
    main()

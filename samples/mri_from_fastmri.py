"""Reconstruct an accelerated multi-coil MRI slice from a fastMRI-format file.

    python samples/mri_from_fastmri.py --out out/mri_recon                  (writes a phantom first)
    python samples/mri_from_fastmri.py --file file1000001.h5 --size 320 --out out/mri_recon

1. Without ``--file``, one synthetic 15-coil phantom volume is written into ``--out`` in the
   fastMRI format (``write_phantom_dataset``), so the same reader runs as on real data.
2. A slice is read as ``diffunfold mri`` reads it (``FastMRISlices(coil_maps="estimate")``):
   coil maps estimated from the fully sampled k-space, their SENSE combination as the
   reference image, centre-cropped and divided by its 99th-percentile magnitude.
3. The fully sampled k-space is undersampled retrospectively with a Gaussian 1-D mask (4x by
   default; the centre lines are always kept) and reconstructed with the bundled MRI package,
   next to zero-filled SENSE (``A^H y``, the classical baseline). PSNR/SSIM follow fastMRI:
   magnitudes, data range = the reference's maximum.

Writes recon.png, zero_filled.png, reference.png (magnitudes on the reference's scale) and
mask.png to ``--out``. Returns the scores and the paths.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diffunfold.baselines import classical_baseline
from diffunfold.data import FastMRIFile, FastMRISlices, save_image, write_phantom_dataset
from diffunfold.metrics import psnr, ssim
from diffunfold.physics import MultiCoilMRI, mri_mask
from diffunfold.physics.mri import MASK_KINDS
from diffunfold.runtime import Solver

REPO = Path(__file__).resolve().parents[1]
MRI_PACKAGE = REPO / "samples" / "models" / "mri-small"


def magnitude(image, scale: float) -> np.ndarray:
    """|image| in [0, 1] on a fixed scale, so the three pictures compare pixel for pixel."""
    return np.clip(np.abs(np.asarray(image)) / scale, 0.0, 1.0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--package",
        type=Path,
        default=MRI_PACKAGE,
        help="an MRI model package (default: the bundled samples/models/mri-small)",
    )
    parser.add_argument(
        "--file",
        type=Path,
        help="a fastMRI multi-coil .h5 file with fully sampled k-space "
        "(default: write a synthetic phantom file into --out)",
    )
    parser.add_argument("--slice", type=int, help="slice index (default: the middle slice)")
    parser.add_argument(
        "--size",
        type=int,
        help="phantom side when one is written (default 64, the model's training size); with "
        "--file, centre-crop to NxN (default: the file's recon matrix, e.g. 320)",
    )
    parser.add_argument("--coils", type=int, default=15, help="coils of the written phantom (default 15)")
    parser.add_argument(
        "--mask", choices=MASK_KINDS, default="gaussian1d", help="k-space sampling pattern (default gaussian1d)"
    )
    parser.add_argument("--acceleration", type=float, default=4.0, help="undersampling factor (default 4)")
    parser.add_argument("--steps", type=int, default=18, help="sampler steps (default 18)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask and of the sampler's start")
    parser.add_argument("--out", type=Path, default=Path("out/mri_recon"), help="output folder")
    args = parser.parse_args(argv)

    path = args.file
    if path is None:
        side = args.size or 64
        # Independent random ellipse phantoms on simulated birdcage coils, stored as fastMRI stores
        # a scan: k-space (slices, coils, H, W), reconstruction_rss and an ISMRMRD header.
        (path,) = write_phantom_dataset(
            args.out,
            num_files=1,
            slices_per_file=3,
            shape=(side, side),
            ncoils=args.coils,
            seed=args.seed,
            progress=False,
        )
        print(
            f"no --file given: wrote a synthetic {args.coils}-coil phantom volume ({side}x{side}, 3 slices) to {path}"
        )
    with FastMRIFile(path) as f:  # checks the layout first: a file that is not fastMRI fails here
        print(f"{path.name}: k-space {f.kspace_shape} (slices, coils, H, W), recon matrix {f.recon_shape}")
        count = f.num_slices
    index = count // 2 if args.slice is None else args.slice

    crop = (args.size, args.size) if args.file is not None and args.size else None
    item = FastMRISlices(path, coil_maps="estimate", crop=crop)[index]  # one file: index = slice
    x = item["image"][None]  # (1, 1, H, W) complex64, 99th percentile of |x| = 1
    hw = tuple(x.shape[-2:])

    mask = mri_mask(args.mask, hw, args.acceleration, seed=args.seed)  # (H, W), 1 = sampled
    op = MultiCoilMRI(item["coil_maps"], mask)  # y = M F(S x): coil maps and mask are the physics
    y = op.measure(x).astype(np.complex64)  # (1, coils, H, W); noise-free, as the paper's MRI table

    solver = Solver.load(args.package)
    solution = solver.solve(y, op, steps=args.steps, seed=args.seed, noise_std=0.0)  # we added none
    recon = np.asarray(solution.images)  # complex (1, 1, H, W)
    zero_filled = np.asarray(classical_baseline(op, y, 0.0))

    result = {
        "file": str(path),
        "slice": index,
        "size": list(hw),
        "coils": op.ncoils,
        "mask": args.mask,
        "acceleration": float(mask.size / mask.sum()),
        # fastMRI's convention: magnitudes, data range = the reference's maximum (data_range=None)
        "psnr": float(psnr(recon[0], x[0])),
        "ssim": float(ssim(recon[0], x[0])),
        "psnr_zero_filled": float(psnr(zero_filled[0], x[0])),
        "ssim_zero_filled": float(ssim(zero_filled[0], x[0])),
        "timing": solution.timing.as_dict(),
    }
    print(
        f"slice {index}, {hw[0]}x{hw[1]}, {op.ncoils} coils (estimated maps); {args.mask} "
        f"{args.acceleration:g}x (realised {result['acceleration']:.2f}x), {args.steps} steps"
    )
    print(f"  Diff-Unfolding     PSNR {result['psnr']:6.2f} dB  SSIM {result['ssim']:.4f}")
    print(f"  zero-filled SENSE  PSNR {result['psnr_zero_filled']:6.2f} dB  SSIM {result['ssim_zero_filled']:.4f}")
    print(f"  solver time {solution.timing}")

    scale = float(np.abs(x).max())
    files = {
        "recon": magnitude(recon[0, 0], scale),
        "zero_filled": magnitude(zero_filled[0, 0], scale),
        "reference": magnitude(x[0, 0], scale),
        "mask": mask.astype(np.float32),
    }
    result["files"] = {name: str(save_image(args.out / f"{name}.png", image)) for name, image in files.items()}
    print(f"wrote {', '.join(Path(p).name for p in result['files'].values())} to {args.out}")
    return result


if __name__ == "__main__":
    main()

"""The ``diffunfold`` command line. Each subcommand is a thin shell over the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import DiffUnfoldError

DESCRIPTION = """\
diffunfold: Diff-Unfolding for imaging inverse problems.

A conditional diffusion model whose denoiser is an unrolled optimisation: each step runs K
iterations of  x <- x - gamma * (A^T(Ax - y) + tau * (x - R(x; sigma)))  with the physics A
outside the network, so one trained model serves new operators without retraining.
"""

EPILOG = """\
examples:
  diffunfold selfcheck                      check every operator (adjoint, norm, backends)
  diffunfold tasks                          list the tasks and their parameters
  diffunfold mask gaussian2d --shape 320 320 --acceleration 8 --out mask.png
  diffunfold phantom data/phantoms --files 4 --slices 8 --size 128
  diffunfold info                           versions and the backends present

Run `diffunfold COMMAND --help` for a command's options.
"""


def _cmd_selfcheck(args) -> int:
    from .selfcheck import available_backends, format_rows, rows_as_dicts, run_selfcheck

    backends = args.backends.split(",") if args.backends else available_backends()
    unknown = set(backends) - {"numpy", "torch", "cupy"}
    if unknown:
        raise DiffUnfoldError(f"unknown backend(s) {sorted(unknown)}; choose from numpy, torch, cupy")
    print(f"diffunfold {__version__} operator self-check at {args.size}x{args.size}; backends: {', '.join(backends)}")
    rows = run_selfcheck(args.size, backends, with_images=not args.no_images, progress=not args.quiet)
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows_as_dicts(rows), indent=2, default=str))
        print(f"wrote {args.json}")
    failed = [r for r in rows if not r.ok]
    if failed:
        print(f"FAILED: {len(failed)} operator(s) out of tolerance", file=sys.stderr)
        return 1
    print(f"all {len(rows)} operators passed: exact adjoints, ||A|| <= 1, backends agree")
    return 0


def _cmd_tasks(args) -> int:
    from .physics import ALIASES, task_help, task_names

    for name in task_names():
        print(f"{name:17s} {task_help(name)}")
    print("\naliases: " + ", ".join(f"{a} -> {t}" for a, t in ALIASES.items()))
    return 0


def _cmd_mask(args) -> int:
    import numpy as np

    from .physics import mri_mask

    mask = mri_mask(args.kind, tuple(args.shape), args.acceleration, args.center_fraction, args.seed)
    realised = mask.size / mask.sum()
    print(f"{args.kind} mask {mask.shape[0]}x{mask.shape[1]}: requested {args.acceleration:g}x, "
          f"realised {realised:.3f}x ({int(mask.sum())} samples)")
    if args.out:
        from .data.images import save_image

        save_image(args.out, mask.astype(np.float32))
        print(f"wrote {args.out}")
    return 0


def _cmd_phantom(args) -> int:
    from .data.phantom import write_phantom_dataset

    paths = write_phantom_dataset(args.out_dir, num_files=args.files, slices_per_file=args.slices,
                                  shape=(args.size, args.size), ncoils=args.coils, noise_std=args.noise,
                                  seed=args.seed, progress=not args.quiet)
    print(f"wrote {len(paths)} fastMRI-format file(s) to {args.out_dir}")
    return 0


def _cmd_info(args) -> int:
    import importlib
    import platform

    print(f"diffunfold {__version__} on Python {platform.python_version()} ({platform.machine()})")
    for module, extra in [("numpy", "core"), ("onnxruntime", "core"), ("skimage", "core"), ("h5py", "core"),
                          ("torch", "train"), ("onnx", "export"), ("cupy", "gpu"), ("tensorrt", "trt"),
                          ("polygraphy", "trt")]:
        try:
            mod = importlib.import_module(module)
            version = getattr(mod, "__version__", "?")
            print(f"  {module:12s} {version:12s} ({extra})")
        except Exception as exc:  # any import failure means "not usable here"
            reason = "not installed" if isinstance(exc, ImportError) else f"unusable: {exc}"
            print(f"  {module:12s} {'-':12s} ({extra}: {reason})")
    from .selfcheck import available_backends

    print("array backends for the physics: " + ", ".join(available_backends()))
    try:
        import onnxruntime

        print("onnxruntime providers: " + ", ".join(onnxruntime.get_available_providers()))
    except ImportError:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffunfold", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"diffunfold {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("selfcheck", help="check every operator: adjoint, norm, backend agreement",
                       description="Build every task's operator and check that its adjoint is exact "
                                   "(float64 and float32), that ||A|| <= 1 (power iteration) and that "
                                   "every array backend present (numpy, torch, CuPy) gives the same "
                                   "numbers; report the PSNR of the classical pinv on a held-out image.")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    p.add_argument("--backends", help="comma-separated subset of numpy,torch,cupy (default: all present)")
    p.add_argument("--no-images", action="store_true", help="skip the pinv PSNR on a bundled image")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_selfcheck)

    p = sub.add_parser("tasks", help="list the tasks and their parameters",
                       description="List the task names accepted by make_operator and the CLI, with "
                                   "their parameters and defaults.")
    p.set_defaults(func=_cmd_tasks)

    p = sub.add_parser("mask", help="make an MRI sampling mask and report its acceleration",
                       description="Make a k-space sampling mask (phase encodes along the last axis, "
                                   "fastMRI's convention) and print the realised acceleration.")
    p.add_argument("kind", choices=["uniform1d", "random1d", "gaussian1d", "gaussian2d"])
    p.add_argument("--shape", type=int, nargs=2, default=[320, 320], metavar=("H", "W"))
    p.add_argument("--acceleration", type=float, default=4.0)
    p.add_argument("--center-fraction", type=float, default=None,
                   help="fully sampled centre fraction (default: 0.32 / acceleration)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="PNG", help="save the mask as an image")
    p.set_defaults(func=_cmd_mask)

    p = sub.add_parser("phantom", help="write synthetic multi-coil MRI data in the fastMRI format",
                       description="Write random anatomical-looking ellipse phantoms, simulated with "
                                   "birdcage coils, as fastMRI multi-coil HDF5 files (kspace, "
                                   "reconstruction_rss, ismrmrd_header) that `FastMRISlices` reads.")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--slices", type=int, default=8, help="slices per file")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--coils", type=int, default=15, help="simulated coils (the paper uses 15)")
    p.add_argument("--noise", type=float, default=0.0, help="k-space noise std")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("info", help="versions and the backends present",
                       description="Print versions of diffunfold's dependencies, which optional "
                                   "extras are installed and which backends can run here.")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DiffUnfoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

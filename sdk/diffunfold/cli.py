"""The ``diffunfold`` command line. Each subcommand is a thin shell over the library.

Here: the entry point (``main``), the parser, the small tool commands (selfcheck, tasks, mask,
phantom, info, presets) and the runtime commands (restore, mri, demo: their options live in
``restore``, ``mri`` and ``demo``). Training, evaluation, export and engine building:
``cli_training``; the data and MRD commands: ``data.cli`` and ``mrd.cli``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from . import cli_values as V
from .cli_training import add_export_commands, add_training_commands
from .errors import DiffUnfoldError, InputError
from .safe_io import refuse_existing, write_json

DESCRIPTION = """\
diffunfold: Diff-Unfolding for imaging inverse problems.

A conditional diffusion model whose denoiser is an unrolled optimisation: each step runs K
iterations of  x <- x - gamma * (A^T(Ax - y) + tau * (x - R(x; sigma)))  with the physics A
outside the network, so one trained model serves new operators without retraining.
"""

EPILOG = """\
examples:
  diffunfold demo                           the bundled models on every task -> demo/ (figures, table)
  diffunfold selfcheck                      check every operator (adjoint, norm, backends)
  diffunfold tasks                          list the tasks and their parameters
  diffunfold mask gaussian2d --shape 320 320 --acceleration 8 --out mask.png
  diffunfold phantom data/phantoms --files 4 --slices 8 --size 128
  diffunfold info                           versions and the backends present
  diffunfold presets                        the shipped training presets and their sizes
  diffunfold train --config small --out runs/small
  diffunfold train --config small --out runs/small --resume     (continue after a stop)
  torchrun --nproc_per_node=4 -m diffunfold train --config paper --set data.source=folder \\
           --set data.path=/data/ffhq --out runs/paper         (several GPUs / nodes)
  diffunfold prepare-scans raw/ data/scans   (a site's undersampled raw MRD scans -> SSDU training data)
  diffunfold evaluate runs/small --task gaussian_blur sigma=2 --task sr factor=4
  diffunfold export runs/small --out models/small      (EMA weights -> ONNX model package)
  diffunfold add-torch-weights models/small            (model.safetensors for backend="torch")
  diffunfold build-engines models/small --target h100  (FP16 TensorRT engines, on the GPU)
  diffunfold restore models/small photo.png --task gaussian_blur sigma=2 --noise 0.05 --out restored/
  diffunfold mri models/mri file1000001.h5 --mask gaussian1d --acceleration 4 --out recon/

Run `diffunfold COMMAND --help` for a command's options.
"""


def _cmd_selfcheck(args) -> int:
    from .selfcheck import available_backends, format_rows, rows_as_dicts, run_selfcheck

    refuse_existing([args.json] if args.json else [], args.overwrite, "choose another --json")
    backends = args.backends.split(",") if args.backends else available_backends()
    unknown = set(backends) - {"numpy", "torch", "cupy"}
    if unknown:
        raise DiffUnfoldError(f"unknown backend(s) {sorted(unknown)}; choose from numpy, torch, cupy")
    print(f"diffunfold {__version__} operator self-check at {args.size}x{args.size}; backends: {', '.join(backends)}")
    rows = run_selfcheck(args.size, backends, with_images=not args.no_images, progress=not args.quiet)
    print(format_rows(rows))
    if args.json:
        write_json(args.json, rows_as_dicts(rows), default=str)
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

    out = None
    if args.out:
        out = Path(args.out) if Path(args.out).suffix else Path(args.out).with_suffix(".png")
        refuse_existing([out], args.overwrite, "choose another --out")
    mask = mri_mask(args.kind, tuple(args.shape), args.acceleration, args.center_fraction, args.seed)
    if not mask.any():
        raise InputError(
            f"a {args.shape[0]}x{args.shape[1]} {args.kind} mask at {args.acceleration:g}x samples "
            "nothing; use a larger --shape or a lower --acceleration"
        )
    realised = mask.size / mask.sum()
    print(
        f"{args.kind} mask {mask.shape[0]}x{mask.shape[1]}: requested {args.acceleration:g}x, "
        f"realised {realised:.3f}x ({int(mask.sum())} samples)"
    )
    if out:
        from .data.images import save_image

        save_image(out, mask.astype(np.float32))
        print(f"wrote {out}")
    return 0


def _cmd_phantom(args) -> int:
    from .data.phantom import write_phantom_dataset

    paths = write_phantom_dataset(
        args.out_dir,
        num_files=args.files,
        slices_per_file=args.slices,
        shape=(args.size, args.size),
        ncoils=args.coils,
        noise_std=args.noise,
        seed=args.seed,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(f"wrote {len(paths)} fastMRI-format file(s) to {args.out_dir}")
    return 0


def _cmd_info(args) -> int:
    import importlib
    import platform

    print(f"diffunfold {__version__} on Python {platform.python_version()} ({platform.machine()})")
    for module, extra in [
        ("numpy", "core"),
        ("onnxruntime", "core"),
        ("skimage", "core"),
        ("h5py", "core"),
        ("torch", "train"),
        ("onnx", "export"),
        ("cupy", "gpu"),
        ("tensorrt", "trt"),
        ("polygraphy", "trt"),
    ]:
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
    from .runtime.backends import available_backends as runtime_backends
    from .runtime.backends import cuda_available

    for device in ["cpu"] + (["cuda"] if cuda_available() else []):
        print(f"runtime backends on {device}:")
        for name, why in runtime_backends(None, device).items():
            print(f"  {name:12s} {why}")
    return 0


def _cmd_presets(args) -> int:
    from .training.config import load_config, preset_names
    from .training.model import DiffUnfolding

    print("| preset | data | size | K | shared | parameters | steps x batch |\n|---|---|---|---|---|---|---|")
    for name in preset_names():
        cfg = load_config(name)
        counts = DiffUnfolding(cfg.model).parameter_counts()
        print(
            f"| {name} | {cfg.data.source} | {cfg.data.size} | {cfg.model.stages} | {cfg.model.shared} | "
            f"{counts['total'] / 1e6:.2f}M | {cfg.train.steps} x {cfg.train.batch_size} |"
        )
    return 0


def _cmd_restore(args) -> int:
    from .restore import run_restore

    return run_restore(args)


def _cmd_mri(args) -> int:
    if args.ray is not None:  # several files, one batch on a Ray actor pool
        from .mri_cluster import run_mri_on_ray

        return run_mri_on_ray(args)
    from .mri import run_mri

    return run_mri(args)


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


class UsageError(InputError):
    """A malformed command line; the message is argparse's, on one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises (one line, exit status 2 from ``main``) instead of
    printing the usage and exiting, so every error reaches the user the same way."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diffunfold", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"diffunfold {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an unexpected error (also: DIFFUNFOLD_DEBUG=1; accepted anywhere on the line)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_tool_commands(sub)
    add_training_commands(sub)  # train, evaluate, export, build-engines: diffunfold.cli_training
    add_export_commands(sub)
    _add_runtime_commands(sub)
    from .data.cli import add_parser as add_data_parser

    add_data_parser(sub)
    from .data.scans_cli import add_parser as add_prepare_scans_parser

    add_prepare_scans_parser(sub)
    from .mrd.cli import add_parsers as add_mrd_parsers  # serve, send, mrd-phantom

    add_mrd_parsers(sub)
    return parser


def _add_tool_commands(sub) -> None:
    """selfcheck, tasks, mask, phantom, info, presets."""
    _add_selfcheck_command(sub)
    p = sub.add_parser(
        "tasks",
        help="list the tasks and their parameters",
        description="List the task names accepted by make_operator and the CLI, with their parameters and defaults.",
    )
    p.set_defaults(func=_cmd_tasks)
    _add_mask_command(sub)
    _add_phantom_command(sub)
    p = sub.add_parser(
        "info",
        help="versions and the backends present",
        description="Print versions of diffunfold's dependencies, which optional "
        "extras are installed and which backends can run here.",
    )
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser(
        "presets",
        help="the shipped training presets and their parameter counts",
        description="List the training presets (tiny, small, paper, mri-small) with their "
        "data, image size, K, and parameter count.",
    )
    p.set_defaults(func=_cmd_presets)


def _add_selfcheck_command(sub) -> None:
    p = sub.add_parser(
        "selfcheck",
        help="check every operator: adjoint, norm, backend agreement",
        description="Build every task's operator and check that its adjoint is exact "
        "(float64 and float32), that ||A|| <= 1 (power iteration) and that "
        "every array backend present (numpy, torch, CuPy) gives the same "
        "numbers; report the PSNR of the classical pinv on a held-out image.",
    )
    p.add_argument("--size", type=V.image_side(16, 1024), default=64, help="image side in pixels (default: 64)")
    p.add_argument("--backends", help="comma-separated subset of numpy,torch,cupy (default: all present)")
    p.add_argument("--no-images", action="store_true", help="skip the pinv PSNR on a bundled image")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_selfcheck)


def _add_mask_command(sub) -> None:
    p = sub.add_parser(
        "mask",
        help="make an MRI sampling mask and report its acceleration",
        description="Make a k-space sampling mask (phase encodes along the last axis, "
        "fastMRI's convention) and print the realised acceleration.",
    )
    p.add_argument("kind", choices=["uniform1d", "random1d", "gaussian1d", "gaussian2d"])
    p.add_argument("--shape", type=V.MASK_SIDE, nargs=2, default=[320, 320], metavar=("H", "W"))
    p.add_argument("--acceleration", type=V.ACCELERATION, default=4.0)
    p.add_argument(
        "--center-fraction",
        type=V.CENTER_FRACTION,
        default=None,
        help="fully sampled centre fraction (default: 0.32 / acceleration)",
    )
    p.add_argument("--seed", type=V.SEED, default=0)
    p.add_argument("--out", metavar="PNG", help="save the mask as an image")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_mask)


def _add_phantom_command(sub) -> None:
    p = sub.add_parser(
        "phantom",
        help="write synthetic multi-coil MRI data in the fastMRI format",
        description="Write random anatomical-looking ellipse phantoms, simulated with "
        "birdcage coils, as fastMRI multi-coil HDF5 files (kspace, "
        "reconstruction_rss, ismrmrd_header) that `FastMRISlices` reads.",
    )
    p.add_argument("out_dir", type=Path)
    p.add_argument("--files", type=V.Bounded(1, 10_000, integer=True), default=4)
    p.add_argument("--slices", type=V.Bounded(1, 1000, integer=True), default=8, help="slices per file")
    p.add_argument(
        "--size",
        type=V.Bounded(16, 2048, integer=True, meaning="pixels, even"),
        default=128,
        help="image side in pixels, even",
    )
    p.add_argument("--coils", type=V.COILS, default=15, help="simulated coils (the paper uses 15)")
    p.add_argument(
        "--noise",
        type=V.Bounded(0, 1e6),
        default=0.0,
        metavar="STD",
        help="std of the complex Gaussian noise added to each k-space sample, in the k-space's units "
        "(phantom magnitudes in [0, 1], orthonormal FFT; default 0)",
    )
    p.add_argument("--seed", type=V.SEED, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace existing phantom_NNNN.h5 files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_phantom)


def _add_runtime_commands(sub) -> None:
    """restore, mri, demo: the runtime on the user's files and on the bundled data."""
    from .mri import add_mri_arguments
    from .restore import add_restore_arguments

    p = sub.add_parser(
        "restore",
        help="restore an image file or folder with a model package",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_restore_arguments(p)
    p.set_defaults(func=_cmd_restore)

    p = sub.add_parser(
        "mri",
        help="reconstruct multi-coil MRI from a fastMRI-format file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_mri_arguments(p)
    p.set_defaults(func=_cmd_mri)

    from .demo import add_demo_arguments

    p = sub.add_parser(
        "demo",
        help="the bundled models on every task, against the classical baselines -> figures + table",
        description="Restore held-out data with the bundled model packages (samples/models/) through the "
        "runtime: Gaussian and anisotropic deblurring, SR x4, inpainting, motion blur (never "
        "trained on) and MRI (Gaussian 1-D 4x, Gaussian 2-D 8x). Writes one figure per task "
        "(measurement, classical baseline, Diff-Unfolding, uncertainty, ground truth, with "
        "PSNR/SSIM) and results.md / results.json. About 1.5 minutes on 2 CPU cores.",
        epilog="examples:\n  diffunfold demo\n  diffunfold demo --task sr_x4 --samples 8 --out demo-sr\n"
        "  diffunfold demo --device cuda:0   (ONNX Runtime on the GPU: needs onnxruntime-gpu and CuPy)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_demo_arguments(p)
    p.set_defaults(func=_cmd_demo)


EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _say(message: str) -> None:
    """One line on stderr, whatever the message holds."""
    print("; ".join(line.strip() for line in message.splitlines() if line.strip()), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done; 1 some inputs failed (the rest written) or an
    unexpected error; 2 a bad value or input, nothing done; 130 interrupted. No traceback
    reaches the user unless --debug or DIFFUNFOLD_DEBUG=1 asks for it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DIFFUNFOLD_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        return int(args.func(args) or 0)
    except UsageError as exc:
        _say(str(exc))
        return EXIT_USAGE
    except DiffUnfoldError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # commands that write say what they completed
        _say(
            f"interrupted: {exc}"
            if str(exc)
            else "interrupted; every output written so far is complete (each file is written whole or not at all)"
        )
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last guard: one line, not a traceback
        if debug:
            raise
        _say(
            f"error: unexpected {type(exc).__name__}: {exc or 'no message'} (rerun with --debug or "
            "DIFFUNFOLD_DEBUG=1 for the traceback, and report it if the input looks right)"
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

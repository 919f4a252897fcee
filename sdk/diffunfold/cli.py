"""The ``diffunfold`` command line. Each subcommand is a thin shell over the library."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from . import cli_values as V
from .errors import DiffUnfoldError, InputError
from .safe_io import refuse_existing, refuse_nonempty_folder, write_json

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
  diffunfold evaluate runs/small --task gaussian_blur sigma=2 --task sr factor=4
  diffunfold export runs/small --out models/small      (EMA weights -> ONNX model package)
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
        raise InputError(f"a {args.shape[0]}x{args.shape[1]} {args.kind} mask at {args.acceleration:g}x samples "
                         "nothing; use a larger --shape or a lower --acceleration")
    realised = mask.size / mask.sum()
    print(f"{args.kind} mask {mask.shape[0]}x{mask.shape[1]}: requested {args.acceleration:g}x, "
          f"realised {realised:.3f}x ({int(mask.sum())} samples)")
    if out:
        from .data.images import save_image

        save_image(out, mask.astype(np.float32))
        print(f"wrote {out}")
    return 0


def _cmd_phantom(args) -> int:
    from .data.phantom import write_phantom_dataset

    paths = write_phantom_dataset(args.out_dir, num_files=args.files, slices_per_file=args.slices,
                                  shape=(args.size, args.size), ncoils=args.coils, noise_std=args.noise,
                                  seed=args.seed, progress=not args.quiet, overwrite=args.overwrite)
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
    from .runtime.backends import available_backends as runtime_backends, cuda_available

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
        print(f"| {name} | {cfg.data.source} | {cfg.data.size} | {cfg.model.stages} | {cfg.model.shared} | "
              f"{counts['total'] / 1e6:.2f}M | {cfg.train.steps} x {cfg.train.batch_size} |")
    return 0


def _cmd_train(args) -> int:
    from .training.config import load_config
    from .training.trainer import train

    overrides = list(args.set or [])
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.device is not None:
        overrides.append(f'train.device="{args.device}"')
    cfg = load_config(args.config, overrides)
    _check_train_folder(Path(args.out or cfg.out_dir), args.resume, args.overwrite)
    try:
        summary = train(cfg, out_dir=args.out, resume=args.resume, progress=not args.quiet)
    except KeyboardInterrupt:
        from .training.checkpoint import latest_checkpoint

        out = Path(args.out or cfg.out_dir)
        last = latest_checkpoint(out / "checkpoints")
        print(f"\ninterrupted; newest complete checkpoint: {last or 'none'}"
              + ("; continue with the same command plus --resume" if last else ""), file=sys.stderr)
        return 130
    print(f"trained to step {summary['steps']} in {summary['seconds']:.0f} s; last loss {summary['loss']:.4f}; "
          f"checkpoint {summary['checkpoint']}")
    return 0


def _check_train_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """A new run needs an empty folder; --overwrite starts afresh over the logs of a run that
    never reached a checkpoint (a run with checkpoints is continued with --resume, never erased)."""
    if resume or int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 owns the folder
        return
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file, not a folder; give a folder for the run")
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        raise InputError(f"{ckpts} already holds checkpoints; pass --resume to continue that run, or choose "
                         "another --out (diffunfold never deletes a trained run)")
    refuse_nonempty_folder(out, overwrite, how="pass --resume to continue a run there, --overwrite to start a "
                       "new one over its logs, or choose another --out")
    for name in ("log.csv", "val.csv"):  # appended to: an earlier attempt's rows would mix in
        (out / name).unlink(missing_ok=True)


def _cmd_evaluate(args) -> int:
    from .training.checkpoint import load_model
    from .training.config import TrainConfig
    from .training.data import validation_set
    from .training.evaluate import evaluate, format_rows

    refuse_existing([args.json] if args.json else [], args.overwrite, "choose another --json")
    model, meta = load_model(args.checkpoint, weights=args.weights, device=args.device)
    cfg = TrainConfig.from_dict(meta["config"])
    if args.size:
        cfg.data.size = args.size
    cfg.val.images = args.images
    held_out = validation_set(cfg)
    if held_out is None:
        raise DiffUnfoldError("this run has no held-out images (fastMRI without data.val_path)")
    images, maps = held_out
    tasks = args.task or list(cfg.val.tasks)
    noise = cfg.val.noise if args.noise is None else args.noise
    print(f"evaluating {args.checkpoint} (step {meta['step']}, {args.weights} weights) on {len(images)} held-out "
          f"image(s) at {images.shape[-1]} px, noise {noise}, {args.steps} steps {args.sampler}")
    rows = evaluate(model, images, tasks, noise, args.steps, args.sampler, args.seed, coil_maps=maps,
                    samples=args.samples, progress=not args.quiet)
    print(format_rows(rows))
    if args.json:
        write_json(args.json, {"checkpoint": str(args.checkpoint), "step": meta["step"], "noise": noise,
                               "steps": args.steps, "sampler": args.sampler, "samples": args.samples,
                               "images": int(len(images)), "rows": rows})
        print(f"wrote {args.json}")
    return 0


def _cmd_export(args) -> int:
    from .errors import require

    require("torch", "export")
    require("onnx", "export")
    from .export import export_checkpoint

    refuse_nonempty_folder(args.out, args.overwrite)

    pkg = export_checkpoint(args.checkpoint, args.out, weights=args.weights, opset=args.opset,
                            torch_weights=not args.no_torch_weights, fp16_weights=args.fp16_weights,
                            check=not args.no_check,
                            tolerance=args.tolerance, overwrite=args.overwrite,
                            churn=V.churn_setting(args.churn, args.churn_range),
                            ensemble=args.ensemble or "none", contrast=args.contrast)
    print(pkg.summary())
    return 0


def _cmd_build_engines(args) -> int:
    from .engines import run_build_engines

    return run_build_engines(args)


def _cmd_restore(args) -> int:
    from .restore import run_restore

    return run_restore(args)


def _cmd_mri(args) -> int:
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
    parser = _Parser(prog="diffunfold", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"diffunfold {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error (also: DIFFUNFOLD_DEBUG=1; accepted "
                             "anywhere on the line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_tool_commands(sub)
    _add_training_commands(sub)
    _add_export_commands(sub)
    _add_runtime_commands(sub)
    from .data.cli import add_parser as add_data_parser
    add_data_parser(sub)
    from .mrd.cli import add_parsers as add_mrd_parsers  # serve, send, mrd-phantom
    add_mrd_parsers(sub)
    return parser


def _add_tool_commands(sub) -> None:
    """selfcheck, tasks, mask, phantom, info, presets."""
    p = sub.add_parser("selfcheck", help="check every operator: adjoint, norm, backend agreement",
                       description="Build every task's operator and check that its adjoint is exact "
                                   "(float64 and float32), that ||A|| <= 1 (power iteration) and that "
                                   "every array backend present (numpy, torch, CuPy) gives the same "
                                   "numbers; report the PSNR of the classical pinv on a held-out image.")
    p.add_argument("--size", type=V.image_side(16, 1024), default=64, help="image side in pixels (default: 64)")
    p.add_argument("--backends", help="comma-separated subset of numpy,torch,cupy (default: all present)")
    p.add_argument("--no-images", action="store_true", help="skip the pinv PSNR on a bundled image")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
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
    p.add_argument("--shape", type=V.MASK_SIDE, nargs=2, default=[320, 320], metavar=("H", "W"))
    p.add_argument("--acceleration", type=V.ACCELERATION, default=4.0)
    p.add_argument("--center-fraction", type=V.CENTER_FRACTION, default=None,
                   help="fully sampled centre fraction (default: 0.32 / acceleration)")
    p.add_argument("--seed", type=V.SEED, default=0)
    p.add_argument("--out", metavar="PNG", help="save the mask as an image")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_mask)

    p = sub.add_parser("phantom", help="write synthetic multi-coil MRI data in the fastMRI format",
                       description="Write random anatomical-looking ellipse phantoms, simulated with "
                                   "birdcage coils, as fastMRI multi-coil HDF5 files (kspace, "
                                   "reconstruction_rss, ismrmrd_header) that `FastMRISlices` reads.")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--files", type=V.Bounded(1, 10_000, integer=True), default=4)
    p.add_argument("--slices", type=V.Bounded(1, 1000, integer=True), default=8, help="slices per file")
    p.add_argument("--size", type=V.Bounded(16, 2048, integer=True, meaning="pixels, even"), default=128,
                   help="image side in pixels, even")
    p.add_argument("--coils", type=V.COILS, default=15, help="simulated coils (the paper uses 15)")
    p.add_argument("--noise", type=V.Bounded(0, 1e6), default=0.0, metavar="STD",
                   help="std of the complex Gaussian noise added to each k-space sample, in the k-space's units "
                        "(phantom magnitudes in [0, 1], orthonormal FFT; default 0)")
    p.add_argument("--seed", type=V.SEED, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace existing phantom_NNNN.h5 files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("info", help="versions and the backends present",
                       description="Print versions of diffunfold's dependencies, which optional "
                                   "extras are installed and which backends can run here.")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("presets", help="the shipped training presets and their parameter counts",
                       description="List the training presets (tiny, small, paper, mri-small) with their "
                                   "data, image size, K, and parameter count.")
    p.set_defaults(func=_cmd_presets)


def _add_training_commands(sub) -> None:
    """train, evaluate."""
    p = sub.add_parser(
        "train", help="train a Diff-Unfolding model (needs the train extra)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the unfolded posterior denoiser with the uncertainty-weighted EDM loss: a random "
                    "task per batch, Adam, EMA, gradient clipping, periodic validation PSNR on held-out "
                    "images, atomic checkpoints. Output folder: config.json, log.csv, val.csv, "
                    "checkpoints/ckpt-<step>.{safetensors,json}.\n\n"
                    "Several processes (GPUs or nodes): launch with torchrun, e.g.\n"
                    "  torchrun --nproc_per_node=4 -m diffunfold train --config paper --out runs/paper")
    p.add_argument("--config", required=True,
                   help="a preset name (tiny, small, paper, mri-small; see `diffunfold presets`) or a "
                        ".toml/.yaml file with [model], [data], [train], [val] tables")
    p.add_argument("--set", action="append", metavar="TABLE.KEY=VALUE",
                   help="override one setting, TOML value syntax, e.g. --set train.steps=2000 "
                        "--set data.source='\"folder\"' --set data.path=/data/imgs (repeatable)")
    p.add_argument("--out", help="output folder (default: the config's out_dir, runs/<preset>)")
    p.add_argument("--steps", type=V.Bounded(1, 10**9, integer=True), help="shortcut for --set train.steps=N")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the config's, auto)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in the output folder (exactly: same "
                        "batches, optimizer and EMA state)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a folder that holds files but no checkpoint (its logs are replaced)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate", help="score a checkpoint on held-out images against pinv and a classical baseline",
        description="Restore the run's held-out images (bundled: astronaut, camera, chelsea, coffee) "
                    "for each task with the torch reference sampler, and print PSNR/SSIM for the model, the "
                    "operator's pinv and the classical baseline (Wiener for blur).")
    p.add_argument("checkpoint", help="a run folder (its newest checkpoint) or a ckpt-*.json file")
    p.add_argument("--task", action=V.TaskAction, append=True, nargs="+", metavar="WORD",
                   help="a task and its parameters, e.g. --task sr factor=4 (repeatable; default: the "
                        "run's validation tasks)")
    p.add_argument("--noise", type=V.NOISE, metavar="STD",
                   help="std of the Gaussian noise added to the measurements, in the data's units (images in "
                        "[0, 1]; MRI runs: the k-space of the normalised slices; default: the run's val.noise)")
    p.add_argument("--steps", type=V.STEPS, default=18, help="sampler steps (default 18, the paper's NFE)")
    p.add_argument("--sampler", choices=["euler", "heun"], default="euler")
    p.add_argument("--samples", type=V.SAMPLES, default=1,
                   help="posterior samples per image; >1 scores their mean (default 1: one sample)")
    p.add_argument("--size", type=V.image_side(16), help="image size (default: the training size)")
    p.add_argument("--images", type=V.COUNT, default=5, help="at most this many held-out images")
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--seed", type=V.SEED, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)


def _add_export_commands(sub) -> None:
    """export, build-engines: from a checkpoint to what the runtime loads."""
    p = sub.add_parser(
        "export", help="a checkpoint -> a model package (ONNX + manifest) for the runtime",
        description="Export a training checkpoint's EMA weights as a model package: the regulariser "
                    "network(s) as ONNX with the EDM preconditioning inside the graph and dynamic batch, "
                    "height and width, the weight generators as ONNX, and a manifest with the model "
                    "settings, trained tasks, default schedule and the sha256 of every file. The export "
                    "checks itself: ONNX Runtime against torch on random inputs at two sizes.",
        epilog="example: diffunfold export runs/small --out models/small")
    p.add_argument("checkpoint", help="a run folder (its newest checkpoint) or a ckpt-*.json file")
    p.add_argument("--out", required=True, help="the package folder to write (must not exist, or be empty)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema",
                   help="which weights to export (default: ema, the ones to deploy)")
    p.add_argument("--opset", type=V.Bounded(13, 30, integer=True), default=17, help="ONNX opset (default 17)")
    p.add_argument("--tolerance", type=V.Bounded(0, 1, lo_open=True), default=1e-4,
                   help="largest relative error ONNX Runtime vs torch accepted (default 1e-4)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs torch check")
    p.add_argument("--no-torch-weights", action="store_true",
                   help="leave out model.safetensors (then the torch backend cannot load the package)")
    p.add_argument("--fp16-weights", action="store_true",
                   help="round the weights to float16 and store them so: half the size, still computed in "
                        "float32 (the bundled demo packages use it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package folder")
    V.add_churn_arguments(p, "the sampler the package asks for: EDM's stochastic sampler with this S_churn "
                           "(default 0, the deterministic ODE); the runtime uses it unless told otherwise")
    V.add_ensemble_argument(p, "the self-ensemble the package asks for: flips gives posterior sample j's "
                               "regulariser the j-th of four flips of the image (free with --samples > 1); "
                               "default none")
    V.add_contrast_argument(p, "the contrast handling the package asks for (image models): stretch restores "
                               "a flat image (std below 0.09, estimated from the measurement) at a photo's contrast "
                               "(0.15) and maps the result back, exactly through the physics; colour: also each "
                               "colour channel's level to mid-grey and back; default none")
    p.set_defaults(func=_cmd_export)

    from .engines import add_build_engines_arguments

    p = sub.add_parser("build-engines", help="build FP16 TensorRT engines of a package for a GPU target")
    add_build_engines_arguments(p)  # sets the description, epilog and options
    p.set_defaults(func=_cmd_build_engines)


def _add_runtime_commands(sub) -> None:
    """restore, mri, demo: the runtime on the user's files and on the bundled data."""
    from .mri import add_mri_arguments
    from .restore import add_restore_arguments

    p = sub.add_parser("restore", help="restore an image file or folder with a model package",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_restore_arguments(p)
    p.set_defaults(func=_cmd_restore)

    p = sub.add_parser("mri", help="reconstruct multi-coil MRI from a fastMRI-format file",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mri_arguments(p)
    p.set_defaults(func=_cmd_mri)

    from .demo import add_demo_arguments

    p = sub.add_parser(
        "demo", help="the bundled models on every task, against the classical baselines -> figures + table",
        description="Restore held-out data with the bundled model packages (samples/models/) through the "
                    "runtime: Gaussian and anisotropic deblurring, SR x4, inpainting, motion blur (never "
                    "trained on) and MRI (Gaussian 1-D 4x, Gaussian 2-D 8x). Writes one figure per task "
                    "(measurement, classical baseline, Diff-Unfolding, uncertainty, ground truth, with "
                    "PSNR/SSIM) and results.md / results.json. About 1.5 minutes on 2 CPU cores.",
        epilog="examples:\n  diffunfold demo\n  diffunfold demo --task sr_x4 --samples 8 --out demo-sr\n"
               "  diffunfold demo --device cuda:0   (ONNX Runtime on the GPU: needs onnxruntime-gpu and CuPy)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
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
        _say(f"interrupted: {exc}" if str(exc) else
             "interrupted; every output written so far is complete (each file is written whole or not at all)")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last guard: one line, not a traceback
        if debug:
            raise
        _say(f"error: unexpected {type(exc).__name__}: {exc or 'no message'} (rerun with --debug or "
             "DIFFUNFOLD_DEBUG=1 for the traceback, and report it if the input looks right)")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

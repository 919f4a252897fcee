"""The commands from training data to a model package: ``train``, ``evaluate``, ``export``,
``add-torch-weights`` and ``build-engines`` (their parsers and their thin shells over the
library). ``diffunfold.cli`` adds them to the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import cli_values as V
from . import edm
from .errors import DiffUnfoldError, InputError
from .safe_io import refuse_existing, refuse_nonempty_folder, write_json


def add_training_commands(sub) -> None:
    """train, evaluate."""
    _add_train_command(sub)
    _add_evaluate_command(sub)


def _add_train_command(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a Diff-Unfolding model (needs the train extra)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the unfolded posterior denoiser with the uncertainty-weighted EDM loss: a random "
        "task per batch, Adam, EMA, gradient clipping, periodic validation PSNR on held-out "
        "images, atomic checkpoints. Output folder: config.json, log.csv, val.csv, "
        "checkpoints/ckpt-<step>.{safetensors,json}.\n\n"
        "Several processes (GPUs or nodes): launch with torchrun, e.g.\n"
        "  torchrun --nproc_per_node=4 -m diffunfold train --config paper --out runs/paper",
    )
    p.add_argument(
        "--config",
        required=True,
        help="a preset name (tiny, small, paper, mri-small; see `diffunfold presets`) or a "
        ".toml/.yaml file with [model], [data], [train], [val] tables",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="TABLE.KEY=VALUE",
        help="override one setting, TOML value syntax, e.g. --set train.steps=2000 "
        "--set data.source='\"folder\"' --set data.path=/data/imgs (repeatable)",
    )
    p.add_argument("--out", help="output folder (default: the config's out_dir, runs/<preset>)")
    p.add_argument("--steps", type=V.Bounded(1, 10**9, integer=True), help="shortcut for --set train.steps=N")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the config's, auto)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in the output folder (exactly: same "
        "batches, optimizer and EMA state)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a folder that holds files but no checkpoint (its logs are replaced)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _add_evaluate_command(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a checkpoint on held-out images against pinv and a classical baseline",
        description="Restore the run's held-out images (bundled: astronaut, camera, chelsea, coffee) "
        "for each task with the torch reference sampler, and print PSNR/SSIM for the model, the "
        "operator's pinv and the classical baseline (Wiener for blur).",
    )
    p.add_argument("checkpoint", help="a run folder (its newest checkpoint) or a ckpt-*.json file")
    p.add_argument(
        "--task",
        action=V.TaskAction,
        append=True,
        nargs="+",
        metavar="WORD",
        help="a task and its parameters, e.g. --task sr factor=4 (repeatable; default: the run's validation tasks)",
    )
    p.add_argument(
        "--noise",
        type=V.NOISE,
        metavar="STD",
        help="std of the Gaussian noise added to the measurements, in the data's units (images in "
        "[0, 1]; MRI runs: the k-space of the normalised slices; default: the run's val.noise)",
    )
    p.add_argument("--steps", type=V.STEPS, default=18, help="sampler steps (default 18, the paper's NFE)")
    p.add_argument(
        "--sampler",
        choices=edm.SAMPLERS,
        default="euler",
        help="sampler (native: the model's formulation's own ODE solver, EDM's Table 1; ancestral: DDPM's "
        "stochastic sampler; pc: the score-SDE paper's predictor-corrector; default euler)",
    )
    p.add_argument(
        "--samples",
        type=V.SAMPLES,
        default=1,
        help="posterior samples per image; >1 scores their mean (default 1: one sample)",
    )
    p.add_argument("--size", type=V.image_side(16), help="image size (default: the training size)")
    p.add_argument("--images", type=V.COUNT, default=5, help="at most this many held-out images")
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--seed", type=V.SEED, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)


def add_export_commands(sub) -> None:
    """export, add-torch-weights, build-engines: from a checkpoint to what the runtime loads."""
    _add_export_command(sub)
    _add_torch_weights_command(sub)

    from .engines import add_build_engines_arguments

    p = sub.add_parser("build-engines", help="build FP16 TensorRT engines of a package for a GPU target")
    add_build_engines_arguments(p)  # sets the description, epilog and options
    p.set_defaults(func=_cmd_build_engines)


def _add_export_command(sub) -> None:
    p = sub.add_parser(
        "export",
        help="a checkpoint -> a model package (ONNX + manifest) for the runtime",
        description="Export a training checkpoint's EMA weights as a model package: the regulariser "
        "network(s) as ONNX with the preconditioning (the model's formulation, EDM by default) "
        "inside the graph and dynamic batch, "
        "height and width, the weight generators as ONNX, and a manifest with the model "
        "settings, trained tasks, default schedule and the sha256 of every file. The export "
        "checks itself: ONNX Runtime against torch on random inputs at two sizes.",
        epilog="example: diffunfold export runs/small --out models/small",
    )
    p.add_argument("checkpoint", help="a run folder (its newest checkpoint) or a ckpt-*.json file")
    p.add_argument("--out", required=True, help="the package folder to write (must not exist, or be empty)")
    p.add_argument(
        "--weights",
        choices=["ema", "model"],
        default="ema",
        help="which weights to export (default: ema, the ones to deploy)",
    )
    p.add_argument("--opset", type=V.Bounded(13, 30, integer=True), default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--tolerance",
        type=V.Bounded(0, 1, lo_open=True),
        default=1e-4,
        help="largest relative error ONNX Runtime vs torch accepted (default 1e-4)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs torch check")
    p.add_argument(
        "--no-torch-weights",
        action="store_true",
        help="leave out model.safetensors (then the torch backend cannot load the package)",
    )
    p.add_argument(
        "--fp16-weights",
        action="store_true",
        help="round the weights to float16 and store them so: half the size, still computed in "
        "float32 (the bundled demo packages use it)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing package folder")
    _add_package_sampling_arguments(p)
    p.set_defaults(func=_cmd_export)


TORCH_WEIGHTS_HELP = """\
Add model.safetensors to a model package exported with --no-torch-weights (the bundled
samples/models/* are), so that the torch backend (backend="torch") can load it: the GPU path
on machines where neither TensorRT nor ONNX Runtime CUDA can be installed.

The weights are read back from the package's own ONNX graphs and stored as the export
stores them (parameters in float16 for a float16 package, buffers as they are); the ONNX
files are not changed. Before anything is final, the torch model rebuilt from the new file
is run against the package's ONNX graphs in ONNX Runtime on random inputs (every stage of
every regulariser at two sizes, the weight generators over the noise levels) and must agree
within --tolerance (max|onnx - torch| / max|onnx|; both hold the same float16 weights, so
about 1e-6 is usual). Only then is the file renamed into place (it is written to a hidden
temporary file in the package folder first) and manifest.json rewritten: networks.torch_weights,
the file's sha256 and size, the manifest's own digest.

Refused: a package that already has model.safetensors (unless --overwrite), and a package
folder, manifest or member file that is a symbolic link (copy the real files in)."""

TORCH_WEIGHTS_EXAMPLES = """\
examples:
  diffunfold add-torch-weights samples/models/image-small
  cp -r samples/models/mri-small /tmp/mri-small && diffunfold add-torch-weights /tmp/mri-small
then, in Python:
  Solver.load("/tmp/mri-small", backend="torch", device="cuda", precision="fp16", cuda_graphs=True)"""


def _add_torch_weights_command(sub) -> None:
    p = sub.add_parser(
        "add-torch-weights",
        help="give a package exported without model.safetensors the torch backend's weights",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=TORCH_WEIGHTS_HELP,
        epilog=TORCH_WEIGHTS_EXAMPLES,
    )
    p.add_argument("package", help="the model package folder (it is changed in place)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model.safetensors")
    p.add_argument(
        "--tolerance",
        type=V.Bounded(0, 1, lo_open=True),
        default=1e-4,
        help="largest relative error torch vs ONNX Runtime accepted (default 1e-4)",
    )
    p.set_defaults(func=_cmd_add_torch_weights)


def _add_package_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """What the package asks the runtime for: the sampler and its churn, the self-ensemble, the contrast."""
    p.add_argument(
        "--sampler",
        choices=edm.SAMPLERS,
        default="euler",
        help="the sampler the package asks for (default euler; ancestral: DDPM's stochastic sampler, "
        "what the bundled packages ask for); the runtime uses it unless told otherwise",
    )
    V.add_churn_arguments(
        p,
        "the sampler the package asks for: EDM's stochastic sampler with this S_churn "
        "(default 0, the deterministic ODE); the runtime uses it unless told otherwise",
    )
    V.add_ensemble_argument(
        p,
        "the self-ensemble the package asks for: flips gives posterior sample j's "
        "regulariser the j-th of four flips of the image (free with --samples > 1); "
        "default none",
    )
    V.add_contrast_argument(
        p,
        "the contrast handling the package asks for (image models): stretch restores "
        "a flat image (std below 0.09, estimated from the measurement) at a photo's contrast "
        "(0.15) and maps the result back, exactly through the physics; colour: also each "
        "colour channel's level to mid-grey and back; default none",
    )


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
        print(
            f"\ninterrupted; newest complete checkpoint: {last or 'none'}"
            + ("; continue with the same command plus --resume" if last else ""),
            file=sys.stderr,
        )
        return 130
    print(
        f"trained to step {summary['steps']} in {summary['seconds']:.0f} s; last loss {summary['loss']:.4f}; "
        f"checkpoint {summary['checkpoint']}"
    )
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
        raise InputError(
            f"{ckpts} already holds checkpoints; pass --resume to continue that run, or choose "
            "another --out (diffunfold never deletes a trained run)"
        )
    refuse_nonempty_folder(
        out,
        overwrite,
        how="pass --resume to continue a run there, --overwrite to start a "
        "new one over its logs, or choose another --out",
    )
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
    print(
        f"evaluating {args.checkpoint} (step {meta['step']}, {args.weights} weights) on {len(images)} held-out "
        f"image(s) at {images.shape[-1]} px, noise {noise}, {args.steps} steps {args.sampler}"
    )
    rows = evaluate(
        model,
        images,
        tasks,
        noise,
        args.steps,
        args.sampler,
        args.seed,
        coil_maps=maps,
        samples=args.samples,
        progress=not args.quiet,
    )
    print(format_rows(rows))
    if args.json:
        write_json(
            args.json,
            {
                "checkpoint": str(args.checkpoint),
                "step": meta["step"],
                "noise": noise,
                "steps": args.steps,
                "sampler": args.sampler,
                "samples": args.samples,
                "images": int(len(images)),
                "rows": rows,
            },
        )
        print(f"wrote {args.json}")
    return 0


def _cmd_export(args) -> int:
    from .errors import require

    require("torch", "export")
    require("onnx", "export")
    from .export import export_checkpoint

    refuse_nonempty_folder(args.out, args.overwrite)

    pkg = export_checkpoint(
        args.checkpoint,
        args.out,
        weights=args.weights,
        opset=args.opset,
        torch_weights=not args.no_torch_weights,
        fp16_weights=args.fp16_weights,
        check=not args.no_check,
        tolerance=args.tolerance,
        overwrite=args.overwrite,
        churn=V.churn_setting(args.churn, args.churn_range),
        ensemble=args.ensemble or "none",
        contrast=args.contrast,
        sampler=args.sampler,
    )
    print(pkg.summary())
    return 0


def _cmd_add_torch_weights(args) -> int:
    from .errors import require

    require("torch", "export")
    require("onnx", "export")
    from .export.torch_weights import add_torch_weights

    pkg, _ = add_torch_weights(args.package, overwrite=args.overwrite, tolerance=args.tolerance)
    print(pkg.summary())
    return 0


def _cmd_build_engines(args) -> int:
    from .engines import run_build_engines

    return run_build_engines(args)

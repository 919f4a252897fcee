"""``diffunfold restore``: image files restored with a model package, on the torch-free
runtime (:class:`diffunfold.runtime.Solver`). ``diffunfold mri`` lives in :mod:`diffunfold.mri`;
what both share in :mod:`diffunfold.command_common`.

Nothing here imports torch, and nothing from ``diffunfold.training``: the CLI imports this module
to build its parser, and the restore path must run where only the core extra is installed.
Heavy imports (numpy, the runtime, PIL) happen inside the ``run_*`` functions, so that
``diffunfold --help`` stays quick.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from . import cli_values as V
from .batch import Unit, check_outputs, finish, refuse_if_nothing_done, run_units
from .cluster import add_cluster_arguments, run_units_on_ray
from .command_common import (
    add_runtime_arguments,
    load_solver,
    progress_bar,
)
from .errors import InputError
from .restore_inputs import (
    base_names,
    centre_crop_multiple,
    check_mask_shape,
    collect_inputs,
    load_mask,
    read_header,
    task_default,
    task_label,
    trained_note,
)
from .restore_report import restore_report

RESTORE_DESCRIPTION = """\
Restore images with a model package (`diffunfold export` wrote it), on the torch-free runtime:
ONNX Runtime on a CPU, TensorRT / ONNX Runtime CUDA on a GPU (--backend auto picks the fastest
one present and says why).

Two modes:
  simulate (default)  INPUT is a clean image. It is measured with the task's operator plus
                      Gaussian noise of std --noise (seeded per image: image i uses --seed + i),
                      restored, and scored (PSNR/SSIM, data range 1) against the clean image,
                      next to the classical baseline (Wiener for blurs, pinv for SR, normalised
                      convolution for inpainting). Use it to see what the model can do.
  measured            INPUT is the degraded image itself (blurry photo, low-resolution image,
                      image with holes). It is restored; there is no ground truth, so no scores.
                      For sr the output is factor x larger than the input; for inpainting the
                      mask of observed pixels must be given: mask=FILE.png (white = observed).

The physics is outside the network, so a task (or parameter) the package was not trained on
usually still works: it is allowed, with a note.
"""

RESTORE_EPILOG = """\
examples:
  simulate (INPUT is clean; measure, restore, score against it):
    diffunfold restore models/natural photo.png --task gaussian_blur sigma=2 --noise 0.05
    diffunfold restore models/natural photos/ --task sr factor=4 --size 256 --out sr/ --json sr.json
    diffunfold restore models/natural photo.png --task inpainting missing=0.6 --samples 8
                      (the mean of 8 posterior samples, and a per-pixel std map)
    diffunfold restore models/natural photo.png --task motion_blur length=9 angle=0.5 --steps 30 --sampler heun
  measured (INPUT is the degraded image; no scores):
    diffunfold restore models/natural blurry.jpg --mode measured --task gaussian_blur sigma=2.5 --noise 0.02
    diffunfold restore models/natural small.png --mode measured --task sr factor=4       (4x larger output)
    diffunfold restore models/natural holes.png --mode measured --task inpainting mask=holes_mask.png

tasks (`diffunfold tasks` lists every parameter and default):
  gaussian_blur sigma=3            anisotropic_blur sigma=[4,1.5] angle=0.785
  motion_blur length=9 angle=0.52  sr factor=4 kernel=box|bicubic
  inpainting missing=0.4 seed=0    inpainting mask=FILE.png      box_inpainting size=0.4
  Values are TOML: numbers, [lists], strings. Give the INPUTs before --task: its words run
  to the next option.

outputs (in --out, default restored/; never the inputs' folder; existing files are kept unless
--overwrite):
  NAME_restored.png   the restoration (the posterior mean with --samples > 1)
  NAME_baseline.png   the classical baseline
  NAME_measured.png   the simulated measurement (simulate mode; for sr the low-resolution image)
  NAME_std.png        per-pixel std over the samples, scaled to its maximum (--samples > 1)
  and a Markdown table on stdout (--json FILE: the same as JSON, with the timings).
"""


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``diffunfold restore``."""
    parser.description = RESTORE_DESCRIPTION
    parser.epilog = RESTORE_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("package", help="a model package folder (written by `diffunfold export`)")
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, or folders of images (png, jpg, tif, ...; not searched recursively)",
    )
    parser.add_argument(
        "--task",
        action=V.TaskAction,
        nargs="+",
        required=True,
        metavar="WORD",
        help="the task and its parameters, e.g. --task gaussian_blur sigma=2 or --task sr factor=4",
    )
    parser.add_argument(
        "--mode",
        choices=["simulate", "measured"],
        default="simulate",
        help="simulate: INPUT is clean, measure it and score the restoration (default); "
        "measured: INPUT is the degraded measurement, no scores",
    )
    parser.add_argument(
        "--noise",
        type=V.NOISE,
        default=None,
        metavar="STD",
        help="simulate: std of the Gaussian noise added to the measurement (images in [0, 1]; "
        "default 0.05); measured: the noise std in INPUT, which a noise-aware model and "
        "the Wiener baseline weigh the data by (default: estimated from INPUT, and said so)",
    )
    parser.add_argument(
        "--size",
        type=V.image_side(8),
        metavar="N",
        help="simulate mode: centre-crop each image to a square and resize it to NxN first "
        "(default: native size; any size works, the solver pads)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("restored"),
        help="output folder (default: restored/; never the inputs' folder)",
    )
    add_runtime_arguments(parser)
    _add_image_sampling_arguments(parser)
    add_cluster_arguments(parser, "One task is one image file.")


def _add_image_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only image packages take: the schedule and the contrast stretch."""
    parser.add_argument(
        "--schedule",
        choices=["fast", "full"],
        help="fast: a few steps from the classical estimate (image-small: 6 steps, 22 network calls, "
        "18 where sigma_y >= 0.01 up to 128 px); "
        "full: EDM's 18 steps from pure noise (72 calls), the paper's sampler (default: the package's, "
        "fast where its manifest has it); --steps and --sampler change either",
    )
    V.add_contrast_argument(
        parser,
        "stretch: a flat image (std below 0.09, estimated from the measurement) is "
        "restored at a photo's contrast (0.15) and mapped back, exactly through the "
        "physics; colour: also each colour channel's level moved to mid-grey and back "
        "(removes a colour cast); none: as it is (default: the package's)",
    )


# -- one image at a time --------------------------------------------------------------------


def _restore_task(args) -> tuple[str, dict, Any, int]:
    """The task (checked as --task was parsed), what the mode allows of it, its mask and SR factor."""
    params = {k: v for k, v in args.task.items() if k != "task"}
    name = args.task["task"]
    if name == "mri":
        raise InputError(
            "the mri task takes multi-coil k-space, not image files: use "
            "`diffunfold mri PACKAGE FILE.h5` with an MRI package"
        )
    measured = args.mode == "measured"
    if measured and args.size is not None:
        raise InputError(
            "--size resizes the clean image in simulate mode; a measurement cannot be resized "
            "without changing its physics (blur width, SR factor): crop it beforehand instead"
        )
    if measured and name == "box_inpainting":
        raise InputError(
            "measured box inpainting would invent where the hole is and replace the real pixels "
            "there: give the mask of observed pixels with --task inpainting mask=FILE.png "
            "(white = observed, black = missing)"
        )
    mask = load_mask(params["mask"]) if "mask" in params else None
    if measured and name == "inpainting" and mask is None:
        raise InputError(
            "measured inpainting needs the mask of observed pixels: add mask=FILE.png to --task "
            "(white = observed, black = missing); a random mask (missing=, seed=) cannot describe "
            "a real measurement"
        )
    factor = int(params.get("factor", task_default("sr", "factor"))) if name == "sr" else 1
    return name, params, mask, factor


def _readable_inputs(args, factor: int):
    """The inputs whose header reads, with their index (image i uses seed + i), their folders,
    (file, reason) of those that do not, and the first one's operator grid. All unreadable, or
    a factor too large: refused."""
    files, input_dirs = collect_inputs(args.inputs)
    readable, unreadable, first_shape = [], [], None
    for i, f in enumerate(files):
        try:
            h, w = read_header(f)
        except InputError as exc:
            unreadable.append((str(f), str(exc)))
            continue
        side = args.size or min(h, w)
        if args.mode == "simulate" and factor > side:
            raise InputError(
                f"the SR factor {factor} is too large for {f} ({h}x{w}"
                f"{f', --size {args.size}' if args.size else ''}): at most {side} here, so that "
                "the low-resolution image keeps at least one pixel per side"
            )
        readable.append((i, f))
        first_shape = first_shape or _operator_shape(args, (h, w), factor)
    if not readable:
        more = f" (and {len(unreadable) - 1} more unreadable inputs)" if len(unreadable) > 1 else ""
        raise InputError(unreadable[0][1] + more)
    return readable, input_dirs, unreadable, first_shape


def _output_suffix(path: Path, kind: str) -> str:
    """The images keep a TIFF input's format (its depth, or its float values); the rest is PNG."""
    from .data.image_io import TIFF_SUFFIXES

    return ".tif" if kind != "std" and path.suffix.lower() in TIFF_SUFFIXES else ".png"


def _operator_shape(args, hw: tuple[int, int], factor: int) -> tuple[int, int]:
    """The image grid the task's operator acts on for an input of size ``hw``."""
    if args.mode == "measured":
        return hw[0] * factor, hw[1] * factor
    h, w = (args.size, args.size) if args.size else hw
    return h - h % factor, w - w % factor


@dataclass
class _Job:
    """What every image of one restore run shares."""

    args: Any
    name: str
    op_params: dict
    mask: Any
    factor: int
    channels: int
    solver: Any = None
    cluster: dict | None = None  # a --ray run's figures (diffunfold.cluster)


def _operator(job: _Job, shape):
    from .physics.tasks import make_operator

    extra = {} if job.mask is None else {"mask": job.mask}
    return make_operator(job.name, shape, **extra, **job.op_params)


def _measure(path: Path, job: _Job, seed: int):
    """(clean image or None, measurement, operator, notes, the file as read) for one input."""
    import numpy as np

    from .data.image_io import read_image

    args = job.args
    src = read_image(path, job.channels, None if args.mode == "measured" else args.size)
    notes = list(src.notes)
    if args.mode == "measured":
        y = src.array[None]
        h, w = y.shape[-2:]
        check_mask_shape(job.mask, (h, w), path)
        if job.mask is not None:
            y = (y * job.mask).astype(np.float32)  # missing pixels carry nothing
        return None, y, _operator(job, (h * job.factor, w * job.factor)), notes, src
    x = src.array
    if job.factor > 1 and (x.shape[-2] % job.factor or x.shape[-1] % job.factor):
        h0, w0 = x.shape[-2:]
        x = np.ascontiguousarray(centre_crop_multiple(x, job.factor))
        src.alpha = None if src.alpha is None else centre_crop_multiple(src.alpha, job.factor)
        notes.append(
            f"{path.name}: centre-cropped {h0}x{w0} -> {x.shape[-2]}x{x.shape[-1]} "
            f"(a multiple of the SR factor {job.factor})"
        )
    x = x[None]
    check_mask_shape(job.mask, x.shape[-2:], path, " after --size" if args.size else "")
    op = _operator(job, x.shape[-2:])
    return x, op.measure(x, args.noise, seed=[seed]).astype(np.float32), op, notes, src


def _check_memory(job: _Job, shape: tuple[int, int]) -> None:
    """The solve's memory for an image of ``shape`` (operator grid), checked as the solve will
    check it but from the header alone: a too-large image is refused before it is decoded."""
    job.solver.plan(shape, job.args.samples, job.args.tile)


def _fits(job: _Job, shape: tuple[int, int]) -> bool:
    try:
        _check_memory(job, shape)
    except InputError:  # reported for that image when its turn comes
        return False
    return True


def _write_outputs(unit: Unit, restored, baseline, measured, std, src, row: dict) -> None:
    """The restored image, the baseline, the measurement (measured mode) and the per-pixel std
    (samples > 1) of one image, each written like the input (grey, depth and alpha as read)."""
    import numpy as np

    from .data.image_io import write_image
    from .data.images import save_image

    write_image(unit.outputs["restored"], restored, like=src)
    write_image(unit.outputs["baseline"], baseline, like=src)
    if "measured" in unit.outputs:
        write_image(unit.outputs["measured"], np.clip(measured, 0.0, 1.0), like=src)
    if std is not None:
        row["std_max"] = float(std.max())
        save_image(unit.outputs["std"], std / std.max() if std.max() > 0 else std)


def _solve(job: _Job, y, op, seed: int, noise_std: float, progress):
    """The solve of one image, with the options of the command line."""
    args = job.args
    return job.solver.solve(
        y,
        op,
        steps=args.steps,
        sampler=args.sampler,
        schedule=args.schedule,
        seed=seed,
        samples=args.samples,
        noise_std=noise_std,
        tile=args.tile,
        churn=args.churn_setting,
        ensemble=args.ensemble,
        contrast=args.contrast,
        method=args.method,
        progress=progress,
    )


def _restore_item(unit: Unit, job: _Job) -> dict:
    """Restore one image and write its outputs (after everything that can fail on the input)."""
    import numpy as np

    from .baselines import baseline_name, classical_baseline
    from .metrics import psnr, ssim
    from .noise import resolve_noise_std
    from .progress import step_bar

    args = job.args
    index, path = unit.payload
    seed = args.seed + index
    _check_memory(job, _operator_shape(args, read_header(path), job.factor))
    x, y, op, notes, src = _measure(path, job, seed)
    # sigma_y resolved once (given, or estimated from the input) for the model and the baseline alike
    noise_std = float(resolve_noise_std(args.noise, op, y, 1)[0])
    if args.noise is None:
        notes.append(f"{path.name}: noise std not given (--noise), estimated from the input: {noise_std:.4f}")
    sol = _solve(job, y, op, seed, noise_std, step_bar(path.name, args.quiet))
    restored = np.asarray(sol.images)
    baseline = np.clip(np.asarray(classical_baseline(op, y, noise_std)), 0.0, 1.0)
    row: dict[str, Any] = {
        "input": str(path),
        "name": unit.name,
        "size": list(op.image_shape[-2:]),
        "seed": seed,
        "seconds": sol.timing.total,
        "timing": sol.timing.as_dict(),
        "nfe": sol.nfe,
        "method": sol.extra.get("method", "diff-unfolding"),
        "baseline": baseline_name(op),
    }
    if "contrast_gain" in sol.extra:
        row["contrast_gain"] = sol.extra["contrast_gain"][0]
    std = None if sol.std is None else np.asarray(sol.std)[0].mean(axis=0)
    if x is not None:
        row.update(
            psnr=psnr(restored[0], x[0], 1.0),
            ssim=ssim(restored[0], x[0], 1.0),
            psnr_baseline=psnr(baseline[0], x[0], 1.0),
            ssim_baseline=ssim(baseline[0], x[0], 1.0),
        )
    _write_outputs(unit, restored[0], baseline[0], y[0], std, src, row)
    row["outputs"] = {k: str(p) for k, p in unit.outputs.items()}
    if notes:
        row["notes"] = notes
    return row


def _run_restore_units(args, pkg, job: _Job, units: list[Unit], first_shape):
    """The images restored here, or with --ray by actors that each load the solver and check the
    first image (``_restore_worker``); and when the clock started (after loading here, before
    starting the actors with --ray)."""
    import time

    t0 = time.perf_counter()
    if args.ray is not None:
        setup = partial(_restore_worker, job, first_shape)
        batch, job.solver, job.cluster = run_units_on_ray(
            units, setup, args, args.resume, "image", "restoring", args.out
        )
        return batch, t0
    job.solver = load_solver(pkg, args)
    _check_first(job, first_shape)
    work = lambda u: _restore_item(u, job)
    t0 = time.perf_counter()
    return run_units(units, work, args.resume, progress_bar("restoring", "image", args.quiet), "image", args.out), t0


def _check_first(job: _Job, first_shape) -> None:
    """Parameters that depend on the image (a blur longer than it) fail here, not per image."""
    if job.mask is None and _fits(job, first_shape):
        _operator(job, first_shape)


def _restore_worker(job: _Job, first_shape, args) -> tuple:
    """A Ray actor's set-up (``diffunfold.cluster``): the solver loaded once on its node, the first
    image checked; then ``_restore_item``, as without --ray."""
    from .package import ModelPackage

    job = replace(job, args=args)
    job.solver = load_solver(ModelPackage.open(args.package), args)
    _check_first(job, first_shape)
    info = {"backend_name": job.solver.backend_name, "backend_reason": job.solver.backend_reason}
    return (lambda u: _restore_item(u, job)), {**info, "stages": job.solver.stages}


def run_restore(args) -> int:
    import time

    from .package import ModelPackage

    if args.mode == "simulate" and args.noise is None:
        args.noise = 0.05
    args.churn_setting = V.churn_setting(args.churn, args.churn_range)  # None: the package's
    name, params, mask, factor = _restore_task(args)
    readable, input_dirs, unreadable, first_shape = _readable_inputs(args, factor)
    pkg = ModelPackage.open(args.package)
    if pkg.space.kind != "image":
        raise InputError(
            f"{pkg.path} is an MRI model package ({pkg.space.kind} data); `diffunfold restore` needs "
            "an image package. Reconstruct MRI with `diffunfold mri PACKAGE FILE.h5`"
        )
    out_dir = Path(args.out)
    kinds = ["restored", "baseline"] + ([] if args.mode == "measured" else ["measured"])
    kinds += ["std"] if args.samples > 1 else []
    names = base_names([f for _, f in readable])
    units = [
        Unit(b, {k: out_dir / f"{b}_{k}{_output_suffix(f, k)}" for k in kinds}, (i, f), str(f))
        for (i, f), b in zip(readable, names)
    ]
    check_outputs(
        out_dir,
        units,
        [f for _, f in readable],
        input_dirs,
        [Path(args.json)] if args.json else [],
        args.overwrite,
        args.resume,
    )
    notes_first = [n for n in [trained_note(name, pkg.tasks)] if n]
    for n in notes_first:
        print(n)
    job = _Job(args, name, {k: v for k, v in params.items() if k != "mask"}, mask, factor, pkg.space.channels)
    batch, t0 = _run_restore_units(args, pkg, job, units, first_shape)
    batch.failures[:0] = unreadable
    refuse_if_nothing_done(batch, "input")
    restore_report(args, pkg, job, task_label(name, params), batch, time.perf_counter() - t0, notes_first)
    return finish(batch, "input")


__all__ = ["add_restore_arguments", "run_restore"]

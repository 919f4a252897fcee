"""``diffunfold restore`` (image files) and ``diffunfold mri`` (fastMRI files): the command-line
face of the torch-free runtime (:class:`diffunfold.runtime.Solver`).

Nothing here imports torch, and nothing from ``diffunfold.training``: the CLI imports this module
to build its parser, and the restore path must run where only the core extra is installed.
Heavy imports (numpy, the runtime, PIL, h5py) happen inside the ``run_*`` functions, so that
``diffunfold --help`` stays quick.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cli_values as V
from .batch import Unit, check_outputs, earlier_rows, finish, refuse_if_nothing_done, run_units
from .errors import InputError
from .physics.mri import MASK_KINDS
from .runtime.backends import BACKENDS
from .safe_io import write_json

# load_image reads whatever Pillow reads; these are the suffixes a folder is scanned for.
_FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

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

MRI_DESCRIPTION = """\
Reconstruct multi-coil MRI slices of a fastMRI-format file (fully sampled k-space, e.g. from
fastMRI or `diffunfold phantom`) with an MRI model package, by retrospective undersampling:
the fully sampled slice is the reference; a k-space mask (--mask, --acceleration) is applied
to it, and the reconstruction from the undersampled data is scored against the reference
(PSNR/SSIM on magnitudes, fastMRI's data range: the maximum of the reference magnitude), next
to the zero-filled SENSE baseline A^H y.

Each slice is prepared as `FastMRISlices` prepares training data: --coil-maps estimate (the
default) estimates the coil maps from the fully sampled k-space (the low-resolution ACS ratio
method) and takes their SENSE combination as the image; --coil-maps simulate uses the file's
reconstruction_rss as the image on simulated birdcage coils (--coils, the paper's set-up).
The image is centre-cropped to the recon matrix (and to --size) and divided by the 99th
percentile of its magnitude (the model's user space); the .npy output is in that scale (the
JSON gives each slice's scale).
"""

MRI_EPILOG = """\
examples:
  diffunfold mri models/mri file1000001.h5 --mask gaussian1d --acceleration 4 --out recon/
  diffunfold mri models/mri file1000001.h5 --slices 10-14 --mask uniform1d --acceleration 8 --json r.json
  diffunfold mri models/mri file1000001.h5 --slices all --mask gaussian2d --acceleration 16 --size 256
  diffunfold phantom data/phantoms --files 1 --slices 4 --size 128
  diffunfold mri models/mri data/phantoms/phantom_0000.h5 --coil-maps simulate --samples 8

--slices: 0,3-5 (ranges inclusive) or all; default: the middle slice. One mask (--seed) serves
every slice, as in one acquisition; slice s uses seed + s for its noise and sampler start.

outputs (in --out, default recon/), per slice FILE_sNNN_:
  recon.png        |reconstruction| (the posterior mean with --samples > 1)
  zero_filled.png  |zero-filled SENSE|, A^H y
  reference.png    |fully sampled reference|      (all three on the reference's scale)
  std.png          per-pixel std of the magnitude over the samples, scaled to its max (--samples > 1)
  recon.npy        the complex reconstruction, complex64 (H, W), in the normalised scale
and FILE_mask.png (white = sampled), a Markdown table on stdout (--json FILE: JSON too).
"""


# -- shared argument helpers ------------------------------------------------------------------

def _tile_value(text: str):
    """--tile: auto, none/0, or a side in pixels, a multiple of 8 (every U-Net here downsamples
    by 8; the solver checks the package's own multiple); refused before any work."""
    from .runtime.tiling import parse_tile

    try:
        return parse_tile(text, 8)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", metavar="NAME",
                   help=f"{', '.join(BACKENDS)} (default: auto, the fastest one usable here; the report "
                        "says which and why)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=V.THREADS, default=0, metavar="N",
                   help="CPU threads for the network (default 0: all cores)")
    p.add_argument("--steps", type=V.STEPS, metavar="N",
                   help="sampler steps (default: the package's schedule, 18 = the paper's NFE)")
    p.add_argument("--sampler", choices=["euler", "heun"],
                   help="ODE sampler (default: the package's, euler; heun costs 2N-1 network passes)")
    V.add_churn_arguments(p, "EDM's stochastic sampler: re-noise by this S_churn before each step (default: "
                             "the package's, see its manifest's schedule; 0: the deterministic ODE)")
    p.add_argument("--samples", type=V.SAMPLES, default=1, metavar="N",
                   help="posterior samples per image: >1 gives their mean and a std map (default: 1)")
    V.add_ensemble_argument(p, "flips: posterior sample j's network sees the j-th of four flips of the image, "
                               "so the mean averages out the network's orientation errors at no cost; none: "
                               "every sample as it is (default: the package's)")
    p.add_argument("--seed", type=V.SEED, default=0, help="base seed (default: 0)")
    p.add_argument("--tile", type=_tile_value, default="auto", metavar="N|auto|none",
                   help="run the network on overlapping NxN tiles, blended (the physics stays on the whole "
                        "image): auto (default) sizes them from the package's training size and the memory; "
                        "none or 0: the whole image at once")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="replace existing output files")
    again.add_argument("--resume", action="store_true",
                       help="keep the outputs a stopped or partly failed run finished and do only the rest")
    p.add_argument("--json", metavar="FILE", help="also write the results (and timings) as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``diffunfold restore``."""
    parser.description = RESTORE_DESCRIPTION
    parser.epilog = RESTORE_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("package", help="a model package folder (written by `diffunfold export`)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, or folders of images (png, jpg, tif, ...; not searched recursively)")
    parser.add_argument("--task", action=V.TaskAction, nargs="+", required=True, metavar="WORD",
                        help="the task and its parameters, e.g. --task gaussian_blur sigma=2 or --task sr factor=4")
    parser.add_argument("--mode", choices=["simulate", "measured"], default="simulate",
                        help="simulate: INPUT is clean, measure it and score the restoration (default); "
                             "measured: INPUT is the degraded measurement, no scores")
    parser.add_argument("--noise", type=V.NOISE, default=None, metavar="STD",
                        help="simulate: std of the Gaussian noise added to the measurement (images in [0, 1]; "
                             "default 0.05); measured: the noise std in INPUT, which a noise-aware model and "
                             "the Wiener baseline weigh the data by (default: estimated from INPUT, and said so)")
    parser.add_argument("--size", type=V.image_side(8), metavar="N",
                        help="simulate mode: centre-crop each image to a square and resize it to NxN first "
                             "(default: native size; any size works, the solver pads)")
    parser.add_argument("--out", type=Path, default=Path("restored"),
                        help="output folder (default: restored/; never the inputs' folder)")
    _add_runtime_arguments(parser)
    V.add_contrast_argument(parser, "stretch: a flat image (std below 0.09, estimated from the measurement) is "
                                    "restored at a photo's contrast (0.15) and mapped back, exactly through the "
                                    "physics; colour: also each colour channel's level moved to mid-grey and back "
                                    "(removes a colour cast); none: as it is (default: the package's)")


def add_mri_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``diffunfold mri``."""
    parser.description = MRI_DESCRIPTION
    parser.epilog = MRI_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("package", help="an MRI model package folder (written by `diffunfold export`)")
    parser.add_argument("file", type=Path, metavar="FILE.h5",
                        help="a fastMRI multi-coil file with fully sampled k-space")
    parser.add_argument("--slices", type=V.slice_ranges, metavar="LIST",
                        help="e.g. 0,3-5 or all (default: the middle slice)")
    parser.add_argument("--mask", choices=MASK_KINDS, default="gaussian1d",
                        help="the k-space sampling pattern (default: gaussian1d)")
    parser.add_argument("--acceleration", type=V.ACCELERATION, default=4.0, help="undersampling factor (default: 4)")
    parser.add_argument("--center-fraction", type=V.CENTER_FRACTION, metavar="F",
                        help="fully sampled centre, a fraction of the lines (default: 0.32 / acceleration)")
    parser.add_argument("--coil-maps", choices=["estimate", "simulate", "espirit"], default=None,
                        help="fastMRI files: estimate from the fully sampled k-space (default), or simulate "
                             "birdcage coils around the file's reconstruction_rss (the paper's set-up); MRD raw "
                             "files: espirit (default; from the calibration region) or estimate (the "
                             "low-resolution ratio maps)")
    parser.add_argument("--coils", type=V.COILS, default=15, metavar="N",
                        help="simulated coils for --coil-maps simulate (default: 15)")
    parser.add_argument("--noise", type=V.KSPACE_NOISE, default=0.0,
                        help="extra complex Gaussian k-space noise, std as a fraction of max|k| of the slice "
                             "(as training's data.mri_noise; default: 0, the file's own noise)")
    parser.add_argument("--size", type=V.image_side(8), metavar="N",
                        help="centre-crop the slices to NxN (default: the recon matrix, e.g. 320x320)")
    parser.add_argument("--out", type=Path, default=Path("recon"),
                        help="output folder (default: recon/; never the input file's folder)")
    _add_runtime_arguments(parser)


# -- task words -------------------------------------------------------------------------------

def _task_default(name: str, param: str) -> Any:
    import inspect

    from .physics.tasks import TASKS

    return inspect.signature(TASKS[name]).parameters[param].default


def _task_label(name: str, params: dict) -> str:
    shown = ", ".join(f"{k}={Path(v).name if k == 'mask' else v}" for k, v in params.items())
    return f"{name}({shown})" if shown else name


def _trained_note(name: str, trained: list[str]) -> str | None:
    from .physics.tasks import canonical_task

    known = []
    for t in trained:
        try:
            known.append(canonical_task(t))
        except InputError:
            known.append(t)
    if not known or name in known:
        return None
    return (f"note: the package was not trained on {name} (trained: {', '.join(known)}); the physics is "
            "outside the network, so it usually works")


# -- shared by both commands -----------------------------------------------------------------

def _load_solver(pkg, args):
    from .runtime.solver import Solver

    return Solver.load(pkg, backend=args.backend, device=args.device, threads=args.threads)


def _progress(desc: str, unit: str, quiet: bool):
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=desc, unit=unit, disable=quiet, leave=False)


def _sum_timing(rows: list[dict]):
    from .runtime.solver import Timing

    total = Timing()
    for r in rows:
        t = r["timing"]
        total.network += t["network_s"]
        total.physics += t["physics_s"]
        total.total += t["total_s"]
        total.network_calls += t["network_calls"]
    return total


def _report_runtime(solver, rows: list[dict], unit: str, wall: float, samples: int) -> list[str]:
    if not rows:
        return [f"backend: {solver.backend_name} [{solver.backend_reason}]"]
    timing = _sum_timing(rows)
    per = timing.total / len(rows)
    return [
        f"backend: {solver.backend_name} [{solver.backend_reason}]",
        f"{len(rows)} {unit}(s): {per:.3f} s per {unit} in the solver ({wall:.2f} s wall in all, with I/O "
        f"and baselines); NFE {rows[-1]['nfe']} x K={solver.stages} network passes x {samples} sample(s)",
        f"solver time {timing}",
    ]


def _skipped_note(batch, what: str, out_dir: Path) -> list[str]:
    if not batch.skipped:
        return []
    return [f"--resume: {len(batch.skipped)} {what}(s) already finished in {out_dir}/ were kept, not redone"]


def _write_report(path: str, data: dict, batch, key: str) -> None:
    """The JSON report: this run's rows, the earlier run's rows of what --resume skipped, and
    the failures."""
    rows = earlier_rows(path, batch.skipped, key) + batch.rows
    write_json(path, {**data, "rows": rows, "skipped": batch.skipped,
                      "failures": [{"name": n, "reason": r} for n, r in batch.failures]}, default=_json_default)
    print(f"wrote {path}")


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _fmt(v: float, digits: int = 2) -> str:
    return "inf" if v == float("inf") else f"{v:.{digits}f}"


# -- diffunfold restore -------------------------------------------------------------------------

def _collect_inputs(inputs: list[str]) -> tuple[list[Path], set[Path]]:
    """Image files from files and folders (sorted, hidden files skipped), and the folders they
    live in."""
    files: list[Path] = []
    dirs: set[Path] = set()
    seen: set[Path] = set()
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in _FOLDER_SUFFIXES)
            if not found:
                raise InputError(f"folder {raw!r} holds no images ({', '.join(_FOLDER_SUFFIXES)}; subfolders "
                                 "are not searched)")
            dirs.add(p.resolve())
        elif p.exists():
            found = [p]
        else:
            raise InputError(f"input {raw!r} does not exist; give image files or folders of images")
        for f in found:
            r = f.resolve()
            if r not in seen:
                seen.add(r)
                files.append(f)
                dirs.add(r.parent)
    return files, dirs


def _base_names(files: list[Path]) -> list[str]:
    """Output stems: the file stem, prefixed by its folder where two inputs share a stem."""
    stems = [f.stem for f in files]
    out = []
    for f, s in zip(files, stems):
        out.append(s if stems.count(s) == 1 else f"{f.parent.name}_{s}_{f.suffix.lstrip('.').lower()}")
    taken: dict[str, int] = {}
    unique = []
    for b in out:
        n = taken.get(b, 0)
        taken[b] = n + 1
        unique.append(b if n == 0 else f"{b}_{n}")
    return unique


def _read_header(path: Path) -> tuple[int, int]:
    """The image's (H, W) from its header; an InputError naming the file when it is not an
    image at all."""
    from .data.image_io import image_size

    return image_size(path)


def _load_mask(value: Any):
    """``mask=FILE`` as a boolean (H, W) array: white (> 0.5) = observed."""
    import numpy as np

    from .data.images import load_image

    path = Path(value)
    if not path.is_file():
        raise InputError(f"mask file {value!r} does not exist; give mask=FILE.png with white = observed pixels")
    mask = load_image(path, channels=1)[0] > 0.5
    if not mask.any():
        raise InputError(f"the mask {value!r} marks no pixel as observed (white = observed, black = missing)")
    return np.ascontiguousarray(mask)


def _check_mask_shape(mask, shape: tuple[int, int], path: Path, after: str = "") -> None:
    if mask is not None and mask.shape != tuple(shape):
        raise InputError(f"the mask is {mask.shape[0]}x{mask.shape[1]} but {path} is {shape[0]}x{shape[1]}{after}; "
                         "they must match pixel for pixel")


def _centre_crop_multiple(x, m: int):
    h, w = x.shape[-2:]
    nh, nw = h - h % m, w - w % m
    top, left = (h - nh) // 2, (w - nw) // 2
    return x[..., top:top + nh, left:left + nw]


def _restore_task(args) -> tuple[str, dict, Any, int]:
    """The task (checked as --task was parsed), what the mode allows of it, its mask and SR factor."""
    params = {k: v for k, v in args.task.items() if k != "task"}
    name = args.task["task"]
    if name == "mri":
        raise InputError("the mri task takes multi-coil k-space, not image files: use "
                         "`diffunfold mri PACKAGE FILE.h5` with an MRI package")
    measured = args.mode == "measured"
    if measured and args.size is not None:
        raise InputError("--size resizes the clean image in simulate mode; a measurement cannot be resized "
                         "without changing its physics (blur width, SR factor): crop it beforehand instead")
    if measured and name == "box_inpainting":
        raise InputError("measured box inpainting would invent where the hole is and replace the real pixels "
                         "there: give the mask of observed pixels with --task inpainting mask=FILE.png "
                         "(white = observed, black = missing)")
    mask = _load_mask(params["mask"]) if "mask" in params else None
    if measured and name == "inpainting" and mask is None:
        raise InputError("measured inpainting needs the mask of observed pixels: add mask=FILE.png to --task "
                         "(white = observed, black = missing); a random mask (missing=, seed=) cannot describe "
                         "a real measurement")
    factor = int(params.get("factor", _task_default("sr", "factor"))) if name == "sr" else 1
    return name, params, mask, factor


def _readable_inputs(args, factor: int):
    """The inputs whose header reads, with their index (image i uses seed + i), their folders,
    (file, reason) of those that do not, and the first one's operator grid. All unreadable, or
    a factor too large: refused."""
    files, input_dirs = _collect_inputs(args.inputs)
    readable, unreadable, first_shape = [], [], None
    for i, f in enumerate(files):
        try:
            h, w = _read_header(f)
        except InputError as exc:
            unreadable.append((str(f), str(exc)))
            continue
        side = args.size or min(h, w)
        if args.mode == "simulate" and factor > side:
            raise InputError(f"the SR factor {factor} is too large for {f} ({h}x{w}"
                             f"{f', --size {args.size}' if args.size else ''}): at most {side} here, so that "
                             "the low-resolution image keeps at least one pixel per side")
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
        _check_mask_shape(job.mask, (h, w), path)
        if job.mask is not None:
            y = (y * job.mask).astype(np.float32)  # missing pixels carry nothing
        return None, y, _operator(job, (h * job.factor, w * job.factor)), notes, src
    x = src.array
    if job.factor > 1 and (x.shape[-2] % job.factor or x.shape[-1] % job.factor):
        h0, w0 = x.shape[-2:]
        x = np.ascontiguousarray(_centre_crop_multiple(x, job.factor))
        src.alpha = None if src.alpha is None else _centre_crop_multiple(src.alpha, job.factor)
        notes.append(f"{path.name}: centre-cropped {h0}x{w0} -> {x.shape[-2]}x{x.shape[-1]} "
                     f"(a multiple of the SR factor {job.factor})")
    x = x[None]
    _check_mask_shape(job.mask, x.shape[-2:], path, " after --size" if args.size else "")
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


def _restore_item(unit: Unit, job: _Job) -> dict:
    """Restore one image and write its outputs (after everything that can fail on the input)."""
    import numpy as np

    from .baselines import baseline_name, classical_baseline
    from .data.image_io import write_image
    from .data.images import save_image
    from .metrics import psnr, ssim
    from .noise import estimate_noise_std
    from .progress import step_bar

    args = job.args
    index, path = unit.payload
    seed = args.seed + index
    _check_memory(job, _operator_shape(args, _read_header(path), job.factor))
    x, y, op, notes, src = _measure(path, job, seed)
    noise_std = args.noise if args.noise is not None else float(estimate_noise_std(op, y)[0])
    if args.noise is None:
        notes.append(f"{path.name}: noise std not given (--noise), estimated from the input: {noise_std:.4f}")
    sol = job.solver.solve(y, op, steps=args.steps, sampler=args.sampler, seed=seed, samples=args.samples,
                           noise_std=noise_std, tile=args.tile, churn=args.churn_setting,
                           ensemble=args.ensemble, contrast=args.contrast,
                           progress=step_bar(path.name, args.quiet))
    restored = np.asarray(sol.images)
    baseline = np.clip(np.asarray(classical_baseline(op, y, noise_std)), 0.0, 1.0)
    row: dict[str, Any] = {"input": str(path), "name": unit.name, "size": list(op.image_shape[-2:]), "seed": seed,
                           "seconds": sol.timing.total, "timing": sol.timing.as_dict(), "nfe": sol.nfe,
                           "baseline": baseline_name(op)}
    if "contrast_gain" in sol.extra:
        row["contrast_gain"] = sol.extra["contrast_gain"][0]
    std = None if sol.std is None else np.asarray(sol.std)[0].mean(axis=0)
    if x is not None:
        row.update(psnr=psnr(restored[0], x[0], 1.0), ssim=ssim(restored[0], x[0], 1.0),
                   psnr_baseline=psnr(baseline[0], x[0], 1.0), ssim_baseline=ssim(baseline[0], x[0], 1.0))
    write_image(unit.outputs["restored"], restored[0], like=src)  # grey, depth and alpha as read
    write_image(unit.outputs["baseline"], baseline[0], like=src)
    if "measured" in unit.outputs:
        write_image(unit.outputs["measured"], np.clip(y[0], 0.0, 1.0), like=src)
    if std is not None:
        row["std_max"] = float(std.max())
        save_image(unit.outputs["std"], std / std.max() if std.max() > 0 else std)
    row["outputs"] = {k: str(p) for k, p in unit.outputs.items()}
    if notes:
        row["notes"] = notes
    return row


def _restore_table(rows: list[dict], measured: bool, base_name: str) -> list[str]:
    import numpy as np

    if measured:
        return ["| image | size | restored | s |", "|---|---|---|---|"] + [
            f"| {Path(r['input']).name} | {r['size'][0]}x{r['size'][1]} | "
            f"{Path(r['outputs']['restored']).name} | {r['seconds']:.2f} |" for r in rows]
    lines = [f"| image | size | PSNR | SSIM | {base_name} PSNR | {base_name} SSIM | s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['input']).name} | {r['size'][0]}x{r['size'][1]} | {_fmt(r['psnr'])} | "
                     f"{r['ssim']:.4f} | {_fmt(r['psnr_baseline'])} | {r['ssim_baseline']:.4f} | "
                     f"{r['seconds']:.2f} |")
    if len(rows) > 1:
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "psnr_baseline",
                                                                     "ssim_baseline", "seconds")}
        lines.append(f"| mean | | {_fmt(mean['psnr'])} | {mean['ssim']:.4f} | {_fmt(mean['psnr_baseline'])} | "
                     f"{mean['ssim_baseline']:.4f} | {mean['seconds']:.2f} |")
    return lines


def _restore_report(args, pkg, job: _Job, label: str, batch, wall: float, notes_first: list[str]) -> None:
    rows, out_dir = batch.rows, Path(args.out)
    base_name = rows[-1]["baseline"] if rows else "baseline"
    noise_label = "estimated per image" if args.noise is None else f"{args.noise:g}"
    print(f"{pkg.summary()}\n{args.mode} {label}, noise {noise_label}, {len(rows)} image(s) -> {out_dir}/")
    if rows:
        print("\n".join(_restore_table(rows, args.mode == "measured", base_name)))
    for n in [n for r in rows for n in r.get("notes", [])] + _skipped_note(batch, "image", out_dir):
        print(f"note: {n}")
    print("\n".join(_report_runtime(job.solver, rows, "image", wall, args.samples)))
    if args.json:
        timing = _sum_timing(rows)
        _write_report(args.json, {
            "command": "restore", "package": str(pkg.path), "mode": args.mode, "task": job.name, "params":
            {k: v for k, v in args.task.items() if k != "task"}, "noise": args.noise,
            "steps": args.steps or pkg.schedule["steps"], "sampler": args.sampler or pkg.schedule["sampler"],
            "churn": (args.churn_setting or pkg.churn).as_dict(),
            "ensemble": args.ensemble or pkg.ensemble,
            "contrast": _contrast_of(args.contrast, pkg),
            "samples": args.samples, "seed": args.seed, "size": args.size, "nfe": rows[-1]["nfe"] if rows else None,
            "baseline": base_name, "backend": job.solver.backend_name, "backend_reason": job.solver.backend_reason,
            "timing": timing.as_dict(), "seconds_per_image": timing.total / max(len(rows), 1),
            "wall_s": wall, "notes": notes_first}, batch, "name")


def _contrast_of(chosen: str | None, pkg) -> dict | None:
    """The contrast stretch a restore ran with, for its report (None: off)."""
    from .contrast import Contrast

    contrast = pkg.contrast if chosen is None else Contrast.of(chosen)
    return None if contrast is None else contrast.as_dict()


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
        raise InputError(f"{pkg.path} is an MRI model package ({pkg.space.kind} data); `diffunfold restore` needs "
                         "an image package. Reconstruct MRI with `diffunfold mri PACKAGE FILE.h5`")
    out_dir = Path(args.out)
    kinds = ["restored", "baseline"] + ([] if args.mode == "measured" else ["measured"]) + (
        ["std"] if args.samples > 1 else [])
    names = _base_names([f for _, f in readable])
    units = [Unit(b, {k: out_dir / f"{b}_{k}{_output_suffix(f, k)}" for k in kinds}, (i, f), str(f))
             for (i, f), b in zip(readable, names)]
    check_outputs(out_dir, units, [f for _, f in readable], input_dirs, [Path(args.json)] if args.json else [],
                  args.overwrite, args.resume)
    notes_first = [n for n in [_trained_note(name, pkg.tasks)] if n]
    for n in notes_first:
        print(n)
    job = _Job(args, name, {k: v for k, v in params.items() if k != "mask"}, mask, factor, pkg.space.channels)
    job.solver = _load_solver(pkg, args)
    if mask is None and _fits(job, first_shape):  # parameters that depend on the image (a blur longer
        _operator(job, first_shape)               # than it) fail here, not per image
    t0 = time.perf_counter()
    batch = run_units(units, lambda u: _restore_item(u, job), args.resume,
                      _progress("restoring", "image", args.quiet), "image", out_dir)
    batch.failures[:0] = unreadable
    refuse_if_nothing_done(batch, "input")
    _restore_report(args, pkg, job, _task_label(name, params), batch, time.perf_counter() - t0, notes_first)
    return finish(batch, "input")


# -- diffunfold mri -------------------------------------------------------------------------------

def parse_slices(text: str | None, count: int) -> list[int]:
    """``None`` -> the middle slice; ``"all"``; ``"0,3-5"`` (inclusive ranges, negatives from the end)."""
    if text is None:
        return [count // 2]
    ranges = V.split_slice_ranges(text)
    if ranges is None:
        return list(range(count))
    out: list[int] = []
    for lo, hi in ranges:
        lo, hi = (lo + count if lo < 0 else lo), (hi + count if hi < 0 else hi)
        if not (0 <= lo < count and 0 <= hi < count):
            raise InputError(f"--slices {text!r} is out of range: the file has {count} slices (0..{count - 1})")
        if hi < lo:
            raise InputError(f"--slices {text!r} holds a reversed range ({lo} after {hi}); write ranges low-high")
        out.extend(s for s in range(lo, hi + 1) if s not in out)
    return out


def _magnitude_png(path: Path, image, scale: float) -> None:
    import numpy as np

    from .data.images import save_image

    mag = np.abs(np.asarray(image)).astype(np.float64)
    save_image(path, np.clip(mag / scale, 0.0, 1.0) if scale > 0 else mag)


@dataclass
class _MRIJob:
    """What every slice of one mri run shares; the mask is made at the first slice's size."""
    args: Any
    path: Path
    ds: Any
    mask_png: Path
    solver: Any = None
    mask: Any = None


def _mri_mask(job: _MRIJob, hw: tuple[int, int]):
    from .data.images import save_image
    from .physics.mri import mri_mask

    if job.mask is None:
        job.mask = mri_mask(job.args.mask, hw, job.args.acceleration, job.args.center_fraction, job.args.seed)
        if job.args.overwrite or not job.mask_png.exists():  # --resume keeps the (same) mask
            save_image(job.mask_png, job.mask)
    return job.mask


def _mri_slice(unit: Unit, job: _MRIJob) -> dict:
    """Reconstruct one slice and write its outputs."""
    import numpy as np

    from .baselines import classical_baseline
    from .data.images import save_image
    from .metrics import psnr, ssim
    from .physics.mri import MultiCoilMRI
    from .progress import step_bar
    from .safe_io import open_atomic

    args, s = job.args, unit.payload
    item = job.ds[s]  # one file: dataset index = slice index
    x = item["image"][None]  # (1, 1, H, W) complex64, normalised
    op = MultiCoilMRI(item["coil_maps"], _mri_mask(job, tuple(x.shape[-2:])))
    seed = args.seed + s
    noise_std = args.noise * float(np.abs(op.A(x)).max())
    y = op.measure(x, noise_std, seed=[seed]).astype(np.complex64)
    # the file's own k-space noise adds to what --noise adds: the solver estimates the total
    sol = job.solver.solve(y, op, steps=args.steps, sampler=args.sampler, seed=seed, samples=args.samples,
                           noise_std=None, tile=args.tile, churn=args.churn_setting,
                           ensemble=args.ensemble, progress=step_bar(unit.name, args.quiet))
    recon = np.asarray(sol.images)
    zero_filled = np.asarray(classical_baseline(op, y, noise_std))
    ref_max = float(np.abs(x).max())
    out = unit.outputs
    _magnitude_png(out["recon"], recon[0, 0], ref_max)
    _magnitude_png(out["zero_filled"], zero_filled[0, 0], ref_max)
    _magnitude_png(out["reference"], x[0, 0], ref_max)
    row: dict[str, Any] = {"name": unit.name, "file": str(job.path), "slice": s, "size": list(x.shape[-2:]),
                           "seed": seed, "scale": float(item["scale"]), "noise_std": noise_std, "nfe": sol.nfe,
                           "ncoils": op.ncoils,
                           # fastMRI's convention: magnitudes, data range = max of the reference
                           "psnr": psnr(recon[0], x[0]), "ssim": ssim(recon[0], x[0]),
                           "psnr_zero_filled": psnr(zero_filled[0], x[0]),
                           "ssim_zero_filled": ssim(zero_filled[0], x[0]),
                           "seconds": sol.timing.total, "timing": sol.timing.as_dict()}
    if sol.std is not None:
        std = np.asarray(sol.std)[0, 0]
        row["std_max"] = float(std.max())
        save_image(out["std"], std / std.max() if std.max() > 0 else std)
    with open_atomic(out["npy"]) as f:  # np.save on a file object: the name gets no second .npy
        np.save(f, recon[0, 0].astype(np.complex64))
    row["outputs"] = {k: str(p) for k, p in out.items()}
    return row


def _mri_table(rows: list[dict]) -> list[str]:
    import numpy as np

    lines = ["| slice | PSNR | SSIM | zero-filled PSNR | zero-filled SSIM | s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['slice']} | {_fmt(r['psnr'])} | {r['ssim']:.4f} | {_fmt(r['psnr_zero_filled'])} | "
                     f"{r['ssim_zero_filled']:.4f} | {r['seconds']:.2f} |")
    if len(rows) > 1:
        m = {k: float(np.mean([r[k] for r in rows]))
             for k in ("psnr", "ssim", "psnr_zero_filled", "ssim_zero_filled", "seconds")}
        lines.append(f"| mean | {_fmt(m['psnr'])} | {m['ssim']:.4f} | {_fmt(m['psnr_zero_filled'])} | "
                     f"{m['ssim_zero_filled']:.4f} | {m['seconds']:.2f} |")
    return lines


def _mri_report(args, pkg, job: _MRIJob, count: int, batch, wall: float, notes: list[str]) -> None:
    rows, out_dir = batch.rows, Path(args.out)
    pattern = f"{args.mask} {args.acceleration:g}x"
    realised = job.mask.size / job.mask.sum() if job.mask is not None else None
    shape = f"{rows[-1]['size'][0]}x{rows[-1]['size'][1]}, {rows[-1]['ncoils']} coils" if rows else "-"
    print(f"{pkg.summary()}\n{job.path.name}: {len(rows)} slice(s) of {count}, {shape} ({args.coil_maps}d maps); "
          f"mask {pattern}" + (f" (realised {realised:.2f}x)" if realised else "") +
          f", noise {args.noise:g} x max|k| -> {out_dir}/")
    if rows:
        print("\n".join(_mri_table(rows)))
    for n in _skipped_note(batch, "slice", out_dir):
        print(f"note: {n}")
    print("\n".join(_report_runtime(job.solver, rows, "slice", wall, args.samples)))
    if args.json:
        timing = _sum_timing(rows)
        _write_report(args.json, {
            "command": "mri", "package": str(pkg.path), "file": str(job.path), "mask": args.mask,
            "acceleration": args.acceleration, "realised_acceleration": realised,
            "center_fraction": args.center_fraction, "coil_maps": args.coil_maps, "noise": args.noise,
            "size": args.size, "steps": args.steps or pkg.schedule["steps"],
            "sampler": args.sampler or pkg.schedule["sampler"],
            "churn": (args.churn_setting or pkg.churn).as_dict(),
            "ensemble": args.ensemble or pkg.ensemble, "samples": args.samples, "seed": args.seed,
            "nfe": rows[-1]["nfe"] if rows else None, "backend": job.solver.backend_name,
            "backend_reason": job.solver.backend_reason, "timing": timing.as_dict(),
            "seconds_per_slice": timing.total / max(len(rows), 1), "wall_s": wall, "notes": notes}, batch, "name")


def _untrained_pattern_note(pkg, args) -> list[str]:
    pattern = f"{args.mask} {args.acceleration:g}x"
    trained = pkg.manifest.get("mri_patterns") or []
    names = [f"{k} {float(a):g}x" for k, a in trained if isinstance(k, str)] if trained else []
    if names and pattern not in names:
        return [f"note: the package was not trained on {pattern} (trained: {', '.join(names)}); "
                "the physics is outside the network, so it usually works"]
    return []


def run_mri(args) -> int:
    import time

    from .data.fastmri import FastMRIFile, FastMRISlices
    from .package import ModelPackage

    args.churn_setting = V.churn_setting(args.churn, args.churn_range)  # None: the package's
    pkg = ModelPackage.open(args.package)
    if pkg.space.kind != "mri":
        raise InputError(f"{pkg.path} is an image model package ({pkg.space.kind} data, {pkg.space.channels} "
                         "channel(s)); `diffunfold mri` needs a package exported from an MRI run (data "
                         "fastmri or phantom). Restore image files with `diffunfold restore`")
    path = Path(args.file)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give one fastMRI .h5 file")
    from .mrd.rawfile import is_mrd_file  # raw MRD (ISMRMRD) data: reconstructed as acquired
    if is_mrd_file(path):
        from .mrd.cli import run_mri_raw
        return run_mri_raw(args)
    args.coil_maps = args.coil_maps or "estimate"  # a fastMRI file is fully sampled: maps from all of it
    with FastMRIFile(path) as f:  # checks the layout; a missing or foreign file fails here
        count = f.num_slices
    slices = parse_slices(args.slices, count)
    ds = FastMRISlices(path, ncoils=args.coils, coil_maps=args.coil_maps,
                       crop=(args.size, args.size) if args.size else None)
    out_dir, stem = Path(args.out), path.stem
    kinds = ["recon", "zero_filled", "reference"] + (["std"] if args.samples > 1 else [])
    units = [Unit(f"{path.name} slice {s}", {**{k: out_dir / f"{stem}_s{s:03d}_{k}.png" for k in kinds},
                                            "npy": out_dir / f"{stem}_s{s:03d}_recon.npy"}, s) for s in slices]
    job = _MRIJob(args, path, ds, out_dir / f"{stem}_mask.png")
    check_outputs(out_dir, units, [path], {path.resolve().parent},
                  [job.mask_png] + ([Path(args.json)] if args.json else []), args.overwrite, args.resume)
    notes = _untrained_pattern_note(pkg, args)
    for n in notes:
        print(n)
    job.solver = _load_solver(pkg, args)
    t0 = time.perf_counter()
    batch = run_units(units, lambda u: _mri_slice(u, job), args.resume,
                      _progress("reconstructing", "slice", args.quiet), "slice", out_dir)
    refuse_if_nothing_done(batch, "slice")
    _mri_report(args, pkg, job, count, batch, time.perf_counter() - t0, notes)
    return finish(batch, "slice")


__all__ = ["add_mri_arguments", "add_restore_arguments", "parse_slices", "run_mri",
           "run_restore"]

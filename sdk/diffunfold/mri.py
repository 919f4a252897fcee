"""``diffunfold mri``: multi-coil MRI reconstructed with an MRI model package, on the torch-free
runtime. Two inputs, one command:

* a fastMRI-format file (fully sampled k-space): retrospectively undersampled with --mask and
  --acceleration, reconstructed and scored against the fully sampled reference;
* a raw MRD (ISMRMRD) file: reconstructed as acquired (the acquired lines are the mask), slice
  by slice exactly as the MRD server does (:mod:`diffunfold.mrd.recon`).

Nothing here imports torch; heavy imports happen inside the ``run_*`` functions.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cli_values as V
from .batch import Unit, check_outputs, finish, refuse_if_nothing_done, run_units
from .cluster import add_cluster_arguments
from .command_common import (
    add_runtime_arguments,
    load_solver,
    progress_bar,
    report_runtime,
    scored_table,
    skipped_note,
    sum_timing,
    write_report,
)
from .errors import InputError
from .physics.mri import MASK_KINDS

MRI_DESCRIPTION = """\
Reconstruct multi-coil MRI slices of a fastMRI-format file (fully sampled k-space, e.g. from
fastMRI or `diffunfold phantom`) with an MRI model package, by retrospective undersampling:
the fully sampled slice is the reference; a k-space mask (--mask, --acceleration) is applied
to it, and the reconstruction from the undersampled data is scored against the reference
(PSNR/SSIM on magnitudes, fastMRI's data range: the maximum of the reference magnitude), next
to the zero-filled SENSE baseline A^H y.

The reference is the SENSE combination of the fully sampled coil images with coil maps
estimated from all of k-space, centre-cropped to the recon matrix (and to --size) and divided
by the 99th percentile of its magnitude (the model's user space); the .npy output is in that
scale (the JSON gives each slice's scale). By default (--coil-maps espirit) the file's own
coil k-space on that grid is undersampled and reconstructed as a scanner delivers it: the
noise level and ESPIRiT coil maps come from the undersampled data alone, and sampling starts
from a SENSE estimate (diffunfold.scanner). --coil-maps estimate instead simulates the
measurement through the reference's own maps (a lab set-up: the maps are exact), and
--coil-maps simulate uses the file's reconstruction_rss on simulated birdcage coils (--coils,
the paper's set-up).
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
  zero_filled.png  |zero-filled|: root sum of squares (espirit), SENSE A^H y (estimate, simulate)
  reference.png    |fully sampled reference|      (all three on the reference's scale)
  std.png          per-pixel std of the magnitude over the samples, scaled to its max (--samples > 1)
  recon.npy        the complex reconstruction, complex64 (H, W), in the normalised scale
and FILE_mask.png (white = sampled), a Markdown table on stdout (--json FILE: JSON too).
"""


FILE_HELP = (
    "a fastMRI multi-coil file with fully sampled k-space, or a raw MRD file; with --ray also several "
    "files or folders of them (*.h5)"
)
RAY_TASKS = (
    "One task is one slice of a fastMRI file (--slices of each file; a file's slices spread over the "
    "actors), or one whole raw MRD file (its slices in one actor, written as one set of outputs)."
)
MAPS_SAID = {
    "espirit": "ESPIRiT maps from the data",
    "calibration": "ratio maps from the calibration region",
    "estimate": "estimated maps",
    "simulate": "simulated maps",
}


def fastmri_coil_maps(args) -> str:
    """``--coil-maps`` for a fastMRI file (default espirit); ``calibration`` names the raw MRD
    files' ratio maps (as ``diffunfold serve`` does) and is refused here, with the choices."""
    if args.coil_maps == "calibration":
        raise InputError(
            "--coil-maps calibration is for raw MRD files (the low-resolution ratio maps, as in "
            "`diffunfold serve`); a fastMRI file takes espirit (default), estimate or simulate"
        )
    return args.coil_maps or "espirit"


def add_mri_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``diffunfold mri``."""
    parser.description = MRI_DESCRIPTION
    parser.epilog = MRI_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("package", help="an MRI model package folder (written by `diffunfold export`)")
    parser.add_argument("file", type=Path, nargs="+", metavar="FILE.h5", help=FILE_HELP)
    parser.add_argument(
        "--slices", type=V.slice_ranges, metavar="LIST", help="e.g. 0,3-5 or all (default: the middle slice)"
    )
    parser.add_argument(
        "--mask", choices=MASK_KINDS, default="gaussian1d", help="the k-space sampling pattern (default: gaussian1d)"
    )
    parser.add_argument("--acceleration", type=V.ACCELERATION, default=4.0, help="undersampling factor (default: 4)")
    parser.add_argument(
        "--center-fraction",
        type=V.CENTER_FRACTION,
        metavar="F",
        help="fully sampled centre, a fraction of the lines (default: 0.32 / acceleration)",
    )
    parser.add_argument(
        "--coil-maps",
        choices=["espirit", "calibration", "estimate", "simulate"],
        default=None,
        help="espirit (default): the file's own coil k-space, undersampled, reconstructed "
        "as a scan: ESPIRiT maps from the calibration region and the noise level from "
        "the data. Raw MRD files also: calibration (the low-resolution ratio maps, as in "
        "`diffunfold serve`). fastMRI files also: estimate (maps from the fully sampled "
        "k-space, the image simulated through them: a lab set-up) or simulate (birdcage "
        "coils around the file's reconstruction_rss, the paper's set-up)",
    )
    parser.add_argument(
        "--coils", type=V.COILS, default=15, metavar="N", help="simulated coils for --coil-maps simulate (default: 15)"
    )
    parser.add_argument(
        "--noise-rel",
        type=V.KSPACE_NOISE,
        default=0.0,
        metavar="F",
        help="extra complex Gaussian k-space noise, its std a fraction F of max|k| of the slice "
        "(as training's data.mri_noise; default: 0, the file's own noise)",
    )
    # before --noise-rel, mri's --noise was this fraction; elsewhere --noise is a std in the data's units
    parser.add_argument(
        "--noise", action=V.Renamed, now="--noise-rel F (the k-space noise std as a fraction of max|k|)"
    )
    parser.add_argument(
        "--size",
        type=V.image_side(8),
        metavar="N",
        help="centre-crop the slices to NxN (default: the recon matrix, e.g. 320x320)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("recon"), help="output folder (default: recon/; never the input file's folder)"
    )
    add_runtime_arguments(parser)
    add_cluster_arguments(parser, RAY_TASKS)


# -- fastMRI files ---------------------------------------------------------------------------


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


def _solve_options(job: _MRIJob, name: str) -> dict:
    from .progress import step_bar

    args = job.args
    return {
        "steps": args.steps,
        "sampler": args.sampler,
        "samples": args.samples,
        "tile": args.tile,
        "churn": args.churn_setting,
        "ensemble": args.ensemble,
        "method": args.method,
        "progress": step_bar(name, args.quiet),
    }


def _simulated(job: _MRIJob, item: dict, seed: int, name: str):
    """The reference through the dataset's coil maps (--coil-maps estimate / simulate)."""
    import numpy as np

    from .baselines import classical_baseline
    from .physics.mri import MultiCoilMRI

    x = item["image"][None]
    op = MultiCoilMRI(item["coil_maps"], _mri_mask(job, tuple(x.shape[-2:])))
    noise_std = job.args.noise_rel * float(np.abs(op.A(x)).max())
    y = op.measure(x, noise_std, seed=[seed]).astype(np.complex64)
    # the file's own k-space noise adds to what --noise-rel adds: the solver estimates the total
    sol = job.solver.solve(y, op, seed=seed, noise_std=None, **_solve_options(job, name))
    zero_filled = np.asarray(classical_baseline(op, y, noise_std))
    return np.asarray(sol.images), zero_filled, noise_std, sol, {"ncoils": op.ncoils}


def _measured(job: _MRIJob, item: dict, s: int, seed: int, name: str):
    """The file's own coil k-space, undersampled, as a scan (--coil-maps espirit)."""
    from .mri_measured import coil_kspace, reconstruct_measured

    crop = (job.args.size, job.args.size) if job.args.size else None
    k = coil_kspace(job.path, s, float(item["scale"]), crop)
    res, zero_filled, noise_std = reconstruct_measured(
        job.solver, k, _mri_mask(job, tuple(k.shape[-2:])), job.args.noise_rel, seed, **_solve_options(job, name)
    )
    sol = res.solution
    extra = {
        "ncoils": int(k.shape[0]),
        "noise_estimated": res.noise_std,
        "noise": res.info.get("noise"),
        "start": res.info.get("start"),
        "prepare_s": res.seconds["prepare"],
    }
    return res.image[None, None], zero_filled[None, None], noise_std, sol, extra


def _mri_slice(unit: Unit, job: _MRIJob) -> dict:
    """Reconstruct one slice and write its outputs."""
    import numpy as np

    from .data.images import save_image
    from .metrics import psnr, ssim
    from .safe_io import open_atomic

    args, s = job.args, unit.payload
    item = job.ds[s]  # one file: dataset index = slice index
    x = item["image"][None]  # (1, 1, H, W) complex64, normalised
    seed = args.seed + s
    if args.coil_maps == "espirit":
        recon, zero_filled, noise_std, sol, extra = _measured(job, item, s, seed, unit.name)
    else:
        recon, zero_filled, noise_std, sol, extra = _simulated(job, item, seed, unit.name)
    ref_max = float(np.abs(x).max())
    out = unit.outputs
    _magnitude_png(out["recon"], recon[0, 0], ref_max)
    _magnitude_png(out["zero_filled"], zero_filled[0, 0], ref_max)
    _magnitude_png(out["reference"], x[0, 0], ref_max)
    row: dict[str, Any] = {
        "name": unit.name,
        "file": str(job.path),
        "slice": s,
        "size": list(x.shape[-2:]),
        "seed": seed,
        "scale": float(item["scale"]),
        "noise_std": noise_std,
        "nfe": sol.nfe,
        **extra,
        # fastMRI's convention: magnitudes, data range = max of the reference
        "psnr": psnr(recon[0], x[0]),
        "ssim": ssim(recon[0], x[0]),
        "psnr_zero_filled": psnr(zero_filled[0], x[0]),
        "ssim_zero_filled": ssim(zero_filled[0], x[0]),
        "seconds": sol.timing.total,
        "timing": sol.timing.as_dict(),
    }
    if sol.std is not None:
        std = np.asarray(sol.std)[0, 0]
        row["std_max"] = float(std.max())
        save_image(out["std"], std / std.max() if std.max() > 0 else std)
    with open_atomic(out["npy"]) as f:  # np.save on a file object: the name gets no second .npy
        np.save(f, recon[0, 0].astype(np.complex64))
    row["outputs"] = {k: str(p) for k, p in out.items()}
    return row


def _mri_table(rows: list[dict]) -> list[str]:
    return scored_table(rows, [("slice", lambda r: str(r["slice"]))], [("", ""), ("zero-filled ", "_zero_filled")])


def _mri_report(args, pkg, job: _MRIJob, count: int, batch, wall: float, notes: list[str]) -> None:
    rows, out_dir = batch.rows, Path(args.out)
    pattern = f"{args.mask} {args.acceleration:g}x"
    realised = job.mask.size / job.mask.sum() if job.mask is not None else None
    shape = f"{rows[-1]['size'][0]}x{rows[-1]['size'][1]}, {rows[-1]['ncoils']} coils" if rows else "-"
    print(
        f"{pkg.summary()}\n{job.path.name}: {len(rows)} slice(s) of {count}, {shape} ({MAPS_SAID[args.coil_maps]}); "
        f"mask {pattern}"
        + (f" (realised {realised:.2f}x)" if realised else "")
        + f", noise {args.noise_rel:g} x max|k| -> {out_dir}/"
    )
    if rows:
        print("\n".join(_mri_table(rows)))
    for n in skipped_note(batch, "slice", out_dir):
        print(f"note: {n}")
    print("\n".join(report_runtime(job.solver, rows, "slice", wall, args.samples)))
    if args.json:
        timing = sum_timing(rows)
        write_report(
            args.json,
            {
                "command": "mri",
                "package": str(pkg.path),
                "file": str(job.path),
                "mask": args.mask,
                "acceleration": args.acceleration,
                "realised_acceleration": realised,
                "center_fraction": args.center_fraction,
                "coil_maps": args.coil_maps,
                "noise": args.noise_rel,
                "size": args.size,
                "steps": args.steps or pkg.schedule["steps"],
                "sampler": args.sampler or pkg.schedule["sampler"],
                "churn": (args.churn_setting or pkg.churn).as_dict(),
                "ensemble": args.ensemble or pkg.ensemble,
                "samples": args.samples,
                "seed": args.seed,
                "nfe": rows[-1]["nfe"] if rows else None,
                "backend": job.solver.backend_name,
                "backend_reason": job.solver.backend_reason,
                "timing": timing.as_dict(),
                "seconds_per_slice": timing.total / max(len(rows), 1),
                "wall_s": wall,
                "notes": notes,
            },
            batch,
            "name",
        )


def _untrained_pattern_note(pkg, args) -> list[str]:
    pattern = f"{args.mask} {args.acceleration:g}x"
    trained = pkg.manifest.get("mri_patterns") or []
    names = [f"{k} {float(a):g}x" for k, a in trained if isinstance(k, str)] if trained else []
    if names and pattern not in names:
        return [
            f"note: the package was not trained on {pattern} (trained: {', '.join(names)}); "
            "the physics is outside the network, so it usually works"
        ]
    return []


def _one_file(files: list[Path]) -> Path:
    """The one input of a run without --ray."""
    if len(files) > 1 or files[0].is_dir():
        what = f"{files[0]} is a folder" if len(files) == 1 else f"{len(files)} files given"
        raise InputError(
            f"{what}; give one fastMRI .h5 file, or add --ray to run several files (or a folder's) as one "
            "batch on a local Ray or a cluster (pip install 'diffunfold[cluster]')"
        )
    return files[0]


def mask_png(out_dir: Path, path: Path) -> Path:
    return out_dir / f"{path.stem}_mask.png"


def slice_units(path: Path, slices: list[int], out_dir: Path, samples: int, payload) -> list[Unit]:
    """One unit per slice of the fastMRI file at ``path``: its outputs FILE_sNNN_*, and
    ``payload(s)`` for the work."""
    kinds = ["recon", "zero_filled", "reference"] + (["std"] if samples > 1 else [])
    stem = path.stem
    return [
        Unit(
            f"{path.name} slice {s}",
            {**{k: out_dir / f"{stem}_s{s:03d}_{k}.png" for k in kinds}, "npy": out_dir / f"{stem}_s{s:03d}_recon.npy"},
            payload(s),
        )
        for s in slices
    ]


def open_mri_package(path):
    """The model package at ``path``, refused with what to do when it is an image model."""
    from .package import ModelPackage

    pkg = ModelPackage.open(path)
    if pkg.space.kind != "mri":
        raise InputError(
            f"{pkg.path} is an image model package ({pkg.space.kind} data, {pkg.space.channels} "
            "channel(s)); `diffunfold mri` needs a package exported from an MRI run (data "
            "fastmri or phantom). Restore image files with `diffunfold restore`"
        )
    return pkg


def run_mri(args) -> int:
    import time

    from .data.fastmri import FastMRIFile, FastMRISlices

    args.churn_setting = V.churn_setting(args.churn, args.churn_range)  # None: the package's
    pkg = open_mri_package(args.package)
    path = _one_file(args.file)
    from .mrd.rawfile import is_mrd_file  # raw MRD (ISMRMRD) data: reconstructed as acquired

    if is_mrd_file(path):
        from .mri_raw import run_mri_raw

        return run_mri_raw(args, path)
    args.coil_maps = fastmri_coil_maps(args)  # default: as a scanner delivers it, maps from the data
    with FastMRIFile(path) as f:  # checks the layout; a missing or foreign file fails here
        count = f.num_slices
    slices = V.parse_slices(args.slices, count)
    # the reference: the fully sampled SENSE image (its maps from all of k-space) unless simulated
    reference = "simulate" if args.coil_maps == "simulate" else "estimate"
    ds = FastMRISlices(path, ncoils=args.coils, coil_maps=reference, crop=(args.size, args.size) if args.size else None)
    out_dir = Path(args.out)
    units = slice_units(path, slices, out_dir, args.samples, lambda s: s)
    job = _MRIJob(args, path, ds, mask_png(out_dir, path))
    check_outputs(
        out_dir,
        units,
        [path],
        {path.resolve().parent},
        [job.mask_png] + ([Path(args.json)] if args.json else []),
        args.overwrite,
        args.resume,
    )
    notes = _untrained_pattern_note(pkg, args)
    for n in notes:
        print(n)
    job.solver = load_solver(pkg, args)
    t0 = time.perf_counter()
    batch = run_units(
        units,
        lambda u: _mri_slice(u, job),
        args.resume,
        progress_bar("reconstructing", "slice", args.quiet),
        "slice",
        out_dir,
    )
    refuse_if_nothing_done(batch, "slice")
    _mri_report(args, pkg, job, count, batch, time.perf_counter() - t0, notes)
    return finish(batch, "slice")


__all__ = ["add_mri_arguments", "run_mri", "slice_units"]

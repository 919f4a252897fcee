"""``diffunfold mri`` on a raw MRD (ISMRMRD) file: the slices reconstructed as acquired (the
acquired lines are the mask), slice by slice exactly as the MRD server does
(:mod:`diffunfold.mrd.recon`). The single-process path is :func:`run_mri_raw`; with ``--ray``
one whole file is one task (:func:`reconstruct_raw` is what both run).

Nothing here imports torch; heavy imports happen inside the functions.
"""

from __future__ import annotations

from pathlib import Path

from . import cli_values as V
from .errors import InputError


def raw_solver(args):
    """The solver for a raw MRD file, loaded as the MRD server loads it."""
    from .package import ModelPackage
    from .runtime.solver import Solver

    pkg = ModelPackage.open(args.package)
    if pkg.space.kind != "mri":
        raise InputError(f"{pkg.path} is not an MRI model package ({pkg.space.kind} data)")
    return Solver.load(pkg, backend=args.backend, device=args.device, threads=args.threads or None)


def raw_settings(args):
    """``diffunfold mri`` options as reconstruction settings; options that only make sense for
    retrospective undersampling of a fastMRI file are refused rather than ignored."""
    from .mrd.recon import ReconSettings

    if args.coil_maps in ("simulate", "estimate"):
        raise InputError(
            f"--coil-maps {args.coil_maps} needs a fastMRI file (its fully sampled k-space); a raw MRD "
            "file uses --coil-maps espirit (default) or calibration (the ratio maps of its calibration region)"
        )
    if args.size is not None:
        raise InputError("--size crops fastMRI slices; an MRD raw file is reconstructed on its recon matrix")
    maps = args.coil_maps or "espirit"
    return ReconSettings(
        steps=args.steps, sampler=args.sampler, samples=args.samples, seed=args.seed, coil_maps=maps
    ).checked()


def reconstruct_raw(solver, args, path: Path, settings, overwrite: bool, say=print) -> tuple[list[dict], dict]:
    """Reconstruct the chosen slices (--slices, default all) of the raw file at ``path`` and write
    its outputs; returns the per-slice rows and format -> path written."""
    from .mrd.outputs import write_outputs
    from .mrd.rawfile import read_raw
    from .mrd.recon import reconstruct_slice, to_images

    scan = read_raw(path)
    chosen = V.parse_slices(args.slices or "all", len(scan.slices))
    say(
        f"{path.name}: MRD raw data, {len(scan.slices)} slice(s), grid {scan.encoding.grid}, "
        f"{scan.slices[0].kspace.shape[0]} coils; skipped {scan.skipped or 'nothing'}; the acquired lines are "
        "the mask (--mask/--acceleration apply to fastMRI files)"
    )
    images, rows = [], []
    for i in chosen:
        data = scan.slices[i]
        rec = reconstruct_slice(solver, data, scan.encoding, settings)
        images += to_images(rec, data, scan.encoding, settings, Path(args.package).name)
        info = rec.info or {}
        noise = info.get("noise", "")
        rows.append(
            {
                "slice": data.slice,
                "acceleration": data.acceleration,
                "noise_std": rec.noise_std * rec.scale,
                "noise": noise,
                "coil_maps": info.get("coil_maps", settings.coil_maps),
                "map_std": rec.map_std * rec.scale,
                "start": info.get("start"),
                "seconds": rec.seconds,
            }
        )
        say(
            f"| slice {data.slice} | {data.acceleration:.2f}x | noise {rec.noise_std * rec.scale:.3g} ({noise}) | "
            f"{rec.seconds:.2f} s |"
        )
    paths = write_outputs(images, scan.header_xml, args.out, path.stem, overwrite=overwrite)
    return rows, paths


def run_mri_raw(args, path: Path) -> int:
    """``diffunfold mri PACKAGE FILE.h5`` where FILE is a raw MRD file: reconstruct the slices as
    acquired (the acquired lines are the mask), exactly as the server would."""
    from .mrd.outputs import planned_outputs, refuse_existing

    settings = raw_settings(args)
    plan = planned_outputs(args.out, path.stem)
    refuse_existing(list(plan.values()) + ([Path(args.json)] if args.json else []), args.overwrite)
    solver = raw_solver(args)
    rows, paths = reconstruct_raw(solver, args, path, settings, args.overwrite)
    for kind, written in paths.items():
        print(f"wrote {written} ({kind})")
    if args.json:
        from .safe_io import write_json  # whole, and never through a link at that path

        write_json(
            args.json,
            {"command": "mri", "file": str(path), "format": "mrd", "backend": solver.backend_name, "rows": rows},
        )
    return 0


__all__ = ["raw_settings", "raw_solver", "reconstruct_raw", "run_mri_raw"]

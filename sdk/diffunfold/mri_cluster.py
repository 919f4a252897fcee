"""``diffunfold mri FILES... --ray [ADDRESS]``: fastMRI files and raw MRD files, as one batch on a
Ray actor pool (:mod:`diffunfold.cluster`).

A task is one slice of a fastMRI file (each actor keeps the files it has opened and their masks)
or one whole raw MRD file. The per-slice work is :func:`diffunfold.mri._mri_slice` and the
per-file work :func:`diffunfold.mri_raw.reconstruct_raw`, as without --ray: the same outputs, the
same names (``FILE_sNNN_*``, ``FILE_mask.png``; ``FILE_images.h5``, ...), so the outputs of
``--ray`` over several files are those of one single-process run per file into the same --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import cli_values as V
from .batch import Unit, check_outputs, finish, refuse_if_nothing_done
from .cluster import cluster_lines, run_units_on_ray
from .command_common import fmt, report_runtime, skipped_note, write_report
from .errors import InputError
from .mri import (
    MAPS_SAID,
    _mri_slice,
    _mri_table,
    _MRIJob,
    _untrained_pattern_note,
    fastmri_coil_maps,
    mask_png,
    open_mri_package,
    slice_units,
)

__all__ = ["run_mri_on_ray"]


def _expand(files: list[Path]) -> list[Path]:
    """Files as given and the *.h5 files of folders (sorted, hidden ones skipped); the stems name
    the outputs, so two inputs with one stem are refused."""
    out: list[Path] = []
    for p in files:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix == ".h5" and f.is_file() and not f.name.startswith("."))
            if not found:
                raise InputError(f"folder {str(p)!r} holds no .h5 files (subfolders are not searched)")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise InputError(f"input {str(p)!r} does not exist; give fastMRI or MRD .h5 files, or folders of them")
    out = list({f.resolve(): f for f in out}.values())
    stems = [f.stem for f in out]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise InputError(f"two inputs are named {twice[0]}.h5: their outputs would share names; rename one")
    return out


def _plan(args, files: list[Path], out_dir: Path):
    """The units (fastMRI slices, raw files), the masks (extra outputs), the files that could not
    be opened (name, reason) and the slice count of each fastMRI file."""
    from .data.fastmri import FastMRIFile
    from .mrd.outputs import planned_outputs
    from .mrd.rawfile import is_mrd_file
    from .mri_raw import raw_settings

    units, masks, unreadable, counts = [], [], [], {}
    for path in files:
        try:
            raw = is_mrd_file(path)
            if not raw:
                with FastMRIFile(path) as f:  # checks the layout
                    counts[path] = f.num_slices
        except (InputError, OSError) as exc:  # this file fails alone, named in the report
            unreadable.append((str(path), str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"))
            continue
        if raw:
            raw_settings(args)  # refuses options a raw file cannot honour, before any work
            units.append(Unit(path.name, dict(planned_outputs(out_dir, path.stem)), ("raw", path), str(path)))
            continue
        fastmri_coil_maps(args)  # refuses the raw files' calibration maps, before any work
        slices = V.parse_slices(args.slices, counts[path])
        units += slice_units(path, slices, out_dir, args.samples, lambda s, p=path: ("fastmri", p, s))
        masks.append(mask_png(out_dir, path))
    return units, masks, unreadable, counts


def _mri_worker(args) -> tuple:
    """A Ray actor's set-up: the solver loaded once; a job per fastMRI file, opened at its first slice."""
    from .data.fastmri import FastMRISlices
    from .mri_raw import raw_settings, raw_solver, reconstruct_raw

    solver = raw_solver(args)  # as load_solver, and the package checked to be an MRI one
    fastmri = argparse.Namespace(**{**vars(args), "coil_maps": fastmri_coil_maps(args)})
    reference = "simulate" if fastmri.coil_maps == "simulate" else "estimate"
    crop = (args.size, args.size) if args.size else None
    jobs: dict[Path, _MRIJob] = {}

    def work(unit: Unit) -> dict:
        if unit.payload[0] == "raw":
            path = unit.payload[1]
            # check_outputs vetted the outputs: a retried or resumed file replaces what it left
            rows, paths = reconstruct_raw(solver, args, path, raw_settings(args), True, say=lambda s: None)
            seconds = sum(r["seconds"] for r in rows)
            return {"name": unit.name, "file": str(path), "format": "mrd", "slices": rows, "seconds": seconds}
        _, path, s = unit.payload
        if path not in jobs:
            ds = FastMRISlices(path, ncoils=args.coils, coil_maps=reference, crop=crop)
            jobs[path] = _MRIJob(fastmri, path, ds, mask_png(Path(args.out), path), solver)
        return _mri_slice(Unit(unit.name, unit.outputs, s), jobs[path])

    return work, {"backend_name": solver.backend_name, "backend_reason": solver.backend_reason, "stages": solver.stages}


def run_mri_on_ray(args) -> int:
    """``diffunfold mri`` with --ray: every file given (and the .h5 files of folders given)."""
    import time

    args.churn_setting = V.churn_setting(args.churn, args.churn_range)  # None: the package's
    pkg = open_mri_package(args.package)
    files = _expand(args.file)
    out_dir = Path(args.out)
    units, masks, unreadable, counts = _plan(args, files, out_dir)
    if not units:
        raise InputError(unreadable[0][1] + (f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""))
    extra = masks + ([Path(args.json)] if args.json else [])
    check_outputs(out_dir, units, files, {f.resolve().parent for f in files}, extra, args.overwrite, args.resume)
    notes = _untrained_pattern_note(pkg, args) if counts else []
    for n in notes:
        print(n)
    t0 = time.perf_counter()
    batch, info, figures = run_units_on_ray(units, _mri_worker, args, args.resume, "slice", "reconstructing", out_dir)
    batch.failures[:0] = unreadable
    refuse_if_nothing_done(batch, "input")
    _report(args, pkg, batch, info, figures, counts, time.perf_counter() - t0, notes)
    return finish(batch, "input")


def _report(args, pkg, batch, info, figures: dict, counts: dict, wall: float, notes: list[str]) -> None:
    out_dir = Path(args.out)
    slices = [r for r in batch.rows if "slice" in r]
    raw = [r for r in batch.rows if r.get("format") == "mrd"]
    maps = MAPS_SAID[args.coil_maps or "espirit"]
    print(
        f"{pkg.summary()}\n{len(counts)} fastMRI file(s) ({maps}; mask {args.mask} {args.acceleration:g}x), "
        f"{len(raw)} raw MRD file(s) done -> {out_dir}/"
    )
    for path in counts:
        rows = sorted((r for r in slices if r["file"] == str(path)), key=lambda r: r["slice"])
        if rows:
            print(f"{path.name}: {len(rows)} slice(s) of {counts[path]}")
            print("\n".join(_mri_table(rows)))
    for r in raw:
        print(f"{Path(r['file']).name}: MRD raw data, {len(r['slices'])} slice(s) in {fmt(r['seconds'])} s")
    for n in skipped_note(batch, "task", out_dir):
        print(f"note: {n}")
    print("\n".join(report_runtime(info, slices, "slice", wall, args.samples)))
    print("\n".join(cluster_lines(figures, "task")))
    if args.json:
        settings = {k: getattr(args, k) for k in ("mask", "acceleration", "center_fraction", "coil_maps", "size")}
        write_report(
            args.json,
            {
                "command": "mri",
                "package": str(pkg.path),
                "files": [str(p) for p in args.file],
                **settings,
                "noise": args.noise_rel,
                "steps": args.steps or pkg.schedule["steps"],
                "samples": args.samples,
                "seed": args.seed,
                "backend": info.backend_name,
                "backend_reason": info.backend_reason,
                "wall_s": wall,
                "notes": notes,
                "cluster": figures,
            },
            batch,
            "name",
        )

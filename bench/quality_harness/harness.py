"""One run of the harness: settings from the command line, the held-out data, every case scored
(baselines once per kind, then each package) and the files written."""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine import module_version

from diffunfold import edm
from diffunfold.errors import InputError

from .baselines import METHODS, image_baselines, mri_baselines
from .cases import lpips_metric, make_case, score
from .entrants import Entrant, learned_entrants, run_entrant, zero_shot_entrants
from .figure import figure
from .methods_report import markdown_methods
from .packages import Scored, contrast_label, model_method_name, open_inputs, run_model
from .report import _row, markdown_compare, markdown_package, summary
from .tasks import QUICK, TASK_BY_KEY, TASKS, Settings


def settings_from(args) -> Settings:
    base = QUICK if args.quick else Settings()
    over = {
        k: v
        for k, v in (
            ("size", args.size),
            ("images", args.images),
            ("samples", args.samples),
            ("steps", args.steps),
            ("sampler", args.sampler),
            ("sigma_min", args.sigma_min),
            ("churn", args.churn),
            ("ensemble", args.ensemble),
            ("contrast", args.contrast),
            ("schedule", args.schedule),
        )
        if v is not None
    }
    if args.tasks:
        unknown = sorted(set(args.tasks) - set(TASK_BY_KEY))
        if unknown:
            raise InputError(f"unknown task(s) {unknown}; choose from {list(TASK_BY_KEY)}")
        over["tasks"] = tuple(args.tasks)
    if args.noise is not None:
        over["image_noise"] = tuple(args.noise)
    if args.mri_noise is not None:
        over["mri_noise"] = tuple(args.mri_noise)
    s = Settings(**{**base.__dict__, **over})
    if s.samples < 1 or s.images < 1 or s.size < 16 or (s.steps is not None and s.steps < 1):
        raise InputError("--samples, --images and --steps must be >= 1, --size >= 16")
    if s.sigma_min is not None and not s.sigma_min > 0:
        raise InputError(f"--sigma-min must be > 0, got {s.sigma_min}")
    if s.churn is not None and not s.churn >= 0:
        raise InputError(f"--churn must be >= 0, got {s.churn}")
    if any(v < 0 for v in s.image_noise + s.mri_noise):
        raise InputError("noise levels must be >= 0")
    return s


def default_steps(sc: Scored, s: Settings) -> str:
    """The steps a package runs when --steps is not given: its fast schedule's (image packages
    that have one, unless --schedule full) or its full one's."""
    fast = sc.package.fast_schedule if sc.kind == "image" and s.schedule != "full" else None
    if fast is None:
        return str(sc.package.schedule["steps"])
    return f"{fast.steps} (from the classical estimate at sigma {fast.sigma_max:g})"


def held_out_data(args, s: Settings) -> dict[str, Callable[[], tuple[list[str], np.ndarray]]]:
    """Per kind, a loader of the held-out names and images: ``--photos`` / ``--mri-volumes``
    folders (``diffunfold data``) when given, else scikit-image's photos and synthetic phantoms."""
    from diffunfold.data import held_out as ho
    from diffunfold.demo_data import held_out_images, held_out_phantoms

    image = (
        (lambda: ho.held_out_photos(ho.check_folder(args.photos, "photo"), s.size, s.images))
        if args.photos
        else (lambda: held_out_images(s.size, s.images))
    )
    mri = (
        (lambda: ho.held_out_slices(ho.check_folder(args.mri_volumes, "MRI volume"), s.size, s.images))
        if args.mri_volumes
        else (lambda: held_out_phantoms(s.size, s.images))
    )
    return {"image": image, "mri": mri}


def data_label(args, kind: str) -> str:
    if kind == "mri":
        return f"slices of the held-out volume(s) in {args.mri_volumes}" if args.mri_volumes else "synthetic phantoms"
    return f"photos from {args.photos}" if args.photos else "scikit-image photos"


def score_all(
    scored: list[Scored], s: Settings, args, quiet: bool, entrants: list[Entrant] = (), lpips=None
) -> tuple[dict, str | None, float | None]:
    """Every task x noise level of every kind present: the baselines once, then each package
    (LPIPS on images with ``lpips``). Returns the baselines' rows per kind, why SigPy was skipped
    (or None) and its forward check."""
    from tqdm.auto import tqdm

    from diffunfold import quality_baselines as qb

    kinds = [k for k in ("image", "mri") if any(sc.kind == k for sc in [*scored, *entrants])]
    tasks = {k: [TASK_BY_KEY[key] for key in s.tasks if TASK_BY_KEY[key].kind == k] for k in kinds}
    for k in kinds:
        if not tasks[k]:
            raise InputError(
                f"no {k} task selected for the {k} package(s); the {k} tasks are "
                f"{[t.key for t in TASKS if t.kind == k]}"
            )
    levels = {"image": s.image_noise, "mri": s.mri_noise}
    sigpy_reason = qb.sigpy_status() if "mri" in kinds else None
    sigpy_check = None
    data = held_out_data(args, s)
    total = sum(len(tasks[k]) * len(levels[k]) * (1 + sum(sc.kind == k for sc in [*scored, *entrants])) for k in kinds)
    baseline_rows: dict[str, list[dict]] = {k: [] for k in kinds}
    with tqdm(total=total, desc="quality", unit="step", disable=quiet, dynamic_ncols=True) as bar:
        for kind in kinds:
            names, x = data[kind]()
            for task in tasks[kind]:
                for level in levels[kind]:
                    case = make_case(task, level, names, x, s, args.seed, args.coils)
                    bar.set_postfix_str(f"{task.key} @ {level:g}: baselines")
                    if kind == "mri":
                        if sigpy_reason is None and sigpy_check is None:
                            try:
                                sigpy_check = qb.check_sigpy_forward(case.op)
                            except InputError as exc:
                                sigpy_reason = str(exc)
                        ests = mri_baselines(case, s, sigpy_reason)
                    else:
                        ests = image_baselines(case, s)
                    for key, est in ests.items():
                        m = METHODS[key]
                        baseline_rows[kind].append(_row(case, key, m.name, m.oracle, True, score(case, est, lpips)))
                    bar.update(1)
                    for sc in (sc for sc in scored if sc.kind == kind):
                        bar.set_postfix_str(f"{task.key} @ {level:g}: {sc.name}")
                        for key, est in run_model(sc, case, s).items():
                            name = model_method_name(key, s.samples)
                            sc.rows.append(_row(case, key, name, False, False, score(case, est, lpips)))
                        bar.update(1)
                    for e in (e for e in entrants if e.kind == kind):
                        bar.set_postfix_str(f"{task.key} @ {level:g}: {e.name}")
                        if e.applies(task):
                            e.rows.append(
                                _row(case, "mean", e.name, False, False, score(case, run_entrant(e, case, s), lpips))
                            )
                        bar.update(1)
    return baseline_rows, sigpy_reason, sigpy_check


def write_outputs(
    scored: list[Scored],
    entrants: list[Entrant],
    baseline_rows: dict,
    meta: dict,
    s: Settings,
    out: Path,
    log: Callable[[str], None],
    quiet: bool,
) -> list[Path]:
    """quality-<package>.md/.json/.png per package, and quality-compare-<kinds>.md for several
    (named by the data kinds in it, so an image run and an MRI run can share a folder)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sc in scored:
        stem = out / f"quality-{sc.name}"
        others = [o for o in scored if o is not sc and o.kind == sc.kind]
        md = markdown_package(sc, baseline_rows[sc.kind], meta, s)
        stem.with_suffix(".md").write_text(md)
        payload = {
            "package": {
                "name": sc.name,
                "path": str(sc.path),
                "source": sc.source,
                "manifest_source": sc.package.manifest.get("source", {}),
                "manifest_sha256": sc.package.manifest.get("manifest_sha256"),
                "kind": sc.kind,
                "backend": sc.solver.backend_name,
                "model_seconds": sc.model_seconds,
            },
            "meta": meta,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.__dict__.items()},
            "summary": summary(sc, baseline_rows[sc.kind]),
            "rows": sc.rows + baseline_rows[sc.kind],
        }
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
        why = figure(sc, others, baseline_rows[sc.kind], s, stem.with_suffix(".png"))
        if why:
            log(why)
        written += [stem.with_suffix(e) for e in (".md", ".json") + (() if why else (".png",))]
        if not quiet:
            print(md.split("## Every method")[0])
    for kind in ("image", "mri"):
        others = [e for e in entrants if e.kind == kind]
        if others:
            path = out / f"quality-methods-{kind}.md"
            path.write_text(
                markdown_methods([sc for sc in scored if sc.kind == kind], others, baseline_rows[kind], meta, s)
            )
            (out / f"quality-methods-{kind}.json").write_text(
                json.dumps({"meta": meta, "rows": [r for e in others for r in e.rows]}, indent=1) + "\n"
            )
            written += [path, path.with_suffix(".json")]
    if len(scored) > 1:
        kinds = "-".join(k for k in ("image", "mri") if any(sc.kind == k for sc in scored))
        compare = out / f"quality-compare-{kinds}.md"
        compare.write_text(markdown_compare(scored, baseline_rows, meta, s))
        written.append(compare)
    return written


def run(args) -> int:
    from diffunfold.hardware import describe_cpu
    from diffunfold.runtime import Solver

    s = settings_from(args)
    log = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        scored = open_inputs(args.packages, Path(tmp), log)
        options = dict(backend=args.backend, device=args.device, threads=args.threads)
        for sc in scored:
            sc.solver = Solver.load(sc.package, **options)
        entrants = learned_entrants(args.learned or [])
        if args.zero_shot:
            entrants = zero_shot_entrants(args.zero_shot, args.methods or [], options) + entrants
        lpips, lpips_note = lpips_metric(args.lpips)
        log(lpips_note)
        baseline_rows, sigpy_reason, sigpy_check = score_all(scored, s, args, args.quiet, entrants, lpips)
        wall = time.perf_counter() - t_start
        meta = {
            "command": " ".join(shlex.quote(a) for a in ["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "machine": describe_cpu(),
            "seed": args.seed,
            "wall_seconds": wall,
            "data": {k: data_label(args, k) for k in ("image", "mri")},
            "steps": {sc.name: s.steps or default_steps(sc, s) for sc in scored},
            "sigma_min": s.sigma_min,
            "sampler": {sc.name: s.sampler or sc.package.schedule["sampler"] for sc in scored},
            "churn": {
                sc.name: (sc.package.churn if s.churn is None else edm.Churn.of(s.churn)).as_dict() for sc in scored
            },
            "ensemble": {sc.name: s.ensemble or sc.package.ensemble for sc in scored},
            "contrast": {sc.name: contrast_label(sc, s) for sc in scored},
            "lpips": lpips_note,
            "sigpy": module_version("sigpy"),
            "sigpy_skipped": sigpy_reason,
            "sigpy_forward_check_rel_err": sigpy_check,
            "versions": {m: module_version(m) for m in ("numpy", "scipy", "skimage", "onnxruntime", "sigpy")},
        }
        written = write_outputs(scored, entrants, baseline_rows, meta, s, Path(args.out), log, args.quiet)
    print(f"{len(scored)} package(s) in {wall:.0f} s; wrote " + ", ".join(str(p) for p in written))
    return 0

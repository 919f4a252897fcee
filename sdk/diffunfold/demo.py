"""``diffunfold demo``: the bundled packages restore held-out data for every task, against the
classical baselines, through the runtime (no torch). Writes a figure per task and a table.

Held-out data, never trained on: the five scikit-image photos of ``BUNDLED_HELD_OUT`` for the
image tasks, and synthetic 15-coil phantoms drawn from a seed stream of their own for MRI.
Each image gets its own noise and sampler seed, so the run repeats exactly. The reported
result is the posterior mean of ``--samples`` draws; their per-pixel spread is the
uncertainty map.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import cli_values as V
from .demo_report import closing_lines, results_markdown
from .errors import InputError
from .safe_io import refuse_nonempty_folder, write_json, write_text

REPO = Path(__file__).resolve().parents[2]
DEFAULT_IMAGE_PACKAGE = REPO / "samples" / "models" / "image-small"
DEFAULT_MRI_PACKAGE = REPO / "samples" / "models" / "mri-small"


@dataclass(frozen=True)
class DemoTask:
    key: str  # file stem of the figure and key in the JSON
    label: str
    task: str  # physics.tasks name
    params: dict = field(default_factory=dict)
    trained: bool = True

    @property
    def is_mri(self) -> bool:
        return self.task == "mri"


TASKS = (
    DemoTask("gaussian_blur", "Gaussian blur (sigma 2)", "gaussian_blur", {"sigma": 2.0}),
    DemoTask(
        "anisotropic_blur",
        "anisotropic blur (sigma 3 x 1, 34 deg)",
        "anisotropic_blur",
        {"sigma": [3.0, 1.0], "angle": 0.6},
    ),
    DemoTask("sr_x4", "super-resolution x4 (box)", "sr", {"factor": 4}),
    DemoTask("inpainting", "inpainting (40 % of pixels missing)", "inpainting", {"missing": 0.4}),
    DemoTask(
        "motion_blur", "motion blur (length 7) - never seen in training", "motion_blur", {"length": 7.0}, trained=False
    ),
    DemoTask("mri_gaussian1d_4x", "MRI, Gaussian 1-D mask, 4x", "mri", {"kind": "gaussian1d", "acceleration": 4.0}),
    DemoTask("mri_gaussian2d_8x", "MRI, Gaussian 2-D mask, 8x", "mri", {"kind": "gaussian2d", "acceleration": 8.0}),
)


def _measurement_view(task: DemoTask, op, y, x) -> tuple[np.ndarray, str]:
    """What the measurement looks like as a picture, and a caption (its PSNR where it is an
    image of x)."""
    from .figures import to_rgb8
    from .metrics import psnr

    if task.is_mri:
        # root-sum-of-squares over coils of the sampled k-space, log-compressed
        k = np.sqrt((np.abs(np.asarray(y[0])) ** 2).sum(axis=0))
        k = np.log1p(k / (k.max() / 1e3 + 1e-30))
        return to_rgb8(k / k.max()), f"k-space, {op.mask.size / op.mask.sum():.1f}x"
    y0 = np.asarray(y[0])
    if y0.shape != x.shape:
        return to_rgb8(y0), f"{y0.shape[-2]}x{y0.shape[-1]} input"
    return to_rgb8(y0), f"PSNR {psnr(y0, x, 1.0):.2f}"


def _scores(estimate, x, mri: bool) -> tuple[float, float]:
    from .metrics import psnr, ssim

    # Images: data range 1. MRI: magnitudes, range = the reference's max (fastMRI's convention).
    rng = None if mri else 1.0
    return float(psnr(estimate, x, rng)), float(ssim(estimate, x, rng))


def _view(image, mri: bool, scale: float) -> np.ndarray:
    from .figures import to_rgb8

    return to_rgb8(np.abs(image[0]) / scale if mri else image)


def run_task(task: DemoTask, solver, names, clean, args, bar) -> dict[str, Any]:
    """Restore every held-out item of one task; returns the task's rows, means and panels."""
    from .baselines import baseline_name

    rows, panels, stds = [], [], []
    for i, (name, x) in enumerate(zip(names, clean)):
        bar.set_postfix_str(f"{task.key}: {name}")
        op, row, std, panel = _restore_item(task, solver, name, x, args.seed + i, args)
        rows.append(row)
        stds.append(std)
        panels.append(panel)
        bar.update(1)
    _add_uncertainty(rows, stds, panels)
    mean = {
        k: float(np.mean([r[k] for r in rows]))
        for k in ("psnr", "ssim", "psnr_baseline", "ssim_baseline", "seconds")
        + (() if task.is_mri else ("psnr_pinv", "ssim_pinv"))
    }
    return {
        "key": task.key,
        "label": task.label,
        "task": task.task,
        "params": task.params,
        "trained": task.trained,
        "baseline": baseline_name(op),
        "noise": rows[0]["noise_std"] if not task.is_mri else f"{args.mri_noise:g} x max|k|",
        "mean": mean,
        "rows": rows,
        "panels": panels,
    }


def _measure(task: DemoTask, x, seed: int, args):
    """The task's operator for ``x``, its noisy measurement and the noise std (in the data's units)."""
    from .physics.tasks import make_operator

    shape = x.shape[-2:]
    if task.is_mri:
        op = make_operator("mri", shape, **task.params, ncoils=args.coils, seed=args.seed)
        noise = args.mri_noise * float(np.abs(op.A(x[None])).max())
    else:
        op = make_operator(task.task, shape, **task.params)
        noise = args.noise
    y = op.measure(x[None], noise, seed=[seed])
    y = y.astype(np.complex64 if task.is_mri else np.float32)
    return op, y, noise


def _restore_item(task: DemoTask, solver, name: str, x, seed: int, args):
    """Measure one held-out item, restore it and score it against the classical baseline (and the
    pinv for images): ``(operator, row, per-pixel std or None, figure panels)``."""
    from .baselines import classical_baseline
    from .progress import step_bar

    op, y, noise = _measure(task, x, seed, args)
    sol = solver.solve(
        y,
        op,
        seed=seed,
        samples=args.samples,
        steps=args.steps,
        noise_std=noise,
        progress=step_bar(f"{task.key}: {name}", args.quiet),
    )
    est = np.asarray(sol.images)[0]
    base = np.asarray(classical_baseline(op, y, noise))[0]
    if not task.is_mri:
        base = np.clip(base, 0.0, 1.0)
    psnr_m, ssim_m = _scores(est, x, task.is_mri)
    psnr_b, ssim_b = _scores(base, x, task.is_mri)
    row = {
        "image": name,
        "seed": seed,
        "noise_std": float(noise),
        "nfe": sol.nfe,
        "psnr": psnr_m,
        "ssim": ssim_m,
        "psnr_baseline": psnr_b,
        "ssim_baseline": ssim_b,
        "seconds": sol.timing.total,
        "timing": sol.timing.as_dict(),
    }
    if not task.is_mri:
        row["psnr_pinv"], row["ssim_pinv"] = _scores(np.clip(np.asarray(op.pinv(y))[0], 0, 1), x, False)
    std = None if sol.std is None else np.asarray(sol.std)[0].mean(axis=0)
    return op, row, std, _item_panels(task, name, op, y, x, est, base, row, args.samples)


def _item_panels(task: DemoTask, name: str, op, y, x, est, base, row: dict, samples: int) -> list:
    """One figure row: measurement, baseline, Diff-Unfolding, (the uncertainty, later), truth."""
    from .baselines import baseline_name
    from .figures import Panel

    scale = float(np.abs(x).max()) if task.is_mri else 1.0
    meas, meas_caption = _measurement_view(task, op, y, x)
    return [
        Panel(meas, f"{name}\n{meas_caption}"),
        Panel(
            _view(base, task.is_mri, scale),
            f"{baseline_name(op)}\nPSNR {row['psnr_baseline']:.2f}  SSIM {row['ssim_baseline']:.3f}",
        ),
        Panel(
            _view(est, task.is_mri, scale),
            f"{'posterior mean' if samples > 1 else 'one sample'}\nPSNR {row['psnr']:.2f}  SSIM {row['ssim']:.3f}",
        ),
        None,  # the uncertainty map, once the task's common colour scale is known
        Panel(_view(x, task.is_mri, scale), "ground truth"),
    ]


def _add_uncertainty(rows: list[dict], stds: list, panels: list[list]) -> None:
    """Fill in each row's uncertainty map on the task's common colour scale (and its mean std)."""
    from .figures import Panel, colormap

    top = max((float(s.max()) for s in stds if s is not None), default=0.0)
    for row, std, p in zip(rows, stds, panels):
        if std is None:
            p[3] = Panel(np.zeros(p[0].pixels.shape, np.uint8), "one sample:\nno spread")
        else:
            row["std_mean"] = float(std.mean())
            p[3] = Panel(colormap(std, top), f"mean std {std.mean():.4f}\nscale 0-{top:.3f}")


def _run_tasks(chosen, data, solvers, args, out: Path, total: int) -> list[dict]:
    """Run each task and write its figure (whole, or not at all); Ctrl-C says how far it got."""
    from tqdm.auto import tqdm

    from .figures import grid

    results = []
    with tqdm(total=total, desc="demo", unit="image", disable=args.quiet, dynamic_ncols=True) as bar:
        try:
            for task in chosen:
                kind = "mri" if task.is_mri else "image"
                names, clean = data[kind]
                r = run_task(task, solvers[kind], names, clean, args, bar)
                grid(
                    r.pop("panels"),
                    [
                        "measurement",
                        "classical baseline",
                        "Diff-Unfolding",
                        f"uncertainty ({args.samples} samples)",
                        "ground truth",
                    ],
                    title=f"{r['label']}: {r['mean']['psnr']:.2f} dB vs {r['mean']['psnr_baseline']:.2f} dB "
                    f"({r['baseline']}), mean of {len(names)}",
                    path=out / f"{task.key}.png",
                )
                results.append(r)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"{len(results)} of {len(chosen)} task figure(s) written whole to {out}/; "
                "the tables (results.md, .json) come at the end: rerun with --overwrite"
            ) from None
    return results


def run_demo(args) -> int:
    from .demo_data import load_demo_data
    from .runtime import Solver

    chosen = _chosen_tasks(args.tasks)
    packages = _open_packages(chosen, args)
    out = Path(args.out)
    _clear_out(out, args.overwrite)

    loaded = {kind: load_demo_data(kind, args.data, args.size, args.images) for kind in packages}
    data = {kind: (d["names"], d["images"]) for kind, d in loaded.items()}
    solvers = {
        k: Solver.load(p, backend=args.backend, device=args.device, threads=args.threads) for k, p in packages.items()
    }
    total = sum(len(data["mri" if t.is_mri else "image"][0]) for t in chosen)
    t0 = time.perf_counter()
    results = _run_tasks(chosen, data, solvers, args, out, total)
    wall = time.perf_counter() - t0

    meta = _meta(args, results, solvers, packages, loaded, wall)
    write_text(out / "results.md", results_markdown(results, meta))
    write_json(out / "results.json", {**meta, "tasks": results})

    print(results_markdown(results, meta))
    lost = [r["label"] for r in results if r["trained"] and r["mean"]["psnr"] <= r["mean"]["psnr_baseline"]]
    if lost:
        print(f"warning: Diff-Unfolding did not beat the classical baseline on: {', '.join(lost)}")
    print(f"{total} images in {wall:.0f} s; figures, results.md and results.json in {out}/")
    print(closing_lines(meta))
    return 0


def _chosen_tasks(keys: list[str] | None) -> list[DemoTask]:
    """The tasks ``--task`` names (all without it); an InputError naming any unknown one."""
    chosen = [t for t in TASKS if not keys or t.key in keys]
    unknown = sorted(set(keys or []) - {t.key for t in TASKS})
    if unknown:
        raise InputError(f"unknown demo task(s) {unknown}; choose from {[t.key for t in TASKS]}")
    return chosen


def _open_packages(chosen: list[DemoTask], args) -> dict:
    """The image and/or MRI package the chosen tasks need, opened (every file's sha256 checked)."""
    from .package import ModelPackage

    packages = {}
    for kind, path in (("image", args.image_package), ("mri", args.mri_package)):
        if any(t.is_mri == (kind == "mri") for t in chosen):
            if not Path(path).exists():
                raise InputError(
                    f"the bundled {kind} package {path} is missing: it ships with the repository "
                    "(samples/models/); restore it with `git checkout -- samples/models` or pass "
                    f"--{kind}-package"
                )
            packages[kind] = ModelPackage.open(path)  # verifies every file's sha256
    return packages


def _default_steps(package) -> str:
    """What a package runs by default: its few-call schedule where it has one, else the full one."""
    fast = package.fast_schedule
    if fast is None:
        return f"{package.schedule['steps']} from noise"
    return f"{fast.steps} from the classical estimate"


def _meta(args, results: list[dict], solvers: dict, packages: dict, loaded: dict, wall: float) -> dict:
    """What ran, how and on what: the header of results.md and the top of results.json."""
    from .hardware import describe_cpu

    any_solver = next(iter(solvers.values()))
    return {
        "command": "diffunfold demo" + (f" --out {args.out}" if args.out != "demo" else ""),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": describe_cpu(),
        "images": args.images,
        "size": args.size,
        "samples": args.samples,
        "steps": {k: args.steps or _default_steps(s.package) for k, s in solvers.items()},
        "sampler": any_solver.package.schedule["sampler"],
        "nfe": {r["key"]: r["rows"][0]["nfe"] for r in results},
        "noise": args.noise,
        "mri_noise": args.mri_noise,
        "backend": any_solver.backend_name,
        "backend_reason": any_solver.backend_reason,
        "packages": {
            k: {
                "path": str(p.path),
                "manifest_sha256": p.manifest.get("manifest_sha256"),
                "source": p.manifest.get("source"),
                "churn": p.churn.as_dict(),
                "ensemble": p.ensemble,
                "contrast": None if p.contrast is None else p.contrast.as_dict(),
            }
            for k, p in packages.items()
        },
        "wall_seconds": wall,
        "data": {k: {"source": d["source"], "credits": d["credits"]} for k, d in loaded.items()},
    }


def _clear_out(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds anything unless --overwrite; then remove the earlier demo's
    figures and tables (and only those), so old results never mix with the new ones."""
    refuse_nonempty_folder(out, overwrite)
    for name in [f"{t.key}.png" for t in TASKS] + ["results.md", "results.json"]:
        (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    _add_output_arguments(p)
    _add_sampling_arguments(p)
    _add_measurement_arguments(p)
    _add_runtime_arguments(p)


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    """Where the figures and tables go, and which tasks run."""
    p.add_argument(
        "--out",
        default="demo",
        help="folder for the figures and tables (default: demo/; must be empty unless --overwrite)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that holds files: the figures and tables of an earlier demo there "
        "are removed first, other files are left alone",
    )
    p.add_argument(
        "--task",
        dest="tasks",
        action="append",
        metavar="KEY",
        help=f"run only this task (repeatable): {', '.join(t.key for t in TASKS)}",
    )


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """How many images, how large, how many posterior samples and steps."""
    p.add_argument(
        "--images",
        type=V.Bounded(1, 100, integer=True),
        default=5,
        help="held-out images per task (default 5, all of them)",
    )
    p.add_argument(
        "--size", type=V.image_side(16, 1024), default=64, help="image size in px (default 64, the training size)"
    )
    p.add_argument(
        "--samples",
        type=V.SAMPLES,
        default=4,
        help="posterior samples per image: their mean is the result, their std the uncertainty map (default 4)",
    )
    p.add_argument("--steps", type=V.STEPS, default=None, help="sampler steps (default: the package's, 18)")


def _add_measurement_arguments(p: argparse.ArgumentParser) -> None:
    """The measurements: noise, coils, seeds and the held-out data."""
    p.add_argument(
        "--noise",
        type=V.NOISE,
        default=0.05,
        metavar="STD",
        help="measurement noise std for the image tasks, in the images' units ([0, 1]; default 0.05)",
    )
    p.add_argument(
        "--mri-noise-rel",
        dest="mri_noise",
        type=V.KSPACE_NOISE,
        default=0.0,
        metavar="F",
        help="k-space noise std for the MRI tasks as a fraction F of max|k| (default 0, the paper's "
        "fastMRI protocol; training saw 0-0.01)",
    )
    # its earlier spelling, the same fraction (hidden): old command lines keep their meaning
    p.add_argument(
        "--mri-noise", dest="mri_noise", type=V.KSPACE_NOISE, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    p.add_argument("--coils", type=V.COILS, default=15, help="simulated receive coils for MRI (default 15)")
    p.add_argument("--seed", type=V.SEED, default=0, help="first seed; image i uses seed + i (default 0)")
    p.add_argument(
        "--data",
        default="data",
        metavar="DIR",
        help="where `diffunfold data` wrote DIR/photos and DIR/mri: their held-out photographs and "
        "head slices are restored (default: data/; without them, scikit-image's photos and "
        "synthetic phantoms)",
    )


def _add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """The packages and the runtime that restores with them."""
    p.add_argument("--image-package", default=str(DEFAULT_IMAGE_PACKAGE), help="natural-image model package")
    p.add_argument("--mri-package", default=str(DEFAULT_MRI_PACKAGE), help="MRI model package")
    p.add_argument(
        "--backend",
        default="auto",
        help="runtime backend (default: auto, the fastest one usable "
        "here, as for every other command; the report names it)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    p.add_argument("--threads", type=V.THREADS, default=0, help="CPU threads for the backend (0: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


__all__ = ["TASKS", "DemoTask", "add_demo_arguments", "run_demo"]

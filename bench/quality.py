"""The quality harness: model packages side by side against strong classical baselines, on
held-out data, every task at several noise levels, in one run.

    python bench/quality.py samples/models/image-small samples/models/mri-small
    python bench/quality.py samples/models/image-small runs/my-run        # a run folder is exported first
    python bench/quality.py samples/models/image-small --quick --out /tmp/q

Each package is scored on the tasks of its data kind (the manifest's ``data.kind``):

* image: Gaussian blur (sigma 2), anisotropic blur (sigma 3 x 1, angle 0.6 rad), motion blur
  (length 7; no package has trained on it), SR x4 and x8 (box), inpainting with 20 / 40 / 60 %
  of the pixels missing; each at measurement noise sigma_y in {0, 0.01, 0.05, 0.1} (images in
  [0, 1]). Data: the held-out photos of ``diffunfold data photos`` (``--photos DIR/held-out``),
  or by default the held-out scikit-image photos (``diffunfold.demo_data.held_out_images``).
* mri: 15 simulated coils, uniform 1-D 4x and 8x, Gaussian 1-D 4x and Gaussian 2-D 8x masks,
  noise-free and at the paper's noise, 0.01 x max|A x| per image. Data: slices of the held-out
  real head of ``diffunfold data mri-volumes`` (``--mri-volumes DIR/held-out``), or by default
  synthetic phantoms (``diffunfold.demo_data.held_out_phantoms``).

Packages of the same kind share the data, the operators, the measurements and the baselines,
computed once. Image i's measurement noise and sampler start are seeded with ``seed + i``.
Each operator is shared by the images of a task: one inpainting mask (seeded with ``--seed``)
and one MRI mask per task, so the images and the posterior samples run in one batch.

Writes ``<out>/quality-<package>.md`` and ``.json`` per package (its rows and the baselines'),
``quality-<package>.png`` (PSNR against the noise level, one panel per task), and with more
than one package ``quality-compare-<kinds>.md`` (``-image``, ``-mri`` or ``-image-mri``). See ``--help`` for how to read them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import module_version  # noqa: E402

from diffunfold import edm  # noqa: E402
from diffunfold.contrast import Contrast  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# ---------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class QualityTask:
    key: str
    label: str
    kind: str              # "image" or "mri"
    task: str              # physics.tasks name
    params: dict = field(default_factory=dict)

    def operator(self, size: int, seed: int, coils: int):
        from diffunfold.physics import make_operator

        params = dict(self.params)
        if self.task == "inpainting":
            params["seed"] = seed          # one mask per task, shared by its images
        if self.task == "mri":
            params.update(ncoils=coils, seed=seed)
        return make_operator(self.task, (size, size), **params)


TASKS = (
    QualityTask("gaussian_blur", "Gaussian blur (sigma 2)", "image", "gaussian_blur", {"sigma": 2.0}),
    QualityTask("anisotropic_blur", "anisotropic blur (sigma 3 x 1, angle 0.6)", "image", "anisotropic_blur",
                {"sigma": [3.0, 1.0], "angle": 0.6}),
    QualityTask("motion_blur", "motion blur (length 7)", "image", "motion_blur", {"length": 7.0}),
    QualityTask("sr_x4", "SR x4 (box)", "image", "sr", {"factor": 4, "kernel": "box"}),
    QualityTask("sr_x8", "SR x8 (box)", "image", "sr", {"factor": 8, "kernel": "box"}),
    QualityTask("inpainting_20", "inpainting, 20 % missing", "image", "inpainting", {"missing": 0.2}),
    QualityTask("inpainting_40", "inpainting, 40 % missing", "image", "inpainting", {"missing": 0.4}),
    QualityTask("inpainting_60", "inpainting, 60 % missing", "image", "inpainting", {"missing": 0.6}),
    QualityTask("mri_uniform1d_4x", "MRI, uniform 1-D 4x", "mri", "mri", {"kind": "uniform1d", "acceleration": 4.0}),
    QualityTask("mri_uniform1d_8x", "MRI, uniform 1-D 8x", "mri", "mri", {"kind": "uniform1d", "acceleration": 8.0}),
    QualityTask("mri_gaussian1d_4x", "MRI, Gaussian 1-D 4x", "mri", "mri", {"kind": "gaussian1d", "acceleration": 4.0}),
    QualityTask("mri_gaussian2d_8x", "MRI, Gaussian 2-D 8x", "mri", "mri", {"kind": "gaussian2d", "acceleration": 8.0}),
)
TASK_BY_KEY = {t.key: t for t in TASKS}

IMAGE_NOISE = (0.0, 0.01, 0.05, 0.1)     # sigma_y, images in [0, 1]
MRI_NOISE = (0.0, 0.01)                  # fraction of max|A x| per image (0.01: the paper's)


@dataclass(frozen=True)
class Settings:
    """What one run does; ``--quick`` and the full run differ only here."""

    size: int = 64
    images: int = 5
    samples: int = 4
    steps: int | None = None                         # None: the package's (18)
    sampler: str | None = None                       # None: the package's; "euler" or "heun"
    sigma_min: float | None = None                   # None: the package's (0.002); the last D's noise level
    churn: float | None = None                       # None: the package's; EDM's S_churn (0: the ODE)
    ensemble: str | None = None                      # None: the package's; "none" or "flips"
    contrast: str | None = None                      # None: the package's; "none" or "stretch" (images)
    tasks: tuple[str, ...] = tuple(t.key for t in TASKS)
    image_noise: tuple[float, ...] = IMAGE_NOISE
    mri_noise: tuple[float, ...] = MRI_NOISE
    # Oracle grids. Tikhonov: lam of ||A x - y||^2 + lam ||D x||^2 (images in [0, 1]).
    tikhonov_grid: tuple[float, ...] = tuple(float(v) for v in np.logspace(-6, 1, 15))
    # CG-SENSE: lam of ||A x - y||^2 + lam ||x||^2 (||A|| <= 1), each at every CG iteration count.
    sense_grid: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1)
    sense_iterations: tuple[int, ...] = (10, 30, 100, 300)
    # L1-wavelet: lam as a fraction of max|A^H y| (scale-free), run from the largest down, each
    # warm-started from the previous: a continuation, which also converges the small lams.
    l1_grid: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 0.0)
    l1_iterations: int = 100


QUICK = Settings(size=64, images=1, samples=2, steps=4,
                 tasks=("gaussian_blur", "inpainting_40", "mri_gaussian1d_4x", "mri_gaussian2d_8x"),
                 image_noise=(0.0, 0.05), mri_noise=(0.0, 0.01),
                 tikhonov_grid=(1e-6, 1e-4, 1e-2, 1.0), sense_grid=(0.0, 1e-2), sense_iterations=(30,),
                 l1_grid=(1e-2, 1e-4, 0.0), l1_iterations=50)

# ------------------------------------------------------------------------------------ methods


@dataclass(frozen=True)
class Method:
    key: str
    name: str
    oracle: bool = False
    about: str = ""
    short: str = ""        # the figure's label


METHODS = {m.key: m for m in (
    Method("wiener", "Wiener (true sigma_y)", short="Wiener",
           about="Wiener deconvolution with the natural 1/|f|^2 image spectrum calibrated on the training photos "
                 "(diffunfold.baselines), given the true noise level"),
    Method("tikhonov", "Tikhonov-gradient (oracle)", True, short="Tikhonov*", about=
           "argmin ||A x - y||^2 + lam ||D x||^2, D the finite differences; by FFT for blurs (periodic D), by "
           "scipy CG in float64 otherwise (D stops at the border); lam per image from a log grid by PSNR"),
    Method("pinv", "pinv", short="pinv",
           about="op.pinv: for SR the exact pseudo-inverse (nearest-neighbour upsampling), for a blur "
                 "K*/(|K|^2 + 1e-3), for inpainting the measurement itself"),
    Method("bicubic", "bicubic", short="bicubic", about="scikit-image resize(order=3) of the low-resolution image"),
    Method("biharmonic", "biharmonic", short="biharmonic",
           about="scikit-image inpaint_biharmonic (observed pixels kept)"),
    Method("normalised_convolution", "normalised convolution", short="norm. conv.",
           about="Gaussian-weighted interpolation of the observed pixels over scales (diffunfold.baselines)"),
    Method("zero_filled", "zero-filled SENSE", short="zero-filled", about="op.pinv = A^H y"),
    Method("cg_sense", "CG-SENSE Tikhonov (oracle)", True, short="CG-SENSE*", about=
           "SigPy SenseRecon with the true coil maps: CG on A^H A + lam I; lam and the CG iteration count "
           "(early stopping) per image from a grid by PSNR"),
    Method("l1_espirit", "L1-wavelet, ESPIRiT maps (oracle)", True, short="L1 ESPIRiT*", about=
           "SigPy L1WaveletRecon (db4, FISTA) with coil maps estimated by SigPy EspiritCalib from the fully "
           "sampled k-space centre; lam per image from a grid by PSNR. Its residual uses the ESPIRiT maps"),
    Method("l1_true_maps", "L1-wavelet, true maps (oracle)", True, short="L1 true maps*", about=
           "the same with the true coil maps (what the model and CG-SENSE are given)"),
)}
IMAGE_BASELINES = {
    "gaussian_blur": ("wiener", "tikhonov", "pinv"),
    "motion_blur": ("wiener", "tikhonov", "pinv"),
    "anisotropic_blur": ("wiener", "tikhonov", "pinv"),
    "sr": ("tikhonov", "bicubic", "pinv"),
    "inpainting": ("tikhonov", "biharmonic", "normalised_convolution", "pinv"),
}
MRI_BASELINES = ("zero_filled", "cg_sense", "l1_espirit", "l1_true_maps")
SIGPY_METHODS = ("cg_sense", "l1_espirit", "l1_true_maps")


@dataclass
class Estimate:
    """A method's estimates for one task and noise level, and what it took."""

    images: np.ndarray | None                 # (B, C, H, W); None when skipped
    seconds: float = 0.0
    settings: list[dict] = field(default_factory=list)   # per image: the oracle's choice, ...
    residual_ops: list | None = None          # per image, when not the task's operator
    skipped: str | None = None


# -------------------------------------------------------------------------------- measurements


@dataclass
class Case:
    """One task at one noise level: the operator, the truth, the measurements."""

    task: QualityTask
    level: float                              # sigma_y, or the MRI noise as a fraction of max|A x|
    op: Any
    names: list[str]
    x: np.ndarray
    y: np.ndarray
    noise_std: list[float]                    # per image, absolute
    seeds: list[int]

    @property
    def mri(self) -> bool:
        return self.task.kind == "mri"


def make_case(task: QualityTask, level: float, names, x, settings: Settings, seed: int, coils: int) -> Case:
    op = task.operator(settings.size, seed, coils)
    seeds = [seed + i for i in range(len(x))]
    if task.kind == "mri":
        noise = [level * float(np.abs(op.A(x[i:i + 1])).max()) for i in range(len(x))]
    else:
        noise = [float(level)] * len(x)
    y = op.measure(x, noise, seed=seeds)
    y = np.asarray(y).astype(np.complex64 if task.kind == "mri" else np.float32)
    return Case(task, float(level), op, list(names), x, y, noise, seeds)


# ---------------------------------------------------------------------------------- baselines


def _timed(fn: Callable[[], Estimate | np.ndarray]) -> Estimate:
    t0 = time.perf_counter()
    out = fn()
    est = out if isinstance(out, Estimate) else Estimate(np.asarray(out))
    est.seconds = time.perf_counter() - t0
    return est


def image_baselines(case: Case, s: Settings) -> dict[str, Estimate]:
    from diffunfold import quality_baselines as qb
    from diffunfold.baselines import normalised_convolution, wiener_deconvolution

    op, y, x = case.op, case.y, case.x
    clip = lambda v: np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)  # noqa: E731

    def tikhonov():
        res = qb.oracle_tikhonov(op, y, x, s.tikhonov_grid)
        return Estimate(res.images, settings=[{"lam": lam} for lam in res.lam])

    run = {
        "wiener": lambda: clip(wiener_deconvolution(op, y, case.noise_std)),
        "tikhonov": tikhonov,
        "pinv": lambda: clip(op.pinv(y)),
        "bicubic": lambda: qb.bicubic_upsampling(op, y),
        "biharmonic": lambda: qb.biharmonic_inpainting(op, y),
        "normalised_convolution": lambda: clip(normalised_convolution(op, y)),
    }
    return {key: _timed(run[key]) for key in IMAGE_BASELINES[case.task.task]}


def mri_baselines(case: Case, s: Settings, sigpy_reason: str | None) -> dict[str, Estimate]:
    from diffunfold import quality_baselines as qb
    from diffunfold.metrics import psnr
    from diffunfold.physics.mri import MultiCoilMRI

    op, x = case.op, case.x
    y = case.y.astype(np.complex128)
    out = {"zero_filled": _timed(lambda: np.asarray(op.pinv(y)))}
    if sigpy_reason:
        for key in SIGPY_METHODS:
            out[key] = Estimate(None, skipped=sigpy_reason)
        return out
    score = lambda est, i: float(psnr(est[0], x[i], None))  # noqa: E731  (magnitudes, fastMRI range)
    mask = op.mask[0, 0]

    def cg_sense():
        images, chosen = [], []
        for i in range(len(x)):
            best = (-math.inf, None, None)
            for lam in s.sense_grid:
                for iters, est in qb.cg_sense(op, y, lam, s.sense_iterations, i).items():
                    p = score(est, i)
                    if p > best[0]:
                        best = (p, est, {"lam": lam, "iterations": iters})
            images.append(best[1])
            chosen.append(best[2])
        return Estimate(np.concatenate(images), settings=chosen)

    def l1(maps_for: Callable[[int], tuple[np.ndarray, dict]], residual_op: bool):
        images, chosen, ops = [], [], []
        for i in range(len(x)):
            try:
                maps, info = maps_for(i)
            except InputError as exc:
                return Estimate(None, skipped=str(exc))
            scale = float(np.abs(op.AT(y[i:i + 1])).max())
            best, prev = (-math.inf, None, None), None
            for rel in sorted(s.l1_grid, reverse=True):
                est = qb.l1_wavelet(y[i], maps, mask, rel * scale, s.l1_iterations, prev)
                prev = est
                p = score(est, i)
                if p > best[0]:
                    best = (p, est, {"lam_relative": rel, **info})
            images.append(best[1])
            chosen.append(best[2])
            ops.append(MultiCoilMRI(maps, op.mask[0, 0]) if residual_op else op)
        return Estimate(np.concatenate(images), settings=chosen, residual_ops=ops)

    out["cg_sense"] = _timed(cg_sense)
    out["l1_espirit"] = _timed(lambda: l1(lambda i: qb.espirit_maps(op, y, i), True))
    out["l1_true_maps"] = _timed(lambda: l1(lambda i: (op.coil_maps[0], {}), False))
    return out


# ------------------------------------------------------------------------------------- scoring


def score(case: Case, est: Estimate) -> dict[str, Any]:
    """Per image and averaged: PSNR, SSIM, the data-consistency residual ||A x_hat - y|| / ||y||
    and the residual of the truth, ||A x - y|| / ||y|| (the realised noise)."""
    from diffunfold.metrics import psnr, ssim

    if est.images is None:
        return {"skipped": est.skipped}
    rng = None if case.mri else 1.0
    dtype = np.complex128 if case.mri else np.float64
    y = case.y.astype(dtype)
    x_hat = np.asarray(est.images).astype(dtype)
    x = case.x.astype(dtype)
    p, q = psnr(x_hat, case.x, rng), ssim(x_hat, case.x, rng)
    rows = []
    for i, name in enumerate(case.names):
        op = est.residual_ops[i] if est.residual_ops else case.op
        norm_y = float(np.linalg.norm(y[i]))
        res = float(np.linalg.norm(np.asarray(op.A(x_hat[i:i + 1]))[0] - y[i]) / norm_y)
        noise = float(np.linalg.norm(np.asarray(case.op.A(x[i:i + 1]))[0] - y[i]) / norm_y)
        rows.append({"image": name, "seed": case.seeds[i], "noise_std": case.noise_std[i], "psnr": float(p[i]),
                     "ssim": float(q[i]), "residual": res, "noise_residual": noise,
                     **({"setting": est.settings[i]} if est.settings else {})})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "residual", "noise_residual")}
    return {**mean, "seconds_per_image": est.seconds / len(case.names), "per_image": rows}


# ------------------------------------------------------------------------------------ packages


@dataclass
class Scored:
    """A package being scored: where it came from, its solver, its rows."""

    name: str
    path: Path
    source: str                 # "package" or "checkpoint <path>"
    package: Any
    solver: Any = None
    rows: list[dict] = field(default_factory=list)
    model_seconds: float = 0.0

    @property
    def kind(self) -> str:
        return self.package.space.kind

    def trained_on(self, task: QualityTask) -> bool:
        m = self.package.manifest
        if task.kind == "mri":
            patterns = m.get("mri_patterns")
            if not patterns:
                return "mri" in self.package.tasks
            return [task.params["kind"], float(task.params["acceleration"])] in [[k, float(a)] for k, a in patterns]
        return task.task in self.package.tasks


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "package"


def open_inputs(paths: list[str], workdir: Path, log: Callable[[str], None]) -> list[Scored]:
    """Each path: a package folder (with manifest.json), or a training checkpoint / run folder,
    exported to a temporary package first (needs torch and onnx: the train and export extras)."""
    from diffunfold.package import MANIFEST, ModelPackage

    out, names = [], set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{raw!r} does not exist; give a model package folder (with {MANIFEST}), a training "
                             "run folder or a checkpoint")
        if (path / MANIFEST).exists() or path.name == MANIFEST:
            pkg = ModelPackage.open(path)
            name, source = pkg.path.name, "package"
        else:
            try:
                from diffunfold.export.onnx_export import export_checkpoint
            except ImportError as exc:
                raise InputError(f"{raw!r} is not a model package, so it must be exported first, which needs torch "
                                 f"and onnx (pip install -e '.[train,export]'): {exc}") from None
            log(f"exporting {raw} to a temporary package ...")
            target = workdir / f"export-{len(out)}"
            pkg = export_checkpoint(path, target, log=lambda _msg: None)
            src = pkg.manifest.get("source", {})
            name = f"{src.get('run') or path.name}-step{src.get('step', '?')}"
            source = f"checkpoint {raw}"
        base, k = _slug(name), 2
        name = base
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.add(name)
        out.append(Scored(name, pkg.path, source, pkg))
    return out



def run_model(sc: Scored, case: Case, s: Settings) -> dict[str, Estimate]:
    """The posterior mean of ``s.samples`` draws and one draw (draw 0, from the same solve)."""
    t0 = time.perf_counter()
    sol = sc.solver.solve(case.y, case.op, seed=case.seeds, samples=s.samples, steps=s.steps,
                          sampler=s.sampler, sigma_min=s.sigma_min, noise_std=list(case.noise_std), churn=s.churn,
                          ensemble=s.ensemble, contrast=None if case.mri else s.contrast)
    t_mean = time.perf_counter() - t0
    single = np.asarray(sol.images if s.samples == 1 else sol.draws[0])
    t_single, extra = t_mean / s.samples, 0.0
    sc.model_seconds += t_mean + extra
    return {"model_mean": Estimate(np.asarray(sol.images), t_mean),
            "model_sample": Estimate(single, t_single)}


def contrast_label(sc: Scored, s: Settings) -> dict | None:
    """The contrast stretch a package ran with (None: off; MRI packages never)."""
    if sc.kind == "mri":
        return None
    chosen = sc.package.contrast if s.contrast is None else Contrast.of(s.contrast)
    return None if chosen is None else chosen.as_dict()


def stretch_label(contrast: dict | None) -> str:
    return "" if not contrast else (f", contrast stretch (std < {contrast['flat_std']:g} to "
                                    f"{contrast['target_std']:g}, gain <= {contrast['max_gain']:g})"
                                    + (", colour channels centred" if contrast.get("colour") else ""))


def model_method_name(key: str, samples: int) -> str:
    return f"Diff-Unfolding, mean of {samples}" if key == "model_mean" else "Diff-Unfolding, 1 sample"


# -------------------------------------------------------------------------------------- report


def _row(case: Case, method: str, name: str, oracle: bool, baseline: bool, scores: dict) -> dict:
    return {"task": case.task.key, "label": case.task.label, "kind": case.task.kind, "noise": case.level,
            "method": method, "name": name, "oracle": oracle, "baseline": baseline, **scores}


def find(rows: list[dict], task: str, noise: float, method: str) -> dict | None:
    return next((r for r in rows if r["task"] == task and r["noise"] == noise and r["method"] == method), None)


def best_baseline(rows: list[dict], task: str, noise: float) -> dict | None:
    cands = [r for r in rows if r["baseline"] and r["task"] == task and r["noise"] == noise and "psnr" in r]
    return max(cands, key=lambda r: r["psnr"]) if cands else None


def noise_label(kind: str, level: float) -> str:
    """The noise column: sigma_y for images; for MRI the fraction of the peak k-space magnitude
    max|A x| (no "|" here: it would split a Markdown table cell)."""
    return f"{level:g} x peak" if kind == "mri" and level else f"{level:g}"


def _pair(r: dict | None) -> str:
    """``PSNR / SSIM`` of a row, or "-"."""
    return "-" if r is None or "psnr" not in r else f"{r['psnr']:.2f} / {r['ssim']:.3f}"


def churn_label(churn: dict) -> str:
    """How the header names a stochastic sampler (nothing for the ODE)."""
    if not churn["s_churn"] > 0:
        return ""
    return (f", stochastic (EDM S_churn {churn['s_churn']:g} for sigma in [{churn['s_min']:g}, "
            f"{churn['s_max']:g}], S_noise {churn['s_noise']:g})")


def images_used(rows: list[dict], s: Settings) -> int:
    """How many held-out images each case really had (a source may hold fewer than ``--images``)."""
    return max((len(r["per_image"]) for r in rows if "per_image" in r), default=s.images)


def markdown_package(sc: Scored, baseline_rows: list[dict], meta: dict, s: Settings) -> str:
    rows = sc.rows
    src = sc.package.manifest.get("source", {})
    lines = [f"# Quality: {sc.name} ({sc.kind} model)", "",
             f"- command: `{meta['command']}`",
             f"- date: {meta['date']}; machine: {meta['machine']}",
             f"- package: `{sc.path}` ({sc.source}); manifest source: run {src.get('run', '?')}, step "
             f"{src.get('step', '?')}, {src.get('weights', '?')} weights, checkpoint {src.get('checkpoint', '?')}",
             f"- backend: {sc.solver.backend_name}; {s.samples} posterior samples, "
             f"{meta['steps'][sc.name]} {meta['sampler'][sc.name]} steps{churn_label(meta['churn'][sc.name])}"
             f"{', flip self-ensemble' if meta['ensemble'][sc.name] == 'flips' else ''}"
             f"{stretch_label(meta['contrast'][sc.name])}"
             f"{'' if s.sigma_min is None else f' ending at sigma {s.sigma_min:g}'}; the true noise level is given to the "
             f"solver ({'it weighs y by it' if sc.package.noise_aware else 'this package does not use it'})",
             f"- data: {images_used(baseline_rows, s)} held-out {meta['data'][sc.kind]} per task at "
             f"{s.size}x{s.size} px, seeds {meta['seed']} + i; noise: "
             + ("complex Gaussian k-space noise of std level x max|A x| of each image ('x peak')" if sc.kind == "mri"
                else "Gaussian noise of std sigma_y, images in [0, 1]"),
             f"- wall time: {meta['wall_seconds']:.0f} s for the whole run; this package's solves "
             f"{sc.model_seconds:.0f} s", "",
             "## Diff-Unfolding against the best baseline", "",
             f"| task | trained on | noise | mean of {s.samples}: PSNR / SSIM | 1 sample: PSNR / SSIM | best baseline "
             "| its PSNR / SSIM | gain (dB) |", "|---|---|---|---|---|---|---|---|"]
    tasks = [TASK_BY_KEY[k] for k in dict.fromkeys(r["task"] for r in rows)]
    for task in tasks:
        for level in dict.fromkeys(r["noise"] for r in rows if r["task"] == task.key):
            mean, one = find(rows, task.key, level, "model_mean"), find(rows, task.key, level, "model_sample")
            best = best_baseline(baseline_rows, task.key, level)
            gain = f"{mean['psnr'] - best['psnr']:+.2f}" if best else "-"
            lines.append(f"| {task.label} | {'yes' if sc.trained_on(task) else '**no**'} | "
                         f"{noise_label(task.kind, level)} | {_pair(mean)} | {_pair(one)} | "
                         f"{best['name'] if best else '-'} | {_pair(best)} | {gain} |")
    lines += ["", "## Every method", "",
              "residual = ||A x_hat - y|| / ||y|| of the estimate as returned; noise residual = ||A x - y|| / ||y|| "
              "of the truth, the part of y the noise alone explains. An estimate far below the noise residual "
              "fits the noise; far above it, it ignores the data.", ""]
    for task in tasks:
        lines += [f"### {task.label}", "",
                  "| noise | method | PSNR | SSIM | residual | noise residual | s / image |",
                  "|---|---|---|---|---|---|---|"]
        for level in dict.fromkeys(r["noise"] for r in rows if r["task"] == task.key):
            here = [r for r in rows + baseline_rows if r["task"] == task.key and r["noise"] == level]
            best = best_baseline(baseline_rows, task.key, level)
            for r in here:
                name = f"**{r['name']}**" if best is not None and r is best else r["name"]
                if "skipped" in r and r["skipped"]:
                    lines.append(f"| {noise_label(task.kind, level)} | {name} | skipped: {r['skipped']} | | | | |")
                    continue
                lines.append(f"| {noise_label(task.kind, level)} | {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                             f"{r['residual']:.4f} | {r['noise_residual']:.4f} | {r['seconds_per_image']:.2f} |")
        lines.append("")
    lines += ["## Methods", "", f"- **{model_method_name('model_mean', s.samples)}** / **1 sample**: the package "
              "through the torch-free runtime (`Solver.solve`); draw 0 of the mean is the single sample.",
              *(f"- **{m.name}**: {m.about}" for m in METHODS.values()
                if any(r["method"] == m.key for r in baseline_rows)),
              "", "The best baseline (in bold) is the one with the highest mean PSNR for that task and noise level. "
              "**(oracle)**: its regularisation weight (and for CG-SENSE its iteration count) is chosen per image "
              "from a grid by PSNR against the ground truth, which no real method can know: an upper bound on "
              "that method with any one rule for the weight. The chosen values are in the JSON (`setting`). "
              "Images: PSNR/SSIM with data range 1. MRI: on magnitudes, data range the truth's maximum (fastMRI).",
              ""]
    return "\n".join(lines)


def markdown_compare(scored: list[Scored], baseline_rows: dict[str, list[dict]], meta: dict, s: Settings) -> str:
    lines = ["# Quality: packages side by side", "", f"- command: `{meta['command']}`",
             f"- date: {meta['date']}; machine: {meta['machine']}; wall time {meta['wall_seconds']:.0f} s",
             f"- PSNR / SSIM of the posterior mean of {s.samples} samples, mean over "
             f"{' and '.join(str(images_used(r, s)) for r in baseline_rows.values() if r)} held-out "
             f"images per task at {s.size} px; MRI noise 'x peak' = its std as a fraction of max|A x| per image", ""]
    for kind in ("image", "mri"):
        group = [sc for sc in scored if sc.kind == kind]
        if not group:
            continue
        base = baseline_rows[kind]
        lines += [f"## {kind}", "", "| task | noise | " + " | ".join(f"{sc.name}" for sc in group)
                  + " | best baseline | its PSNR / SSIM |", "|---|---|" + "---|" * len(group) + "---|---|"]
        for task in [TASK_BY_KEY[k] for k in dict.fromkeys(r["task"] for r in group[0].rows)]:
            for level in dict.fromkeys(r["noise"] for r in group[0].rows if r["task"] == task.key):
                cells = [_pair(find(sc.rows, task.key, level, "model_mean")) for sc in group]
                best = best_baseline(base, task.key, level)
                lines.append(f"| {task.label} | {noise_label(kind, level)} | " + " | ".join(cells)
                             + f" | {best['name'] if best else '-'} | {_pair(best)} |")
        lines += ["", "Packages: " + "; ".join(f"{sc.name} = `{sc.path}` ({sc.source})" for sc in group), ""]
    return "\n".join(lines)


def figure(sc: Scored, others: list[Scored], baseline_rows: list[dict], s: Settings, path: Path) -> str | None:
    """PSNR against the noise level, one panel per task: the package (mean and one sample),
    the other packages of its kind (mean) and the best baseline. Returns why not, if not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no figure: matplotlib is not installed ({exc}); pip install -e '.[eval]'"
    tasks = [TASK_BY_KEY[k] for k in dict.fromkeys(r["task"] for r in sc.rows)]
    cols = min(4, len(tasks))
    nrows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.9 * nrows), squeeze=False)
    for ax, task in zip(axes.ravel(), tasks):
        levels = list(dict.fromkeys(r["noise"] for r in sc.rows if r["task"] == task.key))
        pos = np.arange(len(levels))

        def series(rows, method):
            return [(find(rows, task.key, lv, method) or {}).get("psnr", np.nan) for lv in levels]

        ax.plot(pos, series(sc.rows, "model_mean"), "o-", color="C0", label=f"{sc.name} (mean of {s.samples})")
        ax.plot(pos, series(sc.rows, "model_sample"), "o:", color="C0", alpha=0.6, label=f"{sc.name} (1 sample)")
        for j, other in enumerate(others, start=1):
            ax.plot(pos, series(other.rows, "model_mean"), "s-", color=f"C{j}", label=f"{other.name} (mean)")
        best = [best_baseline(baseline_rows, task.key, lv) for lv in levels]
        ax.plot(pos, [b["psnr"] if b else np.nan for b in best], "k^--", label="best baseline")
        for p, b in zip(pos, best):
            if b:
                ax.annotate(METHODS[b["method"]].short, (p, b["psnr"]), fontsize=6,
                            textcoords="offset points", xytext=(0, -9), ha="center")
        ax.set_xticks(pos, [f"{lv:g}" for lv in levels])
        ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.set_title(task.label, fontsize=9)
        ax.set_xlabel("noise (x max|Ax|)" if task.kind == "mri" else "sigma_y", fontsize=8)
        ax.set_ylabel("PSNR (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(tasks):]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(f"{sc.name}: PSNR against the noise level (* = oracle)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (nrows == 1), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------------------- main


def settings_from(args) -> Settings:
    base = QUICK if args.quick else Settings()
    over = {k: v for k, v in (("size", args.size), ("images", args.images), ("samples", args.samples),
                              ("steps", args.steps), ("sampler", args.sampler), ("sigma_min", args.sigma_min),
                              ("churn", args.churn), ("ensemble", args.ensemble), ("contrast", args.contrast))
            if v is not None}
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


def held_out_data(args, s: Settings) -> dict[str, Callable[[], tuple[list[str], np.ndarray]]]:
    """Per kind, a loader of the held-out names and images: ``--photos`` / ``--mri-volumes``
    folders (``diffunfold data``) when given, else scikit-image's photos and synthetic phantoms."""
    from diffunfold.data import held_out as ho
    from diffunfold.demo_data import held_out_images, held_out_phantoms

    image = (lambda: ho.held_out_photos(ho.check_folder(args.photos, "photo"), s.size, s.images)) \
        if args.photos else (lambda: held_out_images(s.size, s.images))
    mri = (lambda: ho.held_out_slices(ho.check_folder(args.mri_volumes, "MRI volume"), s.size, s.images)) \
        if args.mri_volumes else (lambda: held_out_phantoms(s.size, s.images))
    return {"image": image, "mri": mri}


def data_label(args, kind: str) -> str:
    if kind == "mri":
        return f"slices of the held-out volume(s) in {args.mri_volumes}" if args.mri_volumes else "synthetic phantoms"
    return f"photos from {args.photos}" if args.photos else "scikit-image photos"


def score_all(scored: list[Scored], s: Settings, args, quiet: bool) -> tuple[dict, str | None, float | None]:
    """Every task x noise level of every kind present: the baselines once, then each package.
    Returns the baselines' rows per kind, why SigPy was skipped (or None) and its forward check."""
    from tqdm.auto import tqdm

    from diffunfold import quality_baselines as qb

    kinds = [k for k in ("image", "mri") if any(sc.kind == k for sc in scored)]
    tasks = {k: [TASK_BY_KEY[key] for key in s.tasks if TASK_BY_KEY[key].kind == k] for k in kinds}
    for k in kinds:
        if not tasks[k]:
            raise InputError(f"no {k} task selected for the {k} package(s); the {k} tasks are "
                             f"{[t.key for t in TASKS if t.kind == k]}")
    levels = {"image": s.image_noise, "mri": s.mri_noise}
    sigpy_reason = qb.sigpy_status() if "mri" in kinds else None
    sigpy_check = None
    data = held_out_data(args, s)
    total = sum(len(tasks[k]) * len(levels[k]) * (1 + sum(sc.kind == k for sc in scored)) for k in kinds)
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
                        baseline_rows[kind].append(_row(case, key, m.name, m.oracle, True, score(case, est)))
                    bar.update(1)
                    for sc in (sc for sc in scored if sc.kind == kind):
                        bar.set_postfix_str(f"{task.key} @ {level:g}: {sc.name}")
                        for key, est in run_model(sc, case, s).items():
                            sc.rows.append(_row(case, key, model_method_name(key, s.samples), False, False,
                                                score(case, est)))
                        bar.update(1)
    return baseline_rows, sigpy_reason, sigpy_check


def write_outputs(scored: list[Scored], baseline_rows: dict, meta: dict, s: Settings, out: Path,
                  log: Callable[[str], None], quiet: bool) -> list[Path]:
    """quality-<package>.md/.json/.png per package, and quality-compare-<kinds>.md for several
    (named by the data kinds in it, so an image run and an MRI run can share a folder)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sc in scored:
        stem = out / f"quality-{sc.name}"
        others = [o for o in scored if o is not sc and o.kind == sc.kind]
        md = markdown_package(sc, baseline_rows[sc.kind], meta, s)
        stem.with_suffix(".md").write_text(md)
        payload = {"package": {"name": sc.name, "path": str(sc.path), "source": sc.source,
                               "manifest_source": sc.package.manifest.get("source", {}),
                               "manifest_sha256": sc.package.manifest.get("manifest_sha256"),
                               "kind": sc.kind, "backend": sc.solver.backend_name,
                               "model_seconds": sc.model_seconds},
                   "meta": meta, "settings": {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in s.__dict__.items()},
                   "summary": summary(sc, baseline_rows[sc.kind]),
                   "rows": sc.rows + baseline_rows[sc.kind]}
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
        why = figure(sc, others, baseline_rows[sc.kind], s, stem.with_suffix(".png"))
        if why:
            log(why)
        written += [stem.with_suffix(e) for e in (".md", ".json") + (() if why else (".png",))]
        if not quiet:
            print(md.split("## Every method")[0])
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
        for sc in scored:
            sc.solver = Solver.load(sc.package, backend=args.backend, device=args.device, threads=args.threads)
        baseline_rows, sigpy_reason, sigpy_check = score_all(scored, s, args, args.quiet)
        wall = time.perf_counter() - t_start
        meta = {"command": " ".join(shlex.quote(a) for a in ["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": describe_cpu(), "seed": args.seed,
                "wall_seconds": wall, "data": {k: data_label(args, k) for k in ("image", "mri")},
                "steps": {sc.name: s.steps or sc.package.schedule["steps"] for sc in scored},
                "sigma_min": s.sigma_min,
                "sampler": {sc.name: s.sampler or sc.package.schedule["sampler"] for sc in scored},
                "churn": {sc.name: (sc.package.churn if s.churn is None else edm.Churn.of(s.churn)).as_dict()
                          for sc in scored},
                "ensemble": {sc.name: s.ensemble or sc.package.ensemble for sc in scored},
                "contrast": {sc.name: contrast_label(sc, s) for sc in scored},
                "sigpy": module_version("sigpy"), "sigpy_skipped": sigpy_reason,
                "sigpy_forward_check_rel_err": sigpy_check,
                "versions": {m: module_version(m) for m in ("numpy", "scipy", "skimage", "onnxruntime", "sigpy")}}
        written = write_outputs(scored, baseline_rows, meta, s, Path(args.out), log, args.quiet)
    print(f"{len(scored)} package(s) in {wall:.0f} s; wrote " + ", ".join(str(p) for p in written))
    return 0


def summary(sc: Scored, baseline_rows: list[dict]) -> list[dict]:
    out = []
    for r in sc.rows:
        if r["method"] != "model_mean":
            continue
        best = best_baseline(baseline_rows, r["task"], r["noise"])
        one = find(sc.rows, r["task"], r["noise"], "model_sample")
        out.append({"task": r["task"], "noise": r["noise"], "trained_on": sc.trained_on(TASK_BY_KEY[r["task"]]),
                    "psnr_mean": r["psnr"], "ssim_mean": r["ssim"], "psnr_sample": one["psnr"],
                    "ssim_sample": one["ssim"], "best_baseline": best["method"] if best else None,
                    "best_baseline_psnr": best["psnr"] if best else None,
                    "gain_db": r["psnr"] - best["psnr"] if best else None})
    return out


HELP = """\
Score model packages side by side against strong classical baselines on held-out data.

Each PACKAGE is a model package folder (with manifest.json) or a training run folder /
checkpoint, which is exported to a temporary package first (needs torch: the train and export
extras). Packages are scored on the tasks of their data kind; packages of one kind share the
data, measurements and baselines. Give the packages before options that take several values
(--noise, --mri-noise).

Reading the tables:
  oracle          a baseline marked "(oracle)" chooses its regularisation weight per image by
                  PSNR against the ground truth (CG-SENSE also its iteration count). No real
                  method knows the truth: an oracle is an upper bound on that classical method.
  residual        ||A x_hat - y|| / ||y||: how far the estimate, as returned (images clipped to
                  [0, 1]), is from explaining the measurement.
  noise residual  ||A x - y|| / ||y|| of the ground truth: exactly the realised noise. A good
                  estimate has a residual near it; far below it the estimate fits the noise,
                  far above it the estimate ignores the data. (ESPIRiT-based L1: residual under
                  the estimated maps, the model that method solved.)
  best baseline   the baseline with the highest mean PSNR for that task and noise level.
  gain            PSNR of the posterior mean minus the best baseline's.

A full run (64 px, 5 images, 4 samples, 18 steps) takes about 14 minutes for an image package
and 10 for an MRI package on 2 busy cores (bench/README.md); --quick (1 image, 2 tasks and 2
noise levels per kind, 4 steps, 2 samples, small grids) takes ~15 s and is what the tests run.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/quality.py", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("packages", nargs="+", metavar="PACKAGE", help="model package folders, run folders or checkpoints")
    p.add_argument("--samples", type=int, help="posterior samples per image; their mean is scored next to "
                                              "one sample (default 4; --quick 2)")
    p.add_argument("--images", type=int, help="held-out images per task (default 5; --quick 1)")
    p.add_argument("--size", type=int, help="image size in px (default 64, the training size)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the package's, 18; --quick 4)")
    p.add_argument("--sampler", choices=["euler", "heun"],
                   help="sampler for every package (default: each package's own, see its manifest); heun "
                        "makes two network calls per step but the last, so compare at equal calls "
                        "(e.g. heun --steps 10 against euler 18)")
    p.add_argument("--sigma-min", type=float, help="the sampler's last noise level, where the final denoiser "
                                                   "call is made (default: the package's, 0.002)")
    p.add_argument("--churn", type=float, metavar="S_CHURN",
                   help="EDM's stochastic sampler with this S_churn for every package (default: each "
                        "package's own, see its manifest; 0: the deterministic ODE)")
    p.add_argument("--ensemble", choices=["none", "flips"],
                   help="self-ensemble of the posterior samples for every package: flips gives sample j's "
                        "network the j-th of four flips of the image (default: each package's own)")
    p.add_argument("--contrast", choices=["none", "stretch", "colour"],
                   help="contrast stretch of flat images for every image package: restored at a photo's "
                        "contrast and mapped back, exactly through the physics; colour: also each colour "
                        "channel's level to mid-grey (default: each package's own)")
    p.add_argument("--task", dest="tasks", action="append", metavar="KEY",
                   help=f"score only this task (repeatable): {', '.join(TASK_BY_KEY)}")
    p.add_argument("--noise", type=float, nargs="+", help=f"image noise levels sigma_y (default {IMAGE_NOISE})")
    p.add_argument("--mri-noise", type=float, nargs="+",
                   help=f"MRI noise levels as fractions of max|A x| per image (default {MRI_NOISE})")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (the tests' setting)")
    p.add_argument("--photos", metavar="DIR", help="held-out photos: DIR/held-out of `diffunfold data photos` "
                                                  "(default: the scikit-image photos)")
    p.add_argument("--mri-volumes", metavar="DIR", help="held-out MRI volume(s): DIR/held-out of `diffunfold data "
                                                       "mri-volumes` (default: synthetic phantoms)")
    p.add_argument("--coils", type=int, default=15, help="simulated receive coils for MRI (default 15)")
    p.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed + i (default 0)")
    p.add_argument("--backend", default="onnxruntime", help="runtime backend (default onnxruntime)")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the backend (0: all cores)")
    p.add_argument("--out", default=str(RESULTS), help="folder for the results (default bench/results)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no tables on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

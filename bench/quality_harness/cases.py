"""One task at one noise level (:class:`Case`: operator, truth, measurements), a method's
estimates for it (:class:`Estimate`) and their scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .tasks import QualityTask, Settings


@dataclass
class Estimate:
    """A method's estimates for one task and noise level, and what it took."""

    images: np.ndarray | None  # (B, C, H, W); None when skipped
    seconds: float = 0.0
    settings: list[dict] = field(default_factory=list)  # per image: the oracle's choice, ...
    residual_ops: list | None = None  # per image, when not the task's operator
    skipped: str | None = None


@dataclass
class Case:
    """One task at one noise level: the operator, the truth, the measurements."""

    task: QualityTask
    level: float  # sigma_y, or the MRI noise as a fraction of max|A x|
    op: Any
    names: list[str]
    x: np.ndarray
    y: np.ndarray
    noise_std: list[float]  # per image, absolute
    seeds: list[int]

    @property
    def mri(self) -> bool:
        return self.task.kind == "mri"


def make_case(task: QualityTask, level: float, names, x, settings: Settings, seed: int, coils: int) -> Case:
    op = task.operator(settings.size, seed, coils)
    seeds = [seed + i for i in range(len(x))]
    if task.kind == "mri":
        noise = [level * float(np.abs(op.A(x[i : i + 1])).max()) for i in range(len(x))]
    else:
        noise = [float(level)] * len(x)
    y = op.measure(x, noise, seed=seeds)
    y = np.asarray(y).astype(np.complex64 if task.kind == "mri" else np.float32)
    return Case(task, float(level), op, list(names), x, y, noise, seeds)


def lpips_metric(folder: str | None) -> tuple[Any, str]:
    """The LPIPS metric from ``folder`` (``diffunfold data lpips``), or None, and a line saying
    which, or why not, for the report."""
    from diffunfold.errors import InputError
    from diffunfold.metrics_lpips import LPIPS

    if folder is None or folder == "none":
        return None, "LPIPS not computed (--lpips none)"
    try:
        m = LPIPS(folder)
    except InputError as exc:
        return None, f"LPIPS not computed: {exc}"
    return m, f"LPIPS: AlexNet, linear heads v0.1 (weights from {m.source}, {folder}); images only, lower is better"


def score(case: Case, est: Estimate, lpips=None) -> dict[str, Any]:
    """Per image and averaged: PSNR, SSIM, LPIPS (images, with ``lpips``), the data-consistency
    residual ||A x_hat - y|| / ||y|| and the residual of the truth, ||A x - y|| / ||y|| (the
    realised noise)."""
    from diffunfold.metrics import psnr, ssim

    if est.images is None:
        return {"skipped": est.skipped}
    rng = None if case.mri else 1.0
    dtype = np.complex128 if case.mri else np.float64
    y = case.y.astype(dtype)
    x_hat = np.asarray(est.images).astype(dtype)
    x = case.x.astype(dtype)
    p, q = psnr(x_hat, case.x, rng), ssim(x_hat, case.x, rng)
    perceptual = lpips(x_hat.astype(np.float32), case.x) if lpips is not None and not case.mri else None
    rows = []
    for i, name in enumerate(case.names):
        op = est.residual_ops[i] if est.residual_ops else case.op
        norm_y = float(np.linalg.norm(y[i]))
        res = float(np.linalg.norm(np.asarray(op.A(x_hat[i : i + 1]))[0] - y[i]) / norm_y)
        noise = float(np.linalg.norm(np.asarray(case.op.A(x[i : i + 1]))[0] - y[i]) / norm_y)
        rows.append(
            {
                "image": name,
                "seed": case.seeds[i],
                "noise_std": case.noise_std[i],
                "psnr": float(p[i]),
                "ssim": float(q[i]),
                **({"lpips": float(perceptual[i])} if perceptual is not None else {}),
                "residual": res,
                "noise_residual": noise,
                **({"setting": est.settings[i]} if est.settings else {}),
            }
        )
    keys = ("psnr", "ssim", "residual", "noise_residual") + (("lpips",) if perceptual is not None else ())
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return {**mean, "seconds_per_image": est.seconds / len(case.names), "per_image": rows}

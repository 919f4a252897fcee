"""Evaluation on held-out images: the model (torch reference sampler) against the operator's
own ``pinv`` and a classical baseline, in PSNR/SSIM. Used by training's periodic validation
and by ``diffunfold evaluate``."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..baselines import baseline_name, classical_baseline
from ..metrics import psnr, ssim
from ..physics.tasks import canonical_task, make_operator
from .model import DiffUnfolding
from .sampler import restore, to_tensor


def task_label(task: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in task.items() if k != "task")
    return f"{task['task']}({params})" if params else task["task"]


def evaluate(
    model: DiffUnfolding,
    images: np.ndarray,
    tasks: Sequence[dict],
    noise: float = 0.05,
    steps: int = 18,
    sampler: str = "euler",
    seed: int = 0,
    coil_maps: np.ndarray | None = None,
    samples: int = 1,
    with_ssim: bool = True,
    progress: bool = False,
) -> list[dict]:
    """One row per task: mean PSNR (and SSIM) of the model, ``pinv`` and the classical baseline.

    ``images``: clean user-space ``(B, C, H, W)`` numpy (complex for MRI). The measurement
    noise of image ``i`` is seeded by ``seed + i``, and so is its sampler start, so rows are
    reproducible and comparable across checkpoints. ``samples > 1`` scores the mean of that
    many posterior samples (the MMSE estimate that PSNR rewards) instead of one sample.
    """
    device = next(model.parameters()).device
    hw = images.shape[-2:]
    data_range = None if model.space.complex else 1.0
    seeds = [seed + i for i in range(len(images))]
    rows = []
    for t in tasks:
        name = canonical_task(t["task"])
        params = {k: v for k, v in t.items() if k != "task"}
        if name == "mri":
            op = make_operator(name, hw, coil_maps=coil_maps, **params)
        else:
            op = make_operator(name, hw, **params)
        y = op.measure(images, noise, seeds)
        start = time.perf_counter()
        out = restore(
            model, to_tensor(y, device), op, steps, sampler, seeds, samples=samples, progress=progress, noise_std=noise
        )
        seconds = (time.perf_counter() - start) / len(images)
        est = out.images.detach().cpu().numpy()
        candidates = {"model": est, "pinv": op.pinv(y), "baseline": classical_baseline(op, y, noise)}
        if data_range is not None:
            candidates["pinv"] = np.clip(candidates["pinv"], 0.0, 1.0)
        row = {
            "task": task_label(t),
            "baseline_name": baseline_name(op),
            "nfe": out.nfe * samples,
            "seconds_per_image": seconds,
        }
        for key, value in candidates.items():
            row[f"psnr_{key}"] = float(np.mean(psnr(value, images, data_range)))
            if with_ssim:
                row[f"ssim_{key}"] = float(np.mean(ssim(value, images, data_range)))
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of evaluation rows."""
    has_ssim = "ssim_model" in rows[0] if rows else False
    head = (
        "| task | model PSNR | pinv PSNR | baseline PSNR |"
        + (" model SSIM | baseline SSIM |" if has_ssim else "")
        + " NFE | s/image |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (
            f"| {r['task']} | {r['psnr_model']:.2f} | {r['psnr_pinv']:.2f} | "
            f"{r['psnr_baseline']:.2f} ({r['baseline_name']}) |"
        )
        if has_ssim:
            line += f" {r['ssim_model']:.4f} | {r['ssim_baseline']:.4f} |"
        lines.append(line + f" {r['nfe']} | {r['seconds_per_image']:.3f} |")
    return "\n".join(lines)

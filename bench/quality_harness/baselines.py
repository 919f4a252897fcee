"""The classical baselines: what each is (:data:`METHODS`), which run for which task, and running
them on a :class:`~quality_harness.cases.Case` (the oracles choose their weight per image by PSNR)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffunfold.errors import InputError

from .cases import Case, Estimate
from .tasks import Settings


@dataclass(frozen=True)
class Method:
    key: str
    name: str
    oracle: bool = False
    about: str = ""
    short: str = ""  # the figure's label


METHODS = {
    m.key: m
    for m in (
        Method(
            "wiener",
            "Wiener (true sigma_y)",
            short="Wiener",
            about="Wiener deconvolution with the natural 1/|f|^2 image spectrum calibrated on the training photos "
            "(diffunfold.baselines), given the true noise level",
        ),
        Method(
            "tikhonov",
            "Tikhonov-gradient (oracle)",
            True,
            short="Tikhonov*",
            about="argmin ||A x - y||^2 + lam ||D x||^2, D the finite differences; by FFT for blurs (periodic D), by "
            "scipy CG in float64 otherwise (D stops at the border); lam per image from a log grid by PSNR",
        ),
        Method(
            "pinv",
            "pinv",
            short="pinv",
            about="op.pinv: for SR the exact pseudo-inverse (nearest-neighbour upsampling), for a blur "
            "K*/(|K|^2 + 1e-3), for inpainting the measurement itself",
        ),
        Method("bicubic", "bicubic", short="bicubic", about="scikit-image resize(order=3) of the low-resolution image"),
        Method(
            "biharmonic",
            "biharmonic",
            short="biharmonic",
            about="scikit-image inpaint_biharmonic (observed pixels kept)",
        ),
        Method(
            "normalised_convolution",
            "normalised convolution",
            short="norm. conv.",
            about="Gaussian-weighted interpolation of the observed pixels over scales (diffunfold.baselines)",
        ),
        Method("zero_filled", "zero-filled SENSE", short="zero-filled", about="op.pinv = A^H y"),
        Method(
            "cg_sense",
            "CG-SENSE Tikhonov (oracle)",
            True,
            short="CG-SENSE*",
            about="SigPy SenseRecon with the true coil maps: CG on A^H A + lam I; lam and the CG iteration count "
            "(early stopping) per image from a grid by PSNR",
        ),
        Method(
            "l1_espirit",
            "L1-wavelet, ESPIRiT maps (oracle)",
            True,
            short="L1 ESPIRiT*",
            about="SigPy L1WaveletRecon (db4, FISTA) with coil maps estimated by SigPy EspiritCalib from the fully "
            "sampled k-space centre; lam per image from a grid by PSNR. Its residual uses the ESPIRiT maps",
        ),
        Method(
            "l1_true_maps",
            "L1-wavelet, true maps (oracle)",
            True,
            short="L1 true maps*",
            about="the same with the true coil maps (what the model and CG-SENSE are given)",
        ),
    )
}
IMAGE_BASELINES = {
    "gaussian_blur": ("wiener", "tikhonov", "pinv"),
    "motion_blur": ("wiener", "tikhonov", "pinv"),
    "anisotropic_blur": ("wiener", "tikhonov", "pinv"),
    "sr": ("tikhonov", "bicubic", "pinv"),
    "inpainting": ("tikhonov", "biharmonic", "normalised_convolution", "pinv"),
}
MRI_BASELINES = ("zero_filled", "cg_sense", "l1_espirit", "l1_true_maps")
SIGPY_METHODS = ("cg_sense", "l1_espirit", "l1_true_maps")


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
            scale = float(np.abs(op.AT(y[i : i + 1])).max())
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

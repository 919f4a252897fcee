"""Scores of one reconstructed MRI slice against the truth, for bench/scanner.py: magnitude PSNR,
SSIM and LPIPS after a least-squares scale (estimated coil maps fix the image only up to scale
and phase; the same for every method), each with the range max|truth|."""

from __future__ import annotations

import numpy as np

from diffunfold.metrics import psnr, ssim


def scaled_magnitudes(est: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``s |est|`` and ``|truth|`` as (1, 1, H, W) float32, ``s`` the least-squares scale."""
    a, t = np.abs(est).ravel(), np.abs(truth).ravel()
    s = float(a @ t / max(a @ a, 1e-30))
    return (s * np.abs(est))[None, None].astype(np.float32), np.abs(truth)[None, None].astype(np.float32)


def magnitude_psnr(est: np.ndarray, truth: np.ndarray) -> float:
    return float(np.ravel(psnr(*scaled_magnitudes(est, truth), None))[0])


def magnitude_ssim(est: np.ndarray, truth: np.ndarray) -> float:
    return float(np.ravel(ssim(*scaled_magnitudes(est, truth), None))[0])


class SliceScores:
    """``scores(est, truth)``: ``{"": PSNR, " ssim": SSIM}`` and ``" lpips"`` with an LPIPS
    metric (``diffunfold.metrics_lpips.LPIPS``; the magnitudes over max|truth|, as grey images),
    the suffixes of a method's keys in a row."""

    def __init__(self, lpips=None):
        self.lpips = lpips

    def __call__(self, est: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        e, t = scaled_magnitudes(est, truth)
        out = {"": float(np.ravel(psnr(e, t, None))[0]), " ssim": float(np.ravel(ssim(e, t, None))[0])}
        if self.lpips is not None:
            peak = max(float(t.max()), 1e-30)
            out[" lpips"] = float(self.lpips(e / peak, t / peak)[0])
        return out

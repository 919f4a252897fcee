"""Validation without references (``data.source = "scans"``): held-out lines of held-out scans.

A site training on its own undersampled scans has no image to score a reconstruction against.
What it has is lines the model was not given. ``data.val_path`` names prepared scans kept out of
training (``diffunfold prepare-scans`` on other exams); from each of ``val.images`` of their
slices, spread over the set, the window holding the most energy is split once, as training
splits (the calibration lines and the rest of the data part given, ``train.ssdu_fraction`` of
the other acquired lines held out), with a fixed stream. The model reconstructs from the data
part with the validation schedule (``val.steps``, ``val.sampler``), and the score is the
normalised error of its prediction of the held-out lines, ``||M_L (A x) - y_L||^2 / ||y_L||^2``
in dB (lower is better), beside the SENSE estimate from the same data part (the start inference
takes). It includes the measurement noise on those lines, a floor no reconstruction goes under;
a model that predicts what it was not shown better than SENSE has learned something about the
anatomy. Rows go to ``val_scans.csv`` in the run folder.
"""

from __future__ import annotations

import math

import numpy as np

from ..data.raw_scans import PreparedScans, readout_window, window_energy
from ..physics.mri import MultiCoilMRI
from .sampler import restore, to_tensor
from .self_supervised import sense_standin, split_mask

VAL_STREAM = 2**32 - 5  # the validation splits' stream (never an image index; see data.py)
COLUMNS = ["step", "windows", "nmse_model_db", "nmse_sense_db", "gain_db"]


def held_out_nmse_db(image: np.ndarray, loss_operator: MultiCoilMRI, loss_y: np.ndarray) -> float:
    """``10 log10(||M_L A x - y_L||^2 / ||y_L||^2)`` for one image ``(1, 1, H, W)``."""
    residual = float(np.sum(np.abs(np.asarray(loss_operator.A(image)) - loss_y) ** 2))
    return 10.0 * math.log10(max(residual / max(float(np.sum(np.abs(loss_y) ** 2)), 1e-30), 1e-12))  # -120 dB floor


class HeldOutScans:
    """The fixed validation windows of ``data.val_path`` (see the module)."""

    def __init__(self, folder, rows: int, count: int, fraction: float, split: str, seed: int):
        scans = PreparedScans(folder)
        picks = sorted({int(round(i)) for i in np.linspace(0, len(scans) - 1, min(count, len(scans)))})
        self.windows = []
        for j, i in enumerate(picks):
            rng = np.random.default_rng([seed, j, VAL_STREAM])
            self.windows.append(self._window(scans, i, rows, rng, fraction, split))

    @staticmethod
    def _window(scans: PreparedScans, i: int, rows: int, rng, fraction: float, split: str) -> dict:
        item = scans.read(i)
        start = int(np.argmax(window_energy(item["kspace"], rows)))
        y, maps = readout_window(item["kspace"], item["maps"], start, rows)
        mask = np.broadcast_to(item["sampled"][None, :], (rows, item["sampled"].size)).astype(np.float32)
        theta, lam = split_mask(mask, fraction, rng, split)
        return {
            "y": (y * theta)[None].astype(np.complex64),
            "operator": MultiCoilMRI(maps, theta),
            "loss_y": (y * lam)[None].astype(np.complex64),
            "loss_operator": MultiCoilMRI(maps, lam),
            "sigma_y": float(item["data_std"]),
        }

    def score(self, reconstruct) -> dict:
        """The mean held-out error of ``reconstruct(window, j)`` (an image ``(1, 1, H, W)``) and of
        the SENSE estimate from the same lines, and their difference (positive: the model is better)."""
        model_db, sense_db = [], []
        for j, w in enumerate(self.windows):
            model_db.append(held_out_nmse_db(np.asarray(reconstruct(w, j)), w["loss_operator"], w["loss_y"]))
            sense = sense_standin(w["operator"], w["y"])
            sense_db.append(held_out_nmse_db(sense, w["loss_operator"], w["loss_y"]))
        m, s = float(np.mean(model_db)), float(np.mean(sense_db))
        return {"windows": len(self.windows), "nmse_model_db": m, "nmse_sense_db": s, "gain_db": s - m}

    def run(self, model, steps: int, sampler: str, seed: int) -> dict:
        """:meth:`score` of a training model with the validation schedule."""
        device = next(model.parameters()).device

        def reconstruct(w: dict, j: int) -> np.ndarray:
            y = to_tensor(w["y"], device)
            out = restore(model, y, w["operator"], steps, sampler, [seed + j], noise_std=w["sigma_y"])
            return out.images.detach().cpu().numpy()

        return self.score(reconstruct)


def format_row(row: dict) -> str:
    return (
        f"held-out lines of {row['windows']} held-out scan window(s): model {row['nmse_model_db']:.2f} dB, "
        f"SENSE from the same lines {row['nmse_sense_db']:.2f} dB (model better by {row['gain_db']:.2f} dB)"
    )

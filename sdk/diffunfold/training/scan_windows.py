"""Training batches from a site's own undersampled scans (``data.source = "scans"``).

The scans were prepared once by ``diffunfold prepare-scans`` (:mod:`diffunfold.data.raw_scans`):
scaled k-space, ESPIRiT maps and noise levels found as inference finds them. A batch is made of
windows: ``data.size`` rows of the readout by every phase encode, cut exactly out of a slice
(:func:`~diffunfold.data.raw_scans.readout_window`), the window's rows drawn in proportion to the
zero-filled energy they hold (so windows of air are rare). All windows of a batch come from
slices of one shape (coils, phase encodes), drawn per step in proportion to the slices of each.

There is no clean image: the batch holds the measurement, its operator and its noise level, and
``train.supervision = "ssdu"`` turns it into a data part and a held-out loss part.
"""

from __future__ import annotations

import numpy as np

from ..data.raw_scans import PreparedScans, readout_window, window_energy
from ..errors import InputError
from ..physics.mri import MultiCoilMRI


def window_start(energy: np.ndarray, rng: np.random.Generator) -> int:
    """A window's first row, drawn in proportion to its energy (:func:`window_energy`)."""
    total = float(energy.sum())
    if not np.isfinite(total) or total <= 0:
        return int(rng.integers(len(energy)))
    return int(rng.choice(len(energy), p=energy / total))


class ScanWindowSource:
    """Windows of prepared scans; :meth:`draw_measured` gives a batch's measurement."""

    def __init__(self, folder, rows: int):
        self.scans = PreparedScans(folder)
        self.rows = int(rows)
        short = [s for s in self.scans.slices if s.shape[1] < self.rows]
        if short:
            raise InputError(
                f"{short[0].path} has slices of {short[0].shape[1]} readout rows, fewer than data.size = {self.rows}; "
                "lower data.size"
            )
        groups = self.scans.groups()
        self.groups = [groups[k] for k in sorted(groups)]
        self.weights = np.array([len(g) for g in self.groups], dtype=np.float64) / len(self.scans)

    def draw_measured(self, rngs: list[np.random.Generator], step_rng: np.random.Generator) -> dict:
        """``{"y", "operator", "sigma_y", "task", "params"}`` for one window per stream in ``rngs``."""
        group = self.groups[int(step_rng.choice(len(self.groups), p=self.weights))]
        ys, maps, masks, stds = [], [], [], []
        for g in rngs:
            item = self.scans.read(int(group[int(g.integers(len(group)))]))
            start = window_start(window_energy(item["kspace"], self.rows), g)
            y, m = readout_window(item["kspace"], item["maps"], start, self.rows)
            mask = np.broadcast_to(item["sampled"][None, :], (self.rows, item["sampled"].size)).astype(np.float32)
            ys.append(y * mask)  # the window's rows of unacquired lines are exactly zero
            maps.append(m)
            masks.append(mask[None])
            stds.append(float(item["data_std"]))
        masks = np.stack(masks)
        acceleration = float(masks.size / masks.sum())
        return {
            "y": np.stack(ys).astype(np.complex64),
            "operator": MultiCoilMRI(np.stack(maps), masks),
            "sigma_y": np.asarray(stds),
            "task": "mri",
            "params": {"kind": "acquired", "acceleration": round(acceleration, 2)},
        }

"""Noise-scan lines of an MRD stream (flag ``ACQ_IS_NOISE_MEASUREMENT``): the receive chain
with no signal, from which the coil noise covariance is computed for prewhitening
(:mod:`diffunfold.scanner.noise`), as Gadgetron's noise adjustment does.

The samples are kept up to :data:`MAX_NOISE_SAMPLES` per coil (a noise scan has a few
thousand; more adds nothing to a covariance and would let a stream grow memory). The noise
variance scales with the receiver bandwidth, so the covariance is rescaled by the noise
scan's dwell time over the imaging lines' when they differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

MAX_NOISE_SAMPLES = 1 << 16


@dataclass
class NoiseScan:
    """Collects noise lines with :meth:`add`; :meth:`covariance` for the imaging dwell time."""

    coils: int | None = None
    dwell_us: float | None = None
    _parts: list = field(default_factory=list)
    _samples: int = 0

    def add(self, acq) -> None:
        data = np.asarray(acq.data)
        if data.ndim != 2 or not np.all(np.isfinite(data)):
            raise InputError("a noise-scan line is not (coils, samples) of finite values")
        if self.coils is not None and data.shape[0] != self.coils:
            raise InputError(f"noise-scan lines have {data.shape[0]} and {self.coils} coils")
        self.coils = data.shape[0]
        dwell = float(acq.sample_time_us)
        if dwell > 0:
            self.dwell_us = dwell
        room = MAX_NOISE_SAMPLES - self._samples
        if room > 0:
            self._parts.append(data[:, :room].astype(np.complex64))
            self._samples += min(room, data.shape[1])

    @property
    def samples(self) -> int:
        return self._samples

    def covariance(self, imaging_dwell_us: float | None = None) -> np.ndarray | None:
        """``Psi`` ``(Nc, Nc)`` for lines of ``imaging_dwell_us``, or None without noise lines."""
        from ..scanner.noise import noise_covariance

        if not self._parts:
            return None
        ratio = 1.0
        if imaging_dwell_us and self.dwell_us:
            ratio = float(imaging_dwell_us) / self.dwell_us  # longer dwell: narrower band, less noise
        return noise_covariance(np.concatenate(self._parts, axis=1), bandwidth_ratio=ratio)

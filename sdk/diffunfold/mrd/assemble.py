"""MRD acquisitions -> one k-space grid per slice.

The same :class:`SliceAssembler` serves the streaming server and the MRD file reader, so a
file and its stream reconstruct identically. It keeps imaging lines of 2-D Cartesian scans,
puts calibration lines aside for the coil maps, collects noise-scan lines (for prewhitening)
and skips them as imaging data, as it skips navigator, phase-correction and
other non-imaging scans by their flags, removes the readout oversampling and hands a slice
over on its last-in-slice (or the last-in-measurement) flag. Every acquisition is checked
against the header (its sizes, channels and every index that keeps k-spaces apart); a mismatch
is an :class:`InputError` that names the acquisition. Given an ``account`` (the server's
:class:`~diffunfold.mrd.limits.Account`), each buffer is charged to it before it is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .header import COUNTERS, Encoding
from .noise_scan import NoiseScan

__all__ = ["SliceData", "SliceAssembler", "SKIPPED_FLAGS"]

# Flags of scans that are not imaging lines (ismrmrd.constants numbering, 1-based bits).
_NOISE, _CALIB, _CALIB_AND_IMAGING, _REVERSE = 19, 20, 21, 22
_LAST_IN_SLICE, _LAST_IN_MEASUREMENT = 8, 25
SKIPPED_FLAGS = {
    19: "noise",
    23: "navigator",
    24: "phase correction",
    26: "HP feedback",
    27: "dummy scan",
    28: "RT feedback",
    29: "surface coil correction",
    30: "phase stabilisation reference",
    31: "phase stabilisation",
}
_MAX_BUFFER_BYTES = 1 << 30  # one slice's k-space (and its calibration copy) stays under 1 GiB


def _flag(acq, bit: int) -> bool:
    return bool(int(acq.flags) & (1 << (bit - 1)))


@dataclass
class SliceData:
    """The k-space of one slice on the reconstruction grid ``(coils, H, W)`` (readout x phase
    encodes, oversampling removed), which lines hold data, and the calibration lines."""

    key: tuple[int, int, int, int, int]  # (slice, contrast, phase, repetition, set)
    kspace: np.ndarray  # complex64 (coils, H, W), zero where not sampled
    sampled: np.ndarray  # bool (W,): phase-encode lines with imaging data
    calibration: np.ndarray  # complex64 (coils, H, W): calibration lines only
    calibrated: np.ndarray  # bool (W,): lines in `calibration`
    reference: object  # ismrmrd.AcquisitionHeader of the centre line
    acquisitions: int = 0
    nbytes: int = 0  # bytes charged to the assembler's account
    noise_covariance: np.ndarray | None = None  # (coils, coils) from the stream's noise scan, if any

    @property
    def slice(self) -> int:
        return self.key[0]

    @property
    def mask(self) -> np.ndarray:
        """The sampling mask ``(H, W)`` float32 (1 = sampled)."""
        h = self.kspace.shape[-2]
        return np.broadcast_to(self.sampled[None, :], (h, self.sampled.size)).astype(np.float32)

    @property
    def acceleration(self) -> float:
        return float(self.sampled.size / max(int(self.sampled.sum()), 1))


@dataclass
class _Buffer:
    """A slice being assembled, line-major ``(W, coils, H)``: a line touches only its own pages
    of the zeroed buffer, so memory becomes resident as lines arrive, not all at the first."""

    kspace: np.ndarray
    counts: np.ndarray
    calib_counts: np.ndarray
    calibration: np.ndarray | None = None  # allocated with the first calibration line
    reference: object = None
    reference_distance: int = 1 << 30
    acquisitions: int = 0
    nbytes: int = 0


def _averaged(lines: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(W, coils, H)`` sums -> ``(coils, H, W)`` means (lines acquired more than once are averaged)."""
    lines /= np.maximum(counts, 1)[:, None, None]
    return np.ascontiguousarray(np.moveaxis(lines, 0, -1))


def remove_readout_oversampling(data: np.ndarray, samples: int) -> np.ndarray:
    """Keep the central ``samples`` of the readout's image: ``(coils, n) -> (coils, samples)``."""
    n = data.shape[-1]
    if samples == n:
        return data
    image = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(data, axes=-1), axis=-1, norm="ortho"), axes=-1)
    start = (n - samples) // 2
    cropped = image[..., start : start + samples]
    # orthonormal both ways: the kept part of the image keeps its values
    return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(cropped, axes=-1), axis=-1, norm="ortho"), axes=-1)


@dataclass
class SliceAssembler:
    """Feed acquisitions with :meth:`add`; it returns the slices they complete."""

    encoding: Encoding
    account: object = None  # a limits.Account, or None: no accounting
    skipped: dict = field(default_factory=dict)  # reason -> count
    coils: int | None = None
    _buffers: dict = field(default_factory=dict)
    _count: int = 0
    noise: NoiseScan = field(default_factory=NoiseScan)
    _dwell_us: float | None = None

    def add(self, acq) -> list[SliceData]:
        """Take one ``ismrmrd.Acquisition``; return the slices it completes (usually none)."""
        self._count += 1
        number = self._count
        if _flag(acq, _NOISE):
            self.noise.add(acq)
        for bit, reason in SKIPPED_FLAGS.items():
            if _flag(acq, bit):
                self.skipped[reason] = self.skipped.get(reason, 0) + 1
                return self._flush_flags(acq)
        column, line = self._check(acq, number)
        key = (int(acq.idx.slice), int(acq.idx.contrast), int(acq.idx.phase), int(acq.idx.repetition), int(acq.idx.set))
        buf = self._buffers.get(key) or self._new_buffer(key, line.shape[0])
        calibration = _flag(acq, _CALIB) or _flag(acq, _CALIB_AND_IMAGING)
        if calibration:
            if buf.calibration is None:
                buf.calibration = self._allocate(buf, key, line.shape[0], "calibration")
            buf.calibration[column] += line
            buf.calib_counts[column] += 1
        if not _flag(acq, _CALIB):  # calibration-only lines are not part of the image
            buf.kspace[column] += line
            buf.counts[column] += 1
            distance = abs(column - self.encoding.encoded[1] // 2)
            if distance < buf.reference_distance:
                buf.reference, buf.reference_distance = acq.getHead(), distance
        buf.acquisitions += 1
        return self._flush_flags(acq)

    def finish(self) -> list[SliceData]:
        """The slices still buffered at the end of a stream (no last-in-slice flag came)."""
        return [self._emit(key) for key in sorted(self._buffers)]

    # -- internals ---------------------------------------------------------------------------
    def _flush_flags(self, acq) -> list[SliceData]:
        if _flag(acq, _LAST_IN_MEASUREMENT):
            return self.finish()
        if _flag(acq, _LAST_IN_SLICE):
            key_slice = int(acq.idx.slice)
            return [self._emit(k) for k in sorted(self._buffers) if k[0] == key_slice]
        return []

    def _new_buffer(self, key, coils: int) -> _Buffer:
        w = self.encoding.grid[1]
        buf = _Buffer(
            kspace=np.empty(0, np.complex64), counts=np.zeros(w, np.int32), calib_counts=np.zeros(w, np.int32)
        )
        buf.kspace = self._allocate(buf, key, coils, "k-space")
        self._buffers[key] = buf
        return buf

    def _allocate(self, buf: _Buffer, key, coils: int, what: str) -> np.ndarray:
        """A zeroed ``(W, coils, H)`` buffer, charged to the account (or checked against the
        per-slice bound) first."""
        h, w = self.encoding.grid
        nbytes = coils * h * w * np.dtype(np.complex64).itemsize
        if self.account is not None:
            self.account.charge(nbytes, f"the {what} of slice {key[0]} (index {key[1:]}, {coils} coils x {h} x {w})")
        elif 2 * nbytes > _MAX_BUFFER_BYTES:
            raise InputError(f"a slice of {coils} coils x {h} x {w} needs more than 1 GiB; too large to reconstruct")
        buf.nbytes += nbytes
        return np.zeros((w, coils, h), np.complex64)

    def _emit(self, key) -> SliceData:
        buf = self._buffers.pop(key)
        sampled = buf.counts > 0
        if not sampled.any():
            if self.account is not None:
                self.account.release(buf.nbytes)
            raise InputError(f"slice {key[0]} ended without imaging lines (only calibration or skipped scans)")
        kspace = _averaged(buf.kspace, buf.counts)
        calibration = np.zeros_like(kspace) if buf.calibration is None else _averaged(buf.calibration, buf.calib_counts)
        return SliceData(
            key=key,
            kspace=kspace,
            sampled=sampled,
            calibration=calibration,
            calibrated=buf.calib_counts > 0,
            reference=buf.reference,
            acquisitions=buf.acquisitions,
            nbytes=buf.nbytes,
            noise_covariance=self.noise.covariance(self._dwell_us),
        )

    def _check(self, acq, number: int) -> tuple[int, np.ndarray]:
        """The acquisition's column on the grid and its line ``(coils, H)``, after the checks."""
        enc = self.encoding
        where = f"acquisition {number} (slice {int(acq.idx.slice)}, line {int(acq.idx.kspace_encode_step_1)})"
        if int(acq.trajectory_dimensions) != 0:
            raise InputError(
                f"{where} carries a {int(acq.trajectory_dimensions)}-D trajectory: non-Cartesian "
                "data cannot be reconstructed here (diffunfold needs Cartesian lines)"
            )
        coils = int(acq.active_channels)
        if coils < 1 or (enc.coils and coils != enc.coils) or (self.coils and coils != self.coils):
            expected = self.coils or enc.coils
            raise InputError(f"{where} has {coils} active channels but the header/stream has {expected}")
        self.coils = coils
        pre, post = int(acq.discard_pre), int(acq.discard_post)
        kept = int(acq.number_of_samples) - pre - post
        if kept != enc.encoded[0]:
            raise InputError(
                f"{where} has {int(acq.number_of_samples)} samples ({pre} + {post} discarded) but the "
                f"header's encoded readout is {enc.encoded[0]}: the sizes disagree"
            )
        centre = int(acq.center_sample)
        if centre and centre - pre != enc.encoded[0] // 2:
            raise InputError(
                f"{where} has its echo at sample {centre}, not at the readout centre "
                f"{pre + enc.encoded[0] // 2}: asymmetric echoes are not supported"
            )
        column = int(acq.idx.kspace_encode_step_1) + enc.line_offset
        if not 0 <= column < enc.encoded[1] or int(acq.idx.kspace_encode_step_2) != 0:
            raise InputError(
                f"{where} lies outside the header's encoding (step 1 limits {enc.step1[:2]}, "
                f"{enc.encoded[1]} phase encodes, 2-D only)"
            )
        if not 0 <= int(acq.idx.slice) < enc.slices:
            raise InputError(f"{where}: slice {int(acq.idx.slice)} is beyond the header's {enc.slices} slice(s)")
        for name in COUNTERS:
            value, top = int(getattr(acq.idx, name)), enc.counters.get(name, 0)
            if value > top:
                raise InputError(
                    f"{where}: {name} {value} is beyond the header's encoding limits ({name} "
                    f"up to {top}); the header must declare every index the stream uses"
                )
        if float(acq.sample_time_us) > 0:
            self._dwell_us = float(acq.sample_time_us)
        data = np.asarray(acq.data)[:, pre : pre + kept]
        if not np.all(np.isfinite(data)):
            raise InputError(f"{where} holds NaN or Inf k-space samples")
        if _flag(acq, _REVERSE):
            data = data[:, ::-1]
        return column, remove_readout_oversampling(data.astype(np.complex128), enc.grid[0])

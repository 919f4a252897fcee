"""Raw MRD (ISMRMRD HDF5) files from phantoms or fastMRI volumes: real headers, real acquisitions.

Each slice becomes a sequence of ``ismrmrd.Acquisition`` lines on an oversampled readout,
with the flags a scanner sets: noise scans first, the fully sampled centre flagged as
parallel calibration *and* imaging, first/last in slice, last in measurement, and a slice
geometry (position, direction cosines). An undersampled file holds only the lines of a 1-D
mask, as a prospectively accelerated scan would.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import atomic_write, refuse_existing

__all__ = ["sampling_lines", "write_mrd_file", "write_phantom_mrd", "fastmri_to_mrd"]

SLICE_GAP_MM = 1.0


def sampling_lines(width: int, mask: str, acceleration: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(sampled, calibration)`` phase-encode lines, bool ``(W,)`` each, for a 1-D mask kind;
    acceleration 1 samples every line (and flags none as calibration)."""
    from ..physics.mri import default_center_fraction, mri_mask

    if acceleration == 1:
        return np.ones(width, bool), np.zeros(width, bool)
    if mask == "gaussian2d":
        raise InputError(
            "an MRD scan acquires whole phase-encode lines: use a 1-D mask (uniform1d, random1d, "
            "gaussian1d), not gaussian2d"
        )
    # the calibration block: fastMRI's centre fraction, or up to 24 lines (a scanner's usual ACS)
    # where that leaves half the lines to the rest of k-space
    nc = max(
        1, int(round(width * default_center_fraction(acceleration))), min(24, int(round(width / acceleration)) // 2)
    )
    sampled = mri_mask(mask, (1, width), acceleration, center_fraction=nc / width, seed=seed)[0] > 0
    calibration = np.zeros(width, bool)
    calibration[width // 2 - nc // 2 : width // 2 - nc // 2 + nc] = True
    return sampled, calibration


def _acquisition(line: np.ndarray, column: int, slice_index: int, counter: int, geometry: dict, flags: list[int]):
    import ismrmrd

    coils, n = line.shape
    acq = ismrmrd.Acquisition.from_array(
        np.ascontiguousarray(line, dtype=np.complex64),
        center_sample=n // 2,
        scan_counter=counter,
        measurement_uid=1,
        acquisition_time_stamp=counter,
        sample_time_us=5.0,
        **geometry,
    )
    acq.idx.kspace_encode_step_1 = column
    acq.idx.slice = slice_index
    for c in range(coils):
        acq.setChannelActive(c)
    for f in flags:
        acq.set_flag(f)
    return acq


def _geometry(slice_index: int, slices: int, thickness: float) -> dict:
    z = (slice_index - (slices - 1) / 2) * (thickness + SLICE_GAP_MM)
    return {
        "position": (0.0, 0.0, float(z)),
        "read_dir": (1.0, 0.0, 0.0),
        "phase_dir": (0.0, 1.0, 0.0),
        "slice_dir": (0.0, 0.0, 1.0),
        "patient_table_position": (0.0, 0.0, 0.0),
    }


def _acquisitions(kspace: np.ndarray, sampled, calibration, thickness: float, noise_scans: int, rng, noise_model=None):
    """Every acquisition of the scan, in order: noise scans, then each slice's lines.
    ``noise_model``: ``(std, covariance)`` of the receive chain for the noise scans (default:
    white at 1e-6)."""
    import ismrmrd.constants as C

    from ..scanner.simulate import correlated_noise

    slices, coils, n, _ = kspace.shape
    std, psi = noise_model if noise_model is not None else (1e-6, np.eye(coils))
    counter = 0
    for _ in range(noise_scans):
        noise = std * correlated_noise((coils, n), psi, rng)
        counter += 1
        yield _acquisition(noise, 0, 0, counter, _geometry(0, slices, thickness), [C.ACQ_IS_NOISE_MEASUREMENT])
    columns = np.flatnonzero(sampled)
    for s in range(slices):
        for i, col in enumerate(columns):
            flags = [C.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING] if calibration[col] else []
            flags += [C.ACQ_FIRST_IN_SLICE, C.ACQ_FIRST_IN_ENCODE_STEP1] if i == 0 else []
            flags += [C.ACQ_LAST_IN_SLICE, C.ACQ_LAST_IN_ENCODE_STEP1] if i == len(columns) - 1 else []
            if s == slices - 1 and i == len(columns) - 1:
                flags.append(C.ACQ_LAST_IN_MEASUREMENT)
            counter += 1
            yield _acquisition(kspace[s, :, :, col], int(col), s, counter, _geometry(s, slices, thickness), flags)


def write_mrd_file(
    path: str | os.PathLike,
    kspace: np.ndarray,
    header,
    sampled: np.ndarray,
    calibration: np.ndarray,
    noise_scans: int = 0,
    seed: int = 0,
    overwrite: bool = False,
    noise_model=None,
) -> Path:
    """Write k-space ``(slices, coils, Hx, W)`` (Hx the oversampled readout) as an MRD file
    with ``header`` (an ``ismrmrd.xsd.ismrmrdHeader``), keeping the ``sampled`` lines."""
    import ismrmrd

    ks = np.asarray(kspace)
    if ks.ndim != 4 or not np.iscomplexobj(ks) or not np.all(np.isfinite(ks)):
        raise InputError(f"kspace must be finite complex (slices, coils, H, W), got {ks.dtype} {ks.shape}")
    thickness = float(header.encoding[0].encodedSpace.fieldOfView_mm.z)
    rng = np.random.default_rng(seed)
    refuse_existing([path], overwrite)

    def write(tmp: Path) -> None:
        dset = ismrmrd.Dataset(str(tmp), "dataset", mode="w")
        try:
            dset.write_xml_header(header.toXML().encode("utf-8"))
            for acq in _acquisitions(ks, sampled, calibration, thickness, noise_scans, rng, noise_model):
                dset.append_acquisition(acq)
        finally:
            dset.close()

    return atomic_write(path, write)


def write_phantom_mrd(
    path: str | os.PathLike,
    slices: int = 4,
    size: int = 64,
    coils: int = 8,
    mask: str = "gaussian1d",
    acceleration: float = 4.0,
    oversampling: int = 2,
    noise_std: float = 0.0,
    noise_scans: int = 4,
    seed: int = 0,
    images: np.ndarray | None = None,
    overwrite: bool = False,
    noise_covariance: np.ndarray | None = None,
) -> Path:
    """Random phantoms (or ``images``, complex ``(slices, H, W)``) simulated on ``coils``
    birdcage coils, written as an MRD scan with the readout oversampled ``oversampling`` times.
    ``noise_covariance``: the coils' noise covariance ``(coils, coils)``: the imaging lines and
    the noise scans then carry noise of ``noise_std`` times it (else white imaging noise)."""
    from ..data.phantom import random_phantom, simulate_multicoil
    from .header import make_header

    for name, value, low in (
        ("slices", slices, 1),
        ("size", size, 16),
        ("coils", coils, 1),
        ("oversampling", oversampling, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    rng = np.random.default_rng(seed)
    if images is None:
        images = np.stack([random_phantom((size, size), rng) for _ in range(int(slices))])
    images = np.asarray(images)
    if images.ndim != 3:
        raise InputError(f"images must be (slices, H, W), got shape {images.shape}")
    n, h, w = images.shape
    pad = (h * oversampling - h) // 2
    white = noise_std if noise_covariance is None else 0.0
    kspace = np.stack(
        [simulate_multicoil(np.pad(x, ((pad, h * oversampling - h - pad), (0, 0))), coils, white, rng) for x in images]
    )
    noise_model = None
    if noise_covariance is not None:
        from ..scanner.simulate import correlated_noise

        psi = np.asarray(noise_covariance)
        kspace = kspace + noise_std * np.stack([correlated_noise(k.shape, psi, rng) for k in kspace])
        noise_model = (max(float(noise_std), 1e-6), psi)
    sampled, calibration = sampling_lines(w, mask, acceleration, seed)
    header = make_header(
        (h, w),
        coils,
        n,
        oversampling=oversampling,
        acceleration=max(1, round(acceleration)),
        patient_id=Path(path).stem,
    )
    return write_mrd_file(path, kspace, header, sampled, calibration, noise_scans, seed, overwrite, noise_model)


def fastmri_to_mrd(
    source: str | os.PathLike,
    path: str | os.PathLike,
    mask: str = "gaussian1d",
    acceleration: float = 4.0,
    seed: int = 0,
    noise_scans: int = 0,
    overwrite: bool = False,
) -> Path:
    """A fastMRI multi-coil volume (fully sampled, readout oversampled as distributed) as an
    MRD scan keeping the lines of a 1-D mask; matrices and fields of view from its header."""
    from ..data.fastmri import FastMRIFile
    from .header import make_header

    with FastMRIFile(source) as f:
        kspace = np.stack([f.kspace(i) for i in range(f.num_slices)])
        head = f.header
    _, coils, hx, w = kspace.shape
    recon_x = min(head.recon_matrix[0], hx)
    oversampling = max(1, int(round(hx / recon_x)))
    if hx % oversampling:
        raise InputError(f"{source}: a readout of {hx} samples is not {oversampling}x the recon matrix {recon_x}")
    fov = (head.encoded_fov[0] / oversampling, head.encoded_fov[1], head.encoded_fov[2])
    sampled, calibration = sampling_lines(w, mask, acceleration, seed)
    header = make_header(
        (hx // oversampling, w),
        coils,
        kspace.shape[0],
        oversampling=oversampling,
        fov_mm=fov,
        acceleration=max(1, round(acceleration)),
        patient_id=Path(source).stem,
        description=f"fastMRI {Path(source).name}",
    )
    return write_mrd_file(path, kspace, header, sampled, calibration, noise_scans, seed, overwrite)

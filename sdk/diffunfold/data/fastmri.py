"""fastMRI multi-coil HDF5 files: read, write, and a map-style dataset of normalised slices.

The layout (one file per volume, as distributed by fastMRI):

* ``kspace``: ``(slices, coils, H, W)`` complex64, fully sampled; H is the readout
  (ISMRMRD encodedSpace x), W the phase encodes (encodedSpace y);
* ``reconstruction_rss``: ``(slices, Hr, Wr)`` float32, the root-sum-of-squares image of the
  fully sampled k-space, centre-cropped to the recon matrix (reconSpace x, y);
* ``ismrmrd_header``: an ISMRMRD XML document (bytes) with the matrix sizes, fields of view
  and encoding limits;
* file attributes ``acquisition``, ``max`` and ``norm`` (of ``reconstruction_rss``) and
  ``patient_id``.

Everything here is numpy + h5py (no torch): the dataset returns numpy arrays, which a torch
``DataLoader`` collates as it does any numpy array.

The reading and the dataset live here; the header in ``fastmri_header``, writing in
``fastmri_write``, the crop and normalisation in ``fastmri_arrays`` (all re-exported here).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from ..physics.mri import birdcage_maps, estimate_coil_maps, ifft2c
from .fastmri_arrays import center_crop, fit_crop, percentile_normalize
from .fastmri_header import ISMRMRD_NAMESPACE, FastMRIHeader, make_ismrmrd_header, parse_ismrmrd_header
from .fastmri_write import write_fastmri_file

__all__ = [
    "ISMRMRD_NAMESPACE",
    "COIL_MAP_MODES",
    "FastMRIHeader",
    "parse_ismrmrd_header",
    "make_ismrmrd_header",
    "FastMRIFile",
    "write_fastmri_file",
    "center_crop",
    "percentile_normalize",
    "FastMRISlices",
]

COIL_MAP_MODES = ("simulate", "estimate")


class _SliceOutOfRange(InputError, IndexError):
    """An out-of-range slice: an InputError for users, an IndexError for Python's sequence
    protocol (so ``for item in dataset`` stops at the end)."""


def _plain(value: Any) -> Any:
    """HDF5 attribute values as plain Python values (bytes -> str, numpy scalars -> Python)."""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- reading ---------------------------------------------------------------------------------------


class FastMRIFile:
    """A fastMRI multi-coil HDF5 file, opened read-only; slices are read on demand.

    Use as a context manager (``with FastMRIFile(path) as f: k = f.kspace(0)``) or call
    :meth:`close`. The layout is checked on opening, so a wrong file fails here with a
    message rather than later with an h5py error.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: file not found; check the path (fastMRI volumes are .h5 files)")
        if self.path.is_dir():
            raise InputError(
                f"{self.path} is a directory; pass one .h5 file here, or use FastMRISlices(directory) "
                "to read every file in it"
            )
        if not h5py.is_hdf5(self.path):
            raise InputError(
                f"{self.path} is not an HDF5 file; fastMRI data are HDF5 (.h5) files — if it is a "
                "truncated download, download it again"
            )
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(
                f"{self.path}: cannot be opened as HDF5 ({exc}); it may be truncated or being written"
            ) from exc
        try:
            self._check_layout()
        except BaseException:
            self._h5.close()
            raise
        self._header: FastMRIHeader | None = None

    def _check_layout(self) -> None:
        f = self._h5
        ks = f.get("kspace")
        if not isinstance(ks, h5py.Dataset):
            found = sorted(f.keys())
            raise InputError(
                f"{self.path} has no 'kspace' dataset (it holds {found or 'nothing'}); a fastMRI "
                "multi-coil file stores k-space as 'kspace' (slices, coils, H, W) — write one with "
                "write_fastmri_file"
            )
        if ks.ndim != 4:
            hint = (
                " — this looks like single-coil data (slices, H, W); give it a coil axis of 1" if ks.ndim == 3 else ""
            )
            raise InputError(f"{self.path}: 'kspace' must be 4-D (slices, coils, H, W), got shape {ks.shape}{hint}")
        if ks.dtype.kind != "c":
            raise InputError(
                f"{self.path}: 'kspace' must be complex (complex64), got {ks.dtype}; if the real and "
                "imaginary parts are stored separately, rewrite it as re + 1j * im"
            )
        if ks.shape[0] < 1:
            raise InputError(f"{self.path}: 'kspace' holds no slices (shape {ks.shape})")
        target = f.get("reconstruction_rss")
        if target is not None:
            if (
                not isinstance(target, h5py.Dataset)
                or target.ndim != 3
                or target.dtype.kind not in "fiu"
                or target.shape[0] != ks.shape[0]
            ):
                raise InputError(
                    f"{self.path}: 'reconstruction_rss' must be real (slices, Hr, Wr) with "
                    f"{ks.shape[0]} slices like 'kspace', got {getattr(target, 'dtype', '?')} "
                    f"{getattr(target, 'shape', '?')}; rewrite the file with write_fastmri_file"
                )

    # -- metadata ----------------------------------------------------------------------------
    @property
    def _file(self) -> h5py.File:
        if not self._h5.id.valid:
            raise InputError(f"{self.path} has been closed; open it again with FastMRIFile(path)")
        return self._h5

    @property
    def kspace_shape(self) -> tuple[int, int, int, int]:
        """``(slices, coils, H, W)``."""
        return tuple(int(s) for s in self._file["kspace"].shape)

    @property
    def num_slices(self) -> int:
        return self.kspace_shape[0]

    @property
    def num_coils(self) -> int:
        return self.kspace_shape[1]

    @property
    def has_rss(self) -> bool:
        """Whether the file holds ``reconstruction_rss`` (fastMRI's test sets do not)."""
        return "reconstruction_rss" in self._file

    @property
    def rss_shape(self) -> tuple[int, int] | None:
        """``(Hr, Wr)`` of ``reconstruction_rss``, or None when the file has none."""
        return tuple(int(s) for s in self._file["reconstruction_rss"].shape[1:]) if self.has_rss else None

    @property
    def header(self) -> FastMRIHeader:
        """The parsed ``ismrmrd_header`` (read once)."""
        if self._header is None:
            raw = self._file.get("ismrmrd_header")
            if raw is None:
                raise InputError(
                    f"{self.path} has no 'ismrmrd_header' dataset; write the file with "
                    "write_fastmri_file, which adds one"
                )
            self._header = parse_ismrmrd_header(raw[()], source=str(self.path))
        return self._header

    @property
    def recon_shape(self) -> tuple[int, int]:
        """The recon matrix ``(Hr, Wr)``: from the header, else from ``reconstruction_rss``,
        else the k-space grid; never larger than the k-space grid."""
        hw = self.kspace_shape[-2:]
        if "ismrmrd_header" in self._file:
            return fit_crop(self.header.recon_shape, hw)
        return self.rss_shape or (hw[0], hw[1])

    @property
    def attrs(self) -> dict[str, Any]:
        """The file attributes (acquisition, max, norm, patient_id, ...) as plain values."""
        return {k: _plain(v) for k, v in self._file.attrs.items()}

    # -- data ----------------------------------------------------------------------------------
    def _slice_index(self, i: Any) -> int:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise InputError(f"a slice index must be an integer, got {i!r}")
        n = self.num_slices
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise _SliceOutOfRange(
                f"slice {int(i)} is out of range for {self.path.name}, which has {n} slices "
                f"(valid: 0..{n - 1} or negative from the end)"
            )
        return j

    def kspace(self, i: int) -> np.ndarray:
        """The k-space of slice ``i``: complex64 ``(coils, H, W)``."""
        return np.asarray(self._file["kspace"][self._slice_index(i)], dtype=np.complex64)

    def rss(self, i: int) -> np.ndarray:
        """``reconstruction_rss`` of slice ``i``: float32 ``(Hr, Wr)``."""
        j = self._slice_index(i)
        if not self.has_rss:
            raise InputError(
                f"{self.path} has no 'reconstruction_rss' (fastMRI's test files do not); compute "
                "one from fully sampled k-space with rss(ifft2c(kspace)), or use "
                "FastMRISlices(..., coil_maps='estimate')"
            )
        return np.asarray(self._file["reconstruction_rss"][j], dtype=np.float32)

    def close(self) -> None:
        """Close the HDF5 file (idempotent)."""
        if self._h5.id.valid:
            self._h5.close()

    def __enter__(self) -> FastMRIFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"{self.kspace_shape}" if self._h5.id.valid else "closed"
        return f"FastMRIFile({str(self.path)!r}, kspace={state})"


# -- dataset -----------------------------------------------------------------------------------------


def _resolve_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.h5"))
            if not found:
                raise InputError(f"{p} holds no .h5 files; point at a directory of fastMRI volumes")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or directory; check the path")
    if not files:
        raise InputError("no fastMRI files given; pass a directory, a .h5 file or a list of them")
    return files


class FastMRISlices:
    """Every slice of one or more fastMRI volumes, as normalised complex images + coil maps.

    ``paths``: a directory (all ``*.h5`` in it, sorted), one file, or a list of both.
    ``coil_maps``:

    * ``"simulate"`` (the paper's set-up): the image is ``reconstruction_rss`` (real, zero
      phase) and the coil maps are ``birdcage_maps(ncoils, shape)``; k-space is not read.
    * ``"estimate"``: from the fully sampled k-space: coil images ``ifft2c(kspace)``, maps from
      ``estimate_coil_maps``, image = ``sum_c conj(S_c) * coil_image_c`` (the SENSE
      combination), both centre-cropped to the recon matrix; ``ncoils`` is the file's count.
      The ratio-method maps absorb the object's smooth phase, so this image is the object's
      magnitude up to a slowly varying residual phase.

    ``crop=(h, w)`` centre-crops further. Each image is divided by the ``q``-th percentile of
    its magnitude. Items are dicts of numpy arrays: ``image`` complex64 ``(1, H, W)``,
    ``target`` float32 ``(1, H, W)`` = ``|image|``, ``coil_maps`` complex64 ``(ncoils, H, W)``
    with ``sum_c |S_c|^2 = 1`` on the object, ``scale`` (float), ``file`` (str) and ``slice``
    (int). Files are opened per item, so the dataset pickles to DataLoader workers.
    """

    def __init__(
        self, paths, ncoils: int = 15, coil_maps: str = "simulate", crop: Sequence[int] | None = None, q: float = 99.0
    ):
        if coil_maps not in COIL_MAP_MODES:
            raise InputError(f"coil_maps must be one of {COIL_MAP_MODES}, got {coil_maps!r}")
        if isinstance(ncoils, (bool, np.bool_)) or not isinstance(ncoils, (int, np.integer)) or ncoils < 1:
            raise InputError(f"ncoils must be a positive integer, got {ncoils!r}")
        if not (0 < float(q) <= 100):
            raise InputError(f"q must be a percentile in (0, 100], got {q!r}")
        if crop is not None:
            try:
                crop = tuple(int(s) for s in crop)
            except (TypeError, ValueError):
                raise InputError(f"crop must be (h, w) or None, got {crop!r}") from None
            if len(crop) != 2 or min(crop) < 1:
                raise InputError(f"crop must be (h, w) with positive sizes, got {crop!r}")
        self.mode = coil_maps
        self.ncoils = int(ncoils)
        self.crop = crop
        self.q = float(q)
        self.files = _resolve_paths(paths)

        # Index the files once (slice counts, image sizes), checking every file up front so a
        # bad one fails at construction, not in the middle of training.
        self._counts: list[int] = []
        self._shapes: list[tuple[int, int]] = []
        for p in self.files:
            with FastMRIFile(p) as f:
                if self.mode == "simulate":
                    if not f.has_rss:
                        raise InputError(
                            f"{p} has no 'reconstruction_rss', which coil_maps='simulate' uses as "
                            "the image; use coil_maps='estimate' for fully sampled k-space"
                        )
                    shape = f.rss_shape
                else:
                    shape = f.recon_shape
                if crop is not None and (crop[0] > shape[0] or crop[1] > shape[1]):
                    raise InputError(
                        f"crop {crop} is larger than the {shape} images of {p}; use a crop of at most {shape}"
                    )
                self._counts.append(f.num_slices)
                self._shapes.append(shape)
        self._starts = np.cumsum([0] + self._counts).tolist()
        self._maps_cache: dict[tuple[int, int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, i: int) -> tuple[Path, int]:
        """The ``(file, slice)`` of dataset item ``i``."""
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise InputError(f"a dataset index must be an integer, got {i!r}")
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise _SliceOutOfRange(f"index {int(i)} is out of range for {n} slices")
        k = bisect.bisect_right(self._starts, j) - 1
        return self.files[k], j - self._starts[k]

    def _birdcage(self, shape: tuple[int, int]) -> np.ndarray:
        key = (self.ncoils, shape[0], shape[1])
        if key not in self._maps_cache:  # the same maps for every slice of a given size
            self._maps_cache[key] = birdcage_maps(self.ncoils, shape).astype(np.complex64)
        return self._maps_cache[key]

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, s = self.locate(i)
        with FastMRIFile(path) as f:
            if self.mode == "simulate":
                image = f.rss(s).astype(np.complex64)
                if self.crop is not None:
                    image = center_crop(image, self.crop)
                maps = self._birdcage(image.shape).copy()  # a copy: callers may modify items
            else:
                ks = f.kspace(s)
                recon = f.recon_shape
                coil_images = ifft2c(ks)
                est = estimate_coil_maps(ks)
                combined = np.sum(np.conj(est) * coil_images, axis=0)
                image = center_crop(combined, recon)
                maps = center_crop(est, recon)
                if self.crop is not None:
                    image, maps = center_crop(image, self.crop), center_crop(maps, self.crop)
        image, scale = percentile_normalize(np.ascontiguousarray(image, dtype=np.complex64), self.q)
        return {
            "image": image[None],
            "target": np.abs(image)[None].astype(np.float32),
            "coil_maps": np.ascontiguousarray(maps, dtype=np.complex64),
            "scale": scale,
            "file": str(path),
            "slice": int(s),
        }

    def __repr__(self) -> str:
        return (
            f"FastMRISlices({len(self.files)} files, {len(self)} slices, coil_maps={self.mode!r}"
            + (f", ncoils={self.ncoils}" if self.mode == "simulate" else "")
            + (f", crop={self.crop}" if self.crop else "")
            + ")"
        )

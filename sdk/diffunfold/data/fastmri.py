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
"""

from __future__ import annotations

import bisect
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from ..errors import InputError
from ..safe_io import atomic_write
from ..physics.mri import birdcage_maps, estimate_coil_maps, ifft2c, rss as rss_combine

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

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
COIL_MAP_MODES = ("simulate", "estimate")


class _SliceOutOfRange(InputError, IndexError):
    """An out-of-range slice: an InputError for users, an IndexError for Python's sequence
    protocol (so ``for item in dataset`` stops at the end)."""


# -- ISMRMRD header -----------------------------------------------------------------------------

@dataclass(frozen=True)
class FastMRIHeader:
    """The parts of an ISMRMRD header that fastMRI processing needs.

    Matrices are ``(x, y, z)`` in samples and fields of view ``(x, y, z)`` in mm; x is the
    readout (k-space H), y the phase encodes (k-space W). ``encoding_step1`` is
    ``(minimum, maximum, center)`` of ``kspace_encoding_step_1`` (the phase-encode lines).
    """

    encoded_matrix: tuple[int, int, int]
    recon_matrix: tuple[int, int, int]
    encoded_fov: tuple[float, float, float]
    recon_fov: tuple[float, float, float]
    encoding_step1: tuple[int, int, int]

    @property
    def encoded_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the encoded k-space grid."""
        return (self.encoded_matrix[0], self.encoded_matrix[1])

    @property
    def recon_shape(self) -> tuple[int, int]:
        """``(Hr, Wr)`` of the reconstructed image (the crop of ``reconstruction_rss``)."""
        return (self.recon_matrix[0], self.recon_matrix[1])

    def to_xml(self) -> str:
        """This header as an ISMRMRD XML document (see :func:`make_ismrmrd_header`)."""
        return make_ismrmrd_header(self.encoded_matrix, self.recon_matrix, self.encoded_fov,
                                   self.recon_fov, self.encoding_step1)


def _int_triple(value: Any, name: str, default_z: int = 1) -> tuple[int, int, int]:
    vals = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else None
    if vals is None or len(vals) not in (2, 3):
        raise InputError(f"{name} must be (x, y) or (x, y, z), got {value!r}")
    if len(vals) == 2:
        vals = vals + (default_z,)
    out = []
    for v in vals:
        try:
            ok = not isinstance(v, (bool, np.bool_)) and float(v).is_integer() and int(v) >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{name} must hold positive integers, got {value!r}")
        out.append(int(v))
    return (out[0], out[1], out[2])


def _float_triple(value: Any, name: str, default_z: float) -> tuple[float, float, float]:
    vals = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else None
    if vals is None or len(vals) not in (2, 3):
        raise InputError(f"{name} must be (x, y) or (x, y, z) in mm, got {value!r}")
    if len(vals) == 2:
        vals = vals + (default_z,)
    try:
        out = tuple(float(v) for v in vals)
    except (TypeError, ValueError):
        raise InputError(f"{name} must hold numbers (mm), got {value!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise InputError(f"{name} must hold positive finite sizes in mm, got {value!r}")
    return (out[0], out[1], out[2])


def make_ismrmrd_header(encoded_matrix: Sequence[int], recon_matrix: Sequence[int] | None = None,
                        encoded_fov: Sequence[float] | None = None,
                        recon_fov: Sequence[float] | None = None,
                        encoding_step1: Sequence[int] | None = None) -> str:
    """A minimal ISMRMRD XML header holding the fields :class:`FastMRIHeader` reads.

    ``encoded_matrix``/``recon_matrix``: ``(x, y)`` or ``(x, y, z)`` (z defaults to 1);
    ``recon_matrix`` defaults to ``encoded_matrix``. Fields of view default to 1 mm per
    sample of each matrix. ``encoding_step1`` = ``(minimum, maximum, center)`` defaults to
    ``(0, y - 1, y // 2)``, the fully sampled phase-encode range. The document also carries
    the elements the ISMRMRD schema requires (experimental conditions, trajectory), so other
    ISMRMRD readers accept it.
    """
    enc = _int_triple(encoded_matrix, "encoded_matrix")
    rec = enc if recon_matrix is None else _int_triple(recon_matrix, "recon_matrix")
    enc_fov = (tuple(float(v) for v in enc) if encoded_fov is None
               else _float_triple(encoded_fov, "encoded_fov", float(enc[2])))
    rec_fov = (tuple(float(v) for v in rec) if recon_fov is None
               else _float_triple(recon_fov, "recon_fov", float(rec[2])))
    if encoding_step1 is None:
        lim = (0, enc[1] - 1, enc[1] // 2)
    else:
        try:
            lim = tuple(int(v) for v in encoding_step1)
        except (TypeError, ValueError):
            lim = ()
        if len(lim) != 3 or not 0 <= lim[0] <= lim[2] <= lim[1]:
            raise InputError(
                f"encoding_step1 must be (minimum, maximum, center) with 0 <= minimum <= center "
                f"<= maximum, got {encoding_step1!r}"
            )

    def xyz(parent: ET.Element, tag: str, values, fmt) -> None:
        node = ET.SubElement(parent, tag)
        for axis, v in zip("xyz", values):
            ET.SubElement(node, axis).text = fmt(v)

    root = ET.Element("ismrmrdHeader", {"xmlns": ISMRMRD_NAMESPACE})
    conditions = ET.SubElement(root, "experimentalConditions")
    ET.SubElement(conditions, "H1resonanceFrequency_Hz").text = "127728000"  # 3 T, schema-required
    encoding = ET.SubElement(root, "encoding")
    for tag, matrix, fov in (("encodedSpace", enc, enc_fov), ("reconSpace", rec, rec_fov)):
        space = ET.SubElement(encoding, tag)
        xyz(space, "matrixSize", matrix, str)
        xyz(space, "fieldOfView_mm", fov, repr)
    limits = ET.SubElement(ET.SubElement(encoding, "encodingLimits"), "kspace_encoding_step_1")
    for tag, v in zip(("minimum", "maximum", "center"), lim):
        ET.SubElement(limits, tag).text = str(v)
    ET.SubElement(encoding, "trajectory").text = "cartesian"
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def parse_ismrmrd_header(xml: bytes | str, source: str = "ismrmrd_header") -> FastMRIHeader:
    """Parse the fields of :class:`FastMRIHeader` from an ISMRMRD XML document.

    ``source`` names where the document came from (a file) in error messages. Documents with
    or without the ISMRMRD namespace are accepted; the first ``encoding`` element is used.
    """
    if isinstance(xml, np.ndarray):  # a 0-d array from an HDF5 scalar dataset
        xml = xml.item()
    if not isinstance(xml, (bytes, bytearray, str)):
        raise InputError(f"{source}: the ISMRMRD header must be XML text (bytes or str), got {type(xml).__name__}")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InputError(
            f"{source}: the ISMRMRD header is not valid XML ({exc}); the file may be corrupt — "
            "re-download it, or rewrite it with write_fastmri_file(..., header=make_ismrmrd_header(...))"
        ) from None
    for node in root.iter():  # drop namespaces: fastMRI files use the ISMRMRD one, others none
        if isinstance(node.tag, str):
            node.tag = node.tag.rsplit("}", 1)[-1]
    if root.tag != "ismrmrdHeader":
        raise InputError(f"{source}: the XML root is <{root.tag}>, not <ismrmrdHeader>; this is not an ISMRMRD header")

    def field(path: str, kind):
        node = root.find(path)
        if node is None or node.text is None or not node.text.strip():
            raise InputError(
                f"{source}: the ISMRMRD header has no {path}; fastMRI processing needs the encoded "
                "and recon matrix sizes, fields of view and encoding limits (rewrite the header "
                "with make_ismrmrd_header)"
            )
        text = node.text.strip()
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"{source}: {path} = {text!r} in the ISMRMRD header is not a number") from None
        if kind is int:
            if not value.is_integer():
                raise InputError(f"{source}: {path} = {text!r} in the ISMRMRD header must be an integer")
            return int(value)
        return value

    def triple(space: str, what: str, kind):
        return tuple(field(f"encoding/{space}/{what}/{a}", kind) for a in "xyz")

    lim = "encoding/encodingLimits/kspace_encoding_step_1"
    return FastMRIHeader(
        encoded_matrix=triple("encodedSpace", "matrixSize", int),
        recon_matrix=triple("reconSpace", "matrixSize", int),
        encoded_fov=triple("encodedSpace", "fieldOfView_mm", float),
        recon_fov=triple("reconSpace", "fieldOfView_mm", float),
        encoding_step1=tuple(field(f"{lim}/{t}", int) for t in ("minimum", "maximum", "center")),
    )


# -- array helpers --------------------------------------------------------------------------------

def center_crop(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The centre ``(h, w)`` of the last two axes of ``x`` (a view, not a copy).

    The crop starts at ``(H - h) // 2``, which keeps the k-space/FFT centre pixel ``H // 2``
    at ``h // 2`` when sizes are even.
    """
    if getattr(x, "ndim", 0) < 2:
        raise InputError(f"center_crop needs an array with at least 2 dimensions, got {type(x).__name__} {getattr(x, 'shape', '')}")
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"the crop shape must be (h, w), got {shape!r}") from None
    H, W = int(x.shape[-2]), int(x.shape[-1])
    if h < 1 or w < 1:
        raise InputError(f"the crop shape must be positive, got {(h, w)}")
    if h > H or w > W:
        raise InputError(
            f"cannot crop {(H, W)} to {(h, w)}: the crop is larger than the image; pick a crop "
            f"of at most {(H, W)}"
        )
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


def percentile_normalize(image: np.ndarray, q: float = 99.0) -> tuple[np.ndarray, float]:
    """``(image / s, s)`` with ``s`` the ``q``-th percentile of ``|image|``.

    The paper normalises each fastMRI slice by its 99th-percentile magnitude, so a handful of
    bright pixels (fat, vessels) do not set the scale. The dtype is kept.
    """
    image = np.asarray(image)
    if not (0 < float(q) <= 100):
        raise InputError(f"q must be a percentile in (0, 100], got {q!r}")
    mag = np.abs(image)
    if mag.size == 0 or not np.all(np.isfinite(mag)):
        raise InputError("the image is empty or contains NaN/Inf; it cannot be normalised")
    scale = float(np.percentile(mag, q))
    if not scale > 0:
        raise InputError(
            f"the {q:g}th percentile of |image| is 0 (the image is blank or mostly background), "
            "so it cannot be normalised; check the slice, or use a larger q"
        )
    return (image / np.asarray(scale, dtype=mag.dtype)).astype(image.dtype, copy=False), scale


def _plain(value: Any) -> Any:
    """HDF5 attribute values as plain Python values (bytes -> str, numpy scalars -> Python)."""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fit_crop(recon: Sequence[int], hw: Sequence[int]) -> tuple[int, int]:
    # Some fastMRI brain volumes have fewer phase encodes than the 320-wide recon matrix;
    # like fastMRI itself, crop to what the image has rather than fail.
    return (min(int(recon[0]), int(hw[0])), min(int(recon[1]), int(hw[1])))


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
            raise InputError(f"{self.path}: cannot be opened as HDF5 ({exc}); it may be truncated or being written") from exc
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
            hint = (" — this looks like single-coil data (slices, H, W); give it a coil axis of 1"
                    if ks.ndim == 3 else "")
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
            if not isinstance(target, h5py.Dataset) or target.ndim != 3 or target.dtype.kind not in "fiu" \
                    or target.shape[0] != ks.shape[0]:
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
            return _fit_crop(self.header.recon_shape, hw)
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

    def __enter__(self) -> "FastMRIFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"{self.kspace_shape}" if self._h5.id.valid else "closed"
        return f"FastMRIFile({str(self.path)!r}, kspace={state})"


# -- writing ---------------------------------------------------------------------------------------

def write_fastmri_file(path: str | os.PathLike, kspace: np.ndarray, rss: np.ndarray | None = None,
                       header: FastMRIHeader | str | bytes | None = None,
                       attrs: dict[str, Any] | None = None) -> Path:
    """Write fully sampled multi-coil k-space in the fastMRI layout; returns the path.

    ``kspace``: complex ``(slices, coils, H, W)`` (or ``(coils, H, W)`` for one slice), stored
    as complex64. ``rss``: ``(slices, Hr, Wr)``; by default ``rss(ifft2c(kspace))`` cropped to
    the header's recon matrix. ``header``: a :class:`FastMRIHeader` or XML; by default one with
    encoded matrix ``(H, W)`` and recon matrix the shape of ``rss`` (or ``(H, W)``). ``attrs``
    override the defaults ``max``/``norm`` (of the RSS volume), ``acquisition``
    (``"UNKNOWN"``) and ``patient_id`` (the file stem).

    The file is written to a hidden temporary file in the same directory and moved into place
    with ``os.replace``, so readers never see a half-written file and an interrupted write
    leaves any previous file intact. The parent directory is created if needed.
    """
    path = Path(path)
    ks = np.asarray(kspace)
    if ks.ndim == 3:
        ks = ks[None]
    if ks.ndim != 4 or not np.iscomplexobj(ks):
        raise InputError(
            f"kspace must be complex (slices, coils, H, W) or (coils, H, W), got {ks.dtype} {ks.shape}"
        )
    ks = ks.astype(np.complex64, copy=False)
    if not np.all(np.isfinite(ks)):
        raise InputError("kspace contains NaN or Inf; nothing was written")

    if header is None:
        recon = tuple(np.shape(rss)[-2:]) if rss is not None else ks.shape[-2:]
        head = parse_ismrmrd_header(make_ismrmrd_header(ks.shape[-2:], recon))
    elif isinstance(header, FastMRIHeader):
        head = header
    else:
        head = parse_ismrmrd_header(header, source="the header given to write_fastmri_file")
    xml = head.to_xml()

    if rss is None:
        # Computed slice by slice: a whole fastMRI volume of coil images would be several GB.
        crop = _fit_crop(head.recon_shape, ks.shape[-2:])
        target = np.stack([center_crop(rss_combine(ifft2c(k)), crop) for k in ks]).astype(np.float32)
    else:
        target = np.asarray(rss)
        if target.ndim == 2:
            target = target[None]
        if target.ndim != 3 or target.shape[0] != ks.shape[0] or np.iscomplexobj(target):
            raise InputError(
                f"rss must be real (slices, Hr, Wr) with {ks.shape[0]} slices like kspace, got "
                f"{target.dtype} {target.shape}"
            )
        target = target.astype(np.float32, copy=False)
        if not np.all(np.isfinite(target)):
            raise InputError("rss contains NaN or Inf; nothing was written")

    meta: dict[str, Any] = {
        "acquisition": "UNKNOWN",
        "max": float(target.max()),
        "norm": float(np.linalg.norm(target)),
        "patient_id": path.stem,
    }
    meta.update(attrs or {})

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            # One chunk per slice, so FastMRIFile.kspace(i) reads exactly one slice.
            f.create_dataset("kspace", data=ks, chunks=(1,) + ks.shape[1:])
            f.create_dataset("reconstruction_rss", data=target, chunks=(1,) + target.shape[1:])
            f.create_dataset("ismrmrd_header", data=xml.encode("utf-8"))
            for key, value in meta.items():
                try:
                    f.attrs[key] = value
                except (TypeError, ValueError) as exc:
                    raise InputError(
                        f"attribute {key!r} = {value!r} cannot be stored in HDF5 ({exc}); use a "
                        "number, a string or a numpy array"
                    ) from None

    atomic_write(path, write)
    return path


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

    def __init__(self, paths, ncoils: int = 15, coil_maps: str = "simulate",
                 crop: Sequence[int] | None = None, q: float = 99.0):
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
                        f"crop {crop} is larger than the {shape} images of {p}; use a crop of at "
                        f"most {shape}"
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
        return (f"FastMRISlices({len(self.files)} files, {len(self)} slices, coil_maps={self.mode!r}"
                + (f", ncoils={self.ncoils}" if self.mode == "simulate" else "")
                + (f", crop={self.crop}" if self.crop else "") + ")")

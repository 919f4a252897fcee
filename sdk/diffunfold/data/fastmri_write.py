"""Writing fastMRI multi-coil HDF5 files (:func:`write_fastmri_file`), atomically.
Re-exported by ``diffunfold.data.fastmri``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from ..physics.mri import ifft2c
from ..physics.mri import rss as rss_combine
from ..safe_io import atomic_write
from .fastmri_arrays import center_crop, fit_crop
from .fastmri_header import FastMRIHeader, make_ismrmrd_header, parse_ismrmrd_header


def write_fastmri_file(
    path: str | os.PathLike,
    kspace: np.ndarray,
    rss: np.ndarray | None = None,
    header: FastMRIHeader | str | bytes | None = None,
    attrs: dict[str, Any] | None = None,
) -> Path:
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
    ks = _kspace_volume(kspace)
    head = _header(header, ks, rss)
    xml = head.to_xml()
    target = _rss_volume(rss, ks, head)
    meta: dict[str, Any] = {
        "acquisition": "UNKNOWN",
        "max": float(target.max()),
        "norm": float(np.linalg.norm(target)),
        "patient_id": path.stem,
    }
    meta.update(attrs or {})
    atomic_write(path, lambda tmp: _write_h5(tmp, ks, target, xml, meta))
    return path


def _kspace_volume(kspace) -> np.ndarray:
    """``kspace`` as complex64 ``(slices, coils, H, W)``, checked finite."""
    ks = np.asarray(kspace)
    if ks.ndim == 3:
        ks = ks[None]
    if ks.ndim != 4 or not np.iscomplexobj(ks):
        raise InputError(f"kspace must be complex (slices, coils, H, W) or (coils, H, W), got {ks.dtype} {ks.shape}")
    ks = ks.astype(np.complex64, copy=False)
    if not np.all(np.isfinite(ks)):
        raise InputError("kspace contains NaN or Inf; nothing was written")
    return ks


def _header(header: FastMRIHeader | str | bytes | None, ks: np.ndarray, rss) -> FastMRIHeader:
    """The header given (parsed when XML), or one with encoded matrix ``(H, W)`` and recon matrix
    the shape of ``rss`` (or ``(H, W)``)."""
    if header is None:
        recon = tuple(np.shape(rss)[-2:]) if rss is not None else ks.shape[-2:]
        return parse_ismrmrd_header(make_ismrmrd_header(ks.shape[-2:], recon))
    if isinstance(header, FastMRIHeader):
        return header
    return parse_ismrmrd_header(header, source="the header given to write_fastmri_file")


def _rss_volume(rss, ks: np.ndarray, head: FastMRIHeader) -> np.ndarray:
    """``rss`` as float32 ``(slices, Hr, Wr)``, checked; by default computed from ``ks`` and
    cropped to the header's recon matrix."""
    if rss is None:
        # Computed slice by slice: a whole fastMRI volume of coil images would be several GB.
        crop = fit_crop(head.recon_shape, ks.shape[-2:])
        return np.stack([center_crop(rss_combine(ifft2c(k)), crop) for k in ks]).astype(np.float32)
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
    return target


def _write_h5(tmp: Path, ks: np.ndarray, target: np.ndarray, xml: str, meta: dict[str, Any]) -> None:
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

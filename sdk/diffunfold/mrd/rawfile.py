"""Reading raw MRD (ISMRMRD HDF5) files: a header and its acquisitions, through ``ismrmrd``.

A file is detected by its layout (a group holding ``xml`` and ``data``), so files written by
the ismrmrd tools, by a streaming client's saved data or by :mod:`diffunfold.mrd.writer` all
read the same way, and assemble into slices with the server's own
:class:`~diffunfold.mrd.assemble.SliceAssembler`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .assemble import SliceAssembler, SliceData
from .header import Encoding, encoding_of, parse_header

__all__ = ["is_mrd_file", "mrd_group", "RawScan", "read_raw", "iter_acquisitions"]

# h5py objects used from several threads (clients, server sessions) go through this lock
HDF5_LOCK = threading.RLock()


def mrd_group(path: str | os.PathLike) -> str | None:
    """The name of the MRD dataset group in an HDF5 file (usually ``dataset``), or None."""
    import h5py

    p = Path(path)
    if not p.is_file() or not h5py.is_hdf5(p):
        return None
    try:
        with HDF5_LOCK, h5py.File(p, "r") as f:
            for name, node in f.items():
                if isinstance(node, h5py.Group) and "xml" in node and "data" in node:
                    return name
    except OSError:
        return None
    return None


def is_mrd_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an MRD raw-data file (and not, say, a fastMRI volume)."""
    return mrd_group(path) is not None


def _open(path: str | os.PathLike):
    import ismrmrd

    group = mrd_group(path)
    if group is None:
        raise InputError(f"{path} is not an MRD (ISMRMRD) raw-data file: no HDF5 group with 'xml' and 'data'")
    try:
        return ismrmrd.Dataset(str(path), group, mode="r")
    except OSError as exc:
        raise InputError(f"{path}: cannot be opened ({exc})") from None


def iter_acquisitions(path: str | os.PathLike) -> Iterator:
    """The header XML (bytes) first, then every ``ismrmrd.Acquisition`` of the file in order.

    HDF5 reads are serialised over threads (reading variable-length acquisitions from several
    threads at once crashed the process in testing), so concurrent clients may each read a file."""
    with HDF5_LOCK:
        dset = _open(path)
        xml, count = dset.read_xml_header(), dset.number_of_acquisitions()
    try:
        yield xml if isinstance(xml, bytes) else str(xml).encode("utf-8")
        for i in range(count):
            with HDF5_LOCK:
                acq = dset.read_acquisition(i)
            yield acq
    finally:
        with HDF5_LOCK:
            dset.close()


@dataclass
class RawScan:
    """A raw MRD file assembled into slices (in the order they completed)."""

    path: Path
    header_xml: bytes
    header: object
    encoding: Encoding
    slices: list[SliceData]
    skipped: dict
    acquisitions: int


def read_raw(path: str | os.PathLike) -> RawScan:
    """Read and assemble a raw MRD file; errors name the file and the acquisition."""
    items = iter_acquisitions(path)
    xml = next(items)
    header = parse_header(xml, source=f"{path}: the MRD header")
    try:
        encoding = encoding_of(header)
        assembler = SliceAssembler(encoding)
        slices, count = [], 0
        for acq in items:
            count += 1
            slices.extend(assembler.add(acq))
        slices.extend(assembler.finish())
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    if not slices:
        raise InputError(f"{path} holds no imaging acquisitions")
    return RawScan(Path(path), xml, header, encoding, slices, dict(assembler.skipped), count)

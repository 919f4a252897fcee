"""The ISMRMRD XML header of fastMRI files: the fields fastMRI processing needs
(:class:`FastMRIHeader`), parsed from a file's ``ismrmrd_header`` and written for new files.
Re-exported by ``diffunfold.data.fastmri``."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"


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
        return make_ismrmrd_header(
            self.encoded_matrix, self.recon_matrix, self.encoded_fov, self.recon_fov, self.encoding_step1
        )


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


def make_ismrmrd_header(
    encoded_matrix: Sequence[int],
    recon_matrix: Sequence[int] | None = None,
    encoded_fov: Sequence[float] | None = None,
    recon_fov: Sequence[float] | None = None,
    encoding_step1: Sequence[int] | None = None,
) -> str:
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
    enc_fov = (
        tuple(float(v) for v in enc)
        if encoded_fov is None
        else _float_triple(encoded_fov, "encoded_fov", float(enc[2]))
    )
    rec_fov = (
        tuple(float(v) for v in rec) if recon_fov is None else _float_triple(recon_fov, "recon_fov", float(rec[2]))
    )
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

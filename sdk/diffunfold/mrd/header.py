"""The ISMRMRD XML header: what a reconstruction needs from it, and a header for written data.

Parsing and serialising go through the ``ismrmrd`` package's schema classes
(``ismrmrd.xsd.CreateFromDocument`` / ``ismrmrdHeader.toXML``); this module only checks the
parts a 2-D Cartesian reconstruction relies on and turns them into plain numbers
(:class:`Encoding`), with errors that say what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import InputError

__all__ = ["Encoding", "parse_header", "encoding_of", "make_header"]


@dataclass(frozen=True)
class Encoding:
    """The first encoding of a header, as a 2-D Cartesian reconstruction uses it.

    ``encoded``/``recon``: matrix ``(x, y, z)``; x is the readout, y the phase encodes.
    ``step1``: ``(minimum, maximum, center)`` of ``kspace_encoding_step_1``. ``slices``: the
    count from the slice limit (1 when absent). ``coils``: ``receiverChannels`` or None.
    ``counters``: the highest contrast, phase, repetition and set index the encoding limits
    allow (0 where a limit is absent: that counter is not used).
    """

    encoded: tuple[int, int, int]
    recon: tuple[int, int, int]
    encoded_fov: tuple[float, float, float]
    recon_fov: tuple[float, float, float]
    step1: tuple[int, int, int]
    slices: int
    coils: int | None
    trajectory: str
    counters: dict = field(default_factory=dict)

    @property
    def readout_oversampling(self) -> float:
        """Encoded over recon field of view along the readout (2 for the usual oversampling)."""
        return self.encoded_fov[0] / self.recon_fov[0]

    @property
    def readout_samples(self) -> int:
        """Readout samples once the oversampling is removed."""
        return max(1, int(round(self.encoded[0] / self.readout_oversampling)))

    @property
    def grid(self) -> tuple[int, int]:
        """``(H, W)`` of the reconstruction grid: readout without oversampling x phase encodes."""
        return (self.readout_samples, self.encoded[1])

    @property
    def line_offset(self) -> int:
        """Column of ``kspace_encode_step_1 = 0``: the header's centre line lands at ``y // 2``."""
        return self.encoded[1] // 2 - self.step1[2]

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the output: the recon matrix, never larger than the grid."""
        return (min(self.recon[0], self.grid[0]), min(self.recon[1], self.grid[1]))


def parse_header(xml: bytes | str, source: str = "the MRD header"):
    """An ``ismrmrd.xsd.ismrmrdHeader`` from XML text; :class:`InputError` when it is not one."""
    from ismrmrd.xsd import CreateFromDocument

    if isinstance(xml, str):
        xml = xml.encode("utf-8")
    if not isinstance(xml, (bytes, bytearray)) or not xml.strip():
        raise InputError(f"{source} is empty; an MRD stream starts with the ISMRMRD XML header")
    try:
        return CreateFromDocument(bytes(xml))
    except Exception as exc:  # xsdata raises its own ParserError / ExpatError subclasses
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{source} is not a valid ISMRMRD XML header ({first})") from None


def _triple(node, what: str, kind) -> tuple:
    if node is None:
        raise InputError(f"the MRD header has no {what}")
    values = (node.x, node.y, node.z)
    if any(v is None for v in values) or not all(math.isfinite(float(v)) and v > 0 for v in values):
        raise InputError(f"the MRD header's {what} must hold positive x, y, z, got {values}")
    return tuple(kind(v) for v in values)


COUNTERS = ("contrast", "phase", "repetition", "set")  # with the slice, what tells one k-space apart


def _counter_maximum(limits, name: str) -> int:
    limit = getattr(limits, name, None) if limits is not None else None
    if limit is None or limit.maximum is None:
        return 0
    maximum = int(limit.maximum)
    if not 0 <= maximum < 1 << 16:
        raise InputError(f"the MRD header's {name} limit maximum {maximum} is not a 16-bit counter")
    return maximum


def encoding_of(header) -> Encoding:
    """Check the header's first encoding and return it as an :class:`Encoding`."""
    if not header.encoding:
        raise InputError("the MRD header has no <encoding>")
    enc = header.encoding[0]
    trajectory = getattr(enc.trajectory, "value", str(enc.trajectory))
    if trajectory != "cartesian":
        raise InputError(
            f"the MRD header's trajectory is {trajectory!r}; diffunfold reconstructs Cartesian "
            "data only (regrid non-Cartesian data first)"
        )
    encoded = _triple(enc.encodedSpace.matrixSize, "encodedSpace matrixSize", int)
    recon = _triple(enc.reconSpace.matrixSize, "reconSpace matrixSize", int)
    if encoded[2] != 1:
        raise InputError(
            f"the MRD header encodes {encoded[2]} partitions (3-D); diffunfold reconstructs "
            "2-D (multi-slice) acquisitions"
        )
    limits = enc.encodingLimits
    step1 = limits.kspace_encoding_step_1 if limits is not None else None
    if step1 is None:
        lim = (0, encoded[1] - 1, encoded[1] // 2)
    else:
        lim = (int(step1.minimum), int(step1.maximum), int(step1.center))
        offset = encoded[1] // 2 - lim[2]
        if not 0 <= lim[0] <= lim[2] <= lim[1] or lim[0] + offset < 0 or lim[1] + offset >= encoded[1]:
            raise InputError(
                f"the MRD header's kspace_encoding_step_1 limits {lim} do not fit the "
                f"{encoded[1]} phase encodes of the encoded matrix"
            )
    slice_lim = limits.slice if limits is not None else None
    counters = {name: _counter_maximum(limits, name) for name in COUNTERS}
    system = header.acquisitionSystemInformation
    enc_out = Encoding(
        encoded=encoded,
        recon=recon,
        encoded_fov=_triple(enc.encodedSpace.fieldOfView_mm, "encodedSpace fieldOfView_mm", float),
        recon_fov=_triple(enc.reconSpace.fieldOfView_mm, "reconSpace fieldOfView_mm", float),
        step1=lim,
        slices=int(slice_lim.maximum) + 1 if slice_lim is not None else 1,
        coils=getattr(system, "receiverChannels", None) if system is not None else None,
        trajectory=trajectory,
        counters=counters,
    )
    if enc_out.readout_oversampling < 1 - 1e-6:
        raise InputError(
            f"the encoded readout field of view ({enc_out.encoded_fov[0]} mm) is smaller than "
            f"the recon one ({enc_out.recon_fov[0]} mm); the header is inconsistent"
        )
    if min(enc_out.grid) < 8:
        raise InputError(f"the reconstruction grid {enc_out.grid} is too small (at least 8x8)")
    return enc_out


def make_header(
    grid: tuple[int, int],
    coils: int,
    slices: int,
    *,
    oversampling: int = 2,
    fov_mm: tuple[float, float, float] = (220.0, 220.0, 5.0),
    acceleration: int = 1,
    patient_id: str = "phantom",
    description: str = "diffunfold phantom",
):
    """A complete ISMRMRD header for 2-D Cartesian multi-slice data on an ``(H, W)`` grid
    (readout x phase encodes) with the readout oversampled ``oversampling`` times."""
    from ismrmrd import xsd

    h, w = grid
    fx, fy, fz = fov_mm

    def space(nx, fovx):
        return xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx, y=w, z=1), fieldOfView_mm=xsd.fieldOfViewMm(x=fovx, y=fy, z=fz)
        )

    limits = xsd.encodingLimitsType(
        kspace_encoding_step_0=xsd.limitType(minimum=0, maximum=h * oversampling - 1, center=h * oversampling // 2),
        kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=w - 1, center=w // 2),
        kspace_encoding_step_2=xsd.limitType(minimum=0, maximum=0, center=0),
        slice=xsd.limitType(minimum=0, maximum=slices - 1, center=0),
    )
    parallel = xsd.parallelImagingType(
        accelerationFactor=xsd.accelerationFactorType(kspace_encoding_step_1=acceleration, kspace_encoding_step_2=1),
        calibrationMode=xsd.calibrationModeType.EMBEDDED,
    )
    encoding = xsd.encodingType(
        encodedSpace=space(h * oversampling, fx * oversampling),
        reconSpace=space(h, fx),
        encodingLimits=limits,
        trajectory=xsd.trajectoryType.CARTESIAN,
        parallelImaging=parallel,
    )
    return xsd.ismrmrdHeader(
        version=2,
        subjectInformation=xsd.subjectInformationType(patientName=patient_id, patientID=patient_id),
        measurementInformation=xsd.measurementInformationType(
            patientPosition=xsd.patientPositionType.HFS, protocolName=description, measurementID=patient_id
        ),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            systemVendor="diffunfold", systemModel="simulation", systemFieldStrength_T=3.0, receiverChannels=coils
        ),
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127728000),
        encoding=[encoding],
        sequenceParameters=xsd.sequenceParametersType(TR=[500.0], TE=[10.0], flipAngle_deg=[90.0]),
    )

"""Where reconstructed MRD images go: an MRD image file, fastMRI's ``reconstruction`` layout,
DICOM MR images (pydicom) and PNGs. Every output is written under a temporary name and renamed
when complete, and existing outputs are refused (before any work) unless overwriting.

Images are ``ismrmrd.Image`` objects as :func:`diffunfold.mrd.recon.to_images` makes them:
uint16 ``(1, 1, y, x)`` with x the readout, and ``DiffUnfoldScale`` (units per count) in meta.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import atomic_folder, atomic_write, refuse_existing

__all__ = ["FORMATS", "planned_outputs", "write_outputs", "dicom_dataset", "image_values"]

FORMATS = ("mrd", "fastmri", "dicom", "png")


def planned_outputs(out_dir: str | os.PathLike, stem: str, formats=FORMATS) -> dict[str, Path]:
    """Format -> path (a file, or a folder for DICOM and PNG)."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise InputError(f"unknown output format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    out = Path(out_dir)
    paths = {
        "mrd": out / f"{stem}_images.h5",
        "fastmri": out / "reconstructions" / f"{stem}.h5",
        "dicom": out / f"{stem}_dicom",
        "png": out / f"{stem}_png",
    }
    return {k: paths[k] for k in FORMATS if k in formats}


def image_values(img) -> np.ndarray:
    """An image in the data's units, ``(H, W)`` = (readout, phase) as ``diffunfold mri`` arrays."""
    scale = float(img.meta.get("DiffUnfoldScale", 1.0))
    return np.asarray(img.data[0, 0], dtype=np.float32).T * scale


def _series(images, series: int) -> list:
    return sorted((im for im in images if int(im.image_series_index) == series), key=lambda im: int(im.image_index))


def _write_mrd(path: Path, images, header_xml: bytes) -> None:
    import ismrmrd

    dset = ismrmrd.Dataset(str(path), "dataset", mode="w")
    try:
        dset.write_xml_header(header_xml)
        for img in images:
            dset.append_image(f"image_{int(img.image_series_index)}", img)
    finally:
        dset.close()


def _write_fastmri(path: Path, images) -> None:
    import h5py

    mags = _series(images, 1)
    volume = np.stack([image_values(im) for im in mags]).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("reconstruction", data=volume)
        f.attrs["slices"] = np.asarray([int(im.image_index) - 1 for im in mags])
        f.attrs["reconstruction"] = "diffunfold"
        f.attrs["package"] = str(mags[0].meta.get("DiffUnfoldPackage", ""))


def _write_png(folder: Path, images) -> None:
    from ..data.images import save_image

    for img in images:
        counts = np.asarray(img.data[0, 0], dtype=np.float64).T
        top = max(float(counts.max()), 1.0)
        kind = "recon" if int(img.image_series_index) == 1 else "std"
        save_image(folder / f"s{int(img.image_index) - 1:03d}_{kind}.png", counts / top)


def _header_info(header_xml: bytes) -> dict:
    from .header import parse_header

    head = parse_header(header_xml)
    subject = head.subjectInformation
    measurement = head.measurementInformation
    return {
        "patient_name": getattr(subject, "patientName", None) or "anonymous",
        "patient_id": getattr(subject, "patientID", None) or "unknown",
        "protocol": getattr(measurement, "protocolName", None) or "diffunfold",
        "position": getattr(getattr(measurement, "patientPosition", None), "value", "HFS"),
    }


def dicom_dataset(img, info: dict, uids: dict):
    """A DICOM MR image (pydicom ``FileDataset``-ready ``Dataset``) of one MRD image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    series = int(img.image_series_index)
    ds.ImageType = ["DERIVED", "PRIMARY" if series == 1 else "SECONDARY", "M", "DIFFUNFOLD"]
    ds.PatientName, ds.PatientID, ds.PatientPosition = info["patient_name"], info["patient_id"], info["position"]
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = uids["study"], uids["frame"]
    ds.SeriesInstanceUID = uids[f"series{series}"]
    ds.SeriesNumber, ds.InstanceNumber = series, int(img.image_index)
    ds.SeriesDescription = f"{info['protocol']} {img.meta.get('SequenceDescriptionAdditional', '')}".strip()
    ds.Manufacturer, ds.SoftwareVersions = "diffunfold", str(img.meta.get("DiffUnfoldPackage", ""))
    _dicom_geometry(ds, img)
    bits = int(img.meta.get("DiffUnfoldBitsStored", 16))
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.WindowCenter, ds.WindowWidth = int(img.meta["WindowCenter"]), int(img.meta["WindowWidth"])
    ds.PixelData = np.ascontiguousarray(img.data[0, 0], dtype="<u2").tobytes()
    return ds


def _dicom_geometry(ds, img) -> None:
    """Rows run along phase_dir, columns along read_dir; the position is the top-left pixel's centre."""
    ny, nx = img.data.shape[-2:]
    fov = np.asarray(img.field_of_view, dtype=np.float64)
    read, phase, slc = (np.asarray(v, dtype=np.float64) for v in (img.read_dir, img.phase_dir, img.slice_dir))
    dx, dy = fov[0] / nx, fov[1] / ny
    centre = np.asarray(img.position, dtype=np.float64)
    corner = centre - read * (fov[0] / 2 - dx / 2) - phase * (fov[1] / 2 - dy / 2)
    ds.Rows, ds.Columns = int(ny), int(nx)
    ds.PixelSpacing = [float(dy), float(dx)]
    ds.SliceThickness = float(fov[2])
    ds.ImageOrientationPatient = [float(v) for v in np.concatenate([read, phase])]
    ds.ImagePositionPatient = [float(v) for v in corner]
    ds.SliceLocation = float(np.dot(centre, slc))


def _write_dicom(folder: Path, images, header_xml: bytes) -> None:
    from pydicom.uid import generate_uid

    info = _header_info(header_xml)
    uids = {"study": generate_uid(), "frame": generate_uid(), "series1": generate_uid(), "series2": generate_uid()}
    for img in images:
        ds = dicom_dataset(img, info, uids)
        name = f"series{int(img.image_series_index)}_slice{int(img.image_index) - 1:03d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)


def write_outputs(
    images, header_xml: bytes, out_dir, stem: str, formats=FORMATS, overwrite: bool = False
) -> dict[str, Path]:
    """Write ``images`` in each format; returns format -> path. Nothing is written when an
    output exists and ``overwrite`` is false."""
    if not images:
        raise InputError("no images to write")
    plan = planned_outputs(out_dir, stem, formats)
    refuse_existing(plan.values(), overwrite)
    writers = {
        "mrd": lambda p: _write_mrd(p, images, header_xml),
        "fastmri": lambda p: _write_fastmri(p, images),
        "dicom": lambda p: _write_dicom(p, images, header_xml),
        "png": lambda p: _write_png(p, images),
    }
    for kind, path in plan.items():
        if kind in ("dicom", "png"):
            with atomic_folder(path) as tmp:
                writers[kind](tmp)
        else:
            atomic_write(path, writers[kind])
    return plan

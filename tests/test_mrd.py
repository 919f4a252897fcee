"""MRD raw files, slice assembly, reconstruction to MRD images, and the outputs (DICOM read back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ismrmrd", reason="the mrd extra is not installed")
pydicom = pytest.importorskip("pydicom", reason="the mrd extra is not installed")

from diffunfold.data.phantom import random_phantom  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402
from diffunfold.mrd.assemble import SliceAssembler, remove_readout_oversampling  # noqa: E402
from diffunfold.mrd.header import encoding_of, parse_header  # noqa: E402
from diffunfold.mrd.outputs import image_values, write_outputs  # noqa: E402
from diffunfold.mrd.rawfile import is_mrd_file, iter_acquisitions, read_raw  # noqa: E402
from diffunfold.mrd.recon import ReconSettings, reconstruct_file, reconstruct_slice, to_images  # noqa: E402
from diffunfold.mrd.writer import sampling_lines, write_phantom_mrd  # noqa: E402
from diffunfold.physics.mri import ifft2c, rss  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "samples" / "models" / "mri-small"
SIZE, COILS, SLICES = 32, 4, 2


@pytest.fixture(scope="module")
def phantoms():
    rng = np.random.default_rng(3)
    return np.stack([random_phantom((SIZE, SIZE), rng) for _ in range(SLICES)])


@pytest.fixture(scope="module")
def raw(tmp_path_factory, phantoms):
    folder = tmp_path_factory.mktemp("mrd")
    full = write_phantom_mrd(folder / "full.h5", images=phantoms, coils=COILS, acceleration=1)
    under = write_phantom_mrd(folder / "under.h5", images=phantoms, coils=COILS, acceleration=4, seed=1)
    return {"full": full, "under": under}


@pytest.fixture(scope="module")
def solver():
    from diffunfold.runtime import Solver

    return Solver.load(PACKAGE, backend="onnxruntime", threads=1)


def test_the_header_and_the_scan_read_back(raw):
    scan = read_raw(raw["under"])
    enc = scan.encoding
    assert enc.encoded == (2 * SIZE, SIZE, 1) and enc.recon == (SIZE, SIZE, 1)
    assert enc.readout_oversampling == 2 and enc.grid == (SIZE, SIZE) and enc.slices == SLICES
    assert enc.coils == COILS and enc.trajectory == "cartesian"
    assert scan.skipped == {"noise": 4}  # the writer's noise scans, skipped by flag
    assert [d.slice for d in scan.slices] == list(range(SLICES))
    sampled, calibration = sampling_lines(SIZE, "gaussian1d", 4, seed=1)
    for d in scan.slices:
        np.testing.assert_array_equal(d.sampled, sampled)
        np.testing.assert_array_equal(d.calibrated, calibration)
        assert not np.any(d.kspace[:, :, ~sampled])  # nothing where nothing was acquired
        assert d.acceleration == pytest.approx(4.0, rel=0.05)
    assert is_mrd_file(raw["under"]) and not is_mrd_file(Path(__file__))


def test_oversampling_removal_gives_back_the_object(raw, phantoms):
    # birdcage maps have sum |S|^2 = 1, so the RSS of the coil images is the object exactly
    scan = read_raw(raw["full"])
    for d, x in zip(scan.slices, phantoms):
        assert d.sampled.all()
        np.testing.assert_allclose(rss(ifft2c(d.kspace)), np.abs(x), atol=1e-5)


def test_readout_crop_of_a_line():
    rng = np.random.default_rng(0)
    small = rng.standard_normal((2, 16)) + 1j * rng.standard_normal((2, 16))
    padded = np.pad(small, ((0, 0), (8, 8)))
    fft = lambda v: np.fft.fftshift(np.fft.fft(np.fft.ifftshift(v, axes=-1), axis=-1, norm="ortho"), axes=-1)  # noqa: E731
    np.testing.assert_allclose(remove_readout_oversampling(fft(padded), 16), fft(small), atol=1e-12)


def _acquisitions(path):
    items = iter_acquisitions(path)
    return next(items), list(items)


@pytest.mark.parametrize(
    "fault, message",
    [
        ("samples", "sizes disagree"),
        ("trajectory", "non-Cartesian"),
        ("nan", "NaN"),
        ("channels", "active channels"),
    ],
)
def test_bad_acquisitions_are_named(raw, fault, message):
    import ismrmrd

    xml, acqs = _acquisitions(raw["under"])
    acq = acqs[6]
    data = np.array(acq.data)
    if fault == "samples":
        bad = ismrmrd.Acquisition.from_array(np.zeros((COILS, data.shape[1] + 2), np.complex64))
    elif fault == "trajectory":
        bad = ismrmrd.Acquisition.from_array(data, trajectory=np.zeros((data.shape[1], 2), np.float32))
    elif fault == "channels":
        bad = ismrmrd.Acquisition.from_array(data[:2])
    else:
        data[0, 3] = np.nan
        bad = ismrmrd.Acquisition.from_array(data, center_sample=acq.center_sample)
    bad.idx.kspace_encode_step_1 = acq.idx.kspace_encode_step_1
    assembler = SliceAssembler(encoding_of(parse_header(xml)))
    for good in acqs[:6]:
        assembler.add(good)
    with pytest.raises(InputError, match=message):
        assembler.add(bad)


def test_bad_headers_are_refused(raw):
    xml, _ = _acquisitions(raw["under"])
    with pytest.raises(InputError, match="not a valid ISMRMRD XML header"):
        parse_header(b"<ismrmrdHeader><encoding>")
    radial = xml.replace(b">cartesian<", b">radial<")
    assert radial != xml
    with pytest.raises(InputError, match="Cartesian data only"):
        encoding_of(parse_header(radial))


def test_a_slice_becomes_mrd_images_with_its_geometry(raw, solver):
    import ismrmrd

    scan = read_raw(raw["under"])
    data = scan.slices[1]
    settings = ReconSettings(steps=3, samples=2, seed=5)
    rec = reconstruct_slice(solver, data, scan.encoding, settings)
    images = to_images(rec, data, scan.encoding, settings, "mri-small")
    assert [int(im.image_series_index) for im in images] == [1, 2]  # magnitude, then its std map
    mag = images[0]
    assert mag.data.dtype == np.uint16 and mag.data.shape == (1, 1, SIZE, SIZE)
    assert int(mag.data.max()) == (1 << 12) - 1  # scaled to 12 stored bits
    assert mag.image_type == ismrmrd.IMTYPE_MAGNITUDE and int(mag.image_index) == 2 and int(mag.slice) == 1
    np.testing.assert_allclose(list(mag.position), list(data.reference.position))
    np.testing.assert_allclose(list(mag.field_of_view), scan.encoding.recon_fov)
    assert "DIFFUNFOLD" in mag.meta["ImageProcessingHistory"] and int(mag.meta["DiffUnfoldSeed"]) == 6
    # counts x scale gives the reconstruction back to half a count
    per_count = float(mag.meta["DiffUnfoldScale"])
    assert np.abs(image_values(mag) - np.abs(rec.image)).max() <= 0.5 * per_count + 1e-6
    assert np.abs(image_values(images[1]) - rec.std).max() <= 0.5 * per_count + 1e-6


def test_outputs_dicom_fastmri_mrd_png(raw, solver, tmp_path):
    import h5py
    import ismrmrd

    scan = read_raw(raw["under"])
    settings = ReconSettings(steps=2)
    images = []
    for d in scan.slices:
        images += to_images(reconstruct_slice(solver, d, scan.encoding, settings), d, scan.encoding, settings)
    paths = write_outputs(images, scan.header_xml, tmp_path, "scan")

    with h5py.File(paths["fastmri"]) as f:
        volume = f["reconstruction"][()]
    assert volume.shape == (SLICES, SIZE, SIZE) and volume.dtype == np.float32
    np.testing.assert_allclose(volume[1], image_values(images[1]), rtol=1e-6)

    dset = ismrmrd.Dataset(str(paths["mrd"]), "dataset", mode="r")
    back = dset.read_image("image_1", 0)
    dset.close()
    np.testing.assert_array_equal(back.data, images[0].data)

    files = sorted(paths["dicom"].glob("*.dcm"))
    assert len(files) == SLICES
    ds = pydicom.dcmread(files[1])
    img = images[1]
    np.testing.assert_array_equal(ds.pixel_array, img.data[0, 0])  # rows = phase, columns = readout
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage and list(ds.ImageType)[:2] == ["DERIVED", "PRIMARY"]
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    spacing = scan.encoding.recon_fov[0] / SIZE
    np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [spacing, spacing])
    centre = np.asarray(img.position)
    # the first pixel's centre lies half a field of view (less half a pixel) from the slice centre
    np.testing.assert_allclose(
        [float(v) for v in ds.ImagePositionPatient],
        centre - [spacing * (SIZE - 1) / 2, spacing * (SIZE - 1) / 2, 0],
        atol=1e-4,
    )
    assert float(ds.SliceThickness) == scan.encoding.recon_fov[2] and ds.BitsStored == 12
    assert int(ds.WindowWidth) == 4095 and ds.InstanceNumber == 2
    first = pydicom.dcmread(files[0])
    assert first.SeriesInstanceUID == ds.SeriesInstanceUID and first.SOPInstanceUID != ds.SOPInstanceUID
    assert float(first.SliceLocation) < float(ds.SliceLocation)
    assert sorted(p.name for p in paths["png"].iterdir()) == ["s000_recon.png", "s001_recon.png"]

    before = paths["mrd"].stat().st_mtime_ns
    with pytest.raises(InputError, match="already exists"):
        write_outputs(images, scan.header_xml, tmp_path, "scan")
    assert paths["mrd"].stat().st_mtime_ns == before
    assert not [p for p in tmp_path.rglob(".*")]  # no temporaries left


def test_the_solver_reads_a_raw_mrd_file_as_the_slice_path_does(raw, solver):
    """``reconstruct_file`` gives each slice of the file, equal to reconstructing it by hand."""
    scan = read_raw(raw["under"])
    recs = reconstruct_file(solver, raw["under"], steps=3, seed=5)
    assert len(recs) == len(scan.slices)
    by_hand = reconstruct_slice(solver, scan.slices[1], scan.encoding, ReconSettings(steps=3, seed=5))
    np.testing.assert_allclose(recs[1].image, by_hand.image, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(recs[0].image)) and recs[0].std is None


def test_mri_names_the_coil_maps_as_serve_does(raw, tmp_path, capsys):
    """``diffunfold mri`` on a raw file: ``calibration`` (the ratio maps, as ``serve`` names them)
    or espirit; the fastMRI-only choices are refused with the ones that apply."""
    import json

    from diffunfold.cli import main

    base = ["mri", str(PACKAGE), str(raw["under"]), "--steps", "2", "--slices", "0", "--quiet", "--backend"]
    base += ["onnxruntime", "--threads", "1"]
    out = tmp_path / "calibration"
    assert main([*base, "--coil-maps", "calibration", "--out", str(out), "--json", str(tmp_path / "c.json")]) == 0
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert rows and all(r["coil_maps"] == "calibration" for r in rows)
    for fastmri_only in ("estimate", "simulate"):
        assert main([*base, "--coil-maps", fastmri_only, "--out", str(tmp_path / fastmri_only)]) == 2
        err = capsys.readouterr().err
        assert "needs a fastMRI file" in err and "calibration" in err

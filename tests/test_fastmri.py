"""fastMRI HDF5 I/O: header round trip, write/read, atomic writes, errors, the slice dataset."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest

from diffunfold.data import fastmri
from diffunfold.data.fastmri import (
    FastMRIFile,
    FastMRIHeader,
    FastMRISlices,
    center_crop,
    make_ismrmrd_header,
    parse_ismrmrd_header,
    percentile_normalize,
    write_fastmri_file,
)
from diffunfold.data.phantom import random_phantom, simulate_multicoil
from diffunfold.errors import InputError
from diffunfold.physics.mri import ifft2c, rss


def _volume(nslices=2, ncoils=4, shape=(64, 64), seed=0):
    """Phantom images (slices, H, W) and their fully sampled k-space (slices, coils, H, W)."""
    g = np.random.default_rng(seed)
    images = np.stack([random_phantom(shape, g) for _ in range(nslices)])
    return images, np.stack([simulate_multicoil(x, ncoils) for x in images])


# -- header ---------------------------------------------------------------------------------------


def test_header_round_trip_fastmri_knee_geometry():
    xml = make_ismrmrd_header(
        (640, 368, 1),
        (320, 320, 1),
        encoded_fov=(280.0, 161.0, 4.5),
        recon_fov=(140.0, 140.0, 3.0),
        encoding_step1=(0, 367, 184),
    )
    root = ET.fromstring(xml)
    assert root.tag == f"{{{fastmri.ISMRMRD_NAMESPACE}}}ismrmrdHeader"
    for doc in (xml, xml.encode("utf-8")):
        h = parse_ismrmrd_header(doc)
        assert h == FastMRIHeader((640, 368, 1), (320, 320, 1), (280.0, 161.0, 4.5), (140.0, 140.0, 3.0), (0, 367, 184))
        assert h.encoded_shape == (640, 368) and h.recon_shape == (320, 320)
    assert parse_ismrmrd_header(h.to_xml()) == h


def test_header_defaults():
    h = parse_ismrmrd_header(make_ismrmrd_header((64, 48)))
    assert h.encoded_matrix == (64, 48, 1) and h.recon_matrix == (64, 48, 1)
    assert h.encoding_step1 == (0, 47, 24)
    assert h.encoded_fov[:2] == (64.0, 48.0)


def test_header_without_namespace_is_accepted():
    xml = make_ismrmrd_header((32, 32)).replace(f' xmlns="{fastmri.ISMRMRD_NAMESPACE}"', "")
    assert parse_ismrmrd_header(xml).recon_shape == (32, 32)


def test_header_missing_field_names_it():
    root = ET.fromstring(make_ismrmrd_header((64, 64), (32, 32)))
    ns = {"i": fastmri.ISMRMRD_NAMESPACE}
    matrix = root.find("i:encoding/i:reconSpace/i:matrixSize", ns)
    matrix.remove(matrix.find("i:y", ns))
    with pytest.raises(InputError, match="reconSpace/matrixSize/y"):
        parse_ismrmrd_header(ET.tostring(root), source="volume.h5")
    with pytest.raises(InputError, match="volume.h5"):
        parse_ismrmrd_header(ET.tostring(root), source="volume.h5")


def test_header_bad_xml_and_bad_values():
    with pytest.raises(InputError, match="not valid XML"):
        parse_ismrmrd_header(b"<ismrmrdHeader><encoding>")
    with pytest.raises(InputError, match="ismrmrdHeader"):
        parse_ismrmrd_header("<somethingElse/>")
    bad = make_ismrmrd_header((64, 64)).replace("<x>64</x>", "<x>sixty</x>", 1)
    with pytest.raises(InputError, match="not a number"):
        parse_ismrmrd_header(bad)
    with pytest.raises(InputError, match="positive integers"):
        make_ismrmrd_header((64, 0))
    with pytest.raises(InputError, match="encoding_step1"):
        make_ismrmrd_header((64, 64), encoding_step1=(0, 10, 20))


# -- helpers --------------------------------------------------------------------------------------


def test_center_crop():
    x = np.arange(2 * 8 * 6).reshape(2, 8, 6)
    c = center_crop(x, (4, 2))
    assert c.shape == (2, 4, 2)
    np.testing.assert_array_equal(c, x[:, 2:6, 2:4])
    # the FFT centre pixel (H//2, W//2) stays the centre pixel
    assert center_crop(x, (4, 4))[0, 2, 2] == x[0, 4, 3]
    with pytest.raises(InputError, match="larger than the image"):
        center_crop(x, (10, 2))


def test_percentile_normalize():
    g = np.random.default_rng(1)
    x = (g.standard_normal((64, 64)) + 1j * g.standard_normal((64, 64))).astype(np.complex64) * 7
    y, scale = percentile_normalize(x)
    assert y.dtype == np.complex64 and isinstance(scale, float)
    assert np.percentile(np.abs(y), 99) == pytest.approx(1.0, rel=1e-5)
    assert scale == pytest.approx(np.percentile(np.abs(x), 99), rel=1e-6)
    np.testing.assert_allclose(y * scale, x, rtol=1e-5)
    real, s = percentile_normalize(np.abs(x), q=50)
    assert real.dtype == np.float32 and np.median(real) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(InputError, match="percentile"):
        percentile_normalize(np.zeros((8, 8), np.complex64))


# -- write / read ---------------------------------------------------------------------------------


def test_write_then_read(tmp_path):
    _, ks = _volume(nslices=3, ncoils=4, shape=(64, 48))
    header = parse_ismrmrd_header(make_ismrmrd_header((64, 48), (32, 32)))
    path = write_fastmri_file(tmp_path / "vol.h5", ks, header=header, attrs={"acquisition": "CORPD_FBK"})
    expected_rss = center_crop(rss(ifft2c(ks)), (32, 32))
    with FastMRIFile(path) as f:
        assert f.num_slices == 3 and f.num_coils == 4 and f.kspace_shape == (3, 4, 64, 48)
        assert f.header == header and f.recon_shape == (32, 32) and f.rss_shape == (32, 32)
        for i in range(3):
            k = f.kspace(i)
            assert k.dtype == np.complex64 and k.shape == (4, 64, 48)
            np.testing.assert_array_equal(k, ks[i])
            r = f.rss(i)
            assert r.dtype == np.float32 and r.shape == (32, 32)
            np.testing.assert_allclose(r, expected_rss[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(f.kspace(-1), ks[2])
        attrs = f.attrs
        assert attrs["acquisition"] == "CORPD_FBK" and attrs["patient_id"] == "vol"
        assert attrs["max"] == pytest.approx(float(expected_rss.max()), rel=1e-5)
        assert attrs["norm"] == pytest.approx(float(np.linalg.norm(expected_rss)), rel=1e-5)
        # fastMRI stores the header as bytes
        assert isinstance(f._h5["ismrmrd_header"][()], bytes)
    with pytest.raises(InputError, match="closed"):
        f.kspace(0)


def test_write_default_header_and_given_rss(tmp_path):
    _, ks = _volume(nslices=1, ncoils=2, shape=(32, 32))
    target = np.full((1, 16, 16), 0.5, np.float32)
    with FastMRIFile(write_fastmri_file(tmp_path / "a.h5", ks[0], rss=target)) as f:
        assert f.num_slices == 1
        assert f.header.encoded_shape == (32, 32) and f.header.recon_shape == (16, 16)
        np.testing.assert_array_equal(f.rss(0), target[0])
        assert f.attrs["max"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="complex"):
        write_fastmri_file(tmp_path / "b.h5", np.abs(ks))
    with pytest.raises(InputError, match="slices"):
        write_fastmri_file(tmp_path / "b.h5", ks, rss=np.zeros((2, 16, 16), np.float32))
    assert not (tmp_path / "b.h5").exists()


def test_atomic_write_leaves_no_temp_and_keeps_old_file(tmp_path, monkeypatch):
    _, ks = _volume(nslices=2, ncoils=2, shape=(32, 32))
    path = write_fastmri_file(tmp_path / "vol.h5", ks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.h5"]

    def interrupted(src, dst):
        raise KeyboardInterrupt("simulated crash before the rename")

    monkeypatch.setattr(fastmri.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_fastmri_file(path, ks * 2)
    monkeypatch.undo()
    # no temporary file left behind, and the previous file is untouched and readable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.h5"]
    with FastMRIFile(path) as f:
        np.testing.assert_array_equal(f.kspace(1), ks[1])


# -- errors ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        FastMRIFile(tmp_path / "nope.h5")
    with pytest.raises(InputError, match="directory"):
        FastMRIFile(tmp_path)


def test_not_hdf5(tmp_path):
    p = tmp_path / "fake.h5"
    p.write_text("this is not HDF5")
    with pytest.raises(InputError, match="not an HDF5 file"):
        FastMRIFile(p)


def test_hdf5_without_kspace(tmp_path):
    p = tmp_path / "empty.h5"
    with h5py.File(p, "w") as f:
        f["image"] = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(InputError, match="no 'kspace'") as info:
        FastMRIFile(p)
    assert "image" in str(info.value)  # says what the file does hold


def test_wrong_kspace_layout(tmp_path):
    single = tmp_path / "single.h5"
    with h5py.File(single, "w") as f:
        f["kspace"] = np.zeros((2, 8, 8), np.complex64)
    with pytest.raises(InputError, match="single-coil"):
        FastMRIFile(single)
    real = tmp_path / "real.h5"
    with h5py.File(real, "w") as f:
        f["kspace"] = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(InputError, match="complex"):
        FastMRIFile(real)


def test_slice_out_of_range_and_missing_rss(tmp_path):
    _, ks = _volume(nslices=2, ncoils=2, shape=(32, 32))
    p = tmp_path / "vol.h5"
    with h5py.File(p, "w") as f:  # like fastMRI's test set: k-space only
        f["kspace"] = ks
    with FastMRIFile(p) as f:
        with pytest.raises(InputError, match="out of range"):
            f.kspace(2)
        with pytest.raises(InputError, match="out of range"):
            f.kspace(-3)
        with pytest.raises(InputError, match="integer"):
            f.kspace(0.5)
        with pytest.raises(InputError, match="reconstruction_rss"):
            f.rss(0)
        with pytest.raises(InputError, match="ismrmrd_header"):
            _ = f.header
        assert f.recon_shape == (32, 32)
    with pytest.raises(InputError, match="reconstruction_rss"):
        FastMRISlices(p, coil_maps="simulate")


def test_file_with_broken_header(tmp_path):
    _, ks = _volume(nslices=1, ncoils=2, shape=(32, 32))
    xml = make_ismrmrd_header((32, 32)).replace("<center>16</center>", "")
    p = tmp_path / "vol.h5"
    with h5py.File(p, "w") as f:
        f["kspace"] = ks
        f["ismrmrd_header"] = xml.encode()
    with FastMRIFile(p) as f, pytest.raises(InputError, match="kspace_encoding_step_1/center") as info:
        _ = f.header
    assert "vol.h5" in str(info.value)


# -- dataset --------------------------------------------------------------------------------------


def test_slices_simulate_mode(tmp_path):
    for i, n in enumerate((3, 2)):
        write_fastmri_file(tmp_path / f"v{i}.h5", _volume(nslices=n, ncoils=2, shape=(48, 32), seed=i)[1])
    ds = FastMRISlices(tmp_path, ncoils=6)
    assert len(ds) == 5
    assert [p.name for p in ds.files] == ["v0.h5", "v1.h5"]
    item = ds[3]
    assert item["file"].endswith("v1.h5") and item["slice"] == 0
    img, maps = item["image"], item["coil_maps"]
    assert img.shape == (1, 48, 32) and img.dtype == np.complex64
    assert item["target"].shape == (1, 48, 32) and item["target"].dtype == np.float32
    assert maps.shape == (6, 48, 32) and maps.dtype == np.complex64
    np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, axis=0), 1.0, atol=1e-5)
    assert np.all(img.imag == 0)  # the RSS image has zero phase
    np.testing.assert_allclose(item["target"], np.abs(img))
    assert np.percentile(np.abs(img), 99) == pytest.approx(1.0, rel=1e-5)
    with FastMRIFile(tmp_path / "v1.h5") as f:
        np.testing.assert_allclose(img[0].real * item["scale"], f.rss(0), rtol=1e-5, atol=1e-6)
    # a list of files and a single file work too; negative indices count from the end
    assert len(FastMRISlices([tmp_path / "v1.h5", tmp_path / "v0.h5"])) == 5
    assert FastMRISlices(tmp_path / "v0.h5")[-1]["slice"] == 2
    with pytest.raises(IndexError):
        ds[5]
    assert sum(1 for _ in ds) == 5  # iteration stops at the end


def test_slices_crop_and_paper_default_coils(tmp_path):
    write_fastmri_file(tmp_path / "v.h5", _volume(nslices=1, ncoils=2, shape=(32, 32))[1])
    item = FastMRISlices(tmp_path, crop=(16, 24))[0]
    assert item["image"].shape == (1, 16, 24) and item["coil_maps"].shape == (15, 16, 24)
    with pytest.raises(InputError, match="larger"):
        FastMRISlices(tmp_path, crop=(64, 16))
    with pytest.raises(InputError, match="coil_maps"):
        FastMRISlices(tmp_path, coil_maps="espirit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .h5 files"):
        FastMRISlices(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file"):
        FastMRISlices(tmp_path / "missing")


def test_slices_estimate_mode_recovers_the_image(tmp_path):
    images, ks = _volume(nslices=2, ncoils=4, shape=(64, 64), seed=3)
    header = make_ismrmrd_header((64, 64), (48, 48))
    write_fastmri_file(tmp_path / "v.h5", ks, header=header)
    ds = FastMRISlices(tmp_path, ncoils=15, coil_maps="estimate")
    assert len(ds) == 2
    for s in range(2):
        item = ds[s]
        img, maps = item["image"][0], item["coil_maps"]
        assert img.shape == (48, 48) and img.dtype == np.complex64
        assert maps.shape == (4, 48, 48) and maps.dtype == np.complex64  # the file's coil count
        truth = center_crop(images[s], (48, 48))
        support = np.abs(truth) > 0
        np.testing.assert_allclose(np.sum(np.abs(maps[:, support]) ** 2, axis=0), 1.0, atol=1e-4)
        # The ratio-method maps absorb the smooth object phase: compare magnitudes, and the
        # phase only up to that slowly varying residual.
        truth_n = np.abs(truth) / item["scale"]
        err = np.linalg.norm(np.abs(img[support]) - truth_n[support]) / np.linalg.norm(truth_n[support])
        assert err < 0.05
        z = truth[support]
        assert np.std(np.angle(z * np.exp(-1j * np.angle(z.mean())))) > 0.15  # a varying phase ...
        assert np.std(np.angle(img[support])) < 0.2  # ... and the combined image is nearly real
    with pytest.raises(InputError, match="larger"):
        FastMRISlices(tmp_path, coil_maps="estimate", crop=(64, 64))  # recon is 48x48


def test_module_does_not_import_torch():
    code = (
        "import sys, diffunfold.data.fastmri, diffunfold.data.phantom; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

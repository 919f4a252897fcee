"""Synthetic phantoms in the fastMRI format: reader round trip, determinism, the MRI chain."""

from __future__ import annotations

import numpy as np
import pytest

from diffunfold.data.fastmri import FastMRIFile, FastMRISlices, center_crop
from diffunfold.data.phantom import random_phantom, simulate_multicoil, write_phantom_dataset
from diffunfold.errors import InputError
from diffunfold.physics.mri import MultiCoilMRI, birdcage_maps, ifft2c, mri_mask, rss


def _phase_spread(x: np.ndarray) -> float:
    """Std of the phase over the object, about its mean direction (immune to wrapping)."""
    z = x[np.abs(x) > 0]
    return float(np.std(np.angle(z * np.exp(-1j * np.angle(z.mean())))))


def _psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    err = np.mean(np.abs(np.abs(estimate) - np.abs(truth)) ** 2)
    return float(10 * np.log10(np.abs(truth).max() ** 2 / max(err, 1e-30)))


def test_phantom_dataset_reads_back_through_the_fastmri_reader(tmp_path):
    """Acceptance: a fastMRI-format file written by the phantom generator reads back."""
    paths = write_phantom_dataset(
        tmp_path / "ph",
        num_files=2,
        slices_per_file=3,
        shape=(64, 48),
        ncoils=4,
        recon_shape=(32, 32),
        seed=5,
        progress=False,
    )
    assert [p.name for p in paths] == ["phantom_0000.h5", "phantom_0001.h5"]
    assert sorted(p.name for p in (tmp_path / "ph").iterdir()) == [p.name for p in paths]  # no temp files
    with FastMRIFile(paths[1]) as f:
        assert f.kspace_shape == (3, 4, 64, 48)
        assert f.header.encoded_matrix == (64, 48, 1) and f.header.recon_matrix == (32, 32, 1)
        k = f.kspace(2)
        r = f.rss(2)
        assert k.dtype == np.complex64 and r.shape == (32, 32) and r.dtype == np.float32
        np.testing.assert_allclose(r, center_crop(rss(ifft2c(k)), (32, 32)), rtol=1e-5, atol=1e-6)
        assert f.attrs["acquisition"] == "PHANTOM" and f.attrs["patient_id"] == "phantom-5-0001"
        assert f.attrs["max"] == pytest.approx(float(np.max([f.rss(i).max() for i in range(3)])), rel=1e-6)

    for mode, ncoils in (("simulate", 15), ("estimate", 4)):
        ds = FastMRISlices(tmp_path / "ph", coil_maps=mode)
        assert len(ds) == 6
        item = ds[4]
        assert item["image"].shape == (1, 32, 32) and item["image"].dtype == np.complex64
        assert item["coil_maps"].shape == (ncoils, 32, 32)
        assert item["file"].endswith("phantom_0001.h5") and item["slice"] == 1
        assert np.percentile(item["target"], 99) == pytest.approx(1.0, rel=1e-4)


def test_simulated_kspace_matches_the_phantom(tmp_path):
    x = random_phantom((32, 32), 0)
    k = simulate_multicoil(x)  # the paper's 15 coils
    assert k.shape == (15, 32, 32) and k.dtype == np.complex64
    # sum_c |S_c|^2 = 1, so the RSS of the coil images is the phantom's magnitude
    np.testing.assert_allclose(rss(ifft2c(k)), np.abs(x), atol=1e-5)
    noisy = simulate_multicoil(x, ncoils=4, noise_std=0.1, rng=1)
    clean = simulate_multicoil(x, ncoils=4)
    assert np.std(noisy - clean) == pytest.approx(0.1, rel=0.05)
    with pytest.raises(InputError, match="2-D"):
        simulate_multicoil(x[None])
    with pytest.raises(InputError, match="noise_std"):
        simulate_multicoil(x, noise_std=-1)


def test_dataset_is_deterministic_per_seed(tmp_path):
    kw = dict(num_files=2, slices_per_file=2, shape=(32, 32), ncoils=2, noise_std=0.01, progress=False)
    a = write_phantom_dataset(tmp_path / "a", seed=7, **kw)
    b = write_phantom_dataset(tmp_path / "b", seed=7, **kw)
    c = write_phantom_dataset(tmp_path / "c", seed=8, **kw)
    # file i does not depend on how many files are written
    d = write_phantom_dataset(tmp_path / "d", seed=7, **{**kw, "num_files": 1})
    for pa, pb, pc, pd in zip(a, b, c, d + [None]):
        with FastMRIFile(pa) as fa, FastMRIFile(pb) as fb, FastMRIFile(pc) as fc:
            for s in range(2):
                assert fa.kspace(s).tobytes() == fb.kspace(s).tobytes()
                assert fa.rss(s).tobytes() == fb.rss(s).tobytes()
                assert not np.allclose(fa.kspace(s), fc.kspace(s))
            if pd is not None:
                with FastMRIFile(pd) as fd:
                    np.testing.assert_array_equal(fa.kspace(1), fd.kspace(1))
    with FastMRIFile(a[0]) as f0, FastMRIFile(a[1]) as f1:
        assert not np.allclose(f0.rss(0), f1.rss(0))  # files of one seed differ too


def test_phantom_properties():
    x = random_phantom((64, 64), np.random.default_rng(0))
    assert x.shape == (64, 64) and x.dtype == np.complex64
    mag = np.abs(x)
    assert mag.max() <= 1.0 + 1e-6 and mag.max() > 0.5
    # zero background: the border is empty and the object is a sizeable part of the image
    assert np.all(x[0] == 0) and np.all(x[-1] == 0) and np.all(x[:, 0] == 0) and np.all(x[:, -1] == 0)
    assert 0.15 < np.mean(mag > 0) < 0.8
    # several distinct intensities inside (organs, fat, lesions), not a flat disc
    assert np.std(mag[mag > 0]) > 0.05
    # genuinely complex, with a phase that varies across the object
    assert np.abs(x.imag).max() > 0.1
    spreads = [_phase_spread(random_phantom((64, 64), s)) for s in range(20)]
    assert min(spreads) > 0.1
    # seeds give different phantoms; a seed gives the same one
    assert not np.allclose(x, random_phantom((64, 64), 1))
    np.testing.assert_array_equal(x, random_phantom((64, 64), np.random.default_rng(0)))
    # non-square grids keep the object inside the field of view
    y = random_phantom((64, 32), 3)
    assert y.shape == (64, 32) and np.all(y[0] == 0) and np.all(y[:, -1] == 0)


def test_zero_filled_sense_is_worse_than_full_sampling():
    """The whole chain: phantom -> simulated maps -> 4x Gaussian mask -> zero-filled SENSE."""
    shape = (64, 64)
    x = random_phantom(shape, 2)[None, None]
    maps = birdcage_maps(4, shape)
    mask = mri_mask("gaussian1d", shape, 4, seed=0)
    full = MultiCoilMRI(maps, np.ones(shape, np.float32))
    under = MultiCoilMRI(maps, mask)
    assert under.acceleration == pytest.approx(4, rel=0.05)
    psnr_full = _psnr(full.pinv(full.A(x)), x)
    psnr_zf = _psnr(under.pinv(under.measure(x)), x)
    assert psnr_full > 60  # fully sampled SENSE is exact
    assert psnr_zf < 35 and psnr_zf < psnr_full - 20  # 4x undersampling aliases
    # and the measured k-space is the masked version of what simulate_multicoil writes
    np.testing.assert_allclose(under.A(x)[0], mask * simulate_multicoil(x[0, 0], ncoils=4), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(num_files=0), "num_files"),
        (dict(slices_per_file=-1), "slices_per_file"),
        (dict(ncoils=0), "ncoils"),
        (dict(shape=(33, 32)), "even"),
        (dict(shape=(8, 8)), ">= 16"),
        (dict(shape=(32, 32), recon_shape=(48, 32)), "recon_shape"),
        (dict(seed=-1), "seed"),
        (dict(noise_std=float("nan")), "noise_std"),
    ],
)
def test_write_phantom_dataset_validates(tmp_path, kwargs, word):
    with pytest.raises(InputError, match=word):
        write_phantom_dataset(tmp_path, progress=False, **kwargs)
    assert not list(tmp_path.glob("*.h5"))

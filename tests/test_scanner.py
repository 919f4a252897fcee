"""The scanner pipeline (diffunfold.scanner): noise from noise scans and from the data,
prewhitening, coil compression, ESPIRiT maps and their residual, and the exact 1-D data step."""

from __future__ import annotations

import numpy as np
import pytest

from diffunfold.data.phantom import random_phantom
from diffunfold.errors import InputError
from diffunfold.physics.base import LinearOperator
from diffunfold.physics.mri import MultiCoilMRI, birdcage_maps, mri_mask
from diffunfold.scanner import (
    ScannerSettings,
    calibration_region,
    compression_matrix,
    estimate_kspace_noise,
    map_residual,
    noise_covariance,
    prepare_kspace,
    prewhiten,
    whitening_matrix,
)
from diffunfold.scanner.simulate import correlated_noise, random_noise_covariance

SIZE, COILS = 64, 12


def _scan(kind="gaussian1d", acc=4.0, level=0.0, seed=0, center_fraction=0.125):
    rng = np.random.default_rng(seed)
    x = random_phantom((SIZE, SIZE), rng).astype(np.complex64)
    x /= np.percentile(np.abs(x), 99)
    maps = birdcage_maps(COILS, (SIZE, SIZE))
    mask = mri_mask(kind, (SIZE, SIZE), acc, center_fraction=center_fraction, seed=1)
    y = np.asarray(MultiCoilMRI(maps, mask).A(x[None, None]))[0]
    psi = random_noise_covariance(COILS, rng)
    y = (y + level * correlated_noise(y.shape, psi, rng) * mask).astype(np.complex64)
    return x, maps, mask, y, psi


@pytest.mark.parametrize("kind,acc", [("gaussian1d", 4.0), ("uniform1d", 8.0), ("gaussian2d", 8.0)])
def test_noise_estimate_on_known_levels(kind, acc):
    errors = []
    for level in (0.003, 0.01, 0.03):
        _, _, mask, y, _ = _scan(kind, acc, level)
        est, how = estimate_kspace_noise(y, mask)
        errors.append(abs(est - level) / level)
        assert "Hankel" in how
    assert max(errors) < 0.15, errors
    _, _, mask, y, _ = _scan(kind, acc, 0.0)
    assert estimate_kspace_noise(y, mask)[0] < 1e-5  # noise-free reads (nearly) zero


def test_noise_estimate_is_deterministic_and_refuses_nan():
    _, _, mask, y, _ = _scan(level=0.01)
    assert estimate_kspace_noise(y, mask) == estimate_kspace_noise(y.copy(), mask)
    y[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        estimate_kspace_noise(y, mask)


def test_noise_covariance_and_prewhitening_match_numpy():
    rng = np.random.default_rng(1)
    psi = random_noise_covariance(COILS, rng)
    samples = correlated_noise((COILS, 20000), psi, rng)
    est = noise_covariance(samples)
    assert np.abs(est - psi).max() < 0.05 * np.abs(psi).max()
    whitener = whitening_matrix(est)
    reference = np.linalg.inv(np.linalg.cholesky(est))  # the numpy reference: L^-1
    np.testing.assert_allclose(whitener, reference, rtol=1e-10, atol=1e-12)
    kspace = correlated_noise((COILS, 40, 50), psi, rng)
    white = prewhiten(kspace, whitener)
    np.testing.assert_allclose(white, np.einsum("dc,chw->dhw", reference, kspace), rtol=1e-5, atol=1e-6)
    cov = noise_covariance(white.reshape(COILS, -1))
    assert np.abs(cov - np.eye(COILS)).max() < 0.1  # white: unit variance, uncorrelated


def test_covariance_refuses_too_few_samples_and_singular():
    with pytest.raises(InputError, match="at least"):
        noise_covariance(np.ones((8, 10), np.complex64))
    with pytest.raises(InputError, match="positive definite"):
        whitening_matrix(np.zeros((3, 3)))


def test_coil_compression_keeps_the_reconstruction():
    """A regularised SENSE solve through 6 virtual coils is within 2 % of the 12-coil one."""
    x, maps, mask, y, _ = _scan(level=0.0)
    region = calibration_region(mask)
    matrix, kept = compression_matrix(y[:, region[0], region[1]], 6)
    assert matrix.shape == (6, COILS) and kept > 0.99
    np.testing.assert_allclose(matrix @ matrix.conj().T, np.eye(6), atol=1e-10)  # orthonormal rows
    full = MultiCoilMRI(maps, mask)
    virtual = MultiCoilMRI(np.einsum("vc,chw->vhw", matrix, maps), mask)
    y_v = np.einsum("vc,chw->vhw", matrix, y)[None].astype(np.complex64)
    zero = np.zeros((1, 1, SIZE, SIZE), np.complex64)
    a = np.asarray(full.prox(zero, y[None], 1e-3))
    b = np.asarray(virtual.prox(zero, y_v, 1e-3))
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.02


def test_espirit_maps_match_the_true_maps_and_the_residual_sees_wrong_ones():
    pytest.importorskip("sigpy", reason="ESPIRiT needs sigpy (the mrd extra)")
    x, maps, mask, y, _ = _scan(level=0.0)
    p = prepare_kspace(y, mask, ScannerSettings(virtual_coils=None))
    est = p.operator.coil_maps[0]
    inside = np.abs(x) > 0.2
    # maps are fixed up to a common phase per pixel: |<S_est, S_true>| is 1 where the object is
    overlap = np.abs(np.sum(np.conj(est) * maps, axis=0))
    assert np.median(overlap[inside]) > 0.97
    region = calibration_region(mask)
    exact = map_residual(y, maps, region)
    good = map_residual(y, est, region)
    bad = map_residual(y, np.roll(est, 7, axis=-1), region)
    # the truncated calibration window alone leaves a residual even for the true maps (see
    # map_residual); ESPIRiT's maps leave no more than that, wrong maps far more
    assert good < 1.1 * exact and good < 0.5 * bad
    assert p.info["noise"].startswith("estimated") and p.noise_std < 1e-5


def test_prepare_refuses_bad_input():
    _, _, mask, y, _ = _scan()
    with pytest.raises(InputError, match="mask"):
        prepare_kspace(y, mask[:, :-1])
    bad = y.copy()
    bad[0, 3, 3] = np.inf
    with pytest.raises(InputError, match="NaN or Inf"):
        prepare_kspace(bad, mask)
    no_centre = mask.copy()
    no_centre[:, SIZE // 2] = 0
    with pytest.raises(InputError, match="centre"):
        prepare_kspace(y * no_centre, no_centre)
    with pytest.raises(InputError, match="virtual_coils"):
        prepare_kspace(y, mask, ScannerSettings(virtual_coils=0))


def test_the_maps_residual_is_weighed_by_pattern_unless_set():
    """``map_floor`` None: 0.3 of the maps' residual for 1-D patterns, 0.1 for 2-D ones, in
    ``data_std = hypot(noise, floor * map_std)``; a number overrides; bad values are refused."""
    pytest.importorskip("sigpy", reason="ESPIRiT needs sigpy (the mrd extra)")
    from diffunfold.scanner.prepare import MAP_FLOOR_LINES, MAP_FLOOR_POINTS

    for kind, acc, floor in (("gaussian1d", 4.0, MAP_FLOOR_LINES), ("gaussian2d", 4.0, MAP_FLOOR_POINTS)):
        _, _, mask, y, _ = _scan(kind, acc=acc, level=0.01)
        p = prepare_kspace(y, mask)
        assert p.info["map_floor"] == floor and p.map_std > 0
        assert np.isclose(p.data_std, np.hypot(p.noise_std, floor * p.map_std))
        q = prepare_kspace(y, mask, ScannerSettings(map_floor=0.6))
        assert q.info["map_floor"] == 0.6 and np.isclose(q.data_std, np.hypot(q.noise_std, 0.6 * q.map_std))
    for bad in (-0.1, float("nan"), True, "0.3"):
        with pytest.raises(InputError, match="map_floor"):
            ScannerSettings(map_floor=bad).checked()


@pytest.mark.parametrize("kind", ["gaussian1d", "uniform1d"])
def test_exact_row_prox_matches_converged_cg(kind):
    rng = np.random.default_rng(2)
    maps = np.stack([birdcage_maps(6, (32, 32), rotation=r) for r in (0.0, 0.7)])
    op = MultiCoilMRI(maps, mri_mask(kind, (32, 32), 4.0, seed=3))
    x = rng.standard_normal((2, 1, 32, 32)) + 1j * rng.standard_normal((2, 1, 32, 32))
    y = np.asarray(op.A(x))
    v = x + 0.3 * rng.standard_normal(x.shape)
    for w in (1e-1, 1e-2):
        exact = np.asarray(op.prox(v, y, w))
        cg = np.asarray(LinearOperator._prox(op, v, y, op._per_image(w, v), 500))
        assert np.linalg.norm(exact - cg) / np.linalg.norm(cg) < 1e-3


def test_exact_row_prox_torch_matches_numpy_and_differentiates():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    op = MultiCoilMRI(birdcage_maps(6, (32, 32)), mri_mask("gaussian1d", (32, 32), 4.0, seed=3))
    x = (rng.standard_normal((2, 1, 32, 32)) + 1j * rng.standard_normal((2, 1, 32, 32))).astype(np.complex64)
    y = np.asarray(op.A(x))
    ref = np.asarray(op.prox(x, y, 0.05))
    xt = torch.tensor(x, requires_grad=True)
    out = op.prox(xt, torch.tensor(y), 0.05)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-4, atol=1e-5)
    out.abs().sum().backward()
    assert torch.isfinite(xt.grad).all() and xt.grad.abs().sum() > 0


def _volume_folder(folder):
    """One small synthetic head-like volume written as `diffunfold data mri-volumes` writes them."""
    import h5py

    g = np.mgrid[-1:1:40j, -1:1:40j, -1:1:30j]
    head = (g[0] ** 2 + g[1] ** 2 + (g[2] / 0.8) ** 2 < 0.8).astype(np.float32)
    head *= 1 + 0.3 * np.sin(6 * g[0]) * np.cos(5 * g[1])
    folder.mkdir()
    with h5py.File(folder / "blob.h5", "w") as f:
        f.create_dataset("volume", data=head)
        f.attrs["spacing_mm"] = [4.0, 4.0, 5.0]
    return folder


def test_scanner_training_batches_are_fixed_by_the_seed(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sigpy", reason="ESPIRiT needs sigpy")
    from diffunfold.training.config import load_config
    from diffunfold.training.data import TrainingBatches

    train = _volume_folder(tmp_path / "train")
    over = [
        'data.source="volumes"',
        f'data.path="{train}"',
        f'data.val_path="{train}"',
        "data.scanner=true",
        "data.native_crops=true",
        "data.size=32",
        "train.batch_size=2",
    ]
    a, b = (
        TrainingBatches(load_config("mri-small", overrides=over))[3],
        TrainingBatches(load_config("mri-small", overrides=over))[3],
    )
    np.testing.assert_array_equal(a["y"], b["y"])
    np.testing.assert_array_equal(a["operator"].coil_maps, b["operator"].coil_maps)  # the estimated maps
    np.testing.assert_array_equal(a["sigma_y"], b["sigma_y"])
    assert a["operator"].ncoils <= 8  # compressed to the virtual coils
    assert np.all(np.isfinite(a["sigma_y"])) and np.all(a["sigma_y"] >= 0)
    other = TrainingBatches(load_config("mri-small", overrides=[*over, "train.seed=5"]))[3]
    assert not np.array_equal(other["y"], a["y"])


def test_mrd_noise_scan_lines_give_the_covariance_and_prewhiten(tmp_path):
    pytest.importorskip("ismrmrd", reason="the mrd extra is not installed")
    from diffunfold.mrd.rawfile import read_raw
    from diffunfold.mrd.writer import write_phantom_mrd

    rng = np.random.default_rng(5)
    psi = random_noise_covariance(6, rng)
    images = np.stack([random_phantom((32, 32), rng) for _ in range(2)])
    path = write_phantom_mrd(
        tmp_path / "scan.h5",
        images=images,
        coils=6,
        noise_std=0.05,
        noise_scans=64,
        noise_covariance=psi,
        acceleration=2.0,
    )
    scan = read_raw(path)
    assert scan.skipped.get("noise") == 64
    for data in scan.slices:
        cov = data.noise_covariance
        assert cov is not None and cov.shape == (6, 6)
        assert np.abs(cov - 0.05**2 * psi).max() < 0.15 * 0.05**2 * np.abs(psi).max()
        p = prepare_kspace(data.kspace, data.mask, noise_covariance=cov)
        assert p.info["noise"].startswith("prewhitened") and p.noise_std * p.scale == pytest.approx(1.0)
        # the whitened data's noise, read from the data alone, is white at unit level
        white = prewhiten(data.kspace, whitening_matrix(cov))
        assert estimate_kspace_noise(white, data.mask)[0] == pytest.approx(1.0, rel=0.2)

"""PSNR / SSIM: values, conventions (fastMRI data range, complex magnitudes), batches, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from diffunfold.errors import InputError
from diffunfold.metrics import psnr, ssim, summarize


@pytest.fixture()
def img():
    return np.random.default_rng(0).random((3, 24, 20))


def _checker(shape, amplitude):
    """A +-amplitude perturbation: its MSE is exactly amplitude**2."""
    signs = np.where((np.indices(shape).sum(axis=0) % 2) == 0, 1.0, -1.0)
    return amplitude * signs


def test_psnr_matches_hand_computation(img):
    est = img + _checker(img.shape, 0.05)
    expected = 10 * math.log10(1.0**2 / 0.05**2)
    value = psnr(est, img, data_range=1.0)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, abs=1e-9)
    # Larger error, lower PSNR; symmetric in its arguments.
    assert psnr(img + _checker(img.shape, 0.1), img, data_range=1.0) < value
    assert psnr(img, est, data_range=1.0) == pytest.approx(value)


def test_default_data_range_is_target_max(img):
    target = 2.5 * img / img.max()
    est = target + _checker(img.shape, 0.1)
    expected = 10 * math.log10(2.5**2 / 0.1**2)
    assert psnr(est, target) == pytest.approx(expected, abs=1e-9)
    assert psnr(est, target) == pytest.approx(psnr(est, target, data_range=2.5))
    assert ssim(est, target) == pytest.approx(ssim(est, target, data_range=2.5))
    # The estimate's maximum plays no role.
    assert psnr(est, target) == pytest.approx(psnr(est, target, data_range=float(target.max())))


def test_batch_is_per_image(img):
    rng = np.random.default_rng(1)
    # Images with different scales and noise levels: a pooled computation would differ.
    target = np.stack([img, 3.0 * img, 0.2 * img])
    est = target + rng.normal(size=target.shape) * np.array([0.01, 0.2, 0.05])[:, None, None, None]
    for metric in (psnr, ssim):
        for data_range in (None, 1.0):
            batch = metric(est, target, data_range=data_range)
            assert isinstance(batch, np.ndarray) and batch.shape == (3,) and batch.dtype == np.float64
            singles = [metric(est[i], target[i], data_range=data_range) for i in range(3)]
            np.testing.assert_allclose(batch, singles, rtol=0, atol=1e-12)
            one = metric(est[1:2], target[1:2], data_range=data_range)
            assert one.shape == (1,) and one[0] == pytest.approx(batch[1], abs=1e-12)


def test_identical_images_give_inf_psnr_and_unit_ssim_without_warnings(img):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert psnr(img, img.copy(), data_range=1.0) == math.inf
        assert np.all(psnr(img[None].repeat(2, 0), img[None].repeat(2, 0)) == math.inf)
        assert ssim(img, img.copy(), data_range=1.0) == pytest.approx(1.0, abs=1e-9)
    mean, std = summarize([30.0, 32.0])
    assert (mean, std) == (31.0, 1.0)


def test_ssim_decreases_with_noise(img):
    rng = np.random.default_rng(2)
    noise = rng.normal(size=img.shape)
    values = [ssim(img + s * noise, img, data_range=1.0) for s in (0.0, 0.02, 0.1, 0.3)]
    assert values[0] == pytest.approx(1.0, abs=1e-9)
    assert all(a > b for a, b in zip(values, values[1:]))
    assert 0.0 < values[-1] < 0.7


def test_ssim_single_channel_and_small_images(img):
    grey = img[0]
    est = grey + 0.05 * np.random.default_rng(3).normal(size=grey.shape)
    assert ssim(est[None], grey[None], 1.0) == pytest.approx(ssim(est, grey, 1.0), abs=1e-12)
    small = ssim(est[:5, :6], grey[:5, :6], data_range=1.0)  # window shrinks to 5
    assert 0.0 < small < 1.0
    assert ssim(grey[:3, :3], grey[:3, :3], 1.0) == pytest.approx(1.0)
    with pytest.raises(InputError, match="too small"):
        ssim(grey[:2, :5], grey[:2, :5], 1.0)


def test_complex_inputs_use_magnitudes(img):
    rng = np.random.default_rng(4)
    mag_t = img[0]
    mag_e = mag_t + 0.05 * rng.normal(size=mag_t.shape)
    phase_t = rng.uniform(-np.pi, np.pi, mag_t.shape)
    phase_e = rng.uniform(-np.pi, np.pi, mag_t.shape)  # unrelated phase: must not matter
    zt = mag_t * np.exp(1j * phase_t)
    ze = np.abs(mag_e) * np.exp(1j * phase_e)
    assert psnr(ze, zt) == pytest.approx(psnr(np.abs(mag_e), mag_t), abs=1e-9)
    assert ssim(ze, zt) == pytest.approx(ssim(np.abs(mag_e), mag_t), abs=1e-9)
    # A phase-only difference is no difference (up to the rounding of |exp(i phi)| = 1).
    assert psnr(mag_t * np.exp(1j * phase_e), zt) > 250.0
    assert ssim(mag_t * np.exp(1j * phase_e), zt) == pytest.approx(1.0, abs=1e-9)


def test_torch_tensors_accepted(img):
    torch = pytest.importorskip("torch")
    est = img + _checker(img.shape, 0.05)
    te = torch.tensor(est, dtype=torch.float32, requires_grad=True)
    tt = torch.tensor(img, dtype=torch.float32)
    assert psnr(te, tt, 1.0) == pytest.approx(psnr(est, img, 1.0), abs=1e-4)
    assert ssim(te, tt, 1.0) == pytest.approx(ssim(est, img, 1.0), abs=1e-5)
    batch = psnr(te[None].repeat(2, 1, 1, 1), tt[None].repeat(2, 1, 1, 1), 1.0)
    assert batch.shape == (2,)
    zc = torch.polar(tt[0], torch.rand(tt.shape[1:]))
    assert psnr(torch.abs(zc) + 0.05, zc) == pytest.approx(psnr(tt[0] + 0.05, tt[0]), abs=1e-4)


def test_errors(img):
    with pytest.raises(InputError, match="shapes differ"):
        psnr(img, img[:, :-1])
    with pytest.raises(InputError, match="shapes differ"):
        ssim(img, img[:1])
    bad = img.copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(InputError, match="estimate contains NaN"):
        psnr(bad, img, 1.0)
    bad[0, 1, 2] = np.inf
    with pytest.raises(InputError, match="target contains NaN or Inf"):
        ssim(img, bad, 1.0)
    for data_range in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError, match="data_range"):
            psnr(img, img, data_range=data_range)
    with pytest.raises(InputError, match="maximum"):
        psnr(img, np.zeros_like(img))  # data_range=None with an all-zero target
    with pytest.raises(InputError, match="expected"):
        psnr(img[0, 0], img[0, 0], 1.0)
    with pytest.raises(InputError, match="no values"):
        summarize([])

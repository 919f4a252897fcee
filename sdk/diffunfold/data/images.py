"""Clean-image datasets: image folders (FFHQ, ImageNet crops, your own) and the natural images
bundled with scikit-image.

Every dataset here yields numpy ``float32`` arrays of shape ``(C, H, W)`` with values in
``[0, 1]``. They are plain map-style datasets (``__len__`` / ``__getitem__``), so a torch
``DataLoader`` uses them as they are, yet this module never imports torch.

Augmentation randomness is a pure function of ``(seed, epoch, index)``: an item is the same
whichever DataLoader worker computes it, and a run resumed at epoch ``e`` sees exactly the
crops it would have seen without the interruption. Call :meth:`ImageDataset.set_epoch` before
each epoch (with ``persistent_workers=True`` the workers keep the copy they started with, so
the epoch must be set before the first iteration or the loader re-created).
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .._array import to_numpy
from ..errors import InputError
from ..safe_io import atomic_write
from .image_io import check_pixels

__all__ = [
    "IMAGE_EXTENSIONS",
    "BUNDLED_NAMES",
    "BUNDLED_TRAIN",
    "BUNDLED_HELD_OUT",
    "load_image",
    "save_image",
    "bundled_image",
    "ImageDataset",
    "ImageFolder",
    "BundledImages",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# Natural images shipped inside the scikit-image wheel (no download, no pooch needed).
BUNDLED_NAMES = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "text",
)
# scikit-image's "cat" is a crop of "chelsea" (the same photograph), so only chelsea is used:
# held out, where cat would have repeated it in every evaluation.
BUNDLED_HELD_OUT = ("astronaut", "camera", "chelsea", "coffee")
BUNDLED_TRAIN = tuple(n for n in BUNDLED_NAMES if n not in BUNDLED_HELD_OUT)

_SPLITS = ("train", "val", "all")
# Exact (no reducing_gap shortcut) antialiased bicubic: the filter support grows with the
# downscale factor, and even 1024 -> 64 costs only a few milliseconds.
_RESAMPLE = Image.Resampling.BICUBIC
_GREY_MODES = ("1", "L", "LA", "La")
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


# --------------------------------------------------------------------------- single images


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return int(channels)


def _normalise_mode(img: Image.Image, channels: int) -> Image.Image:
    """``img`` as mode "L" or "RGB" (8-bit) or "F" (grey with more than 8 bits, in [0, 1]).

    Grey sources stay single-channel even when ``channels == 3``: replicating after the
    resize is three times cheaper. Alpha is dropped, not composited.
    """
    if img.mode in _HIGH_DEPTH_MODES:
        # 16-bit PNGs open as "I;16" (or "I"): keep the extra precision instead of truncating.
        arr = np.asarray(img, dtype=np.float32) / np.float32(65535.0)
        return Image.fromarray(np.clip(arr, 0.0, 1.0))
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow warns when palette transparency is converted directly
    if channels == 1 or img.mode in _GREY_MODES:
        return img if img.mode == "L" else img.convert("L")
    return img if img.mode == "RGB" else img.convert("RGB")


def _open(path: str | os.PathLike, channels: int) -> Image.Image:
    """Decode ``path`` fully (so the file is closed) into a mode-normalised PIL image."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning refuses the file too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            check_pixels(img.height, img.width, f"image file {str(path)!r}")  # before decoding
            img.load()
            # Camera JPEGs store their rotation in EXIF; apply it so crops are upright (the
            # check skips exif_transpose's full copy for the usual upright image).
            if img.getexif().get(0x0112, 1) != 1:
                img = ImageOps.exif_transpose(img)
            return _normalise_mode(img, channels)
    except FileNotFoundError as exc:
        raise InputError(f"image file {str(path)!r} does not exist") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{str(path)!r} is a directory, not an image file") from exc
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"cannot read image file {str(path)!r} ({type(exc).__name__}: {exc}); the file is "
            "corrupt, truncated or not an image: re-download it or remove it from the folder"
        ) from exc


def _to_array(img: Image.Image, channels: int) -> np.ndarray:
    """PIL image from :func:`_normalise_mode` -> float32 ``(channels, H, W)`` in [0, 1]."""
    if img.mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    else:
        arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    if arr.shape[0] != channels:  # a grey source asked for RGB
        arr = np.repeat(arr, channels, axis=0)
    return np.ascontiguousarray(arr, dtype=np.float32)


def load_image(path: str | os.PathLike, channels: int = 3, size: int | None = None) -> np.ndarray:
    """Read an image file as float32 ``(channels, H, W)`` in [0, 1] at its native size, or with
    ``size``, its centre square resized to ``size x size`` (antialiased bicubic), the crop the
    evaluation uses.

    ``channels=3`` gives RGB (grey images are replicated), ``channels=1`` gives luma
    (ITU-R 601). Alpha is dropped (``image_io.read_image`` keeps it aside); EXIF rotation is
    applied; 16-bit PNG and TIFF keep their precision, float TIFF is read. Raises
    :class:`InputError` naming the file if it is missing or unreadable.
    """
    from .image_io import read_image

    return read_image(path, _check_channels(channels), size).array


def _centre_square(img: Image.Image, size: int | None) -> Image.Image:
    if size is None:
        return img
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"size must be a positive integer, got {size!r}")
    side = min(img.width, img.height)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.resize((int(size), int(size)), _RESAMPLE, box=(left, top, left + side, top + side))


def save_image(path: str | os.PathLike, array: Any) -> Path:
    """Write ``array`` (``(C, H, W)`` with C in {1, 3}, or ``(H, W)``) as an 8-bit image.

    Float values are taken in [0, 1]: clipped, then rounded to uint8 (``uint8`` arrays are
    written as they are). The format follows the suffix (PNG, lossless, when there is none);
    parent folders are created. numpy, torch and CuPy arrays are accepted. Returns the path.
    """
    arr = np.asarray(to_numpy(array))
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    elif arr.ndim != 2:
        raise InputError(
            f"save_image expects (C, H, W) with C = 1 or 3, or (H, W); got shape {arr.shape}"
            + ("; index the batch first, e.g. x[0]" if arr.ndim == 4 else "")
        )
    if arr.dtype == np.uint8:
        data = arr
    elif np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.bool_:
        if not np.all(np.isfinite(arr)):
            raise InputError(f"cannot save {str(path)!r}: the image contains NaN or Inf values")
        data = np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise InputError(
            f"save_image expects floats in [0, 1] or uint8, got dtype {arr.dtype}; scale it to [0, 1] floats first"
        )
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".png")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    try:
        if fmt is None:
            raise KeyError(path.suffix)
        image = Image.fromarray(np.ascontiguousarray(data))
        atomic_write(path, lambda tmp: image.save(tmp, format=fmt))  # never half a file
    except (ValueError, KeyError) as exc:  # unknown suffix
        raise InputError(f"cannot save {str(path)!r}: unknown image format {path.suffix!r}; use .png") from exc
    return path


@functools.cache
def _bundled_raw(name: str) -> np.ndarray:
    """The uint8 array scikit-image ships for ``name`` (cached: the loaders hash the file)."""
    import skimage.data  # deferred: importing skimage costs ~0.3 s

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    img.setflags(write=False)  # shared by every caller through the cache
    return img


def _check_bundled_name(name: str) -> str:
    if name not in BUNDLED_NAMES:
        raise InputError(f"unknown bundled image {name!r}; choose one of: {', '.join(BUNDLED_NAMES)}")
    return name


def _bundled_pil(name: str, channels: int) -> Image.Image:
    raw = _bundled_raw(_check_bundled_name(name))
    # Same conversions as image files, so a bundled image and its PNG export load identically.
    return _normalise_mode(Image.fromarray(raw), channels)


def bundled_image(name: str, channels: int = 3, size: int | None = None) -> np.ndarray:
    """A natural image shipped with scikit-image as float32 ``(channels, H, W)`` in [0, 1],
    at its native resolution, or with ``size`` its centre square resized as :func:`load_image`
    does (for a held-out name, exactly the validation image). ``name`` is one of
    :data:`BUNDLED_NAMES`; nothing is downloaded."""
    channels = _check_channels(channels)
    return _to_array(_centre_square(_bundled_pil(name, channels), size), channels)


# --------------------------------------------------------------------------------- datasets


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise InputError(f"split must be one of {_SPLITS}, got {split!r}")
    return split


class ImageDataset:
    """Base of the clean-image datasets: a map-style dataset of float32 ``(C, size, size)``
    arrays in [0, 1].

    With ``augment=True`` each item is a random square crop whose side is a uniform fraction
    in ``[min_scale, 1]`` of the image's shorter side, at a uniform position, resized to
    ``size`` (antialiased bicubic), flipped left-right with probability 0.5 (and up-down
    with probability 0.5 when ``vflip=True``). With ``native=True`` the side is instead
    log-uniform between ``size`` pixels and the shorter side, so crops range from a piece at
    the photo's own resolution to the whole photo shrunk; ``whole_fraction`` of those crops are
    drawn the first way instead (``min_scale`` to 1 of the shorter side: a photo shrunk whole,
    as thumbnails and the 64 px evaluation see it). With ``augment=False`` it is the centre square
    of the full shorter side, resized: deterministic, for evaluation.

    The random draws come from ``np.random.default_rng((seed, epoch, index))`` only.
    Subclasses implement ``__len__`` and ``_native(index) -> PIL.Image`` (a mode-normalised
    image, see :func:`_normalise_mode`).
    """

    def __init__(
        self,
        size: int = 64,
        channels: int = 3,
        seed: int = 0,
        min_scale: float = 0.5,
        augment: bool = True,
        vflip: bool = False,
        native: bool = False,
        whole_fraction: float = 0.0,
    ):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise InputError(f"size must be a positive integer (pixels), got {size!r}")
        if not 0.0 < float(min_scale) <= 1.0:
            raise InputError(f"min_scale must be in (0, 1] (fraction of the shorter side), got {min_scale!r}")
        self.size = int(size)
        self.channels = _check_channels(channels)
        self.seed = self._check_counter(seed, "seed")
        self.min_scale = float(min_scale)
        self.augment = bool(augment)
        self.vflip = bool(vflip)
        self.native = bool(native)
        if not 0.0 <= float(whole_fraction) <= 1.0:
            raise InputError(f"whole_fraction must be in [0, 1], got {whole_fraction!r}")
        self.whole_fraction = float(whole_fraction)
        self.epoch = 0

    @staticmethod
    def _check_counter(value: Any, what: str) -> int:
        # SeedSequence entropy must be a non-negative integer.
        try:
            value = operator.index(value)
        except TypeError:
            raise InputError(f"{what} must be a non-negative integer, got {value!r}") from None
        if value < 0:
            raise InputError(f"{what} must be a non-negative integer, got {value!r}")
        return value

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before iterating each epoch)."""
        self.epoch = self._check_counter(epoch, "epoch")

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _native(self, index: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def crop_params(self, index: int, width: int, height: int) -> tuple[tuple[int, int, int, int], bool, bool]:
        """The crop box ``(left, top, right, bottom)`` and the (horizontal, vertical) flips
        used for item ``index`` of the current epoch, for an image of ``width x height``."""
        side_max = min(width, height)
        if not self.augment:
            left, top = (width - side_max) // 2, (height - side_max) // 2
            return (left, top, left + side_max, top + side_max), False, False
        rng = np.random.default_rng((self.seed, self.epoch, index))
        # The extra draw only where asked, so crops without it stay those of earlier runs.
        whole = self.whole_fraction > 0 and rng.random() < self.whole_fraction
        if self.native and not whole:
            # Log-uniform from `size` pixels (a piece at the photo's own resolution) to the
            # whole shorter side, so crops look like parts of photos, not only shrunk photos.
            low = math.log(min(self.size, side_max))
            side = int(round(math.exp(rng.uniform(low, math.log(side_max)))))
        else:
            side = max(1, int(round(side_max * rng.uniform(self.min_scale, 1.0))))
        side = min(max(side, 1), side_max)
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        hflip = bool(rng.random() < 0.5)
        vdraw = bool(rng.random() < 0.5)  # drawn always, so vflip=True leaves the rest unchanged
        return (left, top, left + side, top + side), hflip, (vdraw and self.vflip)

    def __getitem__(self, index: int) -> np.ndarray:
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(f"dataset indices must be integers, got {type(index).__name__}") from None
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        img = self._native(index)
        box, hflip, vflip = self.crop_params(index, img.width, img.height)
        img = img.resize((self.size, self.size), _RESAMPLE, box=box)
        out = _to_array(img, self.channels)  # clips the bicubic overshoot of "F" images
        if hflip:
            out = out[:, :, ::-1]
        if vflip:
            out = out[:, ::-1, :]
        return np.ascontiguousarray(out)


def _hash_fraction(relpath: str) -> float:
    """A stable number in [0, 1) from a relative path (same on every machine and run)."""
    digest = hashlib.sha1(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class ImageFolder(ImageDataset):
    """All images (.png, .jpg, .jpeg, .bmp, .webp, any case) under ``root``, loaded lazily.

    Files are sorted by relative path. The split is fixed by a SHA-1 hash of each file's
    relative path (POSIX form): a file is "val" when its hash fraction is below
    ``val_fraction``. So a file never changes split when others are added or removed, and the
    split does not depend on ``seed``. ``split="all"`` keeps every file.

    The "train" and "all" splits are augmented (random crop + flips), "val" uses the
    deterministic centre crop; pass ``augment`` to override. Hidden files and folders (name
    starting with ".", e.g. macOS "._x.png" resource forks) are skipped.

    With ``cache=True`` each photo is decoded once per process and kept in memory (about
    3 bytes a pixel: 0.38 GB for the 214 training photos of ``diffunfold data photos``, in each
    DataLoader worker). Decoding is about 90 % of the CPU time of a training batch, which is
    what feeds a GPU; the items are the same either way.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int = 64,
        split: str = "train",
        channels: int = 3,
        val_fraction: float = 0.1,
        seed: int = 0,
        min_scale: float = 0.5,
        recursive: bool = True,
        *,
        vflip: bool = False,
        augment: bool | None = None,
        native: bool = False,
        whole_fraction: float = 0.0,
        cache: bool = False,
    ):
        split = _check_split(split)
        if not 0.0 <= float(val_fraction) <= 1.0:
            raise InputError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
        super().__init__(
            size=size,
            channels=channels,
            seed=seed,
            min_scale=min_scale,
            augment=(split != "val") if augment is None else augment,
            vflip=vflip,
            native=native,
            whole_fraction=whole_fraction,
        )
        self.root = Path(root)
        self.split = split
        self.val_fraction = float(val_fraction)
        self.recursive = bool(recursive)
        if not self.root.exists():
            raise InputError(f"image folder {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise InputError(
                f"{str(self.root)!r} is not a folder; ImageFolder needs a folder "
                "of images (use load_image for a single file)"
            )
        chosen = self._split(self._scan())
        self.relpaths: list[str] = chosen
        self.paths: list[Path] = [self.root / p for p in chosen]
        self.cache = bool(cache)
        self._decoded: dict[int, Image.Image] = {}

    def _split(self, found: list[str]) -> list[str]:
        """The files of ``found`` on this split's side (by a hash of each relative path)."""
        if not found:
            raise InputError(
                f"no images found in {str(self.root)!r}"
                + ("" if self.recursive else " (subfolders were not searched: recursive=False)")
                + f"; expected files ending in {', '.join(IMAGE_EXTENSIONS)}"
            )
        if self.split == "all":
            return found
        want_val = self.split == "val"
        chosen = [p for p in found if (_hash_fraction(p) < self.val_fraction) == want_val]
        if not chosen:
            raise InputError(
                f"the {self.split!r} split of {str(self.root)!r} is empty: {len(found)} image(s), "
                f"val_fraction={self.val_fraction}; use split='all', or change val_fraction "
                "(small folders may put every file on one side)"
            )
        return chosen

    def _scan(self) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")] if self.recursive else []
            for name in filenames:
                if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                found.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(found)

    def __len__(self) -> int:
        return len(self.paths)

    def _native(self, index: int) -> Image.Image:
        if not self.cache:
            return _open(self.paths[index], self.channels)
        if index not in self._decoded:  # per process: each DataLoader worker fills its own
            self._decoded[index] = _open(self.paths[index], self.channels)
        return self._decoded[index]

    def __repr__(self) -> str:
        return (
            f"ImageFolder({str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"size={self.size}, channels={self.channels}, augment={self.augment})"
        )


class BundledImages(ImageDataset):
    """The natural images bundled with scikit-image, as a tiny dataset needing no download.

    ``split="train"`` gives :data:`BUNDLED_TRAIN` (augmented), ``"val"`` the fixed held-out
    :data:`BUNDLED_HELD_OUT` (deterministic centre crops), ``"all"`` every name (augmented).
    Decoded images are cached in memory (about 12 MB for all of them). ``names`` lists the
    images of the split in item order.
    """

    def __init__(
        self,
        size: int = 64,
        split: str = "train",
        channels: int = 3,
        seed: int = 0,
        min_scale: float = 0.5,
        *,
        vflip: bool = False,
        augment: bool | None = None,
        native: bool = False,
        whole_fraction: float = 0.0,
    ):
        split = _check_split(split)
        super().__init__(
            size=size,
            channels=channels,
            seed=seed,
            min_scale=min_scale,
            augment=(split != "val") if augment is None else augment,
            vflip=vflip,
            native=native,
            whole_fraction=whole_fraction,
        )
        self.split = split
        self.names: tuple[str, ...] = {
            "train": BUNDLED_TRAIN,
            "val": BUNDLED_HELD_OUT,
            "all": BUNDLED_NAMES,
        }[split]

    def __len__(self) -> int:
        return len(self.names)

    def _native(self, index: int) -> Image.Image:
        return _bundled_pil(self.names[index], self.channels)

    def __repr__(self) -> str:
        return (
            f"BundledImages(split={self.split!r}, n={len(self)}, size={self.size}, "
            f"channels={self.channels}, augment={self.augment})"
        )

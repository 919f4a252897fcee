"""Single images: image files read and written (:func:`load_image`, :func:`save_image`) and the
natural photographs bundled with scikit-image (:func:`bundled_image`), as float32 ``(C, H, W)``
arrays in [0, 1]. The datasets built on them (folders of photos, the bundled set) are in
:mod:`diffunfold.data.image_datasets`; this module never imports torch.
"""

from __future__ import annotations

import functools
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
    "BUNDLED_NAMES",
    "BUNDLED_TRAIN",
    "BUNDLED_HELD_OUT",
    "load_image",
    "save_image",
    "bundled_image",
]

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

# Exact (no reducing_gap shortcut) antialiased bicubic: the filter support grows with the
# downscale factor, and even 1024 -> 64 costs only a few milliseconds.
RESAMPLE = Image.Resampling.BICUBIC
_GREY_MODES = ("1", "L", "LA", "La")
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


# ---------------------------------------- PIL images, shared with the datasets' crops (image_datasets)


def check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return int(channels)


def normalise_mode(img: Image.Image, channels: int) -> Image.Image:
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


def open_normalised(path: str | os.PathLike, channels: int) -> Image.Image:
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
            return normalise_mode(img, channels)
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


def to_array(img: Image.Image, channels: int) -> np.ndarray:
    """PIL image from :func:`normalise_mode` -> float32 ``(channels, H, W)`` in [0, 1]."""
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

    return read_image(path, check_channels(channels), size).array


def _centre_square(img: Image.Image, size: int | None) -> Image.Image:
    if size is None:
        return img
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"size must be a positive integer, got {size!r}")
    side = min(img.width, img.height)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.resize((int(size), int(size)), RESAMPLE, box=(left, top, left + side, top + side))


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


def bundled_pil(name: str, channels: int) -> Image.Image:
    raw = _bundled_raw(_check_bundled_name(name))
    # Same conversions as image files, so a bundled image and its PNG export load identically.
    return normalise_mode(Image.fromarray(raw), channels)


def bundled_image(name: str, channels: int = 3, size: int | None = None) -> np.ndarray:
    """A natural image shipped with scikit-image as float32 ``(channels, H, W)`` in [0, 1],
    at its native resolution, or with ``size`` its centre square resized as :func:`load_image`
    does (for a held-out name, exactly the validation image). ``name`` is one of
    :data:`BUNDLED_NAMES`; nothing is downloaded."""
    channels = check_channels(channels)
    return to_array(_centre_square(bundled_pil(name, channels), size), channels)

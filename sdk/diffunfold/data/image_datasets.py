"""Clean-image datasets: image folders (FFHQ, ImageNet crops, your own) and the natural images
bundled with scikit-image (the single images themselves: :mod:`diffunfold.data.images`).

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

import hashlib
import math
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from .images import (
    BUNDLED_HELD_OUT,
    BUNDLED_NAMES,
    BUNDLED_TRAIN,
    RESAMPLE,
    bundled_pil,
    check_channels,
    open_normalised,
    to_array,
)

__all__ = ["IMAGE_EXTENSIONS", "ImageDataset", "ImageFolder", "BundledImages"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

_SPLITS = ("train", "val", "all")


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
    image, see :func:`normalise_mode`).
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
        self.channels = check_channels(channels)
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
        img = img.resize((self.size, self.size), RESAMPLE, box=box)
        out = to_array(img, self.channels)  # clips the bicubic overshoot of "F" images
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
            return open_normalised(self.paths[index], self.channels)
        if index not in self._decoded:  # per process: each DataLoader worker fills its own
            self._decoded[index] = open_normalised(self.paths[index], self.channels)
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
        return bundled_pil(self.names[index], self.channels)

    def __repr__(self) -> str:
        return (
            f"BundledImages(split={self.split!r}, n={len(self)}, size={self.size}, "
            f"channels={self.channels}, augment={self.augment})"
        )

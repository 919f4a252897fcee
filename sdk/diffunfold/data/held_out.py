"""Held-out evaluation sets from the folders ``diffunfold data`` writes.

Photos: the centre square of each photo's shorter side, resized to ``size`` (the whole photo,
shrunk), a deterministic choice of ``count`` spread over the folder's sorted files, so every
source is represented. MRI: fixed slices of the held-out volume in the three orientations
(:meth:`VolumeSlices.fixed`).

Validation (what training and tuning may look at) never touches what is scored: the photos no
harness count up to ``SCORED_AT_MOST`` picks, and the slices of the volume's validation bands.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError

# The most photos a recorded harness run scores (bench/quality.py --images: 4, 5 or 8).
SCORED_AT_MOST = 8


def _spread(n: int, count: int) -> list[int]:
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(count, n))})


def validation_indices(n: int, scored_at_most: int = SCORED_AT_MOST) -> list[int]:
    """Positions in a sorted held-out folder of ``n`` photos that :func:`held_out_photos` picks
    for no ``count`` up to ``scored_at_most``: photos nothing scores, for choosing settings."""
    scored = set().union(*(_spread(n, c) for c in range(1, scored_at_most + 1)))
    return [i for i in range(n) if i not in scored]


def held_out_photos(folder: str | Path, size: int, count: int) -> tuple[list[str], np.ndarray]:
    """Names and ``(N, 3, size, size)`` float32 images in [0, 1]. A whole ``diffunfold data
    photos`` folder (with its ``train/`` beside ``held-out/``) is refused: every photo below it
    would be a candidate, training photos included."""
    from .image_datasets import ImageFolder

    if (Path(folder) / "train").is_dir() and (Path(folder) / "held-out").is_dir():
        raise InputError(
            f"{folder} holds the training photos too (train/ beside held-out/); "
            f"pass {Path(folder) / 'held-out'} to score held-out photos only"
        )

    ds = ImageFolder(folder, size, split="all", augment=False)
    picks = _spread(len(ds), count)
    names = [Path(ds.relpaths[i]).stem.split("__", 1)[-1] for i in picks]
    return names, np.stack([ds[i] for i in picks]).astype(np.float32)


def held_out_slices(folder: str | Path, size: int, count: int) -> tuple[list[str], np.ndarray]:
    """Names and ``(N, 1, size, size)`` complex64 slices, 99th-percentile normalised."""
    from .mri_slices import VolumeSlices

    items = VolumeSlices(folder, size).fixed(count)
    return [it["name"] for it in items], np.stack([it["image"] for it in items])


def sources_of(folder: str | Path) -> list[dict]:
    """The manifest records (package, version, path, licence) of the files in ``folder``, read
    from the ``manifest.json`` one level up; empty when there is none."""
    manifest = Path(folder).parent / "manifest.json"
    if not manifest.exists():
        return []
    m = json.loads(manifest.read_text())
    records = m.get("photos", m.get("volumes", []))
    name = Path(folder).name
    return [r for r in records if r.get("split") == name]


def check_folder(folder: str | Path, what: str) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise InputError(
            f"{what} folder {str(path)!r} does not exist; make it with "
            f"`diffunfold data {'photos' if what == 'photo' else 'mri-volumes'} DIR` "
            "and pass DIR/held-out"
        )
    return path

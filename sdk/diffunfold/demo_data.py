"""The demo's held-out data, and where it came from.

With the folders ``diffunfold data`` writes (``DATA/photos``, ``DATA/mri``), the demo restores
held-out real photographs and slices of the held-out real head; each image is credited with its
package, path and licence from the manifest. Without them it falls back to scikit-image's photos
and synthetic phantoms, and says how to get the real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import held_out as ho

PHANTOM_STREAM = 20261122  # MRI demo phantoms: default_rng([PHANTOM_STREAM, i]), not a training stream


def held_out_images(size: int, count: int) -> tuple[list[str], np.ndarray]:
    """The held-out scikit-image photos, centre squares at ``size`` px: names, ``(N, 3, H, W)``."""
    from .data.image_datasets import BundledImages

    ds = BundledImages(size=size, split="val")
    count = min(count, len(ds))
    return list(ds.names[:count]), np.stack([ds[i] for i in range(count)]).astype(np.float32)


def held_out_phantoms(size: int, count: int) -> tuple[list[str], np.ndarray]:
    """Synthetic complex phantoms (99th-percentile normalised, as in training): ``(N, 1, H, W)``."""
    from .data.fastmri import percentile_normalize
    from .data.phantom import random_phantom

    images = [
        percentile_normalize(random_phantom((size, size), np.random.default_rng([PHANTOM_STREAM, i])))[0]
        for i in range(count)
    ]
    return [f"phantom {i}" for i in range(count)], np.stack(images)[:, None].astype(np.complex64)


def _holder(text: str) -> str:
    """The first copyright holder, with "et al." when the package names many."""
    text = " ".join(text.split())
    return text if len(text) <= 70 else text[: text.find(">") + 1 or 70].strip() + " et al."


def _credits(folder: Path, names: list[str], volume: bool) -> tuple[list[str], list[str]]:
    """Short names for the figures, and one credit line per image (or volume)."""
    records = ho.sources_of(folder)
    if volume:
        used = {n.rsplit("-", 1)[0] for n in names}
        return names, [
            f"{r['name']}: {r['description']}; `{r['path']}` in {r['package']} {r['version']} ({r['licence']})"
            for r in records
            if r["name"] in used
        ]
    by_stem = {Path(r["file"]).stem.split("__", 1)[-1]: r for r in records}
    short, lines = [], []
    for n in names:
        r = by_stem.get(n)
        short.append(Path(r["path"]).stem if r else n)
        if r:
            holder = f", {_holder(r['copyright'])}" if r.get("copyright") else ""
            lines.append(f"{short[-1]}: `{r['path']}` in {r['package']} {r['version']} ({r['licence']}{holder})")
    return short, lines


def load_demo_data(kind: str, root: str | Path, size: int, count: int) -> dict:
    """``{"names", "images", "source", "credits"}`` for the "image" or "mri" tasks."""
    folder = Path(root) / ("photos" if kind == "image" else "mri") / "held-out"
    if folder.is_dir() and any(folder.iterdir()):
        load = ho.held_out_photos if kind == "image" else ho.held_out_slices
        names, images = load(folder, size, count)
        names, credits = _credits(folder, names, kind == "mri")
        what = "held-out photographs" if kind == "image" else "slices of the held-out real head"
        return {
            "names": names,
            "images": images,
            "source": f"{what} in {folder} (`diffunfold data`)",
            "credits": credits,
        }
    command = f"diffunfold data {'photos' if kind == 'image' else 'mri-volumes'} {folder.parent}"
    if kind == "image":
        names, images = held_out_images(size, count)
        source = f"scikit-image's held-out photos (no {folder}: `{command}` fetches real ones)"
    else:
        names, images = held_out_phantoms(size, count)
        source = f"synthetic phantoms (no {folder}: `{command}` fetches real heads)"
    return {"names": names, "images": np.asarray(images), "source": source, "credits": []}

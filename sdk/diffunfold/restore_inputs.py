"""The inputs of ``diffunfold restore``: image files and folders collected, their output base
names, headers read without decoding, the inpainting mask and the words of ``--task``; nothing
here imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import InputError

# load_image reads whatever Pillow reads; these are the suffixes a folder is scanned for.
FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def collect_inputs(inputs: list[str]) -> tuple[list[Path], set[Path]]:
    """Image files from files and folders (sorted, hidden files skipped), and the folders they
    live in."""
    files: list[Path] = []
    dirs: set[Path] = set()
    seen: set[Path] = set()
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in FOLDER_SUFFIXES
            )
            if not found:
                raise InputError(
                    f"folder {raw!r} holds no images ({', '.join(FOLDER_SUFFIXES)}; subfolders are not searched)"
                )
            dirs.add(p.resolve())
        elif p.exists():
            found = [p]
        else:
            raise InputError(f"input {raw!r} does not exist; give image files or folders of images")
        for f in found:
            r = f.resolve()
            if r not in seen:
                seen.add(r)
                files.append(f)
                dirs.add(r.parent)
    return files, dirs


def base_names(files: list[Path]) -> list[str]:
    """Output stems: the file stem, prefixed by its folder where two inputs share a stem."""
    stems = [f.stem for f in files]
    out = []
    for f, s in zip(files, stems):
        out.append(s if stems.count(s) == 1 else f"{f.parent.name}_{s}_{f.suffix.lstrip('.').lower()}")
    taken: dict[str, int] = {}
    unique = []
    for b in out:
        n = taken.get(b, 0)
        taken[b] = n + 1
        unique.append(b if n == 0 else f"{b}_{n}")
    return unique


def read_header(path: Path) -> tuple[int, int]:
    """The image's (H, W) from its header; an InputError naming the file when it is not an
    image at all."""
    from .data.image_io import image_size

    return image_size(path)


def load_mask(value: Any):
    """``mask=FILE`` as a boolean (H, W) array: white (> 0.5) = observed."""
    import numpy as np

    from .data.images import load_image

    path = Path(value)
    if not path.is_file():
        raise InputError(f"mask file {value!r} does not exist; give mask=FILE.png with white = observed pixels")
    mask = load_image(path, channels=1)[0] > 0.5
    if not mask.any():
        raise InputError(f"the mask {value!r} marks no pixel as observed (white = observed, black = missing)")
    return np.ascontiguousarray(mask)


def check_mask_shape(mask, shape: tuple[int, int], path: Path, after: str = "") -> None:
    if mask is not None and mask.shape != tuple(shape):
        raise InputError(
            f"the mask is {mask.shape[0]}x{mask.shape[1]} but {path} is {shape[0]}x{shape[1]}{after}; "
            "they must match pixel for pixel"
        )


def centre_crop_multiple(x, m: int):
    h, w = x.shape[-2:]
    nh, nw = h - h % m, w - w % m
    top, left = (h - nh) // 2, (w - nw) // 2
    return x[..., top : top + nh, left : left + nw]


def task_default(name: str, param: str) -> Any:
    """The default of one parameter of a task's operator (``make_operator``'s keyword)."""
    import inspect

    from .physics.tasks import TASKS

    return inspect.signature(TASKS[name]).parameters[param].default


def task_label(name: str, params: dict) -> str:
    """``name(k=v, ...)`` for the report; a mask by its file name."""
    shown = ", ".join(f"{k}={Path(v).name if k == 'mask' else v}" for k, v in params.items())
    return f"{name}({shown})" if shown else name


def trained_note(name: str, trained: list[str]) -> str | None:
    """A note where the package was not trained on the task asked for (None where it was)."""
    from .physics.tasks import canonical_task

    known = []
    for t in trained:
        try:
            known.append(canonical_task(t))
        except InputError:
            known.append(t)
    if not known or name in known:
        return None
    return (
        f"note: the package was not trained on {name} (trained: {', '.join(known)}); the physics is "
        "outside the network, so it usually works"
    )

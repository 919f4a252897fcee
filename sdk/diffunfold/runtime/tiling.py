"""The regulariser on overlapping tiles, and the memory a solve needs before it starts.

The U-Net's attention is quadratic in the number of pixels at its low-resolution levels: one
4000x4000 image would ask for terabytes. So ``R_k`` runs on square tiles of a fixed size,
batched through the backend, and the outputs are blended with separable raised-cosine ramps
over the overlaps, normalised so that the weights of every pixel sum to one. The physics (the
data step) stays global on the whole image: only the network is tiled, so the memory of the
network is bounded by the tile, and the image arrays are all that grows with the image.

Images no larger than one tile take the untiled path, exactly as before tiling existed.
Torch-free: numpy or CuPy (``xp``) arrays.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..package_schema import tile_record_problem

# The training crop of packages whose manifest does not record it (both bundled packages were
# trained on 64x64 crops). A tile is twice the training size where memory allows: it gives the
# network context beyond the crop it learned from, at a bounded attention cost.
TRAIN_SIZE_DEFAULT = 64
TILE_TRAIN_MULTIPLES = (2, 1)
OVERLAP_FRACTION = 0.25  # overlap between neighbouring tiles, a fraction of the tile
MAX_TILE_BATCH = {"cpu": 8, "cuda": 64}
NETWORK_SHARE = 0.5  # of the available memory, for the tile batch
# Working memory of the network per pixel, from the package's U-Net settings: LIVE_TENSORS
# float32 feature maps per level, and ATTENTION_COPIES float32 attention matrices per head.
# Measured with ONNX Runtime on image-small (one image): 31 MB at 128x128, 331 MB at 256x256;
# these constants give 35 and 392 MB.
LIVE_TENSORS = 4
ATTENTION_COPIES = 2
# Whole-image float32 arrays the solver, the sampler and the data step hold at once, per image
# row and model channel (calibrated by bench/tiling.py: peak RSS at 1024 and 2048 px).
IMAGE_COPIES = 24


@dataclass(frozen=True)
class TilePlan:
    """``tile``: the side of the square tiles (None: untiled); ``overlap``: pixels shared by
    neighbours; ``batch``: tile rows (images x tiles) per backend call."""

    tile: int | None
    overlap: int = 0
    batch: int = 1

    def describe(self) -> str:
        if self.tile is None:
            return "untiled"
        return f"tiles of {self.tile}x{self.tile}, overlap {self.overlap}, {self.batch} per network call"


# -- memory -------------------------------------------------------------------------------------


def available_memory(device_kind: str = "cpu") -> int | None:
    """Bytes the solve may still use: free GPU memory (CuPy), or the host's available memory
    (``MemAvailable``, capped by a cgroup limit); None where it cannot be read."""
    if device_kind == "cuda":
        import cupy

        free, _ = cupy.cuda.runtime.memGetInfo()
        pool = cupy.get_default_memory_pool()
        return int(free + pool.free_bytes())
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    found.extend(_cgroup_room())
    return min(found) if found else None


def _cgroup_room() -> list[int]:
    """The room left under a cgroup v2 memory limit, if there is one."""
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        current = int(open("/sys/fs/cgroup/memory.current").read().strip())
    except (OSError, ValueError):
        return []
    return [] if limit == "max" else [max(int(limit) - current, 0)]


def network_bytes(settings: dict, h: int, w: int) -> int:
    """Working memory of one regulariser call on one ``h x w`` image (see ``LIVE_TENSORS``)."""
    unet = settings.get("unet", {})
    c, mult = int(unet.get("channels", 64)), list(unet.get("channel_mult", [1, 2, 2, 4]))
    head = max(int(unet.get("head_channels", 32)), 1)
    px = h * w
    linear = LIVE_TENSORS * 4 * c * sum(m / 4**lvl for lvl, m in enumerate(mult)) * px
    levels = list(unet.get("attention_levels", [])) + ([len(mult) - 1] if unet.get("mid_attention") else [])
    quadratic = sum(
        ATTENTION_COPIES * 4 * max(c * mult[lvl] // head, 1) * (px / 4**lvl) ** 2
        for lvl in levels
        if 0 <= lvl < len(mult)
    )
    return int(linear + quadratic)


def image_bytes(rows: int, channels: int, h: int, w: int) -> int:
    """The whole-image arrays of a solve: ``rows`` images (batch x side-by-side samples)."""
    return IMAGE_COPIES * 4 * rows * channels * h * w


def gib(n: float) -> str:
    """Bytes in the unit a person reads them in (binary multiples)."""
    for unit, size in (("TB", 2**40), ("GB", 2**30)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**20:.0f} MB"


# -- choosing the tiles -------------------------------------------------------------------------


def train_size(manifest: dict) -> int:
    """The training crop a package records (``train_size``, written by ``export_checkpoint``),
    or ``TRAIN_SIZE_DEFAULT`` for packages exported before it was recorded."""
    return int(manifest.get("train_size") or TRAIN_SIZE_DEFAULT)


def parse_tile(tile: Any, multiple: int) -> int | str | None:
    """``"auto"``, None / 0 / ``"none"`` (untiled), or a side that is a multiple of ``multiple``."""
    if tile is None or (isinstance(tile, str) and tile.strip().lower() in ("none", "0", "off")):
        return None
    if isinstance(tile, str) and tile.strip().lower() == "auto":
        return "auto"
    try:
        side = int(tile)
        if side != float(tile) or isinstance(tile, bool):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"tile must be 'auto', 'none' (or 0) or a size in pixels, got {tile!r}") from None
    if side == 0:
        return None
    if side < 2 * multiple or side % multiple:
        raise InputError(
            f"tile must be a multiple of {multiple} (the U-Net's downsampling) and at least {2 * multiple}, got {side}"
        )
    return side


def whole_up_to(manifest: dict) -> int:
    """The largest side a package runs whole with ``tile="auto"`` (its manifest's
    ``tiling.whole_up_to``: measured per package, since a network trained on small crops may lose
    quality on a whole large image); 0 where it records none."""
    value = manifest.get("tiling", {}).get("whole_up_to", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"the manifest's tiling.whole_up_to must be a whole number >= 0, got {value!r}")
    return value


def recorded_tile(manifest: dict) -> tuple[int, int] | None:
    """The tile side and least overlap a package records for ``tile="auto"`` above its whole
    side (``tiling.tile``, ``tiling.overlap``: measured per package), or None for the rule from
    its training size."""
    rec = manifest.get("tiling", {})
    if (problem := tile_record_problem(rec)) is not None:
        raise InputError(f"the manifest's {problem}")
    return (rec["tile"], rec.get("overlap", 0)) if "tile" in rec else None


def whole_fits(settings: dict, manifest: dict, shape, multiple: int, rows: int, share: float | None) -> bool:
    """Whether ``tile="auto"`` runs ``rows`` whole images of ``shape``: no side above the package's
    ``whole_up_to``, and the network on all of them within the memory share (unknown memory:
    the side alone decides)."""
    h, w = (-(-n // multiple) * multiple for n in shape)
    if max(h, w) > whole_up_to(manifest):
        return False
    return share is None or rows * network_bytes(settings, h, w) <= share


def plan_tiles(
    settings: dict,
    manifest: dict,
    tile: Any,
    shape: tuple[int, int],
    multiple: int,
    device_kind: str,
    budget: int | None,
    rows: int = 1,
) -> TilePlan:
    """The tiles for ``rows`` images of ``shape`` on a device with ``budget`` bytes available
    (None: unknown); untiled where the image fits in one tile, and with ``"auto"`` where the
    package runs whole images of this size (:func:`whole_fits`)."""
    tile = parse_tile(tile, multiple)
    if tile is None:
        return TilePlan(None)
    share = None if budget is None else NETWORK_SHARE * budget
    if tile == "auto" and whole_fits(settings, manifest, shape, multiple, rows, share):
        return TilePlan(None)
    overlap = None
    if tile == "auto":
        tile, overlap = _auto_tile(settings, manifest, multiple, share)
    if all(-(-n // multiple) * multiple <= tile for n in shape):
        return TilePlan(None)
    per_tile = network_bytes(settings, tile, tile)
    cap = MAX_TILE_BATCH.get(device_kind, 8)
    batch = cap if share is None else max(1, min(cap, int(share // per_tile)))
    return TilePlan(tile, max(int(round(OVERLAP_FRACTION * tile)), 1) if overlap is None else overlap, batch)


def _auto_tile(settings: dict, manifest: dict, multiple: int, share: float | None) -> tuple[int, int | None]:
    """``tile="auto"``'s tile side and overlap (None: OVERLAP_FRACTION of the side): the package's
    recorded tile where it fits the memory share, else twice the training size, else once."""
    recorded = recorded_tile(manifest)
    if recorded is not None and (share is None or network_bytes(settings, recorded[0], recorded[0]) <= share):
        return recorded
    base = train_size(manifest)
    sides = [-(-k * base // multiple) * multiple for k in TILE_TRAIN_MULTIPLES]
    fits = [s for s in sides if share is None or network_bytes(settings, s, s) <= share]
    return (fits[0] if fits else sides[-1]), None


def check_memory(
    settings: dict, plan: TilePlan, rows: int, channels: int, shape: tuple[int, int], multiple: int, budget: int | None
) -> int:
    """The bytes a solve is expected to need; refuses, with the reason, what cannot fit."""
    h, w = (-(-n // multiple) * multiple for n in shape)
    images = image_bytes(rows, channels, h, w)
    if plan.tile is None:
        net, how = rows * network_bytes(settings, h, w), f"the network on {rows} whole image(s)"
    else:
        # a call holds at least one tile of every image row (regularize: per_call >= 1)
        net, how = max(plan.batch, rows) * network_bytes(settings, plan.tile, plan.tile), plan.describe()
    need = images + net
    if budget is not None and need > budget:
        hint = (
            "pass tile='auto' (--tile auto)"
            if plan.tile is None
            else "use fewer samples or images at once, a smaller tile, or a smaller image"
        )
        raise InputError(
            f"restoring {rows} image row(s) of {shape[0]}x{shape[1]} needs about {gib(need)} "
            f"({gib(images)} for the image arrays, {gib(net)} for {how}) but only "
            f"{gib(budget)} is available; {hint}"
        )
    return need


# -- running it ---------------------------------------------------------------------------------


def pad_to_multiple(x, multiple: int, xp):
    """Reflect-pad the last two axes up to multiples of ``multiple`` (edge-pad when the image is
    too small to reflect)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "edge"
    return xp.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` covering ``[0, n)``, evenly spread, neighbours sharing at least
    ``overlap`` pixels; the first at 0 and the last at ``n - tile``."""
    if tile >= n:
        return [0]
    count = math.ceil((n - tile) / (tile - overlap)) + 1
    return [round(i * (n - tile) / (count - 1)) for i in range(count)]


def blend_windows(starts: list[int], tile: int, n: int) -> list[np.ndarray]:
    """1-D weights of each tile: raised-cosine ramps over the parts shared with a neighbour
    (1 elsewhere, and at the image's borders), divided by their sum at every pixel."""
    windows = []
    for i, p in enumerate(starts):
        win = np.ones(tile)
        if i > 0:  # ramp up over the overlap with the previous tile
            ov = starts[i - 1] + tile - p
            win[:ov] *= np.sin(0.5 * np.pi * (np.arange(ov) + 0.5) / ov) ** 2
        if i < len(starts) - 1:  # ramp down over the overlap with the next one
            ov = p + tile - starts[i + 1]
            win[tile - ov :] *= np.cos(0.5 * np.pi * (np.arange(ov) + 0.5) / ov) ** 2
        windows.append(win)
    total = np.zeros(n)
    for p, win in zip(starts, windows):
        total[p : p + tile] += win
    return [(win / total[p : p + tile]).astype(np.float32) for p, win in zip(starts, windows)]


def regularize(run: Callable[[Any], Any], x, plan: TilePlan, multiple: int, xp):
    """``run`` (the backend's ``R_k(.; sigma)`` on a batch) applied to ``x`` ``(B, C, H, W)``
    through ``plan``: padded to the U-Net's multiple, tiled and blended, cropped back."""
    h, w = x.shape[-2:]
    xpad = pad_to_multiple(x, multiple, xp)
    hp, wp = xpad.shape[-2:]
    if plan.tile is None or (hp <= plan.tile and wp <= plan.tile):
        return run(xpad)[:, :, :h, :w]
    th, tw = min(plan.tile, hp), min(plan.tile, wp)
    ys, xs = tile_starts(hp, th, plan.overlap), tile_starts(wp, tw, plan.overlap)
    wy = [xp.asarray(v)[:, None] for v in blend_windows(ys, th, hp)]
    wx = [xp.asarray(v)[None, :] for v in blend_windows(xs, tw, wp)]
    boxes = [(a, b) for a in range(len(ys)) for b in range(len(xs))]
    b_rows = int(x.shape[0])
    per_call = max(1, plan.batch // b_rows)
    out = xp.zeros_like(xpad)
    for first in range(0, len(boxes), per_call):
        chunk = boxes[first : first + per_call]
        tiles = xp.concatenate([xpad[:, :, ys[a] : ys[a] + th, xs[b] : xs[b] + tw] for a, b in chunk])
        r = run(tiles)
        for i, (a, b) in enumerate(chunk):
            out[:, :, ys[a] : ys[a] + th, xs[b] : xs[b] + tw] += r[i * b_rows : (i + 1) * b_rows] * (wy[a] * wx[b])
    return out[:, :, :h, :w]

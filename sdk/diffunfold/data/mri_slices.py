"""Multi-coil MRI training and test slices from real head volumes.

A slice is cut from a volume of :mod:`.mri_volumes` in any of the three orientations and
resampled (cubic) onto a square field of view, in millimetres so that anisotropic voxels come
out right, with a random in-plane rotation, zoom and shift for training. It gets a smooth
random phase (the volumes are magnitude images; a real image has a slowly varying phase from
B0 and the receive chain), is normalised by its 99th-percentile magnitude as the paper
normalises fastMRI slices, and is seen through simulated birdcage coils with a random count,
rotation and radius (the wires stay outside the field of view's corners, at 1.41 half-widths).
Test slices use fixed positions, no rotation, and 15 coils.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..physics.mri import birdcage_maps
from .fastmri import percentile_normalize
from .mri_volumes import read_volume

COIL_COUNTS = (8, 12, 15, 16, 20)
# Pixel sizes of native-resolution training windows (mm): a 320 px brain scan to a 64 px survey.
NATIVE_MM = (0.8, 4.5)


def usable_slices(volume: np.ndarray, axis: int, min_fraction: float = 0.2) -> np.ndarray:
    """Indices along ``axis`` whose head covers at least ``min_fraction`` of the slice."""
    inside = volume > 0.1 * float(np.percentile(volume, 99))
    others = tuple(a for a in range(3) if a != axis)
    return np.flatnonzero(inside.mean(axis=others) >= min_fraction)


def render_slice(
    plane: np.ndarray, spacing: tuple[float, float], size: int, angle: float = 0.0, zoom: float = 1.1, shift=(0.0, 0.0)
) -> np.ndarray:
    """``plane`` resampled onto ``size x size`` pixels covering a square of side ``zoom`` times
    its larger physical extent, rotated by ``angle`` radians and shifted by ``shift`` (fractions
    of the side)."""
    extent = max(plane.shape[0] * spacing[0], plane.shape[1] * spacing[1])
    side = zoom * extent
    u = (np.arange(size) + 0.5) / size - 0.5
    uu, vv = np.meshgrid(u + shift[0], u + shift[1], indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    pa, pb = side * (c * uu - s * vv), side * (s * uu + c * vv)  # millimetres from the centre
    ia = pa / spacing[0] + plane.shape[0] / 2 - 0.5
    ib = pb / spacing[1] + plane.shape[1] / 2 - 0.5
    out = ndimage.map_coordinates(plane, [ia, ib], order=3, mode="constant", cval=0.0)
    return np.clip(out, 0.0, None).astype(np.float32)


def smooth_phase(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random phase map: an offset plus linear and quadratic terms across the field of view."""
    u = (np.arange(size) + 0.5) / size - 0.5
    uu, vv = np.meshgrid(u, u, indexing="ij")
    a = rng.uniform(-1, 1, size=6) * np.array([math.pi, 2.0, 2.0, 3.0, 3.0, 3.0])
    return (a[0] + a[1] * uu + a[2] * vv + a[3] * uu * vv + a[4] * uu**2 + a[5] * vv**2).astype(np.float32)


def _plane(volume: np.ndarray, spacing, axis: int, index: int):
    plane = np.take(volume, index, axis=axis)
    return plane, tuple(spacing[a] for a in range(3) if a != axis)


def _finish(magnitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
    image, _ = percentile_normalize(magnitude * np.exp(1j * phase))
    return image[None].astype(np.complex64)


# Where fixed slice number ``turn`` of an orientation sits in its usable range, from a
# golden-ratio sequence u in [0, 1): the test band, and the validation bands either side of it.
FIXED_BANDS = {
    "test": lambda u: 0.35 + 0.3 * u,
    "validation": lambda u: 0.15 + 0.26 * u if u < 0.5 else 0.72 + 0.26 * (u - 0.5),
}


class VolumeSlices:
    """The volumes (``*.h5``) of a folder written by ``diffunfold data mri-volumes``."""

    def __init__(self, folder: str | Path, size: int = 64):
        paths = sorted(Path(folder).glob("*.h5"))
        if not paths:
            raise InputError(
                f"no MRI volumes (*.h5) in {folder}: run `diffunfold data mri-volumes DIR` "
                "and point at DIR/train or DIR/held-out"
            )
        self.size = int(size)
        self.names = [p.stem for p in paths]
        self.volumes = [read_volume(p) for p in paths]
        self.slices = [[usable_slices(v, a) for a in range(3)] for v, _ in self.volumes]

    def random(self, rng: np.random.Generator, ncoils: int, native: bool = False) -> dict:
        """A random slice (orientation, position, rotation, zoom, shift, phase) on random coils.
        ``native``: a window at a scanner's pixel size (``NATIVE_MM`` per pixel, log-uniform)
        anywhere over the head, instead of the whole head; the coils' ring stays where it would
        be around the whole field of view, so their maps are as smooth as a scan's."""
        v = int(rng.integers(len(self.volumes)))
        axis = int(rng.integers(3))
        volume, spacing = self.volumes[v]
        index = int(rng.choice(self.slices[v][axis]))
        plane, sp = _plane(volume, spacing, axis, index)
        angle = rng.uniform(-math.pi, math.pi)
        radius = rng.uniform(1.5, 2.2)
        if native:
            extent = max(plane.shape[0] * sp[0], plane.shape[1] * sp[1])
            zoom = self.size * math.exp(rng.uniform(*np.log(NATIVE_MM))) / extent
            room = max(0.0, 0.5 * (1.1 - zoom)) / zoom  # the window's centre stays over the head
            head = 0.1 * float(np.percentile(plane, 99))
            for _ in range(8):  # a window that is mostly background is drawn again
                mag = render_slice(plane, sp, self.size, angle=angle, zoom=zoom, shift=rng.uniform(-room, room, size=2))
                if np.mean(mag > head) >= 0.25:
                    break
            radius *= max(1.0, 1.1 / zoom)
        else:
            mag = render_slice(
                plane, sp, self.size, angle=angle, zoom=rng.uniform(1.0, 1.3), shift=rng.uniform(-0.05, 0.05, size=2)
            )
        maps = birdcage_maps(ncoils, (self.size, self.size), radius=radius, rotation=rng.uniform(0, 2 * math.pi))
        return {"image": _finish(mag, smooth_phase(self.size, rng)), "coil_maps": maps.astype(np.complex64)}

    def fixed(self, count: int, ncoils: int = 15, seed: int = 0, band: str = "test") -> list[dict]:
        """``count`` fixed slices: spread over a band of the usable range of each orientation in
        turn, no rotation, the same coils, a phase drawn from ``seed``. ``band="test"``: the
        middle 35-65 % (what the harnesses score); ``"validation"``: 15-28 % and 72-85 %, at
        least 7 % of the range from any test slice, for choosing settings without the test."""
        if band not in FIXED_BANDS:
            raise InputError(f"band must be one of {sorted(FIXED_BANDS)}, got {band!r}")
        maps = birdcage_maps(ncoils, (self.size, self.size)).astype(np.complex64)
        items = []
        for i in range(count):
            v, axis = i % len(self.volumes), (i // len(self.volumes)) % 3
            volume, spacing = self.volumes[v]
            usable = self.slices[v][axis]
            turn = i // (3 * len(self.volumes))
            index = int(usable[int(FIXED_BANDS[band]((turn * 0.618) % 1.0) * (len(usable) - 1))])
            plane, sp = _plane(volume, spacing, axis, index)
            mag = render_slice(plane, sp, self.size)
            phase = smooth_phase(self.size, np.random.default_rng([seed, i]))
            items.append(
                {"image": _finish(mag, phase), "coil_maps": maps, "name": f"{self.names[v]}-{'xyz'[axis]}{index}"}
            )
        return items

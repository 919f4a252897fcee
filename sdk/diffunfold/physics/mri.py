"""Multi-coil MRI: ``A x = M * F(S * x)``, sampling masks and coil sensitivities.

Conventions (fastMRI's): k-space ``(B, Ncoil, H, W)`` with the readout along H and the phase
encodes along W, so 1-D masks sample whole columns. ``F`` is the centred, orthonormal 2-D FFT
(unitary), the coil maps satisfy ``sum_c |S_c|^2 = 1`` (an isometry where the object is) and
``M`` is a binary mask, so ``||A||_2 <= 1``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from .._array import fft_of, is_complex, like, namespace, real_dtype_for, to_numpy
from ..errors import InputError
from .base import LinearOperator
from .mri_rows import exact_prox, row_eigensystems

MASK_KINDS = ("uniform1d", "random1d", "gaussian1d", "gaussian2d")
_AXES = (-2, -1)


def fft2c(x):
    """Centred orthonormal 2-D FFT over the last two axes (image -> k-space)."""
    fft = fft_of(x)
    return fft.fftshift(fft.fftn(fft.ifftshift(x, axes=_AXES), axes=_AXES, norm="ortho"), axes=_AXES)


def ifft2c(k):
    """Inverse of :func:`fft2c` (and its adjoint: the transform is unitary)."""
    fft = fft_of(k)
    return fft.fftshift(fft.ifftn(fft.ifftshift(k, axes=_AXES), axes=_AXES, norm="ortho"), axes=_AXES)


def rss(coil_images, axis: int = -3):
    """Root-sum-of-squares coil combination."""
    xp = namespace(coil_images)
    return xp.sqrt(xp.sum(xp.abs(coil_images) ** 2, axis=axis))


def _as_4d(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 2:
        return a[None, None]
    if a.ndim == 3:
        return a[None]
    if a.ndim == 4:
        return a
    raise InputError(f"{name} must be 2-, 3- or 4-D, got shape {a.shape}")


def normalize_coil_maps(maps: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scale maps so that ``sum_c |S_c|^2 = 1`` wherever they are not all zero."""
    norm = np.sqrt(np.sum(np.abs(maps) ** 2, axis=-3, keepdims=True))
    return np.where(norm > eps * max(float(norm.max()), eps), maps / np.maximum(norm, eps), 0)


class MultiCoilMRI(LinearOperator):
    """``A x = M * F(S * x)`` for complex images ``(B, 1, H, W)``.

    ``coil_maps``: ``(Ncoil, H, W)`` shared by the batch or ``(B, Ncoil, H, W)`` per image;
    normalised here so that ``sum_c |S_c|^2 = 1``. ``mask``: binary, ``(H, W)`` or
    ``(1 | B, 1, H, W)``. ``pinv`` is the zero-filled SENSE reconstruction ``A^H y``
    (exact for a fully sampled mask, and a cheap baseline otherwise).
    """

    task = "mri"
    complex_image = True
    channels = 1

    def __init__(self, coil_maps, mask, recipe: dict | None = None):
        maps = np.asarray(to_numpy(coil_maps))
        if maps.ndim not in (3, 4):
            raise InputError(
                f"coil_maps must be (Ncoil, H, W) or (B, Ncoil, H, W), got shape {maps.shape} "
                "(for a single coil use shape (1, H, W))"
            )
        maps = _as_4d(maps, "coil_maps")
        if not np.all(np.isfinite(maps)):
            raise InputError("coil_maps contain NaN or Inf; re-estimate or re-simulate them")
        m = np.asarray(to_numpy(mask))
        m = _as_4d(m, "mask") if m.ndim != 3 else m[:, None]
        if m.shape[1] != 1:
            raise InputError(f"the mask must be shared by the coils: (H, W) or (B, 1, H, W), got {m.shape}")
        if tuple(m.shape[-2:]) != tuple(maps.shape[-2:]):
            raise InputError(
                f"the mask is {tuple(m.shape[-2:])} but the coil maps are {tuple(maps.shape[-2:])}; "
                "both must be on the same k-space/image grid"
            )
        if m.shape[0] != 1 and maps.shape[0] != 1 and m.shape[0] != maps.shape[0]:
            raise InputError(f"mask batch {m.shape[0]} and coil-map batch {maps.shape[0]} differ")
        if m.dtype != bool and not np.all((m == 0) | (m == 1)):
            raise InputError("the sampling mask must be binary (1 = sampled)")
        super().__init__(maps.shape[-2:], batch=max(m.shape[0], maps.shape[0]))
        self._maps = normalize_coil_maps(maps.astype(np.complex128))
        self._mask = m.astype(np.float64)
        self.ncoils = int(maps.shape[1])
        self._recipe = recipe
        self._eig: tuple[np.ndarray, np.ndarray] | None = None
        # On an even grid the centring shifts fold into the constants:
        # fftshift(F(ifftshift(v))) = (-1)^(H/2 + W/2) * C * F(C * v), C the (-1)^(i+j)
        # checkerboard; this saves four full copies of the coil images per gradient.
        h, w = self.image_shape
        self._folded = h % 2 == 0 and w % 2 == 0
        if self._folded:
            board = (-1.0) ** np.add.outer(np.arange(h), np.arange(w))
            self._maps_k = self._maps * board
            self._mask_k = self._mask * board * (-1.0) ** (h // 2 + w // 2)
        else:
            self._maps_k, self._mask_k = self._maps, self._mask

    @property
    def coil_maps(self) -> np.ndarray:
        return self._maps

    @property
    def mask(self) -> np.ndarray:
        return self._mask

    @property
    def lipschitz(self) -> float:
        # ||M F S|| <= ||M|| ||F|| ||S|| = 1 (sum_c |S_c|^2 = 1, F unitary, M a projection); with
        # the fully sampled k-space centre the bound is tight for smooth coil maps.
        return 1.0

    @property
    def acceleration(self) -> float:
        """Realised acceleration: samples in the grid over samples taken."""
        return float(self._mask[0].size / max(self._mask[0].sum(), 1.0))

    def _check_measurement(self, y, what):
        super()._check_measurement(y, what)
        if int(y.shape[1]) != self.ncoils:
            raise InputError(f"{what} has {int(y.shape[1])} coils but the coil maps have {self.ncoils}")

    def _mask_for(self, v):
        return self._const("M", self._mask_k, v, dtype=real_dtype_for(namespace(v), v.dtype))

    def _measured(self, y):
        return self._mask_for(y)

    def _forward(self, x):
        s = self._const("S", self._maps_k, x, dtype=x.dtype)
        if self._folded:
            return self._mask_for(x) * fft_of(x).fftn(s * x, axes=_AXES, norm="ortho")
        return self._mask_for(x) * fft2c(s * x)

    def _adjoint(self, y):
        s_conj = self._const("S*", lambda: np.conj(self._maps_k), y, dtype=y.dtype)
        my = self._mask_for(y) * y
        coil_images = fft_of(y).ifftn(my, axes=_AXES, norm="ortho") if self._folded else ifft2c(my)
        return namespace(y).sum(s_conj * coil_images, axis=1, keepdims=True)

    _pinv = _adjoint

    fast_normal = True
    # False: CG for 1-D masks too (the slower path, kept to measure the exact one against)
    row_prox = True

    def _normal(self, x):
        """``A^H A x = S^H F^H M' F S x``, ``M' = ifftshift(M)``: the centring shifts of ``F`` cancel
        (they are circular shifts, which commute with ``F^H M' F``, a circular convolution), and
        ``M^2 = M``. For a 1-D mask (whole columns) ``M'`` is constant along H, so the H
        transforms cancel too and only the W axis, the sampled one, is transformed."""
        fft, xp = fft_of(x), namespace(x)
        s = self._const("S0", self._maps, x, dtype=x.dtype)
        s_conj = self._const("S0*", lambda: np.conj(self._maps), x, dtype=x.dtype)
        axes = (-1,) if self._is_1d else _AXES
        m = self._const(f"M'{len(axes)}", self._unshifted_mask, x, dtype=real_dtype_for(xp, x.dtype))
        coil_images = fft.ifftn(m * fft.fftn(s * x, axes=axes, norm="ortho"), axes=axes, norm="ortho")
        return xp.sum(s_conj * coil_images, axis=1, keepdims=True)

    def _prox(self, v, y, weight, iterations: int):
        """Exact for a 1-D mask (:mod:`.mri_rows`: one eigendecomposition per slice, then two
        matrix products per step, whatever ``iterations`` says); CG otherwise."""
        if not (self._is_1d and self.row_prox):
            return super()._prox(v, y, weight, iterations)
        xp = namespace(v)
        real = real_dtype_for(xp, v.dtype)
        vectors = self._const("V", lambda: self._rows()[0], v, dtype=v.dtype)
        vectors_h = self._const("V^H", lambda: np.conj(np.swapaxes(self._rows()[0], -1, -2)), v, dtype=v.dtype)
        values = self._const("lam", lambda: self._rows()[1], v, dtype=real)
        return exact_prox(xp, vectors, vectors_h, values, self._adjoint_y(y), v, weight)

    def _rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-row eigensystems of ``A^H A`` (computed once per operator)."""
        if self._eig is None:
            self._eig = row_eigensystems(self._maps, self._unshifted_mask())
        return self._eig

    @property
    def samples_lines(self) -> bool:
        """Whether the mask samples whole lines (a 1-D pattern, the same in every row)."""
        return self._is_1d

    @functools.cached_property
    def _is_1d(self) -> bool:
        """Whether the mask samples whole columns (constant along H) for every image."""
        return bool(np.all(self._mask == self._mask[..., :1, :]))

    def _unshifted_mask(self) -> np.ndarray:
        """``ifftshift(M)``: ``(B, 1, 1, W)`` for a 1-D mask, ``(B, 1, H, W)`` otherwise."""
        if self._is_1d:
            return np.fft.ifftshift(self._mask[..., :1, :], axes=-1)
        return np.fft.ifftshift(self._mask, axes=_AXES)

    def spec(self) -> dict:
        """The recipe it was built from; ``given`` names arrays passed explicitly."""
        if self._recipe is None:
            return {
                "task": "mri",
                "image_shape": self.image_shape,
                "given": ["coil_maps", "mask"],
                "ncoils": self.ncoils,
                "acceleration": round(self.acceleration, 3),
            }
        return dict(self._recipe)

    def __repr__(self) -> str:
        return (
            f"MultiCoilMRI({self.image_shape}, ncoils={self.ncoils}, "
            f"acceleration={self.acceleration:.2f}, batch={self.batch})"
        )


# -- sampling masks ---------------------------------------------------------------------------


def default_center_fraction(acceleration: float) -> float:
    """fastMRI's auto-calibration width: 8 % of the lines at 4x, 4 % at 8x."""
    return 0.32 / float(acceleration)


def _top_k_weighted(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """``k`` distinct indices drawn with probability proportional to ``weights``
    (successive sampling without replacement, via the Gumbel-top-k trick)."""
    keys = np.log(weights) + rng.gumbel(size=weights.shape)
    return np.argpartition(-keys, k - 1)[:k] if k > 0 else np.zeros(0, dtype=int)


def mri_mask(
    kind: str,
    shape: Sequence[int],
    acceleration: float,
    center_fraction: float | None = None,
    seed: int = 0,
    std_fraction: float = 0.15,
) -> np.ndarray:
    """A binary k-space sampling mask ``(H, W)`` float32 (1 = sampled).

    kind:
        ``uniform1d``: equispaced phase-encode lines (random offset) plus the centre;
        ``random1d``: uniformly random lines plus the centre (fastMRI's RandomMaskFunc,
        with the line count made exact);
        ``gaussian1d``: lines drawn with a Gaussian density around the centre;
        ``gaussian2d``: points drawn with a 2-D Gaussian density, plus a centre square.
    ``center_fraction`` is the fully sampled centre as a fraction of the lines (1-D) or of each
    side (2-D); by default ``0.32 / acceleration``. ``std_fraction`` sets the Gaussian width as a
    fraction of the axis length. The count of samples is exact, so the realised acceleration is
    within rounding of the request (checked: within 5 %).
    """
    if kind not in MASK_KINDS:
        raise InputError(f"unknown mask kind {kind!r}; choose one of {MASK_KINDS}")
    h, w = (int(s) for s in tuple(shape)[-2:])
    acc = float(acceleration)
    if not math.isfinite(acc) or acc < 1:
        raise InputError(f"acceleration must be >= 1, got {acceleration!r}")
    cf = default_center_fraction(acc) if center_fraction is None else float(center_fraction)
    if not 0 < cf < 1:
        raise InputError(f"center_fraction must be in (0, 1), got {center_fraction!r}")
    rng = np.random.default_rng(seed)

    if kind == "gaussian2d":
        mask = _gaussian2d_mask(h, w, acc, cf, std_fraction, rng)
    else:
        mask = np.broadcast_to(_line_mask(kind, w, acc, cf, std_fraction, rng)[None, :], (h, w))

    mask = mask.astype(np.float32)
    realised = mask.size / mask.sum()
    if abs(realised / acc - 1) > 0.05:
        raise InputError(
            f"a {h}x{w} grid cannot realise {acc}x within 5 % (got {realised:.2f}x); use a larger "
            "image or another acceleration"
        )
    return mask


def _gaussian2d_mask(
    h: int, w: int, acc: float, cf: float, std_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """``gaussian2d``: a centre square plus points drawn with a 2-D Gaussian density, bool ``(H, W)``."""
    n_total = int(round(h * w / acc))
    ch, cw = max(1, int(round(h * cf))), max(1, int(round(w * cf)))
    center = np.zeros((h, w), dtype=bool)
    center[h // 2 - ch // 2 : h // 2 - ch // 2 + ch, w // 2 - cw // 2 : w // 2 - cw // 2 + cw] = True
    dy = (np.arange(h) - h // 2)[:, None] / (std_fraction * h)
    dx = (np.arange(w) - w // 2)[None, :] / (std_fraction * w)
    density = np.exp(-0.5 * (dy**2 + dx**2))
    flat_center = center.ravel()
    k = n_total - int(flat_center.sum())
    if k < 0:
        raise InputError(f"the centre ({ch}x{cw}) alone exceeds the {acc}x budget; lower center_fraction")
    candidates = np.flatnonzero(~flat_center)
    chosen = candidates[_top_k_weighted(rng, density.ravel()[candidates], k)]
    mask = flat_center.copy()
    mask[chosen] = True
    return mask.reshape(h, w)


def _line_mask(kind: str, w: int, acc: float, cf: float, std_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """The 1-D kinds: the centre lines plus the drawn ones, bool ``(W,)`` over the phase encodes."""
    n_total = int(round(w / acc))
    nc = max(1, int(round(w * cf)))
    if nc > n_total:
        raise InputError(
            f"{nc} centre lines exceed the {n_total} lines of {acc}x on {w} phase encodes; "
            "lower center_fraction or the acceleration"
        )
    lines = np.zeros(w, dtype=bool)
    lines[w // 2 - nc // 2 : w // 2 - nc // 2 + nc] = True
    candidates = np.flatnonzero(~lines)
    k = n_total - nc
    if kind == "uniform1d":
        step = len(candidates) / max(k, 1)
        picks = (rng.uniform(0, step) + step * np.arange(k)).astype(int)
        chosen = candidates[np.minimum(picks, len(candidates) - 1)]
    elif kind == "random1d":
        chosen = rng.choice(candidates, size=k, replace=False)
    else:  # gaussian1d
        density = np.exp(-0.5 * ((candidates - w // 2) / (std_fraction * w)) ** 2)
        chosen = candidates[_top_k_weighted(rng, density, k)]
    lines[chosen] = True
    return lines


# -- coil sensitivities -----------------------------------------------------------------------


def birdcage_maps(ncoils: int, shape: Sequence[int], radius: float = 1.5, rotation: float = 0.0) -> np.ndarray:
    """Simulated sensitivities of ``ncoils`` coils on a ring (complex128, ``(ncoils, H, W)``).

    Each coil is a wire parallel to the bore at ``radius`` (in units of the half field of
    view) around the image centre; its field magnitude falls off as 1/distance and its phase
    turns around the wire, as for a birdcage/array coil; ``rotation`` (radians) turns the
    ring. The maps are normalised so that
    ``sum_c |S_c|^2 = 1``. 15 coils is the paper's set-up.
    """
    if int(ncoils) < 1:
        raise InputError(f"ncoils must be >= 1, got {ncoils}")
    h, w = (int(s) for s in tuple(shape)[-2:])
    y = (np.arange(h) - h / 2 + 0.5)[:, None] / (h / 2)
    x = (np.arange(w) - w / 2 + 0.5)[None, :] / (w / 2)
    maps = np.empty((int(ncoils), h, w), dtype=np.complex128)
    for c in range(int(ncoils)):
        phi = 2 * math.pi * c / ncoils + rotation
        dx, dy = x - radius * math.cos(phi), y - radius * math.sin(phi)
        maps[c] = np.exp(1j * (phi + np.arctan2(dy, dx))) / np.hypot(dx, dy)
    return normalize_coil_maps(maps)


def estimate_coil_maps(kspace, calib_fraction: float = 0.08, threshold: float = 0.02):
    """Coil maps from fully sampled multi-coil k-space ``(Ncoil, H, W)`` or ``(B, Ncoil, H, W)``.

    The low-resolution ratio method: a Hann-windowed centre of k-space (``calib_fraction`` of
    each side) gives smooth coil images; each is divided by their root-sum-of-squares, and the
    background (RSS under ``threshold`` times its maximum) is zeroed. Returns arrays of the
    input's kind, normalised so that ``sum_c |S_c|^2 = 1`` on the object.
    """
    xp = namespace(kspace)
    if kspace.ndim not in (3, 4) or not is_complex(kspace):
        raise InputError(
            f"kspace must be complex (Ncoil, H, W) or (B, Ncoil, H, W), got {kspace.dtype} {tuple(kspace.shape)}"
        )
    h, w = int(kspace.shape[-2]), int(kspace.shape[-1])

    def hann(n: int) -> np.ndarray:
        half = max(2.0, n * calib_fraction / 2)
        d = np.abs(np.arange(n) - n // 2)
        return np.where(d < half, 0.5 * (1 + np.cos(np.pi * d / half)), 0.0)

    window = like(np.outer(hann(h), hann(w)), kspace, dtype=real_dtype_for(xp, kspace.dtype))
    low = ifft2c(kspace * window)
    norm = rss(low, axis=-3)[..., None, :, :]
    keep = norm > threshold * xp.max(norm, axis=(-3, -2, -1), keepdims=True)  # per image
    safe = xp.where(keep, norm, xp.ones_like(norm))
    return xp.where(keep, low / safe, xp.zeros_like(low))

"""Geometric self-ensemble of the posterior samples, at no extra cost.

Posterior sample ``j`` runs its regulariser ``R_k`` on the iterate in the ``j``-th of four
orientations (as it is, flipped left-right, flipped up-down, both) and turns the output back;
the data step is untouched, so every sample still answers the measurement as before. A U-Net
trained with random flips is nearly, not exactly, flip-equivariant: its errors differ between
orientations, and the mean of the samples averages them out. The same idea as the
"self-ensemble" of example-based super-resolution (Timofte et al. 2016, Lim et al. 2017), there
at 8x the cost, here spread over samples that are drawn anyway. One sample (``j = 0``) is the
plain solve. Measured on the bundled image-small, 6 validation photos, mean of 4: +0.03 to
+0.28 dB in all 32 task and noise cells
(``bench/results/real-data/image-small-validation/README.md``, section 7).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._array import namespace
from .errors import InputError

ENSEMBLES = ("none", "flips")
_FLIPS = ((), (-1,), (-2,), (-2, -1))


def check_ensemble(ensemble: str) -> str:
    if ensemble not in ENSEMBLES:
        raise InputError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    return ensemble


def flip_axes(ensemble: str, sample: int) -> tuple[int, ...]:
    """The image axes posterior sample ``sample`` flips (none for ``ensemble="none"``)."""
    return () if check_ensemble(ensemble) == "none" else _FLIPS[int(sample) % len(_FLIPS)]


def flip(x, axes: Sequence[int]):
    """``x`` flipped along ``axes`` (numpy, CuPy or torch; ``()``: ``x`` itself)."""
    return namespace(x).flip(x, axis=tuple(axes)) if axes else x


def oriented(regularize: Callable[[Any], Any], x, groups: Sequence[tuple[int, int, tuple[int, ...]]]):
    """``regularize`` (one batched call) on the rows of ``x`` in their groups' orientations:
    ``groups`` are ``(start, stop, axes)`` row ranges; each output row is turned back."""
    if not any(axes for _, _, axes in groups):
        return regularize(x)
    xp = namespace(x)
    r = regularize(xp.concat([flip(x[a:b], axes) for a, b, axes in groups], axis=0))
    return xp.concat([flip(r[a:b], axes) for a, b, axes in groups], axis=0)

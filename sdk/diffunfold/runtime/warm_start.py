"""Starting a solve from an estimate instead of pure noise (``Solver.solve(init=, init_sigma=,
init_noise=)``): the estimate, moved to model space, plus just enough white noise to bring what
it carries up to the schedule's first level (Chung et al. 2022, "come closer, diffuse faster").

``init_noise`` is the noise the estimate counts as carrying already, in the schedule's units
(model space, per real channel). With 0 the solve adds the full first level; with a value at or
above it, nothing, and the estimate's own noise is what the denoiser removes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._array import check_finite, describe, is_complex
from ..errors import InputError


@dataclass(frozen=True)
class WarmStart:
    estimate: Any  # model space, (B, C, H, W)
    noise: float  # the noise it counts as carrying, schedule units

    def added_noise(self, level: float) -> float:
        """The std of the white noise that brings the estimate's own noise up to ``level``."""
        return math.sqrt(max(level * level - self.noise * self.noise, 0.0))


def check_start_options(init, init_sigma, init_noise) -> None:
    """``init``, ``init_sigma`` and ``init_noise`` make sense together, or an :class:`InputError`."""
    if (init is None) != (init_sigma is None):
        raise InputError(
            "init and init_sigma go together: an estimate to start from and the noise level "
            "(model units) the solve starts at"
        )
    if isinstance(init_noise, bool) or not isinstance(init_noise, (int, float)) or not math.isfinite(init_noise):
        raise InputError(f"init_noise must be a finite number >= 0, got {init_noise!r}")
    if init_noise < 0 or (init_noise > 0 and init is None):
        raise InputError(
            f"init_noise ({init_noise!r}) is the noise an init estimate carries: a number >= 0, given with init"
        )


def warm_start(init, init_noise: float, shape: tuple, space, xp, stretch=None) -> WarmStart | None:
    """``init`` (user space) checked against the images' ``shape`` and moved to model space (at the
    stretched contrast, when stretched); None stays None."""
    if init is None:
        return None
    if not hasattr(init, "shape") or tuple(init.shape) != shape:
        raise InputError(f"init must be the images' estimate, shaped {shape}, got {describe(init)}")
    if is_complex(init) != space.complex:
        raise InputError(f"init must be {'complex' if space.complex else 'real'} like the images, got {describe(init)}")
    check_finite(init, "the starting estimate init")
    x = xp.asarray(init).astype(xp.complex64 if space.complex else xp.float32, copy=False)
    return WarmStart(space.to_model(x if stretch is None else stretch.stretched(x)), float(init_noise))

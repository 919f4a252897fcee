"""The stochastic samplers of the diffusion papers that EDM's Table 1 compares, as steps of
:func:`diffunfold.edm.sample_loop` (``sampler="ancestral"`` or ``"pc"``).

Both are written for the unscaled iterate ``x = x_0 + s n`` and the denoiser ``D(x; s)``, as the
loop is; the score is ``(D(x; s) - x) / s^2``. Each returns a step's new iterate and its calls.

* ``ancestral``: DDPM's sampler (Ho et al. 2020; VP's and iDDPM's papers), a draw from the
  Gaussian posterior of the next level given ``x`` and ``x_0 = D(x)``. One call a step.
* ``pc``: the predictor-corrector sampler of the score-SDE paper (Song et al. 2021, VE's):
  at each level one Langevin corrector step (signal-to-noise ratio 0.16, their VE setting),
  then the reverse-diffusion predictor. Two calls a step.

Torch-free and array-API agnostic (numpy, CuPy, torch): the noise comes from the loop's source.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

PC_SNR = 0.16  # Song et al. 2021, the PC sampler of their VE models


def ancestral_step(s: float, s_next: float) -> tuple[float, float, float]:
    """``(a, b, c)`` of DDPM's ancestral step from level ``s`` to ``s_next < s``:
    ``x_next = a x + b D(x) + c z``. It is the posterior of ``x_{s_next}`` given ``x_s`` and
    ``x_0 = D(x_s)`` under ``x_s = x_0 + s n``, with ``r = s_next / s``: mean
    ``r^2 x + (1 - r^2) x_0``, standard deviation ``s_next sqrt(1 - r^2)``. The same step in
    VP's scaled variables, since scaling commutes with it; it ends at ``x_0`` where
    ``s_next = 0``."""
    r2 = (s_next / s) ** 2
    return r2, 1.0 - r2, s_next * math.sqrt(1.0 - r2)


def reverse_diffusion_step(s: float, s_next: float) -> tuple[float, float, float]:
    """``(a, b, c)`` of the reverse-diffusion predictor: Euler-Maruyama of the reverse VE SDE over
    ``[s_next, s]``, ``x + (s^2 - s_next^2) score + sqrt(s^2 - s_next^2) z``. Its mean is the
    ancestral step's, its noise ``s / s_next`` times larger (the same as the steps shrink); at
    ``s_next = 0`` it is ``D(x)`` without noise (the loop's last step returns the estimate)."""
    r2 = (s_next / s) ** 2
    return r2, 1.0 - r2, (math.sqrt(s * s - s_next * s_next) if s_next > 0 else 0.0)


def _norms(a):
    """Per-image Euclidean norm, shaped to broadcast against ``a``."""
    n = ((a * a).reshape(a.shape[0], -1).sum(1)) ** 0.5
    return n.reshape((a.shape[0],) + (1,) * (a.ndim - 1))


def langevin_correct(denoise: Callable[[Any, float], Any], x, s: float, z, snr: float = PC_SNR):
    """One Langevin step at level ``s``: ``x + e g + sqrt(2 e) z`` with ``g`` the score and the
    step ``e = 2 (snr ||z|| / ||g||)^2`` per image, as the score-SDE paper sets it."""
    g = (denoise(x, s) - x) / (s * s)
    e = 2.0 * (snr * _norms(z) / (_norms(g) + 1e-30)) ** 2
    return x + e * g + (2.0 * e) ** 0.5 * z


def stochastic_step(
    denoise: Callable[[Any, float], Any], x, sampler: str, s: float, s_next: float, noise: Callable[[], Any]
) -> tuple[Any, int]:
    """One step of ``sampler`` ("ancestral" or "pc") from ``s`` to ``s_next``; ``noise()`` gives
    a fresh standard white noise shaped like ``x`` at each call. Returns ``(x_next, calls)``."""
    calls = 0
    if sampler == "pc":
        x = langevin_correct(denoise, x, s, noise())
        calls += 1
        keep, take, fresh = reverse_diffusion_step(s, s_next)
    else:
        keep, take, fresh = ancestral_step(s, s_next)
    x_next = keep * x + take * denoise(x, s)
    if fresh > 0:
        x_next = x_next + fresh * noise()
    return x_next, calls + 1

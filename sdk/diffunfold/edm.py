"""EDM (Karras et al. 2022) constants, preconditioning, noise schedule and the sampling loop.

Torch-free and written against the array API, so training, the torch reference sampler and
the runtime share one copy of every constant and of the loop itself (algorithm.md 3 and 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import InputError
from .sde_samplers import stochastic_step

SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2  # training noise levels: ln(sigma) ~ N(P_MEAN, P_STD^2)
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
# "native": each diffusion formulation's own ODE solver; diffunfold.formulations.solver resolves
# it to "euler" (with its step coefficients) or "heun" before the loop runs. The stochastic ones
# (diffunfold.sde_samplers): "ancestral", DDPM's (VP's and iDDPM's papers), one call a step;
# "pc", the score-SDE paper's predictor-corrector (VE's), two.
STOCHASTIC = ("ancestral", "pc")
SAMPLERS = ("euler", "heun", "native", *STOCHASTIC)


def _log(s):
    if isinstance(s, (int, float)):
        return math.log(s)
    if isinstance(s, np.ndarray) or np.isscalar(s):
        return np.log(s)
    return s.log()  # torch / CuPy arrays


def c_skip(s, sigma_data: float = SIGMA_DATA):
    return sigma_data**2 / (s**2 + sigma_data**2)


def c_out(s, sigma_data: float = SIGMA_DATA):
    return s * sigma_data / (s**2 + sigma_data**2) ** 0.5


def c_in(s, sigma_data: float = SIGMA_DATA):
    return 1.0 / (s**2 + sigma_data**2) ** 0.5


def c_noise(s):
    return _log(s) / 4.0


def loss_weight(s, sigma_data: float = SIGMA_DATA):
    """EDM's per-sample weight lambda(s) = (s^2 + sd^2) / (s sd)^2."""
    return (s**2 + sigma_data**2) / (s * sigma_data) ** 2


def training_sigmas(rng: np.random.Generator, n: int, p_mean: float = P_MEAN, p_std: float = P_STD) -> np.ndarray:
    """``n`` training noise levels with ``ln(sigma) ~ N(p_mean, p_std^2)`` (float64)."""
    return np.exp(p_mean + p_std * rng.standard_normal(n))


def schedule(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> np.ndarray:
    """EDM's noise levels for ``steps`` steps, float64, with the final ``sigma_N = 0`` appended."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise InputError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if steps == 1:
        return np.array([sigma_max, 0.0])
    i = np.arange(steps, dtype=np.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + i / (steps - 1) * (lo - hi)) ** rho
    return np.append(sig, 0.0)


def start_at(sigmas: np.ndarray, sigma: float) -> np.ndarray:
    """The tail of a schedule from its first level at or below ``sigma`` (with the final 0): where
    a solve that starts from an estimate plus noise of level ``sigma`` picks the schedule up
    (Chung et al. 2022, "come closer, diffuse faster"). At least one step is always left."""
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, (int, float, np.floating))
        or not (math.isfinite(sigma) and sigma > 0)
    ):
        raise InputError(f"the start's noise level must be a positive number, got {sigma!r}")
    levels = np.asarray(sigmas, dtype=np.float64)
    # a schedule's first level is sigma_max only to rounding ((s ** (1 / rho)) ** rho): a start
    # at sigma_max itself must not skip it
    at = levels[:-1] <= sigma * (1 + 1e-9)
    first = int(np.argmax(at)) if np.any(at) else len(levels) - 2
    return levels[first:]


def check_sampler(sampler: str) -> str:
    if sampler not in SAMPLERS:
        raise InputError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    return sampler


def nfe_of(steps: int, sampler: str) -> int:
    """Calls of the denoiser D for a run: Euler and ancestral ``N``; Heun ``2N - 1`` (the last
    step is Euler); pc ``2N`` (a corrector at every level). "native" depends on the formulation:
    :func:`diffunfold.formulations.nfe_of`."""
    if check_sampler(sampler) == "native":
        raise InputError('the "native" sampler\'s calls depend on the formulation: use formulations.nfe_of')
    return {"heun": 2 * steps - 1, "pc": 2 * steps}.get(sampler, steps)


def seeds_for(seed: int | Sequence[int] | None, batch: int) -> list[int]:
    """One seed per image: ``seed + i`` for an int, the given list, or fresh entropy for None."""
    if seed is None:
        base = int(np.random.SeedSequence().generate_state(1)[0])
        return [base + i for i in range(batch)]
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return [int(seed) + i for i in range(batch)]
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise InputError(f"got {len(seeds)} seeds for a batch of {batch}; give one per image or one int")
    return seeds


def initial_noise(
    seeds: Sequence[int], shape: Sequence[int], sigma_max: float = SIGMA_MAX, sample: int = 0
) -> np.ndarray:
    """``x_0 ~ N(0, sigma_max^2 I)``, float32 ``(len(seeds), *shape)``, one generator per image:
    an image's start does not depend on its batch, and every backend starts from the same x_0.
    Posterior sample ``j > 0`` of an image with seed ``s`` uses ``default_rng([s, j])``."""
    out = np.empty((len(seeds), *shape), dtype=np.float32)
    for i, s in enumerate(seeds):
        entropy = int(s) if sample == 0 else [int(s), int(sample)]
        out[i] = np.random.default_rng(entropy).standard_normal(tuple(shape)) * sigma_max
    return out


@dataclass(frozen=True)
class Churn:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2). Before step ``i`` with
    ``s_min <= sigma_i <= s_max``, ``x`` is lifted from ``sigma_i`` to ``sigma_hat = sigma_i (1 +
    gamma)``, ``gamma = min(s_churn / N, sqrt(2) - 1)``, by adding fresh white noise of std
    ``s_noise sqrt(sigma_hat^2 - sigma_i^2)``; the step then starts from ``sigma_hat``.
    ``s_churn = 0`` is the deterministic probability-flow ODE.

    Why a restoration wants it: the data step puts deconvolved measurement noise into ``x``
    mid-trajectory, which is not the white noise of level sigma that the denoiser removes;
    re-noising drowns it in white noise the denoiser does remove.
    """

    s_churn: float = 0.0
    s_min: float = 0.05
    s_max: float = 50.0
    s_noise: float = 1.0

    def __post_init__(self):
        vals = (self.s_churn, self.s_min, self.s_max, self.s_noise)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
            raise InputError(f"churn settings must be finite numbers, got {self}")
        if self.s_churn < 0 or self.s_min < 0 or self.s_min > self.s_max or self.s_noise <= 0:
            raise InputError(f"churn needs s_churn >= 0, 0 <= s_min <= s_max and s_noise > 0, got {self}")

    @classmethod
    def of(cls, value) -> Churn:
        """A :class:`Churn` from None (off), a number (``s_churn`` with the default range), a
        dict of its fields (as a package manifest stores it) or a :class:`Churn`."""
        if value is None:
            return cls()
        if isinstance(value, Churn):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"s_churn", "s_min", "s_max", "s_noise"}
            if unknown:
                raise InputError(f"unknown churn settings {sorted(unknown)}; use s_churn, s_min, s_max, s_noise")
            return cls(
                **{k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in value.items()}
            )
        if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
            return cls(s_churn=float(value))
        raise InputError(f"churn must be a number (EDM's S_churn), a dict or None, got {value!r}")

    @property
    def active(self) -> bool:
        return self.s_churn > 0

    def as_dict(self) -> dict:
        return asdict(self)

    def sigma_hat(self, sigma: float, steps: int) -> float:
        """Where the step from ``sigma`` starts in a schedule of ``steps`` steps."""
        if not (self.active and self.s_min <= sigma <= self.s_max):
            return float(sigma)
        return float(sigma * (1.0 + min(self.s_churn / steps, math.sqrt(2.0) - 1.0)))

    def sigma_hats(self, sigmas: Sequence[float]) -> list[float]:
        """The noise levels the denoiser is called at besides the schedule's own."""
        steps = len(sigmas) - 1
        return [self.sigma_hat(float(s), steps) for s in sigmas[:-1]]


def churn_noise(seeds: Sequence[int], shape: Sequence[int], step: int, sample: int = 0) -> np.ndarray:
    """The standard white noise that :class:`Churn` adds before ``step``: float32
    ``(len(seeds), *shape)``, one generator per (image seed, posterior sample, step), so that
    an image's result does not depend on its batch and every backend adds the same noise."""
    out = np.empty((len(seeds), *shape), dtype=np.float32)
    for i, s in enumerate(seeds):
        out[i] = np.random.default_rng([int(s), int(sample), 1 + int(step)]).standard_normal(tuple(shape))
    return out


def sample_loop(
    denoise: Callable[[Any, float], Any],
    x,
    sigmas: Sequence[float],
    sampler: str = "euler",
    on_step: Callable[[int], None] | None = None,
    churn: Churn | None = None,
    noise: Callable[[int], Any] | None = None,
    coefficients: Sequence[Sequence[float]] | None = None,
):
    """Integrate EDM's probability-flow ODE from ``x`` (at ``sigmas[0]``) down to ``sigmas[-1] = 0``.

    ``denoise(x, sigma)`` returns ``D(x; sigma)`` for the batch. Returns ``(x_N, nfe)``.
    The last step (to sigma = 0) is always Euler, which makes ``x_N = D(x_{N-1})``.
    With an active ``churn`` it is EDM's stochastic sampler instead, and ``noise(i)`` gives the
    standard white noise (shaped and typed like ``x``) added before step ``i``.
    ``coefficients``: Euler step ``i`` is ``alpha_i x + beta_i D(x)`` with these rows instead: a
    formulation's own solver (:func:`diffunfold.formulations.solver` resolves "native" to them).
    ``sampler="ancestral"`` or ``"pc"``: the papers' stochastic samplers
    (:mod:`diffunfold.sde_samplers`), with the noise of ``noise(i)`` (and ``noise(steps + i)``).
    """
    if check_sampler(sampler) == "native":
        raise InputError('resolve the "native" sampler with diffunfold.formulations.solver first')
    churn = Churn() if churn is None else churn
    _check_stochastic(sampler, churn, noise, sigmas)
    nfe, steps = 0, len(sigmas) - 1
    _check_coefficients(coefficients, steps, sampler, churn)
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        s_hat = churn.sigma_hat(s, steps)
        if s_hat > s:
            x = x + (churn.s_noise * math.sqrt(s_hat**2 - s**2)) * noise(i)
        if sampler in STOCHASTIC:  # noise streams i, then steps + i (pc's second draw)
            draws = iter((i, steps + i))
            x_next, calls = stochastic_step(denoise, x, sampler, s, s_next, lambda: noise(next(draws)))
            nfe += calls
        elif coefficients is not None:  # a formulation's own Euler step (no churn: s_hat = s)
            alpha, beta = (float(c) for c in coefficients[i])
            x_next = alpha * x + beta * denoise(x, s)
            nfe += 1
        else:
            d = (x - denoise(x, s_hat)) / s_hat
            nfe += 1
            x_next = x + (s_next - s_hat) * d
        if sampler == "heun" and s_next > 0:
            d_next = (x_next - denoise(x_next, s_next)) / s_next
            nfe += 1
            x_next = x + (s_next - s_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
        if on_step is not None:
            on_step(i)
    return x, nfe


def check_churn_fits(sampler: str, churn: Churn) -> None:
    """Refuse churn beside a sampler that brings its own noise (the loop and the export alike)."""
    if sampler in STOCHASTIC and churn.active:
        raise InputError(f"the {sampler} sampler is stochastic already: use churn with euler or heun, or churn=0")


def _check_stochastic(sampler: str, churn: Churn, noise, sigmas) -> None:
    check_churn_fits(sampler, churn)
    stochastic = sampler in STOCHASTIC or any(h > s for h, s in zip(churn.sigma_hats(sigmas), sigmas))
    if noise is None and stochastic:
        raise InputError("a stochastic sampler (ancestral, pc, or churn > 0) needs its noise source")


def _check_coefficients(coefficients, steps: int, sampler: str, churn: Churn) -> None:
    if coefficients is None:
        return
    if sampler != "euler" or churn.active:
        raise InputError("step coefficients are an Euler solver's: use sampler='euler' without churn")
    if len(coefficients) != steps:
        raise InputError(f"got {len(coefficients)} step coefficients for {steps} steps")

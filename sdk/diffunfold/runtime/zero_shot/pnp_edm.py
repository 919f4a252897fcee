"""PnP-EDM, diffusion models as plug-and-play priors by split Gibbs sampling (Wu et al., NeurIPS 2024,
"Principled probabilistic imaging using diffusion models as plug-and-play priors").

It samples ``pi(x, z) ~ p(x) exp(-||A z - y||^2 / (2 v) - ||x - z||^2 / (2 rho^2))`` by alternating:

* the likelihood step, ``z ~ pi(z | x)``: for a linear operator with Gaussian noise a Gaussian,
  drawn exactly by perturb-and-optimise: the data step (``common.prox``) with ``y`` and ``x``
  perturbed by their own noise (``y + sqrt(v) e``, ``x + rho n``) returns an exact draw (the
  paper's code draws it in closed form too, its Langevin steps being for nonlinear operators);
* the prior step, ``x ~ pi(x | z) ~ p(x) N(z; x, rho^2 I)``: the posterior of a denoising problem
  at noise level ``rho``, drawn by running the reverse diffusion from ``x_rho = z``: EDM's
  schedule (``prior_steps`` levels, Appendix C.1: 50) cut at ``rho``, with stochastic (ancestral)
  steps, as the paper's SDE mode.

``rho`` is annealed ``rho_k = max(rho0 decay^k, rho_min)`` (the paper's linear tasks: 10, 0.9,
0.3, in the [-1, 1] units of our model space). The estimate of one run is the mean of
``keep`` iterates spread evenly after ``burn_in`` (the paper's 20 after 40 of 100); ``keep=1``
returns the last iterate, one posterior sample. Network calls: each prior step costs the levels
of the schedule below ``rho_k``, so the count depends on the annealing (``calls()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import edm
from ...errors import InputError
from ...unfolding import PROX_ITERATIONS
from .common import Problem, ancestral, levels, positive, prox


@dataclass(frozen=True)
class PnPEDMSettings:
    """PnP-EDM's settings (module docstring); defaults from the paper's linear experiments."""

    # The paper's schedule held on validation photos (64 px; Gaussian blur, SR x4, 40 % inpainting at
    # sigma_y 0.05; `bench/experiments/zero_shot_tuning.py PKG --photos VAL --images 2 --methods pnp-edm`,
    # bench/results/zero-shot/tuning-image-dps-pnp.md and tuning-image-pnp-rho.md): rho_min 0.3 / 0.1
    # scored 19.89 / 19.63 dB, and 0.1 / 0.05 annealed by 0.8 18.65 / 17.16 dB.
    iterations: int = 100
    rho0: float = 10.0
    decay: float = 0.9
    rho_min: float = 0.3
    prior_steps: int = 50
    burn_in: int = 40
    keep: int = 20
    sigma_min: float = edm.SIGMA_MIN
    sigma_max: float = edm.SIGMA_MAX
    rho: float = edm.RHO
    cg_iterations: int = PROX_ITERATIONS

    def __post_init__(self):
        for name in ("iterations", "prior_steps", "keep", "cg_iterations"):
            positive(f"PnP-EDM {name}", getattr(self, name), integer=True)
        positive("PnP-EDM burn_in", self.burn_in, integer=True, zero=True)
        for name in ("rho0", "decay", "rho_min"):
            positive(f"PnP-EDM {name}", getattr(self, name))
        if self.decay > 1 or self.rho_min > self.rho0:
            raise InputError(f"PnP-EDM needs decay <= 1 and rho_min <= rho0, got {self.decay}, {self.rho_min}")

    def couplings(self) -> list[float]:
        return [max(self.rho0 * self.decay**k, self.rho_min) for k in range(self.iterations)]

    def prior_levels(self, r: float) -> np.ndarray:
        """The prior step's levels from ``r`` down to 0: ``r``, then the schedule's below it."""
        sig = levels(self.prior_steps, self.sigma_min, self.sigma_max, self.rho)
        return np.concatenate([[r], sig[sig < r]])

    def kept(self) -> list[int]:
        """The iterations averaged into the estimate: ``keep`` of them, evenly after ``burn_in``, the last included."""
        first = min(self.burn_in, self.iterations - 1)
        picks = np.linspace(first, self.iterations - 1, self.keep + 1).round().astype(int)[1:]
        return sorted(set(int(k) for k in picks) | {self.iterations - 1})

    def calls(self) -> int:
        return sum(len(self.prior_levels(r)) - 1 for r in self.couplings())


def likelihood_step(p: Problem, x, r: float, k: int, iterations: int = PROX_ITERATIONS):
    """An exact draw of ``z ~ pi(z | x)`` by perturb-and-optimise (module docstring); ``iterations``:
    CG steps where the data step has no closed form (MRI)."""
    y = p.y + p.per_image(np.sqrt(p.variance())) * p.measurement_noise(k)
    return prox(p, x + r * p.noise(k, stream=0), 1.0 / (r * r), y=y, iterations=iterations)


def prior_step(p: Problem, z, r: float, k: int, st: PnPEDMSettings):
    """A draw of ``x ~ pi(x | z)``: the reverse diffusion from ``x_r = z`` by ancestral steps;
    returns ``(x, network calls)``."""
    lv = st.prior_levels(r)
    x = z
    for j in range(len(lv) - 1):
        s, s_next = float(lv[j]), float(lv[j + 1])
        d = p.denoise(x, s)
        x = ancestral(x, d, s, s_next, p.noise(k, stream=1 + j) if s_next > 0 else None)
    return x, len(lv) - 1


def run(p: Problem, st: PnPEDMSettings):
    """PnP-EDM from white noise; returns ``(estimate in model space, network calls per image)``."""
    x = p.start(1.0)
    kept, total, nfe = set(st.kept()), None, 0
    for k, r in enumerate(st.couplings()):
        z = likelihood_step(p, x, r, k, st.cg_iterations)
        x, calls = prior_step(p, z, r, k, st)
        nfe += calls
        if k in kept:
            total = x if total is None else total + x
        p.done(k)
    return total / len(kept), nfe

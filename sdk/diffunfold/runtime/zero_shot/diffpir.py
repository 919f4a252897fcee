"""DiffPIR, denoising diffusion models for plug-and-play image restoration (Zhu et al., CVPR 2023
NTIRE workshop), on an EDM denoiser.

Half-quadratic splitting inside the reverse diffusion. At level ``s``: denoise, ``x0 = D(x; s)``;
the exact data step ``x0 <- argmin ||y - A u||^2 / (2 v) + rho_s / 2 ||x - x0||^2`` with
``rho_s = lambda / s^2`` (the paper's ``rho_t = lambda sigma_n^2 / sigma_bar_t^2`` on the data term
``||y - A u||^2``, here with the data term's ``1 / (2 v)`` written out; ``sigma_bar_t`` is EDM's
``s``); then re-noise to the next level from the effective noise ``(x - x0) / s`` mixed with fresh
noise: ``x <- x0 + s_next (sqrt(1 - zeta) eps_hat + sqrt(zeta) n)``. As in the paper's code the last
step returns the denoised estimate without a data step. The data step is the operator's exact
proximal step (closed form for images, CG for MRI: ``common.prox``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ... import edm
from ...errors import InputError
from ...unfolding import PROX_ITERATIONS
from .common import Problem, levels, positive, prox


@dataclass(frozen=True)
class DiffPIRSettings:
    """DiffPIR's settings. ``steps``: 100 (the Diff-Unfolding paper's Table 5). ``lam``: the data
    step's lambda (the paper code's default is 1.0); ``zeta``: the share of fresh noise when
    re-noising (0 deterministic, 1 all fresh; the paper's usual choice is 0.3).
    ``cg_iterations``: of the MRI data step."""

    steps: int = 100
    # Tuned on validation photos (64 px; Gaussian blur, SR x4, 40 % inpainting at sigma_y 0.05) with
    # `bench/experiments/zero_shot_tuning.py <the step-1000 image denoiser> --photos VAL --images 2 --methods
    # diffpir` (and `--grid diffpir:lam=0.03/0.1/0.3,zeta=1.0`): lam 0.3 and zeta 1.0 score 22.98 dB
    # on average against 21.40 for the paper's 1.0 and 0.3; more fresh noise was better at every
    # lam, and lam 0.1 / 1.0 lose 0.5 / 0.35 dB. bench/results/zero-shot/tuning-image-diffpir-*.md
    lam: float = 0.3
    zeta: float = 1.0
    sigma_min: float = edm.SIGMA_MIN
    sigma_max: float = edm.SIGMA_MAX
    rho: float = edm.RHO
    cg_iterations: int = PROX_ITERATIONS

    def __post_init__(self):
        positive("DiffPIR steps", self.steps, integer=True)
        positive("DiffPIR lam", self.lam)
        positive("DiffPIR zeta", self.zeta, zero=True)
        positive("DiffPIR cg_iterations", self.cg_iterations, integer=True)
        if self.zeta > 1:
            raise InputError(f"DiffPIR zeta must be in [0, 1], got {self.zeta}")

    def calls(self) -> int:
        return self.steps


def run(p: Problem, st: DiffPIRSettings):
    """DiffPIR from pure noise at ``sigma_max``; returns ``(x in model space, network calls per image)``."""
    sig = levels(st.steps, st.sigma_min, st.sigma_max, st.rho)
    x = p.start(float(sig[0]))
    for i in range(st.steps):
        s, s_next = float(sig[i]), float(sig[i + 1])
        x0 = p.denoise(x, s)
        if s_next > 0:
            x0 = prox(p, x0, st.lam / (s * s), iterations=st.cg_iterations)
            eps = (x - x0) / s
            x = x0 + s_next * (math.sqrt(1.0 - st.zeta) * eps + math.sqrt(st.zeta) * p.noise(i))
        else:
            x = x0
        p.done(i)
    return x, st.steps

"""DDS, decomposed diffusion sampling (Chung, Lee and Ye, ICLR 2024), on an EDM denoiser.

DDIM steps whose Tweedie estimate is refined on the data before the re-noising: ``d = D(x; s)``,
then ``cg_steps`` conjugate-gradient iterations started from ``d`` on the data term
(``common.krylov_refine``: the update stays in the Krylov subspace around ``d``, which keeps it on
the clean-image manifold's tangent as the paper argues), then the DDIM step to the next level with
the network's own noise estimate ``eps = (x - D(x; s)) / s`` and fresh noise of share ``eta``:
``x <- d' + sqrt(s_next^2 - c^2) eps + c n`` with ``c = eta s_next sqrt(1 - (s_next / s)^2)``
(``eta = 1`` is the ancestral step, 0 the deterministic DDIM). 50 steps as in the paper.

Made for MRI (the paper's and the Diff-Unfolding paper's Table 2 use), but nothing in it needs
k-space: it runs on every operator of the SDK, images included, and is allowed there.

Noisy data. The paper's noise-free data term, fitted by a few CG steps, fits the noise as well
(on a blur at sigma_y = 0.05 the Gaussian toy of ``tests/test_zero_shot.py`` ends 6x further from
the true posterior mean than with the proximity term). The paper's noisy variant adds a proximity
term ``||x - d||^2 / (2 gamma)`` with a constant ``gamma``; here its weight follows the noise levels,
``rho_s = lam / s^2`` on ``||y - A u||^2 / (2 v)`` as DiffPIR's (the Tweedie estimate's error is of
order ``s``), so a noise-free ``y`` (``v`` at the floor) gets the paper's pure data term and a noisy
one is trusted as much as its noise allows. ``lam = 0`` is the paper's noise-free DDS everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ... import edm
from ...errors import InputError
from .common import Problem, krylov_refine, levels, positive


@dataclass(frozen=True)
class DDSSettings:
    """DDS's settings: ``steps`` 50 and ``cg_steps`` 5 (the paper's MRI choices), ``eta`` the share
    of fresh noise (the paper's 0.85; 1 is the ancestral step); ``lam``: the proximity term's weight
    ``lam / s^2`` for noisy data (module docstring)."""

    steps: int = 50
    # eta tuned on validation photos (64 px; Gaussian blur, SR x4, 40 % inpainting at sigma_y 0.05:
    # `bench/experiments/zero_shot_tuning.py <the step-1000 image denoiser> --photos VAL --images 2 --methods
    # dds`, bench/results/zero-shot/tuning-image-diffpir-dds.md): eta 1.0 beat 0.85 and 0.5 at every
    # cg_steps and lam (+0.5 dB on average at 5 CG steps). The sweep's best, 3 CG steps, is 0.04 dB
    # above 5 at eta 1 (noise, on 2 photos; SR and inpainting converge in one step); 5 stays, the
    # paper's choice for MRI, which this image sweep cannot speak for. lam 1 and 4 tie.
    eta: float = 1.0
    cg_steps: int = 5
    lam: float = 1.0
    sigma_min: float = edm.SIGMA_MIN
    sigma_max: float = edm.SIGMA_MAX
    rho: float = edm.RHO

    def __post_init__(self):
        positive("DDS steps", self.steps, integer=True)
        positive("DDS cg_steps", self.cg_steps, integer=True)
        positive("DDS eta", self.eta, zero=True)
        positive("DDS lam", self.lam, zero=True)
        if self.eta > 1:
            raise InputError(f"DDS eta must be in [0, 1], got {self.eta}")

    def calls(self) -> int:
        return self.steps


def run(p: Problem, st: DDSSettings):
    """DDS from pure noise at ``sigma_max``; returns ``(x in model space, network calls per image)``."""
    sig = levels(st.steps, st.sigma_min, st.sigma_max, st.rho)
    x = p.start(float(sig[0]))
    for i in range(st.steps):
        s, s_next = float(sig[i]), float(sig[i + 1])
        d = p.denoise(x, s)
        eps = (x - d) / s
        d = krylov_refine(p, d, st.cg_steps, st.lam / (s * s))
        if s_next > 0:
            c = st.eta * s_next * math.sqrt(max(1.0 - (s_next / s) ** 2, 0.0))
            x = d + math.sqrt(s_next * s_next - c * c) * eps + c * p.noise(i)
        else:
            x = d
        p.done(i)
    return x, st.steps

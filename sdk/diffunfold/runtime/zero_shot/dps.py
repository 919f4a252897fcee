"""DPS, diffusion posterior sampling (Chung et al., ICLR 2023), on an EDM denoiser.

Each step draws the ancestral (DDPM) step from the Tweedie estimate ``d = D(x; s)`` and then moves
against the gradient of the residual norm through the network: ``x <- x' - zeta_s grad_x
||y - A d(x)||``, the residual measured in model units (images in [-1, 1], as the paper's). The
paper's step is ``zeta / ||y - A d||`` on the squared norm's gradient; its code uses ``zeta`` on the
norm's gradient (half that step), which is what is done here. The paper runs DDPM's VP chain:
written in EDM's variable ``x = x_vp / sqrt(alpha_bar)`` the same update has the step
``zeta sqrt((1 + s^2)(1 + s_next^2))``, which is used, so ``zeta`` means what it does in the paper.

**The vector-Jacobian product.** ``grad_x ||y - A D(x)|| = J^T g`` with ``J = dD/dx`` and ``g`` the
norm's gradient at ``d``. ONNX Runtime and OpenVINO have no autograd, so the runtime takes
``J g`` instead, by central differences ``(D(x + h g) - D(x - h g)) / 2h`` (two more network calls
per step, so 3 per step; ``difference="forward"`` reuses ``D(x)``: 2 per step, first-order
accurate). ``J g`` equals ``J^T g`` exactly when ``J`` is symmetric, which the ideal denoiser's is:
by Tweedie ``D(x; s) = x + s^2 grad log p_s(x)``, so ``J = I + s^2 Hess log p_s``, a Hessian. A
trained network only approximates that: bench/results/zero-shot/dps-vjp.md measures 4-40 %
asymmetry at s <= 5 against torch autograd, and 0.1-0.2 dB lost end to end on a blur. The step
``h`` moves ``x`` by ``fd_step`` times ``max(s, fd_floor)`` in RMS: small against the scale ``s``
on which the denoiser bends, large against float32 rounding. (An exported VJP graph would be exact
but doubles the package and ties it to each backend's support for gradient ops; for an MMSE
denoiser the symmetric Jacobian makes it unnecessary.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ... import edm
from ...errors import InputError
from .common import Problem, ancestral, data_gradient, levels, norms, positive

DIFFERENCES = ("central", "forward")


@dataclass(frozen=True)
class DPSSettings:
    """DPS's settings. ``steps``: 1000 as in the paper (Appendix C.1 of the Diff-Unfolding paper).
    ``zeta``: the step on the residual norm's gradient; the paper's FFHQ value 1.0 (its code's scale).
    ``difference``/``fd_step``/``fd_floor``: the finite-difference JVP (module docstring)."""

    steps: int = 1000
    # The paper's zeta held on validation photos (64 px; Gaussian blur, SR x4, 40 % inpainting at
    # sigma_y 0.05; `bench/experiments/zero_shot_tuning.py PKG --photos VAL --images 2 --methods dps
    # --grid dps:zeta=0.1/0.3/1.0`, bench/results/zero-shot/tuning-image-dps-pnp.md): 0.1 / 0.3 / 1.0
    # scored 18.64 / 20.90 / 20.93 dB. The step acts on the whole image's residual norm, so smaller
    # images want smaller zeta (tests/test_zero_shot.py's 8x8 toy: 0.1).
    zeta: float = 1.0
    sigma_min: float = edm.SIGMA_MIN
    sigma_max: float = edm.SIGMA_MAX
    rho: float = edm.RHO
    difference: str = "central"
    fd_step: float = 1e-2
    fd_floor: float = 0.05

    def __post_init__(self):
        positive("DPS steps", self.steps, integer=True)
        for name in ("zeta", "fd_step", "fd_floor"):
            positive(f"DPS {name}", getattr(self, name), zero=name == "zeta")
        if self.difference not in DIFFERENCES:
            raise InputError(f"DPS difference must be one of {DIFFERENCES}, got {self.difference!r}")

    def calls(self) -> int:
        """Network calls per image: one denoiser call and the JVP's per step."""
        return self.steps * (3 if self.difference == "central" else 2)


def _norm_gradient(p: Problem, d):
    """``g``: the gradient at ``d`` of the residual norm in model units (``scale ||A u - y||``)."""
    grad, r = data_gradient(p, d)
    xp = p.xp
    return grad * (p.space.scale / xp.maximum(r, xp.asarray(1e-12, dtype=r.dtype)))


def guidance(p: Problem, x, s: float, st: DPSSettings):
    """``(D(x; s), grad_x ||y - A D(x; s)||, network calls)``: an exact VJP where the problem has
    one (the torch reference), else the finite-difference JVP."""
    if p.vjp is not None:
        d, g = p.vjp(x, s, lambda d: _norm_gradient(p, d))
        return d, g, 1
    d = p.denoise(x, s)
    g = _norm_gradient(p, d)
    xp = p.xp
    rms = norms(g) / math.sqrt(math.prod(g.shape[1:]))
    h = (st.fd_step * max(s, st.fd_floor)) / xp.maximum(rms, xp.asarray(1e-12, dtype=rms.dtype))
    if st.difference == "central":
        jg = (p.denoise(x + h * g, s) - p.denoise(x - h * g, s)) / (2 * h)
        return d, jg, 3
    return d, (p.denoise(x + h * g, s) - d) / h, 2


def run(p: Problem, st: DPSSettings):
    """DPS from pure noise at ``sigma_max``; returns ``(x in model space, network calls per image)``."""
    sig = levels(st.steps, st.sigma_min, st.sigma_max, st.rho)
    x = p.start(float(sig[0]))
    nfe = 0
    for i in range(st.steps):
        s, s_next = float(sig[i]), float(sig[i + 1])
        d, g, calls = guidance(p, x, s, st)
        nfe += calls
        x_next = ancestral(x, d, s, s_next, p.noise(i) if s_next > 0 else None)
        # the paper's VP step size carried to EDM's variable (module docstring)
        x = x_next - (st.zeta * math.sqrt((1 + s * s) * (1 + s_next * s_next))) * g
        p.done(i)
    return x, nfe

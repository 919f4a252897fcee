"""One unfolding stage of ``D(x_t, s; y, A)``: the one copy used by the training model (torch,
with autograd) and by the runtime (numpy or CuPy), so the two cannot drift apart.

Two data steps, a model setting (``ModelSettings.data_step``):

``gradient`` (the paper's eq. 9)
    ``x <- x - gamma_k(s) (grad_g(x) + tau_k(s) (x - R_k(x; s)))`` with the fidelity gradient
    normalised by ``||A||^2``; stable only for ``gamma_k < 2``, and K such steps cannot reach
    consistency with an ill-conditioned ``A``.
``proximal`` (half-quadratic splitting)
    ``z = x - tau_k(s) (x - R_k(x; s))``, then ``x <- prox(z)``: the exact minimiser of
    ``||A u - y||^2 / (2 L) + w / 2 ||u - z||^2`` (``operator.prox``), stable for any weight.
    With ``noise_aware`` the weight is the MAP one for Gaussian noise,
    ``w = (sigma_y^2 / L + floor^2) / (gamma_k(s) (s / scale)^2)``: the measurement's noise
    variance per unit of ``||A||^2`` over the variance of ``z``'s error, which ``gamma_k(s)``
    learns as a multiple of the diffusion noise ``s`` in user units. A noise-free ``y`` is then
    matched to within ``floor``, a noisy one is trusted as much as its noise allows. Without
    ``noise_aware``, ``w = 1 / gamma_k(s)``: the implicit step of size ``gamma_k``.
"""

from __future__ import annotations

from .errors import InputError

DATA_STEPS = ("gradient", "proximal")
# sigma_y below this counts as this: a float32 y carries ~1e-7 relative rounding, and the step
# must not divide by a zero variance. 8-bit images carry ~1e-3 of quantisation noise, which
# the estimate (diffunfold.noise) or the user's noise_std then gives.
NOISE_FLOOR = 1e-4
# CG steps of a proximal step without a closed form (MRI). On the bundled MRI model, 8 -> 16 -> 30
# took held-out phantoms (noise-free, Gaussian 1-D 4x / uniform 1-D 8x / Gaussian 2-D 8x) from
# 42.8 / 28.6 / 37.2 to 43.6 / 31.1 / 38.1 to 44.2 / 32.4 / 38.6 dB, the residual ||A x - y|| / ||y||
# from 3e-4 / 1e-3 / 3e-4 to 0.9e-4 / 1.6e-4 / 0.7e-4, at about twice the time per solve on a CPU.
PROX_ITERATIONS = 30


def check_data_step(data_step: str) -> str:
    if data_step not in DATA_STEPS:
        raise InputError(f"data_step must be one of {DATA_STEPS}, got {data_step!r}")
    return data_step


def prox_weight(gamma_k, sigma, noise_var, lipschitz: float, scale: float, noise_floor: float):
    """The proximal step's weight ``w`` (see the module docstring); ``noise_var`` None: not
    noise-aware. Scalars or per-image arrays ``(B,)`` alike."""
    if noise_var is None:
        return 1.0 / gamma_k
    return (noise_var / lipschitz + noise_floor**2) / (gamma_k * (sigma / scale) ** 2)


def stage(
    x,
    r,
    y,
    operator,
    space,
    tau_k,
    gamma_k,
    data_step: str,
    sigma=None,
    noise_var=None,
    noise_floor: float = NOISE_FLOOR,
    prox_iterations: int = PROX_ITERATIONS,
):
    """One stage in model space: ``x`` the current iterate, ``r = R_k(x; s)`` the regulariser's
    output. ``tau_k``, ``gamma_k``: floats, or per-image arrays broadcastable against ``x``
    (``tau_k``) and shaped ``(B,)`` (``gamma_k``, proximal). ``sigma`` and ``noise_var`` (the
    measurement noise variance ``sigma_y^2``) are needed by the noise-aware proximal step;
    ``prox_iterations``: CG steps where the operator has no closed form (MRI)."""
    if data_step == "gradient":
        return x - gamma_k * (space.fidelity_grad(operator, x, y) + tau_k * (x - r))
    z = x - tau_k * (x - r)
    w = prox_weight(gamma_k, sigma, noise_var, operator.lipschitz, space.scale, noise_floor)
    return space.to_model(operator.prox(space.to_user(z), y, w, prox_iterations))

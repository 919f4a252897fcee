"""The diffusion formulations VP, VE, iDDPM and EDM as one setting of the unfolded model.

EDM's paper (Karras et al. 2022, Table 1) writes each of them as a denoiser
``D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x; c_noise(s))`` trained on noise levels ``s`` of
its own distribution with a loss weight ``lambda(s)``, and sampled at its own levels. This module
holds those four parts per formulation (the model setting ``model.formulation``; packages and
checkpoints without it are EDM). Like :mod:`diffunfold.edm` it is written against the array API
(numpy, torch, CuPy) and imports no torch, so the runtime shares it.

Where this departs from each paper (all formulations use the SDK's one U-Net and sampler):

* **Sampler.** By default every formulation runs the one Euler (or Heun) loop of
  :func:`diffunfold.edm.sample_loop` on the ODE ``dx/ds = (x - D(x; s)) / s``, i.e. EDM's
  ``sigma(t) = t``, ``s(t) = 1``; only the levels differ. ``sampler="native"`` runs each
  formulation's own deterministic sampler of EDM's Table 1 instead (:func:`solver`): Euler in
  VP's ``t`` with its scaling ``s(t) = 1/sqrt(sigma^2 + 1)``, Euler in VE's ``t = sigma^2``,
  Euler in iDDPM's ``sigma`` (DDIM) and EDM's Heun. The papers' stochastic samplers (DDPM's
  ancestral step for VP and iDDPM, VE's predictor-corrector) live in
  :mod:`diffunfold.sde_samplers`; iDDPM's learned variances are not built (its ancestral step
  uses the posterior variance, as EDM's Table 1 samples iDDPM deterministically).
* **c_noise.** VP's ``(M - 1) t`` and iDDPM's ``M - 1 - j`` are divided by ``M - 1``: the U-Net
  embeds ``c_noise`` with Fourier features meant for inputs of order one (EDM's ``ln(s) / 4``),
  where the papers' networks used positional embeddings of the unscaled value. A constant factor
  in ``c_noise`` is a choice of embedding, not of formulation. VE's ``ln(s / 2)`` and EDM's are
  Table 1's.
* **The last step** always goes to ``s = 0`` (``x_N = D(x_{N-1})``), as EDM's schedule does.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from . import edm
from .errors import InputError

NAMES = ("edm", "vp", "ve", "iddpm")
DEFAULT = "edm"
NATIVE = "native"  # the sampler name for a formulation's own ODE solver (EDM's Table 1)

# VP (Song et al. 2021), Table 1: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)
VP_BETA_D, VP_BETA_MIN, VP_EPS_S, VP_EPS_T, VP_M = 19.9, 0.1, 1e-3, 1e-5, 1000
# VE (Song et al. 2021)
VE_SIGMA_MIN, VE_SIGMA_MAX = 0.02, 100.0
# iDDPM (Nichol & Dhariwal 2021): M discrete levels from a cosine alpha-bar
IDDPM_M, IDDPM_C1, IDDPM_C2, IDDPM_J0 = 1000, 0.001, 0.008, 8


def _log(s):
    return edm._log(s)


def _ones(s):
    return s * 0 + 1.0  # shaped and typed like s (numpy, torch, CuPy, float)


def _check_steps(steps, sigma_min: float, sigma_max: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise InputError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")


# -- VP's sigma(t) and its inverse -------------------------------------------------------------
def vp_sigma(t, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN):
    """``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` (torch, or float64 numpy)."""
    if hasattr(t, "expm1"):
        return (0.5 * beta_d * t**2 + beta_min * t).expm1() ** 0.5
    t = np.asarray(t, dtype=np.float64)
    return np.sqrt(np.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_t(s, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN):
    """The inverse of :func:`vp_sigma`: the positive root of ``beta_d t^2 / 2 + beta_min t =
    ln(1 + s^2)``, written without the cancellation of ``sqrt(b^2 + 2 a L) - b``."""
    lg = (s**2).log1p() if hasattr(s, "log1p") else np.log1p(np.asarray(s, dtype=np.float64) ** 2)
    return 2 * lg / ((beta_min**2 + 2 * beta_d * lg) ** 0.5 + beta_min)


# -- iDDPM's discrete levels -------------------------------------------------------------------
@lru_cache(maxsize=4)
def iddpm_levels(m: int = IDDPM_M, c1: float = IDDPM_C1, c2: float = IDDPM_C2) -> np.ndarray:
    """``u_0 > u_1 > ... > u_{M-1}`` (float64), from ``u_M = 0`` and
    ``u_{j-1} = sqrt((u_j^2 + 1) / max(abar_{j-1} / abar_j, C1) - 1)``,
    ``abar_j = sin^2(pi j / (2 M (C2 + 1)))``."""
    abar = np.sin(0.5 * math.pi * np.arange(m + 1) / (m * (c2 + 1))) ** 2
    u = np.zeros(m + 1)
    for j in range(m, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(abar[j - 1] / abar[j], c1) - 1)
    levels = u[:m]
    levels.setflags(write=False)
    return levels


def _nearest_level(s):
    """``j`` with ``u_j`` nearest to ``s`` (per element; numpy or torch)."""
    u = iddpm_levels()
    table = s.new_tensor(u) if hasattr(s, "new_tensor") else np.asarray(u, dtype=np.asarray(s).dtype)
    return abs(s[..., None] - table).argmin(-1)


# -- the four formulations ---------------------------------------------------------------------
class Formulation:
    """One row of EDM's Table 1. ``sigma_data`` is the data std EDM's preconditioning assumes;
    VP and iDDPM assume unit-variance data and VE none, so they ignore it (Table 1)."""

    name = ""
    sigma_min = edm.SIGMA_MIN  # the default sampling schedule's range
    sigma_max = edm.SIGMA_MAX

    def c_skip(self, s, sigma_data: float = edm.SIGMA_DATA):
        return _ones(s)

    def c_out(self, s, sigma_data: float = edm.SIGMA_DATA):
        return -s  # VP, iDDPM: F predicts the noise (D = x - s eps)

    def c_in(self, s, sigma_data: float = edm.SIGMA_DATA):
        return 1.0 / (s**2 + 1.0) ** 0.5

    def c_noise(self, s):
        raise NotImplementedError

    def loss_weight(self, s, sigma_data: float = edm.SIGMA_DATA):
        return 1.0 / s**2  # VP, VE, iDDPM: lambda c_out^2 = 1, the network's loss unweighted

    def training_sigmas(self, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError

    def schedule(self, steps: int, sigma_min: float | None = None, sigma_max: float | None = None, rho=None):
        """``steps`` noise levels from ``sigma_max`` down to ``sigma_min`` (defaults: the
        formulation's) with the final 0 appended, float64. ``rho`` is EDM's alone."""
        raise NotImplementedError

    @property
    def training_range(self) -> tuple[float, float]:
        """The noise levels the weight generators tau, gamma are evaluated on (clamped to)."""
        raise NotImplementedError

    # -- the formulation's own ODE solver (Table 1): sigma(t), s(t) and the solver's order ------
    native_sampler = "euler"
    own_time = False  # True where its t or s(t) makes Euler in t differ from Euler in sigma

    def time(self, s: np.ndarray) -> np.ndarray:
        """``t`` at the levels ``s`` (float64): EDM's and iDDPM's ``sigma(t) = t``."""
        return s

    def rates(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(sigma'(t) / sigma(t), s'(t) / s(t))`` at the levels ``s > 0``."""
        return 1.0 / s, 0.0 * s

    def scale(self, s: np.ndarray) -> np.ndarray:
        """The scaling ``s(t)`` at the levels ``s``: 1 but for VP."""
        return np.ones_like(s)

    def euler_in_t(self, sigmas) -> np.ndarray:
        """``(steps, 2)`` float64 rows ``(alpha_i, beta_i)``: one Euler step in this formulation's
        ``t`` from level ``sigmas[i]`` to ``sigmas[i + 1]`` is ``x_{i+1} = alpha_i x_i + beta_i
        D(x_i; sigmas[i])`` for the unscaled ``x = x_scaled / s(t)``. From EDM's Algorithm 1,
        ``dx_scaled/dt = (sigma'/sigma + s'/s) x_scaled - (sigma'/sigma) s D(x_scaled / s)``; with
        ``sigma(t) = t`` it is the plain Euler step, ``alpha = sigmas[i+1] / sigmas[i]``."""
        sig = np.asarray(sigmas, dtype=np.float64)
        if sig.ndim != 1 or sig.size < 2 or not np.all(sig[:-1] > 0) or not np.all(np.diff(sig) < 0):
            raise InputError("the levels must fall strictly from a positive first level, e.g. to a final 0")
        t, scale = self.time(sig), self.scale(sig)
        a, b = self.rates(sig[:-1])
        dt, ratio = np.diff(t), scale[:-1] / scale[1:]
        return np.stack([ratio * (1.0 + dt * (a + b)), -ratio * dt * a], axis=1)


class EDM(Formulation):
    name = "edm"
    native_sampler = "heun"  # Table 1: EDM's 2nd-order Heun; the others' are Euler

    def c_skip(self, s, sigma_data: float = edm.SIGMA_DATA):
        return edm.c_skip(s, sigma_data)

    def c_out(self, s, sigma_data: float = edm.SIGMA_DATA):
        return edm.c_out(s, sigma_data)

    def c_in(self, s, sigma_data: float = edm.SIGMA_DATA):
        return edm.c_in(s, sigma_data)

    def c_noise(self, s):
        return edm.c_noise(s)

    def loss_weight(self, s, sigma_data: float = edm.SIGMA_DATA):
        return edm.loss_weight(s, sigma_data)

    def training_sigmas(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return edm.training_sigmas(rng, n)

    def schedule(self, steps: int, sigma_min=None, sigma_max=None, rho=None):
        return edm.schedule(
            steps,
            self.sigma_min if sigma_min is None else sigma_min,
            self.sigma_max if sigma_max is None else sigma_max,
            edm.RHO if rho is None else rho,
        )

    @property
    def training_range(self) -> tuple[float, float]:
        # +3 std of ln(s) ~ N(P_MEAN, P_STD^2) above; the sampler's sigma_min below
        return (edm.SIGMA_MIN, math.exp(edm.P_MEAN + 3 * edm.P_STD))


class VP(Formulation):
    name = "vp"
    own_time = True
    sigma_min = float(vp_sigma(VP_EPS_S))
    sigma_max = float(vp_sigma(1.0))

    def c_noise(self, s):
        return vp_t(s)  # Table 1: (M - 1) t; see the module docstring for the factor

    def training_sigmas(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return vp_sigma(rng.uniform(VP_EPS_T, 1.0, n))

    def schedule(self, steps: int, sigma_min=None, sigma_max=None, rho=None):
        lo = self.sigma_min if sigma_min is None else sigma_min
        hi = self.sigma_max if sigma_max is None else sigma_max
        _check_steps(steps, lo, hi)
        t_hi, t_lo = float(vp_t(hi)), float(vp_t(lo))  # uniform in t between the two levels
        sig = vp_sigma(t_hi + np.arange(steps) / max(steps - 1, 1) * (t_lo - t_hi))
        sig[0] = hi  # the ends exactly as asked (the round trip is exact to 1e-15 only)
        if steps > 1:
            sig[-1] = lo
        return np.append(sig, 0.0)

    @property
    def training_range(self) -> tuple[float, float]:
        return (self.sigma_min, self.sigma_max)

    def time(self, s):
        return vp_t(s)

    def rates(self, s):
        # sigma^2 + 1 = exp(g(t)), g = beta_d t^2 / 2 + beta_min t; s(t) = exp(-g / 2)
        g_dot = VP_BETA_D * vp_t(s) + VP_BETA_MIN
        return 0.5 * g_dot * (1.0 + s**2) / s**2, -0.5 * g_dot

    def scale(self, s):
        return 1.0 / np.sqrt(1.0 + s**2)


class VE(Formulation):
    name = "ve"
    own_time = True
    sigma_min, sigma_max = VE_SIGMA_MIN, VE_SIGMA_MAX

    def c_out(self, s, sigma_data: float = edm.SIGMA_DATA):
        return s

    def c_in(self, s, sigma_data: float = edm.SIGMA_DATA):
        return _ones(s)

    def c_noise(self, s):
        return _log(0.5 * s)

    def training_sigmas(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.exp(rng.uniform(math.log(VE_SIGMA_MIN), math.log(VE_SIGMA_MAX), n))

    def schedule(self, steps: int, sigma_min=None, sigma_max=None, rho=None):
        lo = self.sigma_min if sigma_min is None else sigma_min
        hi = self.sigma_max if sigma_max is None else sigma_max
        _check_steps(steps, lo, hi)
        # Table 1: t_i = s_max^2 (s_min^2 / s_max^2)^(i / (N - 1)), sigma = sqrt(t): geometric
        return np.append(hi * (lo / hi) ** (np.arange(steps) / max(steps - 1, 1)), 0.0)

    @property
    def training_range(self) -> tuple[float, float]:
        return (VE_SIGMA_MIN, VE_SIGMA_MAX)

    def time(self, s):
        return s**2  # Table 1: sigma(t) = sqrt(t)

    def rates(self, s):
        return 0.5 / s**2, 0.0 * s


class IDDPM(Formulation):
    name = "iddpm"
    sigma_min = float(iddpm_levels()[-1])
    sigma_max = float(iddpm_levels()[IDDPM_J0])

    def c_noise(self, s):
        return (IDDPM_M - 1 - _nearest_level(s)) / (IDDPM_M - 1)  # Table 1: M - 1 - j

    def training_sigmas(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return iddpm_levels()[rng.integers(0, IDDPM_M, n)]

    def schedule(self, steps: int, sigma_min=None, sigma_max=None, rho=None):
        lo = self.sigma_min if sigma_min is None else sigma_min
        hi = self.sigma_max if sigma_max is None else sigma_max
        _check_steps(steps, lo, hi)
        u = iddpm_levels()
        inside = np.flatnonzero((u <= hi * (1 + 1e-9)) & (u >= lo * (1 - 1e-9)))
        if inside.size == 0:
            raise InputError(f"no iDDPM level lies in [{lo}, {hi}]; widen sigma_min..sigma_max")
        j0, j1 = int(inside[0]), int(inside[-1])
        # Table 1: t_i = u_floor(j0 + (M - 1 - j0) / (N - 1) i + 1/2), here between j0 and j1
        j = np.floor(j0 + (j1 - j0) / max(steps - 1, 1) * np.arange(steps) + 0.5).astype(int)
        return np.append(u[j], 0.0)

    @property
    def training_range(self) -> tuple[float, float]:
        u = iddpm_levels()
        return (float(u[-1]), float(u[0]))


_ALL = {f.name: f for f in (EDM(), VP(), VE(), IDDPM())}


def get(name: str | None) -> Formulation:
    """The formulation called ``name`` (None: EDM, what packages without the setting are)."""
    if name is None:
        return _ALL[DEFAULT]
    if name not in _ALL:
        raise InputError(f"unknown diffusion formulation {name!r}; use one of {list(NAMES)}")
    return _ALL[name]


def check(name: str) -> str:
    return get(name).name


def schedule(name: str | None, steps: int, sigma_min=None, sigma_max=None, rho=None) -> np.ndarray:
    """The sampling levels of formulation ``name`` (see :meth:`Formulation.schedule`)."""
    return get(name).schedule(steps, sigma_min, sigma_max, rho)


def solver(name: str | None, sampler: str, sigmas) -> tuple[str, np.ndarray | None]:
    """What :func:`diffunfold.edm.sample_loop` runs for ``sampler`` on the levels ``sigmas``:
    ``(sampler, None)`` for "euler" and "heun"; for "native" the formulation's own, either
    ``("heun", None)`` (EDM) or ``("euler", coefficients)`` (:meth:`Formulation.euler_in_t`;
    None where they are the plain Euler step's, as for iDDPM)."""
    if sampler != NATIVE:
        return edm.check_sampler(sampler), None
    f = get(name)
    if f.native_sampler == "heun":
        return "heun", None
    return "euler", (f.euler_in_t(sigmas) if f.own_time else None)


def nfe_of(name: str | None, steps: int, sampler: str) -> int:
    """Denoiser calls of ``steps`` steps of ``sampler`` ("native": the formulation's own)."""
    return edm.nfe_of(steps, get(name).native_sampler if sampler == NATIVE else sampler)


def training_sigmas(name: str | None, rng: np.random.Generator, n: int) -> np.ndarray:
    return get(name).training_sigmas(rng, n)


def manifest_schedule(name: str | None) -> dict:
    """A package manifest's full-schedule entries for formulation ``name``: its levels' range,
    EDM's rho, and the formulation the runtime builds the levels with."""
    f = get(name)
    return {"formulation": f.name, "sigma_min": f.sigma_min, "sigma_max": f.sigma_max, "rho": edm.RHO}

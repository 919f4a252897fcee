"""What the zero-shot solvers share: the problem they solve (:class:`Problem`), their noise, and the
data-term pieces in model space (residual, gradient, the exact proximal step, EDM's ancestral step).

Everything here is written against the array API: the runtime runs it on numpy or CuPy arrays with a
backend's denoiser, the torch reference (``diffunfold.training.zero_shot_reference``) on torch
tensors with the training side's network. Noise is drawn on the host with numpy from the image
seeds, so every backend sees the same noise and an image's result does not depend on its batch.

Units. The diffusion runs in model space (``x_m = scale x + offset``; ``diffunfold.spaces``) with
EDM's parameterisation ``x_s = x + s n``. The measurement ``y = A x_user + e`` stays in user space.
The likelihood is ``||A u - y||^2 / (2 v)`` with ``v`` the noise variance per real component:
``sigma_y^2`` for images, ``sigma_y^2 / 2`` for MRI's circular complex noise (``measure`` puts
``sigma_y^2 / 2`` into each of the real and imaginary parts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from ... import edm
from ..._array import like, namespace, real_dtype_for
from ...errors import InputError
from ...physics.base import LinearOperator
from ...physics.cg import conjugate_gradient
from ...spaces import DataSpace
from ...unfolding import NOISE_FLOOR

# A VJP of the denoiser: ``vjp(x, s, cotangent) -> (D(x; s), J^T cotangent(D(x; s)))``, where
# ``cotangent`` maps the denoised image to the vector pulled back (the torch reference's autograd).
Vjp = Callable[[Any, float, Callable[[Any], Any]], tuple[Any, Any]]


@dataclass
class Problem:
    """One posterior sample's problem: the denoiser ``D(x; s)`` (model space, counted by whoever
    built it), the operator and measurement ``y`` (user space), sigma_y per image, the data space,
    the image seeds and which posterior ``sample`` this is; ``on_step(i)`` after each outer step;
    ``vjp`` an exact vector-Jacobian product of the denoiser where one exists (None: DPS uses finite
    differences)."""

    denoise: Callable[[Any, float], Any]
    operator: LinearOperator
    y: Any
    noise_std: np.ndarray
    space: DataSpace
    seeds: Sequence[int]
    sample: int = 0
    on_step: Callable[[int], None] | None = None
    vjp: Vjp | None = None

    @property
    def xp(self):
        return namespace(self.y)

    @property
    def shape(self) -> tuple[int, ...]:
        """One image's model-space shape ``(C', H, W)``."""
        return (self.space.model_channels, *self.operator.image_shape)

    def variance(self) -> np.ndarray:
        """The likelihood's noise variance per real component, per image ``(B,)`` (float64, host):
        ``sigma_y^2`` (halved for complex data), at least ``NOISE_FLOOR^2`` so that a noise-free
        ``y`` is trusted almost exactly instead of divided by zero."""
        v = np.maximum(np.asarray(self.noise_std, dtype=np.float64), NOISE_FLOOR) ** 2
        return v * (0.5 if self.space.complex else 1.0) * np.ones(len(self.seeds))

    def start(self, sigma: float):
        """``N(0, sigma^2 I)`` in model space, as the unfolding solver starts (``edm.initial_noise``)."""
        x = edm.initial_noise(self.seeds, self.shape, sigma, sample=self.sample)
        return like(x, self.y, dtype=real_dtype_for(self.xp, self.y.dtype))

    def noise(self, step: int, stream: int = 0):
        """Standard white noise in model space for (image seed, sample, ``step``, ``stream``)."""
        out = np.empty((len(self.seeds), *self.shape), dtype=np.float32)
        for i, s in enumerate(self.seeds):
            rng = np.random.default_rng([int(s), int(self.sample), 1 + int(step), 101 + int(stream)])
            out[i] = rng.standard_normal(self.shape)
        return like(out, self.y, dtype=real_dtype_for(self.xp, self.y.dtype))

    def measurement_noise(self, step: int):
        """Noise shaped like ``y`` of unit variance per real component (complex for MRI), per image
        seed, sample and ``step``."""
        shape = tuple(int(n) for n in self.y.shape[1:])
        out = np.empty((len(self.seeds), *shape), dtype=np.complex64 if self.space.complex else np.float32)
        for i, s in enumerate(self.seeds):
            rng = np.random.default_rng([int(s), int(self.sample), 1 + int(step), 99])
            out[i] = rng.standard_normal(shape)
            if self.space.complex:
                out[i] += 1j * rng.standard_normal(shape)
        return like(out, self.y, dtype=self.y.dtype)

    def per_image(self, values) -> Any:
        """Host values per image ``(B,)`` as a real ``(B, 1, 1, 1)`` array next to ``y``."""
        v = np.asarray(values, dtype=np.float64).reshape(-1, 1, 1, 1)
        return like(v, self.y, dtype=real_dtype_for(self.xp, self.y.dtype))

    def done(self, i: int) -> None:
        if self.on_step is not None:
            self.on_step(i)


def residual(p: Problem, x_model):
    """``A u - y`` at ``u = to_user(x_model)``."""
    return p.operator.A(p.space.to_user(x_model)) - p.y


def norms(a):
    """Per-image Euclidean norms ``(B, 1, 1, 1)`` (complex entries by their modulus)."""
    xp = namespace(a)
    sq = xp.real(a) ** 2 + xp.imag(a) ** 2 if a.dtype in (xp.complex64, xp.complex128) else a * a
    return xp.sqrt(xp.sum(sq, axis=tuple(range(1, a.ndim)), keepdims=True))


def data_gradient(p: Problem, x_model):
    """The gradient in model space of ``||A u - y||^2 / 2`` (user units), and the residual norms."""
    u = p.space.to_user(x_model)
    r = p.operator.A(u) - p.y
    return p.space.grad_to_model(p.operator.AT(r)), norms(r)


def prox(p: Problem, z, rho, y=None, iterations: int = 30):
    """The exact data step in model space: ``argmin_x ||A u(x) - y||^2 / (2 v) + rho / 2 ||x - z||^2``
    (``rho``: a number or per image ``(B,)``). It is the operator's own proximal step
    (``LinearOperator.prox``, closed form for images, ``iterations`` CG steps for MRI) after
    rescaling: in user units the objective times ``v / L`` is ``||A u - y||^2 / (2 L) + w / 2
    ||u - u_z||^2`` with ``w = rho scale^2 v / L``."""
    rho = np.broadcast_to(np.asarray(rho, dtype=np.float64), (len(p.seeds),))
    w = rho * p.space.scale**2 * p.variance() / p.operator.lipschitz
    u = p.operator.prox(p.space.to_user(z), p.y if y is None else y, np.ascontiguousarray(w), iterations)
    return p.space.to_model(u)


def krylov_refine(p: Problem, x_model, steps: int, rho=0.0):
    """``steps`` CG iterations from ``x_model`` on the data step's objective ``||A u(x) - y||^2 / (2 v)
    + rho / 2 ||x - x_model||^2`` (model space, ``rho`` a number or per image ``(B,)``; 0: the data
    term alone): DDS's data step, which keeps the update in the Krylov subspace around the denoised
    estimate. Solved in user units as ``prox`` is (``w = rho scale^2 v / L``)."""
    op, u0 = p.operator, p.space.to_user(x_model)
    lip = op.lipschitz
    rho = np.broadcast_to(np.asarray(rho, dtype=np.float64), (len(p.seeds),))
    w = p.per_image(rho * p.space.scale**2 * p.variance() / lip)

    def normal(u):
        return op.normal(u) / lip + w * u

    rhs = op.AT(p.y) / lip + w * u0
    return p.space.to_model(conjugate_gradient(normal, rhs, u0, steps))


def ancestral(x, d, s: float, s_next: float, noise):
    """One ancestral (DDPM) step from level ``s`` to ``s_next`` with the Tweedie estimate ``d``: a
    draw of ``x_{s_next}`` given ``x_s = x`` were ``d`` the clean image,
    ``d + (s_next / s)^2 (x - d) + s_next sqrt(1 - (s_next / s)^2) n``; ``d`` itself at 0."""
    if s_next <= 0:
        return d
    r2 = (s_next / s) ** 2
    return d + r2 * (x - d) + (s_next * math.sqrt(max(1.0 - r2, 0.0))) * noise


def levels(steps: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """EDM's schedule (``edm.schedule``) with the final 0."""
    return edm.schedule(steps, sigma_min, sigma_max, rho)


def with_options(settings, steps: int | None, options: dict | None, step_field: str):
    """``settings`` with ``steps`` (the method's step count: ``step_field``) and ``options``
    replaced; unknown option names are refused with the known ones."""
    known = {f.name for f in fields(settings)}
    options = dict(options or {})
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown settings {unknown} for {type(settings).__name__}; known: {sorted(known)}")
    if steps is not None:
        options[step_field] = steps
    return replace(settings, **options)


def positive(name: str, value, integer: bool = False, zero: bool = False) -> None:
    """Refuse a setting that is not a (whole) positive number (or zero, where ``zero``)."""
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if not ok or isinstance(value, bool) or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        what = "a positive whole number" if integer else ("a number >= 0" if zero else "a positive number")
        raise InputError(f"{name} must be {what}, got {value!r}")

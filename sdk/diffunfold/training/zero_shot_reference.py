"""The torch reference of the zero-shot solvers (``diffunfold.runtime.zero_shot``): the same
algorithms, written once against the array API, run on torch tensors with the training side's
network as the denoiser, and for DPS with torch autograd's exact vector-Jacobian product through
the network instead of the runtime's finite-difference JVP. The parity tests hold the runtime (ONNX
Runtime, numpy) to it; ``vjp="central"``/``"forward"`` runs the runtime's own DPS gradient here,
which separates the backend's error from the finite difference's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import edm
from .._array import check_finite, to_numpy
from ..errors import InputError
from ..noise import resolve_noise_std
from ..physics.base import LinearOperator
from ..runtime.zero_shot import METHODS, route, settings_for
from ..runtime.zero_shot.common import Problem
from .model import DiffUnfolding
from .sampler import Restoration

VJPS = ("autograd", "central", "forward")


def _denoiser(model: DiffUnfolding):
    """``D(x; s)`` of a denoiser model (its one regulariser), and its exact VJP by autograd."""

    def levels(x, s: float):
        return torch.full((int(x.shape[0]),), float(s), dtype=x.dtype, device=x.device)

    @torch.no_grad()
    def denoise(x, s: float):
        return model.regularize(x, levels(x, s), 0)

    def vjp(x, s: float, cotangent):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            d = model.regularize(xg, levels(x, s), 0)
            v = cotangent(d.detach())
            (g,) = torch.autograd.grad(d, xg, grad_outputs=v)
        return d.detach(), g.detach()

    return denoise, vjp


def restore(
    model: DiffUnfolding,
    y: torch.Tensor,
    operator: LinearOperator,
    method: str,
    seed: int | Sequence[int] | None = 0,
    samples: int = 1,
    noise_std=None,
    steps: int | None = None,
    options: dict | None = None,
    vjp: str = "autograd",
) -> Restoration:
    """Restore ``y`` (a torch tensor) with zero-shot ``method`` on a denoiser ``model``, as
    ``Solver.solve(..., method=method)`` does: the same seeds (image i: ``seed + i``; sample j's noise
    from ``(seed, j)``), settings (``steps``, ``options``), sigma_y resolution, clipping and
    mean/std over ``samples``. ``vjp``: DPS's gradient through the network (``"autograd"``, exact;
    ``"central"``/``"forward"``, the runtime's finite differences)."""
    method = route(method, model.settings.kind)
    if method is None:
        raise InputError("the zero-shot reference needs a denoiser model and a zero-shot method")
    if vjp not in VJPS:
        raise InputError(f"vjp must be one of {VJPS}, got {vjp!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"samples must be a positive integer, got {samples!r}")
    options = dict(options or {})
    if method == "dps" and vjp != "autograd":
        options["difference"] = vjp
    settings = settings_for(method, steps, options)
    operator.check_measurement(y)
    check_finite(y, "the measurement y")
    batch = int(y.shape[0])
    seeds = edm.seeds_for(seed, batch)
    std = resolve_noise_std(noise_std, operator, to_numpy(y), batch)
    denoise, exact = _denoiser(model)
    draws, nfe = [], 0
    for j in range(samples):
        p = Problem(denoise, operator, y, std, model.space, seeds, j, vjp=exact if vjp == "autograd" else None)
        x, nfe = METHODS[method].run(p, settings)
        draws.append(model.space.clip(model.space.to_user(x)))
    if samples == 1:
        return Restoration(images=draws[0], nfe=nfe, seeds=seeds)
    stack = torch.stack(draws)
    spread = stack.abs() if model.space.complex else stack
    return Restoration(images=stack.mean(0), nfe=nfe, seeds=seeds, std=spread.std(0), samples=samples)


__all__ = ["VJPS", "restore"]

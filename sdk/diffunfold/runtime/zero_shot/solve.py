"""``Solver.solve(..., method=NAME)`` for a denoiser package: the zero-shot solver run per posterior
sample, with the unfolding solve's seeds, noise-level resolution, progress, timing and
:class:`Solution` (the mean and std over ``samples``, clipped to the images' data range)."""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from ... import edm
from ..._array import to_numpy
from ...errors import InputError
from ...noise import resolve_noise_std
from ..inputs import check_samples, prepare_measurement
from ..solution import Solution, Timing, progress_hook
from . import METHODS, settings_for
from .common import Problem

# ``Solver.solve``'s options that only the unfolding sampler takes, and their "not given" values.
UNFOLDING_ONLY = dict.fromkeys(
    (
        "sampler",
        "sigma_min",
        "sigma_max",
        "rho",
        "churn",
        "ensemble",
        "contrast",
        "init",
        "init_sigma",
        "stages",
        "schedule",
    )
)
UNFOLDING_ONLY["init_noise"] = 0.0


def refuse_unfolding_options(method: str, given: dict) -> None:
    """An option of the unfolding sampler given with a zero-shot method is an error, not ignored."""
    used = sorted(k for k, unset in UNFOLDING_ONLY.items() if given.get(k, unset) != unset)
    if used:
        raise InputError(
            f"{', '.join(used)} {'is' if len(used) == 1 else 'are'} for the unfolding sampler, not for {method}; "
            "set the method's own settings with method_options={...} (see diffunfold.runtime.zero_shot)"
        )


def solve(solver, method: str, args: dict) -> Solution:
    """Restore ``args["y"]`` with zero-shot ``method`` on ``solver``'s denoiser; ``args``: the
    arguments of ``Solver.solve`` by name (those of the unfolding sampler must be unset)."""
    refuse_unfolding_options(method, args)
    y, operator, steps, options = args["y"], args["operator"], args["steps"], args["method_options"]
    seed, samples, noise_std, progress, tile = (args[k] for k in ("seed", "samples", "noise_std", "progress", "tile"))
    settings = settings_for(method, steps, options)
    check_samples(samples)
    y_dev, return_numpy = prepare_measurement(y, operator, solver.space, solver.xp)
    batch = int(y_dev.shape[0])
    seeds = edm.seeds_for(seed, batch)
    std = resolve_noise_std(noise_std, operator, y, batch)
    timing = Timing()
    plan = solver.plan(operator.image_shape, batch, tile)

    def denoise(x, s):
        return solver._regularize(x, s, 0, timing, plan)

    outer = settings.iterations if method == "pnp-edm" else settings.steps
    step, close = progress_hook(progress, outer * int(samples), f"restoring ({method}, {solver.backend.name})")
    draws, nfe, t0 = [], 0, time.perf_counter()
    try:
        for j in range(int(samples)):
            problem = Problem(denoise, operator, y_dev, std, solver.space, seeds, j, step)
            x, nfe = METHODS[method].run(problem, settings)
            check_result(x, method)
            draws.append(solver.space.clip(solver.space.to_user(x)))
        solver.backend.synchronize()
    finally:
        close()
    timing.total = time.perf_counter() - t0
    extra = {
        "method": method,
        "settings": asdict(settings),
        "noise_std": np.asarray(std, dtype=np.float64).reshape(-1).tolist(),
        "noise_std_estimated": noise_std is None,
    }
    # one network call per denoiser call
    return solver._finish(draws, return_numpy, nfe, seeds, int(samples), timing, extra, plan, nfe)


def check_result(x, method: str) -> None:
    """A diverged run is refused with what to change, never returned."""
    if not np.all(np.isfinite(to_numpy(x))):
        raise InputError(
            f"{method} diverged (the result is not finite); lower its step size (DPS: zeta) or check "
            "the measurement's scale and noise_std"
        )

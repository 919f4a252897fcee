"""The torch reference sampler: EDM's loop (shared with the runtime, ``diffunfold.edm``) around
the unfolded denoiser. It is the ground truth the runtime is checked against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .. import edm, formulations
from .._array import check_finite
from ..contrast import Contrast
from ..contrast import estimate as estimate_stretch
from ..ensemble import check_ensemble, flip_axes
from ..errors import InputError
from ..fast_schedule import FastSchedule, classical_start
from ..noise import resolve_noise_std
from ..physics.base import LinearOperator
from .model import DiffUnfolding


@dataclass
class Restoration:
    images: torch.Tensor  # user space (B, C, H, W), clipped to the data range for images;
    # with samples > 1 the mean of the posterior samples
    nfe: int  # calls of D per sample (each one is K regulariser calls)
    seeds: list[int]
    std: torch.Tensor | None = None  # per-pixel std over the samples (samples > 1; magnitude for MRI)
    samples: int = 1


@torch.no_grad()
def restore(
    model: DiffUnfolding,
    y,
    operator: LinearOperator,
    steps: int = 18,
    sampler: str = "euler",
    seed: int | Sequence[int] | None = 0,
    samples: int = 1,
    sigma_max: float | None = None,
    sigma_min: float | None = None,
    rho: float | None = None,
    progress: bool = False,
    noise_std=None,
    churn=None,
    ensemble: str = "none",
    contrast=None,
    fast: FastSchedule | None = None,
) -> Restoration:
    """Restore a batch from measurements ``y`` (a torch tensor, as the operator expects).

    ``seed``: an int (image i uses ``seed + i``) or one per image; the start ``x_0`` is drawn
    per image with numpy, so an image's result does not depend on the rest of its batch.
    ``samples > 1`` draws that many posterior samples per image (sample ``j`` starts from
    ``edm.initial_noise(..., sample=j)``) and returns their mean and per-pixel std.
    ``churn``: EDM's stochastic sampler (``edm.Churn.of``; None or 0: the ODE), its noise drawn
    per (image seed, sample, step) as the runtime draws it. ``ensemble="flips"``: sample j's
    regulariser sees the j-th of four flips of the image (``diffunfold.ensemble``).
    ``contrast="stretch"`` (or a ``Contrast``): flat images are restored at a photo's contrast
    and mapped back (``diffunfold.contrast``), as the runtime does. ``fast``: the few-call
    schedule (``diffunfold.fast_schedule``): its levels replace ``steps``/``sigma_*``/``rho``,
    and every sample starts from the classical estimate plus noise of its first level, as the
    runtime's ``schedule="fast"``.
    """
    _check_inputs(model, y, operator, samples)
    param = next(model.parameters())
    batch = int(y.shape[0])
    seeds = edm.seeds_for(seed, batch)
    shape = (model.space.model_channels, *operator.image_shape)
    sigmas = _levels(model, fast, steps, sigma_min, sigma_max, rho)
    churn = edm.Churn.of(churn)
    check_ensemble(ensemble)

    bar = _progress_bar(progress, (len(sigmas) - 1) * samples, sampler)
    contrast = Contrast.of(contrast)
    std = _noise_level(model, contrast, noise_std, operator, y, batch)  # the one resolution of sigma_y
    fast = None if fast is None else fast.for_solve(std, operator.image_shape)  # as the runtime's
    stretch = _stretch(contrast, model, y, operator, std)
    sigma_y = _sigma_y(model, std, stretch, param)
    start = None if fast is None else _classical_start(model, operator, y, noise_std, std, stretch)
    if stretch is not None:
        y = stretch.measurement(y, _a_ones(model, operator, y))

    runs = [
        _draw(model, y, operator, sigma_y, stretch, j, ensemble, seeds, shape, sigmas, sampler, churn, bar, start, fast)
        for j in range(samples)
    ]
    if bar is not None:
        bar.close()
    return _restoration(model, [x for x, _ in runs], runs[-1][1], seeds)


def _levels(model: DiffUnfolding, fast: FastSchedule | None, steps: int, sigma_min, sigma_max, rho):
    """The solve's noise levels with the final 0: the fast schedule's (EDM's spacing) where
    given, else the model's formulation's, as the runtime's ``Solver._schedule``."""
    if fast is not None:
        return formulations.schedule("edm", fast.steps, fast.sigma_min, fast.sigma_max, fast.rho)
    return formulations.schedule(model.settings.formulation, steps, sigma_min, sigma_max, rho)


def _progress_bar(progress: bool, total: int, sampler: str):
    """A progress bar over the sampler's steps, or None without ``progress``."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"sampling ({sampler})", unit="step", leave=False)


def _draw(
    model: DiffUnfolding,
    y,
    operator: LinearOperator,
    sigma_y,
    stretch,
    j: int,
    ensemble: str,
    seeds: list[int],
    shape: tuple[int, ...],
    sigmas,
    sampler: str,
    churn,
    bar,
    start=None,
    fast: FastSchedule | None = None,
):
    """Posterior sample ``j`` of every image, from its start drawn per (image seed, sample) at the
    first level (added to ``start``, an estimate in model space, where given; ``fast``: the
    schedule whose levels may run fewer than K stages), in the user's space (mapped back from a
    contrast stretch, clipped); returns ``(x, nfe)``."""
    param = next(model.parameters())
    few = {} if fast is None else fast.stages_by_level()  # levels that run fewer than K stages

    def denoise(v, s, axes=flip_axes(ensemble, j)):  # noqa: B008 (binds this sample's flips)
        return model(v, s, y, operator, noise_std=sigma_y, flip_axes=axes, stages=few.get(float(s)))

    def churn_noise(i, j=j):
        return torch.from_numpy(edm.churn_noise(seeds, shape, i, j)).to(param.device, param.dtype)

    x = torch.from_numpy(edm.initial_noise(seeds, shape, float(sigmas[0]), sample=j)).to(param.device, param.dtype)
    if start is not None:
        x = x + start
    sampler, coefficients = formulations.solver(model.settings.formulation, sampler, sigmas)
    x, nfe = edm.sample_loop(
        denoise,
        x,
        sigmas,
        sampler,
        on_step=(lambda i: bar.update(1)) if bar else None,
        churn=churn,
        noise=churn_noise,
        coefficients=coefficients,
    )
    x = model.space.to_user(x)
    return model.space.clip(x if stretch is None else stretch.image(x)), nfe


def _classical_start(model: DiffUnfolding, operator: LinearOperator, y, noise_std, std, stretch):
    """The fast schedule's start in model space: the classical estimate of the unstretched ``y``
    (sigma_y as resolved, or estimated), at the stretched contrast where stretched."""
    if std is None:
        std = resolve_noise_std(noise_std, operator, y, int(y.shape[0]))
    est = classical_start(operator, y, std).to(y.dtype)
    return model.space.to_model(est if stretch is None else stretch.stretched(est))


def _restoration(model: DiffUnfolding, draws: list, nfe: int, seeds: list[int]) -> Restoration:
    """The one sample, or the mean of the posterior samples and their per-pixel std."""
    if len(draws) == 1:
        return Restoration(images=draws[0], nfe=nfe, seeds=seeds)
    stack = torch.stack(draws)
    spread = stack.abs() if model.space.complex else stack
    return Restoration(images=stack.mean(0), nfe=nfe, seeds=seeds, std=spread.std(0), samples=len(draws))


def _check_inputs(model: DiffUnfolding, y, operator: LinearOperator, samples) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"samples must be a positive integer, got {samples!r}")
    if not isinstance(y, torch.Tensor):
        raise InputError(f"the torch sampler takes y as a torch tensor, got {type(y).__name__}")
    operator.check_measurement(y)
    check_finite(y, "the measurement y")
    model.check_image_size(operator.image_shape)


def _a_ones(model: DiffUnfolding, operator: LinearOperator, y: torch.Tensor) -> torch.Tensor:
    rows = 1 if operator.batch is None or operator.batch <= 1 else int(y.shape[0])
    return operator.A(torch.ones((rows, model.space.channels, *operator.image_shape), dtype=y.dtype, device=y.device))


def _noise_level(
    model: DiffUnfolding, contrast: Contrast | None, noise_std, operator: LinearOperator, y, batch: int
) -> np.ndarray | None:
    """sigma_y per image, resolved once (given and checked, or estimated from ``y``) where the
    data step or the contrast stretch uses it, as the runtime's ``Solver._noise_level``."""
    if contrast is not None and model.space.complex:
        raise InputError("the contrast stretch is for image models; MRI data is normalised by its 99th percentile")
    if not model.settings.noise_aware and contrast is None:
        return None
    return resolve_noise_std(noise_std, operator, y, batch)


def _stretch(contrast: Contrast | None, model: DiffUnfolding, y, operator: LinearOperator, std):
    """The runtime's contrast stretch (``Solver._stretch``), or None when off or the identity."""
    if contrast is None:
        return None
    stretch = estimate_stretch(y, _a_ones(model, operator, y), std, contrast)
    return None if stretch.identity else stretch


def _sigma_y(model: DiffUnfolding, std, stretch, param: torch.Tensor) -> torch.Tensor | None:
    """sigma_y per image for a noise-aware model's data step (of the stretched measurement, when
    stretched), on the model's device; None for the others."""
    if not model.settings.noise_aware:
        return None
    std = std if stretch is None else stretch.noise_std(std)
    return torch.as_tensor(std, dtype=param.dtype, device=param.device)


def to_tensor(a, device) -> torch.Tensor:
    """A numpy array as a torch tensor on ``device`` (no copy on the CPU)."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)

"""What a solve returns: the restored images with their samples and spread, and where the time
went (:class:`Timing`); and the progress reporting of a solve."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._array import to_numpy
from ..errors import InputError


@dataclass
class Timing:
    """Seconds spent, summed over all samples: the networks (``R_k``; device work waited for),
    the physics (data-fidelity gradients), and the rest (sampler arithmetic, copies, Python)."""

    network: float = 0.0
    physics: float = 0.0
    total: float = 0.0
    network_calls: int = 0

    @property
    def sampler(self) -> float:
        return max(self.total - self.network - self.physics, 0.0)

    def as_dict(self) -> dict[str, float]:
        return {
            "network_s": self.network,
            "physics_s": self.physics,
            "sampler_s": self.sampler,
            "total_s": self.total,
            "network_calls": self.network_calls,
        }

    def __str__(self) -> str:
        t = max(self.total, 1e-12)
        return (
            f"{self.total:.3f} s: network {self.network:.3f} s ({100 * self.network / t:.0f} %), "
            f"physics {self.physics:.3f} s ({100 * self.physics / t:.0f} %), "
            f"sampler {self.sampler:.3f} s ({100 * self.sampler / t:.0f} %)"
        )


@dataclass
class Solution:
    images: Any  # user space (B, C, H, W); the posterior mean when samples > 1
    std: Any | None  # per-pixel std over the samples (samples > 1; magnitude for MRI)
    nfe: int  # calls of D per sample (each runs its level's unfolding stages)
    seeds: list[int]
    samples: int
    timing: Timing
    backend: str
    extra: dict = field(default_factory=dict)
    draws: Any | None = None  # the individual posterior samples (samples, B, C, H, W) when samples > 1
    tiling: str = "untiled"  # how the regulariser ran (TilePlan.describe())
    calls_per_sample: int | None = None  # network calls one sample of the batch cost (what an image costs)


def progress_hook(progress, total: int, desc: str) -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    """``(on_step, close)`` for ``edm.sample_loop``: nothing, a tqdm bar (``progress=True``), or
    the caller's ``progress(done, total)``."""
    if not progress:
        return None, lambda: None
    if callable(progress):
        done = [0]

        def step(_i: int) -> None:
            done[0] += 1
            progress(done[0], total)

        return step, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    return (lambda _i: bar.update(1)), bar.close


def summarise_draws(draws: list, xp, complex_images: bool, return_numpy: bool) -> tuple:
    """``(images, std, stack)``: the one draw, or the posterior mean of several with their
    per-pixel std and the stacked draws; checked finite; moved to numpy where asked."""
    stack = None
    if len(draws) == 1:
        images, std = draws[0], None
    else:
        stack = xp.stack(draws)
        images = stack.mean(axis=0)
        # ddof=1: the unbiased sample std, as torch's (the reference) computes it
        std = (xp.abs(stack) if complex_images else stack).std(axis=0, ddof=1)
    if not bool(xp.all(xp.isfinite(images))):
        raise InputError(
            "the restoration is not finite; the package or the measurement is broken "
            "(check the operator's parameters and y's scale)"
        )
    if return_numpy:
        images = to_numpy(images)
        std = None if std is None else to_numpy(std)
        stack = None if stack is None else to_numpy(stack)
    return images, std, stack

"""The few-call schedule: a solve that starts from the classical estimate instead of pure noise.

EDM's 18 Euler steps from sigma = 80 make 18 x K network calls (72 for K = 4), and most of the
early ones only find the coarse image that the measurement already fixes. The fast schedule
starts from the operator's classical reconstruction (Wiener for blurs, the pseudo-inverse for
super-resolution, normalised convolution for inpainting: ``diffunfold.baselines``) plus white
noise of the schedule's first level, and runs a short EDM schedule below it (6 steps from 1.5
down to EDM's 0.002 on the bundled image model, two unfolding stages at the first level and all
four below: 22 calls). Chosen on the 34 validation photos
that the quality harness never scores (``bench/experiments/few_calls.py``): the same 6 steps
from pure noise lost up to 13 dB, from noise at a low first level up to 0.3 dB; from the
classical estimate every cell of 8 tasks x 3 noise levels stayed within 0.11 dB of the 18-step
path or gained. Stopping at 0.005 instead was 0.1 dB better at 64 px but lost 6.5 dB on
noise-free motion blur at 256 px (58 dB there). Fewer steps (5, 4) lost 0.4-1.3 dB; fewer
unfolding stages per call (``stages``) for more steps lost up to 1.5 dB.

Where the stages go (``stages``: the count at each level; 12 validation photos, 8 tasks x 3 noise
levels, against the 18-step path): fewer at the low levels lose most (one stage at the last
level -0.30 dB in the worst cell, two at the last two -0.45, 4-4-4-3-2-1 -0.95), while the first
level, where the classical estimate's noise is drowned, needs fewer: 2-4-4-4-4-4 and 1-4-4-4-4-4
both scored worst cell -0.07 dB and mean +0.13 / +0.14 dB at 64 px (all four at every level:
-0.10 and +0.07). At 256 px (4 validation photos, 7 tasks x 3 noise levels, 72 px tiles) one
stage there scored 0.23-0.27 dB below two on noise-free anisotropic blur and inpainting (0.06
above on Gaussian blur), so the default runs two: 22 calls instead of 24.
Two stages at the first two levels lost 1.5 dB; one network output reused by all four stages of
the first level was no better than one stage.

Noisy measurements of images up to 128 px need fewer stages at the two lowest levels
(``noisy``: 2-4-4-4-2-2, 18 calls, where every image's sigma_y, given or estimated, is at least
0.01 and neither side is longer than 128 px, the side ``tile="auto"`` still runs whole). With
DDPM's ancestral step a draw at the next level is an estimate plus fresh noise, and where the
measurement's noise already limits what the lowest levels can refine, two stages give that
estimate. Against 22 calls (``bench/results/samplers/README.md``, "Fewer calls where the
measurement is noisy and the image small"): at 64 px 2-4-4-4-2-2 was level at every noise (12
validation photos, worst cell -0.14 dB; the harness's held-out ones -0.13), but the loss grows
with the image and shrinks with the noise: noise-free motion blur fell from 68-70 to 57-58 dB at 128 and 256 px;
at sigma_y 0.01 the worst cell was -0.11 dB at 128 px and -0.16 to -0.29 at 256 px. With the
rule, the held-out photos' noisy cells moved by -0.05 dB on average at 64 px (worst -0.13) and
-0.07 at 128 px (worst -0.17).

A package opts in through its manifest's ``schedule.fast``; ``Solver.solve(schedule="full")``
keeps the 18-step path, and explicit ``steps``/``sigma_*`` override either. The steps are the
package's sampler's (``schedule.sampler``): the bundled image package's are DDPM's ancestral
ones since 2026-12-07, +0.5 dB over Euler's at the same calls on the held-out photos
(bench/results/samplers/README.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from . import edm
from .errors import InputError

SCHEDULES = ("fast", "full")
STARTS = ("classical",)


@dataclass(frozen=True)
class FastSchedule:
    steps: int
    sigma_max: float  # the first level: the noise added to the classical estimate (model units)
    sigma_min: float
    rho: float = 7.0
    start: str = "classical"
    stages: tuple[int, ...] | None = None  # unfolding stages at each level (None: all K at every one)
    # the stages where every image's sigma_y is at least ``noisy_from`` and no side is longer than
    # ``noisy_up_to`` px (0: any size); None: ``stages`` always. The lowest levels' extra stages
    # pay on (nearly) noise-free measurements and on large images
    noisy_stages: tuple[int, ...] | None = None
    noisy_from: float = math.inf
    noisy_up_to: int = 0

    @classmethod
    def from_manifest(cls, value: dict, where: str) -> FastSchedule:
        """Checked from a manifest's ``schedule.fast``; an :class:`InputError` naming ``where``."""
        keys = {"steps", "sigma_max", "sigma_min", "rho", "start", "stages", "noisy"}
        if not isinstance(value, dict) or set(value) - keys:
            raise InputError(
                f"{where}: schedule.fast must hold steps, sigma_max, sigma_min, rho, start (and stages, noisy)"
            )
        try:
            out = cls(
                steps=value["steps"],
                sigma_max=float(value["sigma_max"]),
                sigma_min=float(value["sigma_min"]),
                rho=float(value.get("rho", 7.0)),
                start=value.get("start", "classical"),
                stages=_counts(value.get("stages")),
                **_noisy_fields(value.get("noisy"), where),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: schedule.fast is incomplete or not numeric ({exc})") from None
        steps_ok = isinstance(out.steps, int) and not isinstance(out.steps, bool) and out.steps >= 1
        levels_ok = all(math.isfinite(v) for v in (out.sigma_max, out.sigma_min, out.rho))
        if not (steps_ok and levels_ok and 0 < out.sigma_min < out.sigma_max and out.rho > 0):
            raise InputError(f"{where}: schedule.fast needs steps >= 1 and 0 < sigma_min < sigma_max, got {value}")
        if out.start not in STARTS:
            raise InputError(f"{where}: schedule.fast.start must be one of {STARTS}, got {out.start!r}")
        for name, counts in (("stages", out.stages), ("noisy.stages", out.noisy_stages)):
            if not _counts_ok(counts, out.steps):
                raise InputError(f"{where}: schedule.fast.{name} must be one whole number >= 1 per step: {counts!r}")
        return out

    def as_dict(self) -> dict:
        """The schedule's levels, as ``Solver.solve`` takes them."""
        return {"steps": self.steps, "sigma_max": self.sigma_max, "sigma_min": self.sigma_min, "rho": self.rho}

    def manifest_entry(self) -> dict:
        extra = {} if self.stages is None else {"stages": list(self.stages)}
        if self.noisy_stages is not None:
            extra["noisy"] = {"sigma_y": self.noisy_from, "up_to": self.noisy_up_to, "stages": list(self.noisy_stages)}
        return {**self.as_dict(), "start": self.start, **extra}

    def for_stages(self, k: int) -> FastSchedule:
        """This schedule for a package of ``k`` stages: no level asks for more than ``k``."""

        def cap(counts):
            return None if counts is None else tuple(min(n, k) for n in counts)

        return replace(self, stages=cap(self.stages), noisy_stages=cap(self.noisy_stages))

    def for_solve(self, noise_std, shape: tuple[int, ...]) -> FastSchedule:
        """The schedule for measurements of noise ``noise_std`` (sigma_y per image, None where the
        solve does not know it) and images of ``shape`` (H, W): the noisy stages where every
        image is at least ``noisy_from`` noisy and no larger than ``noisy_up_to``, else the
        stages for noise-free measurements."""
        plain = replace(self, noisy_stages=None, noisy_from=math.inf, noisy_up_to=0)
        if self.noisy_stages is None or noise_std is None or np.min(noise_std) < self.noisy_from:
            return plain
        if self.noisy_up_to and max(shape) > self.noisy_up_to:
            return plain
        return replace(plain, stages=self.noisy_stages)

    def levels(self) -> np.ndarray:
        """The schedule's noise levels (EDM's rho spacing) with the final 0."""
        return edm.schedule(self.steps, self.sigma_min, self.sigma_max, self.rho)

    def stages_by_level(self) -> dict[float, int]:
        """``{level: stages}`` for the levels that run fewer than K stages (a solve applies it
        only where it runs this schedule's own levels, or their tail below a start)."""
        if self.stages is None:
            return {}
        return {float(s): k for s, k in zip(self.levels()[:-1], self.stages)}


# What an exported image package gets (chosen for image-small on validation photos; see above).
# MRI packages get none: the scanner path (diffunfold.scanner) starts from its SENSE estimate.
IMAGE_DEFAULT = FastSchedule(
    steps=6,
    sigma_max=1.5,
    sigma_min=0.002,
    stages=(2, 4, 4, 4, 4, 4),
    noisy_stages=(2, 4, 4, 4, 2, 2),
    noisy_from=0.01,
    noisy_up_to=128,
)


def _counts(value) -> tuple | None:
    return None if value is None else tuple(value)


def _counts_ok(counts: tuple | None, steps: int) -> bool:
    return counts is None or (
        len(counts) == steps and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in counts)
    )


def _noisy_fields(value, where: str) -> dict:
    """``schedule.fast.noisy`` (``{"sigma_y": s, "up_to": px, "stages": [...]}``, ``up_to``
    optional) as FastSchedule's fields."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not {"sigma_y", "stages"} <= set(value) <= {"sigma_y", "up_to", "stages"}:
        raise InputError(f"{where}: schedule.fast.noisy must hold sigma_y, stages (and up_to), got {value!r}")
    sigma_y, up_to = value["sigma_y"], value.get("up_to", 0)
    if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)) or not 0 <= sigma_y < math.inf:
        raise InputError(f"{where}: schedule.fast.noisy.sigma_y must be a finite number >= 0, got {sigma_y!r}")
    if isinstance(up_to, bool) or not isinstance(up_to, int) or up_to < 0:
        raise InputError(f"{where}: schedule.fast.noisy.up_to must be a whole number of pixels >= 0, got {up_to!r}")
    if not isinstance(value["stages"], list):
        raise InputError(f"{where}: schedule.fast.noisy.stages must be a list, got {value['stages']!r}")
    return {"noisy_stages": tuple(value["stages"]), "noisy_from": float(sigma_y), "noisy_up_to": up_to}


def check_schedule_name(name: str | None) -> str | None:
    if name is not None and name not in SCHEDULES:
        raise InputError(f"schedule must be one of {SCHEDULES} (or None for the package's), got {name!r}")
    return name


def choose(name: str | None, fast: FastSchedule | None, package_path) -> FastSchedule | None:
    """The fast schedule a solve runs (None: the full one). ``name`` None: the package's default,
    fast where its manifest has one."""
    if check_schedule_name(name) == "full" or (name is None and fast is None):
        return None
    if fast is None:
        raise InputError(
            f"package {package_path} has no fast schedule (its manifest's schedule.fast); "
            "use schedule='full' or give steps"
        )
    return fast


def classical_start(operator, y, noise_std):
    """The classical reconstruction the fast schedule starts from (user space, like ``y``'s
    images); ``noise_std``: sigma_y per image (the Wiener filter's)."""
    from .baselines import classical_baseline

    return classical_baseline(operator, y, [float(v) for v in noise_std])

"""What one solve of :class:`diffunfold.runtime.solver.Solver` carries through its sampling
loops: the measurement, the operator, the (tau, gamma) table, the levels and the sampler, the
start, and how many unfolding stages each denoiser call runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import edm
from ..contrast import Stretch
from ..physics.base import LinearOperator
from .inputs import check_stages
from .solution import Timing
from .tiling import TilePlan
from .warm_start import WarmStart


def plan_stages(stages, k: int, fast, overrides: tuple, run: SolveRun) -> tuple[int | None, dict]:
    """The stages a solve asks for (checked against the package's ``k``), and the fast schedule's
    ``{level: stages}`` for ``run``'s measurements (their sigma_y as resolved, None where nothing
    resolved it, and their image size), where the solve runs its own levels (no override of
    steps or levels) and asks for no number of stages, else none."""
    stages = check_stages(stages, k)
    if fast is None or stages is not None or any(v is not None for v in overrides):
        return stages, {}
    return stages, fast.for_solve(run.noise_std, run.operator.image_shape).stages_by_level()


@dataclass
class SolveRun:
    """What one solve's sampling loops share."""

    y: Any
    operator: LinearOperator
    weights: dict
    noise_var: Any
    plan: TilePlan
    seeds: list[int]
    sigmas: Any
    sampler: str  # "euler", "heun", "ancestral" or "pc" ("native" resolved: formulations.solver)
    churn: edm.Churn
    ensemble: str
    timing: Timing
    stretch: Stretch | None = None
    init: WarmStart | None = None  # the starting estimate (None: pure noise)
    stages: int | None = None  # unfolding stages per denoiser call (None: the package's K)
    noise_std: Any = None  # sigma_y per image as resolved (None where nothing used it)
    step_stages: dict = field(default_factory=dict)  # the fast schedule's {level: stages}, where fewer
    coefficients: Any = None  # a formulation's own Euler steps (sampler "native"), else None

    def stages_at(self, sigma: float) -> int | None:
        """The stages the denoiser call at level ``sigma`` runs (None: all K)."""
        return self.stages if self.stages is not None else self.step_stages.get(float(sigma))

"""Zero-shot solvers: posterior samplers that take any unconditional EDM denoiser (a package of
``model.kind = "denoiser"``) and any operator, with no task training. Torch-free, numpy or CuPy.

``METHODS`` maps each name to its module's ``run(problem, settings) -> (x_model, nfe)`` and its
settings dataclass (the paper's defaults, or the validation sweep's where it found better:
``bench/experiments/zero_shot_tuning.py``). :func:`route` decides which solver a package and a
``method=`` name get; ``diffunfold.runtime.zero_shot.solve`` runs one for ``Solver.solve``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...errors import InputError
from . import dds, diffpir, dps, pnp_edm

UNFOLDING = "diff-unfolding"


@dataclass(frozen=True)
class Method:
    name: str
    settings: type
    run: Callable
    step_field: str  # the setting that ``steps=`` overrides
    summary: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("dps", dps.DPSSettings, dps.run, "steps", "DPS (Chung et al. 2023): gradient through the network"),
        Method("diffpir", diffpir.DiffPIRSettings, diffpir.run, "steps", "DiffPIR (Zhu et al. 2023): exact data step"),
        Method("pnp-edm", pnp_edm.PnPEDMSettings, pnp_edm.run, "iterations", "PnP-EDM (Wu et al. 2024): split Gibbs"),
        Method("dds", dds.DDSSettings, dds.run, "steps", "DDS (Chung et al. 2024): CG-refined DDIM, for MRI"),
    )
}


def names() -> list[str]:
    """Every name ``method=`` takes: the unfolded model's own sampler and the zero-shot solvers."""
    return [UNFOLDING, *METHODS]


def route(method, kind: str, options: dict | None = None) -> str | None:
    """The zero-shot method a solve runs (None: the unfolding sampler), or an :class:`InputError`;
    ``options``: the solve's ``method_options``, which only a zero-shot method takes.

    A denoiser package needs a zero-shot method. An unfolding package refuses them: its network is
    ``R_k`` of an unfolded stage, trained with the data steps between stages, not the
    unconditional denoiser ``D(x; s)`` these methods assume (export a ``kind = "denoiser"`` model)."""
    listed = ", ".join(names())
    if method is not None and (not isinstance(method, str) or method.lower() not in names()):
        raise InputError(f"unknown method {method!r}; the methods are: {listed}")
    method = None if method is None else method.lower()
    if kind == "denoiser":
        if method is None or method == UNFOLDING:
            raise InputError(
                "this package holds a plain EDM denoiser (model.kind = 'denoiser'): choose a zero-shot "
                f"method, one of {', '.join(METHODS)} (method=... or --method)"
            )
        return method
    if method is not None and method != UNFOLDING:
        raise InputError(
            f"{method} is a zero-shot method for a plain denoiser package (model.kind = 'denoiser'); this "
            "package holds an unfolded model, whose networks are not an unconditional denoiser. Leave "
            f"method unset (or {UNFOLDING!r}) here, or export a denoiser package for {method}"
        )
    if options:
        raise InputError("method_options are the settings of a zero-shot method; this solve runs the unfolding sampler")
    return None


def settings_for(method: str, steps: int | None = None, options: dict | None = None):
    """The method's settings: its defaults, ``steps`` (its step or iteration count) and ``options``
    (field names of its settings dataclass) replacing them."""
    from .common import with_options

    m = METHODS[method]
    return with_options(m.settings(), steps, options, m.step_field)


__all__ = ["METHODS", "UNFOLDING", "Method", "names", "route", "settings_for"]

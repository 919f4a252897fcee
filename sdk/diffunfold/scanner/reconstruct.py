"""Reconstruct measured multi-coil k-space with a model package: ``prepare_kspace`` then the
solver, the result back in the data's units. The API's one call for a scan::

    solver = Solver.load("samples/models/mri-small")
    result = reconstruct_kspace(solver, kspace, mask)           # ESPIRiT maps, noise from the data
    result.image, result.noise_std, result.seconds
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .prepare import Prepared, ScannerSettings, prepare_kspace
from .start import StartSettings, sense_start


@dataclass
class ScanResult:
    image: np.ndarray  # complex64 (H, W) in the data's units (maps fix it up to a phase)
    std: np.ndarray | None  # float32 (H, W) per-pixel std of the magnitude (samples > 1)
    noise_std: float  # k-space noise level, data units (estimated, given or whitened)
    map_std: float  # the maps' residual, data units
    data_std: float  # the level the data step was given, data units
    scale: float
    seconds: dict = field(default_factory=dict)  # prepare, solve (network, physics), total
    info: dict = field(default_factory=dict)
    solution: Any = None


def reconstruct_kspace(
    solver,
    kspace,
    mask,
    settings: ScannerSettings | None = None,
    noise_covariance=None,
    noise_std: float | None = None,
    coil_maps=None,
    calibration=None,
    start: StartSettings | None = None,
    **solve,
) -> ScanResult:
    """``kspace`` ``(Nc, H, W)`` (zeros where not sampled), ``mask`` ``(H, W)``; the rest as
    :func:`~.prepare.prepare_kspace`; ``start``: where sampling starts and what comes back
    (:mod:`.start`; default: from the SENSE estimate, one call for 2-D patterns); ``solve``:
    options of ``Solver.solve`` (steps, samples, seed, ...). ``noise_std`` is in the data's units."""
    t0 = time.perf_counter()
    p: Prepared = prepare_kspace(
        kspace,
        mask,
        settings,
        noise_covariance=noise_covariance,
        noise_std=noise_std,
        coil_maps=coil_maps,
        calibration=calibration,
    )
    if "init" in solve:
        p.info["start"], begin = "the caller's estimate", {}
    elif str(solve.get("method") or "diff-unfolding").lower() != "diff-unfolding":
        # a zero-shot method (diffunfold.runtime.zero_shot) runs its own sampler from noise
        p.info["start"], begin = f"noise ({solve['method']})", {}
    else:
        begin = sense_start(p, start, samples=solve.get("samples", 1), steps=solve.get("steps"))
    t1 = time.perf_counter()
    sol = solver.solve(p.y, p.operator, noise_std=p.data_std, **{**solve, **begin})
    t2 = time.perf_counter()
    std = None if sol.std is None else (np.asarray(sol.std)[0, 0] * p.scale).astype(np.float32)
    seconds = {
        "prepare": t1 - t0,
        "solve": t2 - t1,
        "network": sol.timing.network,
        "physics": sol.timing.physics,
        "total": t2 - t0,
    }
    return ScanResult(
        image=(np.asarray(sol.images)[0, 0] * p.scale).astype(np.complex64),
        std=std,
        noise_std=p.noise_std * p.scale,
        map_std=p.map_std * p.scale,
        data_std=p.data_std * p.scale,
        scale=p.scale,
        seconds=seconds,
        info=p.info,
        solution=sol,
    )

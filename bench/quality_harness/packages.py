"""The packages being scored: opening them (a run folder or checkpoint is exported first) and
restoring a case through the runtime."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffunfold.contrast import Contrast
from diffunfold.errors import InputError

from .cases import Case, Estimate
from .tasks import QualityTask, Settings


@dataclass
class Scored:
    """A package being scored: where it came from, its solver, its rows."""

    name: str
    path: Path
    source: str  # "package" or "checkpoint <path>"
    package: Any
    solver: Any = None
    rows: list[dict] = field(default_factory=list)
    model_seconds: float = 0.0
    calls: list[int] = field(default_factory=list)  # per case: network calls per image and sample

    @property
    def kind(self) -> str:
        return self.package.space.kind

    def trained_on(self, task: QualityTask) -> bool:
        m = self.package.manifest
        if task.kind == "mri":
            patterns = m.get("mri_patterns")
            if not patterns:
                return "mri" in self.package.tasks
            return [task.params["kind"], float(task.params["acceleration"])] in [[k, float(a)] for k, a in patterns]
        return task.task in self.package.tasks


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "package"


def open_inputs(paths: list[str], workdir: Path, log: Callable[[str], None]) -> list[Scored]:
    """Each path: a package folder (with manifest.json), or a training checkpoint / run folder,
    exported to a temporary package first (needs torch and onnx: the train and export extras)."""
    from diffunfold.package import MANIFEST, ModelPackage

    out, names = [], set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(
                f"{raw!r} does not exist; give a model package folder (with {MANIFEST}), a training "
                "run folder or a checkpoint"
            )
        if (path / MANIFEST).exists() or path.name == MANIFEST:
            pkg = ModelPackage.open(path)
            name, source = pkg.path.name, "package"
        else:
            try:
                from diffunfold.export.onnx_export import export_checkpoint
            except ImportError as exc:
                raise InputError(
                    f"{raw!r} is not a model package, so it must be exported first, which needs torch "
                    f"and onnx (pip install -e '.[train,export]'): {exc}"
                ) from None
            log(f"exporting {raw} to a temporary package ...")
            target = workdir / f"export-{len(out)}"
            pkg = export_checkpoint(path, target, log=lambda _msg: None)
            src = pkg.manifest.get("source", {})
            name = f"{src.get('run') or path.name}-step{src.get('step', '?')}"
            source = f"checkpoint {raw}"
        base, k = _slug(name), 2
        name = base
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.add(name)
        out.append(Scored(name, pkg.path, source, pkg))
    return out


def run_model(sc: Scored, case: Case, s: Settings) -> dict[str, Estimate]:
    """The posterior mean of ``s.samples`` draws and one draw (draw 0, from the same solve)."""
    t0 = time.perf_counter()
    sol = sc.solver.solve(
        case.y,
        case.op,
        seed=case.seeds,
        samples=s.samples,
        steps=s.steps,
        sampler=s.sampler,
        sigma_min=s.sigma_min,
        noise_std=list(case.noise_std),
        churn=s.churn,
        ensemble=s.ensemble,
        contrast=None if case.mri else s.contrast,
        schedule=None if case.mri else s.schedule,
    )
    t_mean = time.perf_counter() - t0
    sc.calls.append(int(sol.calls_per_sample))
    single = np.asarray(sol.images if s.samples == 1 else sol.draws[0])
    t_single, extra = t_mean / s.samples, 0.0
    sc.model_seconds += t_mean + extra
    return {"model_mean": Estimate(np.asarray(sol.images), t_mean), "model_sample": Estimate(single, t_single)}


def contrast_label(sc: Scored, s: Settings) -> dict | None:
    """The contrast stretch a package ran with (None: off; MRI packages never)."""
    if sc.kind == "mri":
        return None
    chosen = sc.package.contrast if s.contrast is None else Contrast.of(s.contrast)
    return None if chosen is None else chosen.as_dict()


def model_method_name(key: str, samples: int) -> str:
    return f"Diff-Unfolding, mean of {samples}" if key == "model_mean" else "Diff-Unfolding, 1 sample"

"""The other methods of the comparison table: the zero-shot solvers run on an unconditional EDM
denoiser package (``--zero-shot PACKAGE --method NAME``), and the learned baselines of
``bench/learned_baselines`` (``--learned MODULE:CHECKPOINT``), scored on the same cases as the
Diff-Unfolding packages (same images, operators, measurements and seeds)."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffunfold.errors import InputError

from .cases import Case, Estimate
from .tasks import QualityTask, Settings


@dataclass
class Entrant:
    """One method of the comparison that is not a Diff-Unfolding package."""

    name: str  # as the table shows it, e.g. "DPS" or "cEDM (Gaussian blur)"
    kind: str  # "image" or "mri"
    family: str  # "zero-shot, <denoiser package>" or "learned baseline, <checkpoint>"
    params: int
    restore: Callable[[Case, Settings], tuple[np.ndarray, int]]  # images, network calls per image
    applies: Callable[[QualityTask], bool] = lambda task: True
    rows: list[dict] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)  # per case: network calls per image and sample
    seconds: float = 0.0


def open_zero_shot(path: str, methods: list[str] | None, solver_options: dict, kind: str | None = None):
    """The denoiser package at ``path`` (of data ``kind`` when given), a solver on it and the
    zero-shot methods to run (default: the paper's for its data kind); both harnesses open them here."""
    from diffunfold.package import ModelPackage
    from diffunfold.runtime import Solver

    pkg = ModelPackage.open(path)
    if pkg.kind != "denoiser" or (kind is not None and pkg.space.kind != kind):
        need = "an MRI" if kind == "mri" else "an unconditional"
        raise InputError(
            f"--zero-shot {path}: a {pkg.space.kind} {pkg.kind} package; the zero-shot solvers need "
            f"{need} denoiser package (model.kind = 'denoiser')"
        )
    from diffunfold.runtime.zero_shot import METHODS

    unknown = [m for m in methods or [] if m not in METHODS]
    if unknown:
        raise InputError(f"--method {unknown}: unknown; choose from {sorted(METHODS)}")
    return pkg, Solver.load(pkg, **solver_options), list(methods or PAPER_METHODS[pkg.space.kind])


def zero_shot_entrants(path: str, methods: list[str], solver_options: dict) -> list[Entrant]:
    """One entrant per method, all on the denoiser package at ``path``."""
    pkg, solver, chosen = open_zero_shot(path, methods, solver_options)
    params = int(pkg.manifest["parameters"]["regularizers"])
    where = f"zero-shot, {pkg.path.name}"
    return [Entrant(label(m), pkg.space.kind, where, params, _zero_shot_runner(solver, m)) for m in chosen]


# the zero-shot solvers the paper compares with (Tables 1 and 2), the default of --zero-shot
PAPER_METHODS = {"image": ["dps", "diffpir", "pnp-edm"], "mri": ["dps", "dds"]}
# how the tables name the zero-shot methods and the learned baselines' modules
LABELS = {
    "dps": "DPS",
    "diffpir": "DiffPIR",
    "pnp-edm": "PnP-EDM",
    "dds": "DDS",
    "cedm": "cEDM",
    "varnet": "E2E-VarNet",
    "ssdiffrecon": "SSDiffRecon",
}


def label(name: str) -> str:
    return LABELS.get(name, name)


def _zero_shot_runner(solver, method: str) -> Callable[[Case, Settings], tuple[np.ndarray, int]]:
    def restore(case: Case, s: Settings) -> tuple[np.ndarray, int]:
        sol = solver.solve(case.y, case.op, method=method, seed=case.seeds, samples=s.samples, noise_std=case.noise_std)
        return np.asarray(sol.images), int(sol.nfe)

    return restore


def load_learned(spec: str) -> tuple[object, str, str]:
    """``MODULE:CHECKPOINT``: ``bench/learned_baselines/MODULE.py``'s ``load(CHECKPOINT)``, a restorer
    with ``restore(y, operator, noise_std, seed)``, ``parameters``, ``nfe``, its model's ``space``
    (and ``task``) and the checkpoint's ``meta`` (the MRI mask it was trained for); with its label
    and checkpoint. Both harnesses (this one and ``bench/scanner.py``) load them here."""
    module, sep, checkpoint = spec.partition(":")
    if not sep or not module or not checkpoint:
        raise InputError(f"--learned wants MODULE:CHECKPOINT (e.g. cedm:runs/cedm/ckpt.safetensors), got {spec!r}")
    try:
        mod = importlib.import_module(f"learned_baselines.{module}")
    except ModuleNotFoundError:
        raise InputError(f"--learned {spec!r}: no bench/learned_baselines/{module}.py") from None
    r = mod.load(checkpoint)
    return r, getattr(r, "label", None) or label(module), checkpoint


def learned_entrants(specs: list[str]) -> list[Entrant]:
    """One entrant per ``MODULE:CHECKPOINT`` (:func:`load_learned`)."""
    out = []
    for spec in specs:
        r, label, checkpoint = load_learned(spec)
        kind, trained = _trained_for(r)
        name = f"{label} ({trained})" if trained else label
        if any(e.name == name for e in out):  # two runs of one baseline: tell them apart by run folder
            name = f"{name}, {Path(checkpoint).parent.name}"
        params = int(getattr(r, "parameters", 0))
        out.append(
            Entrant(name, kind, f"learned baseline, {checkpoint}", params, _learned_runner(r), _learned_applies(r))
        )
    return out


def _trained_for(r) -> tuple[str, str]:
    """The data kind of a learned baseline and what it was trained for, as the table names it."""
    model = getattr(r, "model", None)
    kind = getattr(r, "kind", None) or model.space.kind
    mask = getattr(r, "meta", {}).get("settings", {}).get("mask")
    if kind == "mri":
        return kind, f"trained on {mask}" if mask else ""
    task = getattr(model, "task", None)
    factors = _sr_factors(r) if task == "sr" else None
    task = f"{task} x{'/'.join(map(str, factors))}" if factors else task
    return kind, f"trained on {task}" if task else ""


def _sr_factors(r) -> list[int] | None:
    """The SR factors an image checkpoint was trained on (its training config), if it says."""
    factors = getattr(r, "meta", {}).get("config", {}).get("data", {}).get("sr_factors")
    return [int(f) for f in factors] if factors else None


def _learned_applies(r) -> Callable[[QualityTask], bool]:
    """A learned baseline is scored on the operators it was trained for only: its task (cEDM on
    images; for SR, the factors it was trained on), its MRI mask (kind and acceleration)."""
    fits = getattr(r, "fits", None)
    if fits:
        return lambda task: bool(fits(task.task, task.params))
    mask = getattr(r, "meta", {}).get("settings", {}).get("mask")
    if mask and _trained_for(r)[0] == "mri":  # image checkpoints carry the (unused) default mask too
        kind, _, acc = mask.partition(":")
        return lambda task: (
            task.kind == "mri"
            and (task.params.get("kind"), float(task.params.get("acceleration", 0)))
            == (
                kind,
                float(acc),
            )
        )
    task_name = getattr(getattr(r, "model", None), "task", None)
    factors = _sr_factors(r) if task_name == "sr" else None
    if factors:  # an SR model at another factor meets an operator it never saw
        return lambda task: task.task == "sr" and int(task.params.get("factor", 0)) in factors
    return (lambda task: task.task == task_name) if task_name else (lambda task: True)


def _learned_runner(r) -> Callable[[Case, Settings], tuple[np.ndarray, int]]:
    calls = int(getattr(r, "nfe", getattr(r, "calls", 0)))

    def restore(case: Case, s: Settings) -> tuple[np.ndarray, int]:
        draws = 1 if calls <= 1 else s.samples  # a one-pass network is deterministic
        images = []
        for i, seed in enumerate(case.seeds):
            y = case.y[i : i + 1]  # the harness's operators are shared by the images of a task
            got = [np.asarray(r.restore(y, case.op, case.noise_std[i], seed + 1000 * j)) for j in range(draws)]
            images.append(np.mean(got, axis=0))
        return np.concatenate(images, axis=0), calls

    return restore


def run_entrant(e: Entrant, case: Case, s: Settings) -> Estimate:
    t0 = time.perf_counter()
    images, calls = e.restore(case, s)
    seconds = time.perf_counter() - t0
    e.seconds += seconds
    e.calls.append(calls)
    return Estimate(images, seconds)

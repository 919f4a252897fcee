"""Batch runs on a Ray cluster: ``diffunfold restore ... --ray [ADDRESS]`` and ``diffunfold mri
... --ray [ADDRESS]``.

The commands plan their units of work as they always do (:class:`diffunfold.batch.Unit`: the
outputs of one image, one slice, one raw file), skip the finished ones on ``--resume``, and hand
the rest here. Each Ray actor runs the command's own ``setup`` once (it opens the model package
and loads the solver: the backend ``auto`` picks on its node) and then the command's own
per-unit function, the one the single-process path calls: the same files, the same names, the
same bytes, written atomically by the actor into ``--out`` (a folder every node sees).

Faults: an actor whose process dies is restarted (the model loaded again) and its task retried
(``max_task_retries``); a task that kills its worker every time fails alone after the retries.
A unit that raises fails alone with its reason, as in :func:`diffunfold.batch.run_units`.

Ray is imported only inside the functions here (the ``cluster`` extra); nothing else in
diffunfold imports it.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .batch import Batch, Unit, _reason
from .errors import InputError, require
from .safe_io import remove_temporaries

__all__ = ["TASK_RETRIES", "add_cluster_arguments", "cluster_lines", "run_units_on_ray", "worker_args"]

TASK_RETRIES = 2  # a task whose worker dies is run again this many times, on the restarted actor
START_TIMEOUT_S = 600  # for every actor to be placed and load its model
LOCAL = "local"  # --ray without an address


def add_cluster_arguments(parser: argparse.ArgumentParser, granularity: str) -> None:
    """``--ray [ADDRESS]`` and ``--ray-actors N``; ``granularity`` says what one task is."""
    group = parser.add_argument_group(
        "cluster (the cluster extra: pip install 'diffunfold[cluster]')",
        f"Run the batch on Ray: a pool of actors, each loading the model package once. {granularity} "
        "The outputs are those of the run without --ray (same names, same bytes for the same --seed), "
        "written whole by the actors into --out, which every node must see (a shared file system), "
        "as must the package and the inputs. --resume skips what is finished; a worker that dies is "
        f"restarted and its task retried ({TASK_RETRIES} times); a bad input fails alone.",
    )
    group.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL,
        default=None,
        metavar="ADDRESS",
        help="run on Ray: without ADDRESS a local Ray on this machine (loopback only); 'auto' joins the "
        "cluster this node belongs to (`ray start`), ray://HOST:PORT a remote one through Ray Client",
    )
    group.add_argument(
        "--ray-actors",
        type=_positive,
        default=None,
        metavar="N",
        help="actors, each holding one loaded model (default: one per GPU with --device cuda, else one per "
        "CPU core of the cluster); each gets the cluster's cores / N (at most a node's) as --threads",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


# -- the cluster -------------------------------------------------------------------------------


def _connect(address: str):
    """Ray, initialised: the caller's own session if there is one, a local Ray (loopback) for
    ``local``, else the cluster at ``address``. Returns (ray, whether this call started it)."""
    ray = require("ray", "cluster")
    if ray.is_initialized():
        return ray, False
    quiet = {"include_dashboard": False, "logging_level": "warning", "configure_logging": True}
    if address == LOCAL:
        ray.init(_node_ip_address="127.0.0.1", **quiet)
    else:
        ray.init(address=address, logging_level="warning")
    return ray, True


@dataclass
class Placement:
    actors: int
    cpus: float  # per actor: Ray's num_cpus (a fraction when there are more actors than cores)
    gpus: float  # per actor: 1 with --device cuda (a fraction when more actors than GPUs), else 0
    nodes: int

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


def _placement(ray, requested: int | None, device: str) -> Placement:
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus = [int(r.get("CPU", 0)) for r in nodes]
    gpus = sum(int(r.get("GPU", 0)) for r in nodes)
    if device.startswith("cuda"):
        if gpus < 1:
            raise InputError(f"--device {device} with --ray: the cluster has no GPU; leave --device at cpu")
        actors = requested or gpus
        return Placement(actors, 1, min(1.0, gpus / actors), len(nodes))  # more actors than GPUs: they share
    total = sum(cpus)
    if total < 1:
        raise InputError("the Ray cluster offers no CPU to run actors on")
    actors = requested or total
    per = max(1, min(max(cpus), total // actors)) if actors <= total else total / actors
    return Placement(actors, per, 0, len(nodes))


def worker_args(args, placement: Placement) -> argparse.Namespace:
    """The command's arguments as an actor runs them: its share of cores as --threads (unless
    --threads was given), the GPU Ray assigned it, no per-step bars (they would interleave)."""
    out = argparse.Namespace(**vars(args))
    out.threads = args.threads or placement.threads
    out.device = "cuda" if placement.gpus else args.device
    out.quiet = True
    return out


def _worker_class(ray):
    @ray.remote(max_restarts=-1, max_task_retries=TASK_RETRIES)
    class Worker:
        """Loads the model once (``setup``), then runs units. A failure to load is kept and
        answered by ``ready`` so that the driver raises it as the command would."""

        def __init__(self, setup: Callable, args) -> None:
            self.error = None
            try:
                self.work, self.info = setup(args)
            except Exception as exc:  # noqa: BLE001 - returned to the driver whole
                self.error = exc

        def ready(self) -> tuple[Any, dict | None]:
            info = None if self.error else {**self.info, "pid": os.getpid(), "node": ray.util.get_node_ip_address()}
            return self.error, info

        def run(self, unit: Unit) -> tuple[bool, Any, float, int]:
            t0 = time.perf_counter()
            try:
                result, ok = self.work(unit), True
            except Exception as exc:  # noqa: BLE001 - one bad input must not cost the others
                if os.environ.get("DIFFUNFOLD_DEBUG", "") not in ("", "0"):
                    raise
                result, ok = _reason(exc), False
            return ok, result, time.perf_counter() - t0, os.getpid()

    return Worker


# -- the run ----------------------------------------------------------------------------------


@dataclass
class _Run:
    todo: list[Unit]
    batch: Batch
    seconds: list[float] = field(default_factory=list)
    pids: dict[int, set[int]] = field(default_factory=dict)  # actor -> the processes it ran in


def _start(ray, setup: Callable, args, placement: Placement) -> tuple[list, list[dict]]:
    Worker = _worker_class(ray)
    options = {"num_cpus": placement.cpus, "num_gpus": placement.gpus}
    actors = [Worker.options(**options).remote(setup, worker_args(args, placement)) for _ in range(placement.actors)]
    refs = [a.ready.remote() for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=START_TIMEOUT_S)
    if len(ready) < len(refs):
        raise InputError(
            f"{len(refs) - len(ready)} of {len(refs)} Ray actors did not start within {START_TIMEOUT_S} s "
            f"({placement.cpus:g} CPU, {placement.gpus:g} GPU each): does the cluster have the resources? "
            "(`ray status`); fewer --ray-actors may fit"
        )
    infos = []
    for error, info in ray.get(refs):
        if error is not None:
            raise error  # the model package or the task refused, as without --ray
        infos.append(info)
    return actors, infos


def _dispatch(ray, actors: list, run: _Run, bar) -> None:
    """One unit in flight per actor; the next goes to whichever actor answers first."""
    queue = list(reversed(run.todo))
    pending: dict = {}
    for i, actor in enumerate(actors):
        if queue:
            unit = queue.pop()
            pending[actor.run.remote(unit)] = (i, unit)
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        i, unit = pending.pop(ref)
        try:
            ok, result, seconds, pid = ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # the worker died on it TASK_RETRIES + 1 times
            ok, result, seconds, pid = False, _died(exc), None, None
        if ok:
            run.batch.rows.append(result)
        else:
            run.batch.failures.append((unit.label or unit.name, result))
        if seconds is not None:
            run.seconds.append(seconds)
            run.pids.setdefault(i, set()).add(pid)
        bar.update(1)
        if queue:
            unit = queue.pop()
            pending[actors[i].run.remote(unit)] = (i, unit)


def _died(exc: BaseException) -> str:
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return f"its worker process died {TASK_RETRIES + 1} times on it (Ray retried it {TASK_RETRIES} times): {first}"


def run_units_on_ray(
    units: list[Unit], setup: Callable, args, resume: bool, what: str, desc: str, out_dir: Path
) -> tuple[Batch, Any, dict]:
    """As :func:`diffunfold.batch.run_units`, on the Ray of ``args.ray``. ``setup(args)`` runs once
    per actor and returns ``(work, info)``: ``work(unit) -> row`` writes the unit's outputs,
    ``info`` holds backend_name, backend_reason and stages. Returns the batch, a stand-in for
    the solver in the command's report, and the run's figures (:func:`cluster_lines`)."""
    from tqdm.auto import tqdm

    run = _Run([], Batch())
    for u in units:
        (run.batch.skipped.append(u.name) if resume and u.done() else run.todo.append(u))
    if not run.todo:  # everything finished before: no actor to start
        idle = SimpleNamespace(backend_name="none", backend_reason="nothing left to do", stages=0)
        return run.batch, idle, _figures(args.ray, Placement(0, 0, 0, 0), [], run, 0.0, 0.0)
    t0 = time.perf_counter()
    ray, owned = _connect(args.ray)
    actors: list = []
    infos: list[dict] = []
    try:
        placement = _placement(ray, args.ray_actors, args.device)
        actors, infos = _start(ray, setup, args, placement)
        started = time.perf_counter()
        with tqdm(total=len(run.todo), desc=desc, unit=what, disable=args.quiet, leave=False) as bar:
            _dispatch(ray, actors, run, bar)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"{len(run.batch.rows)} of {len(run.todo)} {what}(s) finished and written to {out_dir}/ before the "
            "stop; rerun the same command with --resume to do the rest"
        ) from None
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if owned:
            ray.shutdown()
        # a worker killed mid-write leaves its hidden temporary behind; every actor is gone now
        remove_temporaries(out_dir, {i["pid"] for i in infos}.union(*run.pids.values()))
    end = time.perf_counter()
    return run.batch, _solver_info(infos), _figures(args.ray, placement, infos, run, started - t0, end - started)


def _solver_info(infos: list[dict]) -> SimpleNamespace:
    names = sorted({i["backend_name"] for i in infos})
    return SimpleNamespace(
        backend_name="/".join(names), backend_reason=infos[0]["backend_reason"], stages=infos[0]["stages"]
    )


def _figures(address: str, placement: Placement, infos: list[dict], run: _Run, start_s: float, work_s: float):
    done, n = len(run.batch.rows), len(run.seconds)
    restarts = sum(
        len(p - {info["pid"]}) for p, info in zip((run.pids.get(i, set()) for i in range(len(infos))), infos)
    )
    return {
        "address": address,
        "actors": placement.actors,
        "cpus_per_actor": placement.cpus,
        "gpus_per_actor": placement.gpus,
        "nodes": placement.nodes,
        "actor_nodes": sorted({i["node"] for i in infos}),
        "done": done,
        "skipped": len(run.batch.skipped),
        "failed": len(run.batch.failures),
        "start_s": start_s,
        "work_s": work_s,
        "seconds_per_task": sum(run.seconds) / n if n else None,
        "tasks_per_s": done / work_s if work_s > 0 else None,
        "worker_restarts": restarts,
    }


def cluster_lines(fig: dict, what: str) -> list[str]:
    """The end report of a Ray run: where, done / skipped / failed, time per task, throughput."""
    if not fig["actors"]:
        return [f"ray: nothing left to do, no actor started; {fig['skipped']} {what}(s) skipped (finished before)"]
    where = "a local Ray" if fig["address"] == LOCAL else f"Ray at {fig['address']}"
    gpu = f", {fig['gpus_per_actor']:g} GPU" if fig["gpus_per_actor"] else ""
    lines = [
        f"ray: {fig['actors']} actor(s) ({fig['cpus_per_actor']:g} CPU{gpu} each) on {len(fig['actor_nodes'])} of "
        f"{fig['nodes']} node(s) of {where}; {fig['start_s']:.1f} s to start them (Ray and one model load each)",
        f"ray: {fig['done']} {what}(s) done, {fig['skipped']} skipped (finished before), {fig['failed']} failed",
    ]
    if fig["seconds_per_task"] is not None:
        lines.append(
            f"ray: {fig['seconds_per_task']:.3f} s per task in an actor (read, solve, write); throughput "
            f"{fig['tasks_per_s']:.3f} {what}(s)/s over {fig['work_s']:.2f} s"
        )
    if fig["worker_restarts"]:
        lines.append(f"ray: {fig['worker_restarts']} worker process(es) died and were restarted; their tasks retried")
    return lines

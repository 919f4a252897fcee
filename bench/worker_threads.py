"""Seconds per training step with the DataLoader worker's BLAS / OpenMP threads left alone or
held to one (``data.worker_threads``), on the scanner pipeline whose batches (ESPIRiT maps,
SENSE estimates) keep the worker busy beside the trainer.

Each variant is a real ``diffunfold train`` run in its own process (so its thread pools start
fresh), ``--steps`` steps of ``mri-small`` on the training heads with one worker, from random
weights with the same seed, so every variant trains on the same batches:

* ``worker default``: ``data.worker_threads = 0``, the libraries' own thread count in the worker
  (the trainer's behaviour before 2026-12-06);
* ``worker 1 thread``: ``data.worker_threads = 1`` (today's default);
* ``OMP_NUM_THREADS=1``: everything in one thread, the trainer's torch as well (what the
  self-supervised records were run with).

A variant's time is the median over its steps after the first two (start-up and first-step
costs excluded) of the trainer's own ``log.csv`` clock, then the median over ``--rounds`` rounds
run in turn with the order rotated. Ratios are against ``worker default``.

    python bench/worker_threads.py                     # 8 steps, 2 rounds, Gaussian 2-D 4x, SSDU
    python bench/worker_threads.py --supervised --rounds 1 --no-write

Results: results/worker_threads-{ssdu,supervised}-<machine>.md and .json (not written on a busy machine).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import LoadWatch, add_output_arguments, machine_info, record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (data.worker_threads, extra environment)
    "worker default": (0, {}),
    "worker 1 thread": (1, {}),
    "OMP_NUM_THREADS=1": (1, {"OMP_NUM_THREADS": "1"}),
}


def train_settings(volumes: Path, steps: int, supervised: bool) -> list[str]:
    sets = [
        'data.source="volumes"',
        f'data.path="{volumes / "train"}"',
        f'data.val_path="{volumes / "held-out"}"',
        "data.native_crops=true",
        "data.scanner=true",
        'data.mri_patterns=[["gaussian2d", 4]]',
        "data.workers=1",
        "train.cpu_bf16=true",
        "train.val_every=0",
        "val.images=0",
        "train.log_every=1",
        f"train.checkpoint_every={steps}",
    ] + ([] if supervised else ['train.supervision="ssdu"'])
    return [a for s in sets for a in ("--set", s)]


def seconds_per_step(log_csv: Path) -> float:
    clock = [float(r["elapsed_s"]) for r in csv.DictReader(log_csv.open())]
    return statistics.median(b - a for a, b in zip(clock[1:], clock[2:]))  # steps 3 on


def run_variant(name: str, args, scratch: Path) -> float:
    threads, env_extra = VARIANTS[name]
    env = {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    }
    env.update(env_extra, PYTHONPATH=str(ROOT / "sdk"))
    out = Path(tempfile.mkdtemp(dir=scratch))
    command = [sys.executable, "-m", "diffunfold", "train", "--config", "mri-small", "--steps", str(args.steps)]
    command += train_settings(Path(args.volumes), args.steps, args.supervised)
    command += ["--set", f"data.worker_threads={threads}", "--out", str(out / "run")]
    subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=3600)
    return seconds_per_step(out / "run" / "log.csv")


def measure(args) -> dict[str, float]:
    names = list(VARIANTS)
    times: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(run_variant(name, args, Path(scratch)))
                print(f"round {r}: {name}: {times[name][-1]:.2f} s/step", flush=True)
    return {n: statistics.median(v) for n, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", default=str(ROOT / "data" / "mri"), help="`diffunfold data mri-volumes` folder")
    p.add_argument("--steps", type=int, default=8, help="training steps per run (the first two are not timed)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--supervised", action="store_true", help="supervised batches (default: SSDU, the heavier worker)")
    add_output_arguments(p)
    args = p.parse_args(argv)
    if args.steps < 4:
        p.error("--steps must be at least 4 (two untimed, two timed)")
    watch, info = LoadWatch(), machine_info()
    t = measure(args)
    base = t["worker default"]
    rows = [{"variant": n, "s_per_step": s, "ratio": s / base} for n, s in t.items()]
    md = "| variant | s per step | ratio to worker default |\n|---|---|---|\n" + "\n".join(
        f"| {r['variant']} | {r['s_per_step']:.2f} | {r['ratio']:.3f} |" for r in rows
    )
    name = "worker_threads-" + ("supervised" if args.supervised else "ssdu")
    record(name, watch, info, args, rows, md, "Training step: the batch worker's threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

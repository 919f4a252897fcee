"""What makes one training step of a preset cheaper on this CPU, against today's FP32 step.

One full step as ``diffunfold train`` runs it (``training/trainer.py``): forward, the
uncertainty-weighted loss (``unfolding_loss``), backward, gradient clipping, Adam, the EMA
update, on a few real batches of ``TrainingBatches`` (the preset's data, tasks and noise). The
variants, each with its own copy of the same initial weights and its own Adam:

* ``fp32``: today's step on a CPU (the trainer only autocasts on CUDA);
* ``bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the loss, as the trainer
  does on CUDA (the physics and the weight generators leave autocast themselves);
* ``channels_last``: model and model-space inputs (x, noise) in ``torch.channels_last``;
* ``bf16+channels_last``: both;
* ``edm_denoiser``: the cost basis of pretraining the regulariser as a plain EDM denoiser: the
  loss ``mean_b lambda(s) ||R_0(x + s n; s) - x||^2`` on ONE regulariser call, no unfolding, no
  physics, no uncertainty weighting (fp32);
* ``compile``: ``torch.compile`` of the U-Net (fp32; physics eager), when it compiles within
  ``--compile-budget`` seconds (else skipped with the reason). It runs after the others, so
  that a compile cut short cannot disturb their timings, in rounds of its own interleaved with
  fp32 again; its ratio is against that fp32.

Timing: warm-up steps per variant, then ``--rounds`` rounds in which every variant runs
``--steps`` steps on the same batches (batch i of the round = training step i), the variants
interleaved and their order rotated each round; a variant's time is the median over rounds of
its mean seconds per step. Accuracy: on every batch, the loss and the flattened gradient of
the same weights in FP32 and in each other unfolding variant; ``loss rel diff`` =
|L - L_fp32| / |L_fp32| and ``grad rel err`` = ||g - g_fp32|| / ||g_fp32||, the largest over
the batches. The weights are the preset's architecture with random weights (every parameter
perturbed by 0.02 N(0, 1), as the other benchmarks do, so no layer is trivially zero).

Results: bench/results/train_step-<machine>.md and .json.

    python bench/train_step.py                       # small preset, 3 warm-up, 5 rounds x 3 steps
    python bench/train_step.py --rounds 1 --steps 1 --no-compile --no-write    # a quick look
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import random_model  # noqa: E402
from machine import RESULTS, machine_info, write_results  # noqa: E402
from torch.optim.swa_utils import AveragedModel  # noqa: E402

# The report (the table, its notes, the settings written) lives beside this entry point.
from train_step_report import busy_warning, run_settings, table, table_notes  # noqa: E402

from diffunfold import edm  # noqa: E402
from diffunfold.training.config import load_config  # noqa: E402
from diffunfold.training.data import TrainingBatches  # noqa: E402
from diffunfold.training.loss import unfolding_loss  # noqa: E402
from diffunfold.training.sampler import to_tensor  # noqa: E402
from diffunfold.training.trainer import ema_update  # noqa: E402

CL = torch.channels_last


@dataclass
class Variant:
    name: str
    bf16: bool = False
    channels_last: bool = False
    denoiser: bool = False  # one R_0 call, EDM's denoising loss
    compile: bool = False


VARIANTS = [
    Variant("fp32"),
    Variant("bf16", bf16=True),
    Variant("channels_last", channels_last=True),
    Variant("bf16+channels_last", bf16=True, channels_last=True),
    Variant("edm_denoiser", denoiser=True),
    Variant("compile", compile=True),
]


def say(msg: str) -> None:
    print(msg, flush=True)


def load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# -- batches, models, the step ----------------------------------------------------------------


def real_batches(cfg, n: int) -> list[dict]:
    """Training steps 0..n-1 of ``TrainingBatches`` as torch tensors (model space), prepared
    before any timing (the trainer prepares them in a DataLoader worker)."""
    data = TrainingBatches(cfg)
    space = cfg.model.space
    out = []
    for i in range(n):
        b = data[i]
        out.append(
            {
                "x": space.to_model(to_tensor(b["x"], "cpu")).contiguous(),
                "y": to_tensor(b["y"], "cpu"),
                "sigma": to_tensor(b["sigma"], "cpu"),
                "noise": to_tensor(b["noise"], "cpu").contiguous(),
                "operator": b["operator"],
                "task": b["task"],
                "sigma_y": torch.as_tensor(np.asarray(b["sigma_y"], dtype=np.float32)),
            }
        )
    return out


def for_variant(batch: dict, v: Variant) -> dict:
    if not v.channels_last:
        return batch
    return {**batch, "x": batch["x"].contiguous(memory_format=CL), "noise": batch["noise"].contiguous(memory_format=CL)}


def prepare_model(base, v: Variant):
    model = copy.deepcopy(base).train()
    if v.channels_last:
        model = model.to(memory_format=CL)
    if v.compile:
        for r in model.regularizers:
            r.unet.compile()  # in place: parameters and state_dict keys unchanged
    return model


# The measurement noise level goes to the loss where it takes one (noise-aware models), as the
# trainer passes it.
_NOISE_STD = "noise_std" in inspect.signature(unfolding_loss).parameters


def loss_of(model, batch: dict, v: Variant) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=v.bf16):
        if not v.denoiser:
            extra = {"noise_std": batch["sigma_y"]} if _NOISE_STD else {}
            return unfolding_loss(
                model, batch["x"], batch["sigma"], batch["noise"], batch["y"], batch["operator"], **extra
            ).loss
        x, sigma = batch["x"], batch["sigma"]
        d = model.regularize(x + sigma.reshape(-1, 1, 1, 1) * batch["noise"], sigma, 0)
        mse = ((d.float() - x) ** 2).flatten(1).mean(dim=1)
        return (edm.loss_weight(sigma, model.settings.sigma_data) * mse).mean()


class Trainer:
    """One variant's model, Adam (the trainer's two parameter groups), EMA and step."""

    def __init__(self, base, cfg, v: Variant):
        t = cfg.train
        self.v, self.grad_clip = v, t.grad_clip
        self.model = prepare_model(base, v)
        m = self.model
        generators = [*m.tau.parameters(), *m.gamma.parameters(), *m.uncertainty.parameters()]
        ids = {id(p) for p in generators}
        # The preset's flat rate (no warm-up ramp: the rate does not change the cost).
        self.optimizer = torch.optim.Adam(
            [
                {"params": [p for p in m.parameters() if id(p) not in ids], "lr": t.lr},
                {"params": generators, "lr": t.lr * t.weights_lr_scale},
            ],
            betas=(0.9, 0.999),
            eps=1e-8,
        )
        self.ema = AveragedModel(
            m, multi_avg_fn=ema_update(t.batch_size, t.ema_halflife_images, t.ema_rampup), use_buffers=True
        )
        self.losses: list[float] = []

    def step(self, batch: dict) -> float:
        loss = loss_of(self.model, batch, self.v)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip if self.grad_clip > 0 else math.inf)
        self.optimizer.step()
        self.ema.update_parameters(self.model)
        value = float(loss.item())
        self.losses.append(value)
        return value


def loss_and_grad(model, batch: dict, v: Variant) -> tuple[float, torch.Tensor]:
    """The loss and the flattened gradient of ``model`` on ``batch`` (gradients cleared after)."""
    model.zero_grad(set_to_none=True)
    loss = loss_of(model, for_variant(batch, v), v)
    loss.backward()
    grad = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).float().reshape(-1) for p in model.parameters()]
    )
    model.zero_grad(set_to_none=True)
    return float(loss.item()), grad


def compare(model, batches: list[dict], ref: list, v: Variant) -> dict:
    """Largest loss rel. diff and gradient rel. L2 error against FP32 over the batches."""
    diffs, errs = [], []
    for b, (l32, g32) in zip(batches, ref):
        lv, gv = loss_and_grad(model, b, v)
        diffs.append(abs(lv - l32) / abs(l32))
        errs.append(float((gv - g32).norm() / g32.norm()))
    return {"loss_rel_diff": max(diffs), "grad_rel_err": max(errs)}


def timed_rounds(trainers: dict, variants: list[Variant], inputs: dict, rounds: int, tag: str = "") -> dict:
    """``{name: [mean s/step of each round]}``: the variants interleaved, their order rotated each round."""
    per_round: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            tr = trainers[v.name]
            t0 = time.perf_counter()
            for b in inputs[v.name]:
                tr.step(b)
            per_round[v.name].append((time.perf_counter() - t0) / len(inputs[v.name]))
        say(f"{tag}round {r + 1}/{rounds}: " + ", ".join(f"{v.name} {per_round[v.name][-1]:.3f}" for v in variants))
    return per_round


# -- the run ----------------------------------------------------------------------------------


class CompileTimeout(Exception):
    pass


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/train_step.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--config",
        default="small",
        help="a preset name or a config file, as `diffunfold train --config` takes it (default: small)",
    )
    ap.add_argument(
        "--steps", type=int, default=3, help="steps per variant and round, on batches 0..steps-1 (default 3)"
    )
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument(
        "--compile-budget",
        type=float,
        default=150.0,
        help="seconds the torch.compile variant may spend compiling (its warm-up steps) before "
        "it is skipped (default 150)",
    )
    ap.add_argument("--seed", type=int, default=0, help="random weights' seed (default 0)")
    ap.add_argument(
        "--out", default=str(RESULTS), help="folder for train_step-<machine>.md/.json (default bench/results)"
    )
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        ap.error("--steps and --rounds must be >= 1, --warmup >= 0")
    return args


def accuracy_against_fp32(base, variants, batches) -> tuple[dict, list, float | None]:
    """Loss and gradient of each unfolding variant against FP32 on the same initial weights.
    Returns the accuracies, FP32's (loss, gradient) per batch and, for scale, the minibatch
    noise of SGD (FP32 gradients of two different batches)."""
    accuracy: dict[str, dict] = {}
    ref = [loss_and_grad(prepare_model(base, VARIANTS[0]), b, VARIANTS[0]) for b in batches]
    noise_ref = None
    if len(ref) > 1:
        noise_ref = max(float((ref[i][1] - ref[0][1]).norm() / ref[0][1].norm()) for i in range(1, len(ref)))
        say(f"for scale: FP32 gradient of another batch vs batch 0, rel. L2 difference {noise_ref:.2f}")
    for v in variants:
        if v.denoiser or v.name == "fp32":
            continue
        accuracy[v.name] = compare(prepare_model(base, v), batches, ref, v)
        say(
            f"accuracy {v.name}: loss rel diff {accuracy[v.name]['loss_rel_diff']:.2e}, grad rel err "
            f"{accuracy[v.name]['grad_rel_err']:.2e} (max over batches)"
        )
    return accuracy, ref, noise_ref


def timed_compile(base, cfg, batches, ref, args, accuracy, trainers, inputs, skipped) -> tuple:
    """torch.compile within --compile-budget, then timed in rounds of its own against fp32.
    Adds to ``accuracy``, ``trainers``, ``inputs``, or the reason to ``skipped``. Returns the
    compile seconds and the rounds (None, None when skipped)."""
    v = next(v for v in VARIANTS if v.compile)
    t0 = time.perf_counter()
    compile_s, compile_rounds = None, None

    def on_alarm(signum, frame):
        raise CompileTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(args.compile_budget)))
    try:
        tr = Trainer(base, cfg, v)
        accuracy[v.name] = compare(tr.model, batches, ref, v)  # compiles forward and backward
        inputs[v.name] = [for_variant(b, v) for b in batches]
        for i in range(max(args.warmup, 2)):
            tr.step(inputs[v.name][i % len(batches)])
        signal.alarm(0)
        compile_s = time.perf_counter() - t0
        say(
            f"compile: compiled and warmed up in {compile_s:.1f} s; accuracy: loss rel diff "
            f"{accuracy[v.name]['loss_rel_diff']:.2e}, grad rel err {accuracy[v.name]['grad_rel_err']:.2e}"
        )
        trainers[v.name] = tr
        compile_rounds = timed_rounds(trainers, [VARIANTS[0], v], inputs, args.rounds, tag="compile vs fp32: ")
    except CompileTimeout:
        skipped[v.name] = (
            f"compiling (forward + backward of the U-Net, {torch.get_num_threads()} threads) "
            f"took over --compile-budget {args.compile_budget:.0f} s"
        )
    except Exception as exc:  # no compiler, or a failing one: skipped with the reason
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        skipped[v.name] = f"{type(exc).__name__}: {first}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if v.name in skipped:
        accuracy.pop(v.name, None)
        say(f"compile: skipped ({skipped[v.name]})")
        return None, None
    return compile_s, compile_rounds


def result_rows(cfg, variants, per_round, compile_rounds, accuracy, trainers) -> list[dict]:
    """One row per timed variant: median seconds per step and its ratio to fp32 of the same phase."""
    base_s = statistics.median(per_round["fp32"])
    rows = []
    timed = [(v, per_round[v.name], base_s) for v in variants]
    if compile_rounds:
        timed.append((VARIANTS[-1], compile_rounds["compile"], statistics.median(compile_rounds["fp32"])))
    for v, times, ref_s in timed:
        s = statistics.median(times)
        acc = accuracy.get(v.name, {})
        finite = all(math.isfinite(x) for x in trainers[v.name].losses)
        rows.append(
            {
                "variant": v.name,
                "s_per_step": s,
                "min_s_per_step": min(times),
                "ratio_vs_fp32": s / ref_s,
                "speedup_vs_fp32": ref_s / s,
                "fp32_s_per_step_same_phase": ref_s,
                "images_per_s": cfg.train.batch_size / s,
                "loss_rel_diff": acc.get("loss_rel_diff"),
                "grad_rel_err": acc.get("grad_rel_err"),
                "losses_finite": finite,
                "round_s_per_step": times,
            }
        )
    return rows


def run(args) -> dict:
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    info = machine_info()
    say(
        f"machine: {info['cpu']}, {info['cores']} cores, torch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, load average "
        f"{info.get('load_average_1m', '?')}"
    )
    if (info.get("load_average_1m") or 0) > 0.5 * (info["cores"] or 1):
        say("warning: the machine is busy before the run (load average above half the cores)")
    cfg = load_config(args.config)
    base = random_model(args.config, seed=args.seed).train()
    batches = real_batches(cfg, args.steps)
    say(
        f"{cfg.name}: {cfg.data.size}x{cfg.data.size}, batch {cfg.train.batch_size}, K={cfg.model.stages} "
        f"({'one shared U-Net' if cfg.model.shared else 'K U-Nets'}), "
        f"{base.parameter_counts()['total']:,} parameters; batches: {[b['task'] for b in batches]}"
    )

    variants = [v for v in VARIANTS if not v.compile]
    skipped: dict[str, str] = {}

    accuracy, ref, noise_ref = accuracy_against_fp32(base, variants, batches)

    # Warm-up, then the timed rounds.
    trainers = {v.name: Trainer(base, cfg, v) for v in variants}
    inputs = {v.name: [for_variant(b, v) for b in batches] for v in variants}
    for v in variants:
        for i in range(args.warmup):
            trainers[v.name].step(inputs[v.name][i % len(batches)])
    load_before_timing = load_avg()
    per_round = timed_rounds(trainers, variants, inputs, args.rounds)

    # torch.compile last, so that a compile cut short by its budget (whose worker processes may
    # still run) cannot disturb the other timings; timed in rounds of its own against fp32 again.
    compile_s, compile_rounds = None, None
    if args.no_compile:
        skipped["compile"] = "--no-compile"
    else:
        compile_s, compile_rounds = timed_compile(base, cfg, batches, ref, args, accuracy, trainers, inputs, skipped)

    rows = result_rows(cfg, variants, per_round, compile_rounds, accuracy, trainers)
    for name, why in skipped.items():
        rows.append({"variant": name, "skipped": why})
    return {
        "info": info,
        "cfg": cfg,
        "rows": rows,
        "compile_s": compile_s,
        "batches": [b["task"] for b in batches],
        "load_before_timing": load_before_timing,
        "grad_minibatch_noise": noise_ref,
        "load_after": load_avg(),
        "wall_s": time.perf_counter() - t_start,
        "parameters": base.parameter_counts()["total"],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    res = run(args)
    md = table(res["rows"])
    warn = busy_warning(res)
    say("\n" + warn + md + "\n")
    say(
        f"load average: {res['info'].get('load_average_1m')} before, {res['load_before_timing']} before timing, "
        f"{res['load_after']} after; {res['wall_s']:.0f} s in all"
    )
    if args.no_write:
        return 0
    path = write_results(
        "train_step",
        res["info"],
        run_settings(args, argv, res),
        res["rows"],
        warn + md + "\n\n" + table_notes(res),
        out_dir=args.out,
        title="Training step cost on this machine",
    )
    say(f"wrote {path} and {path.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

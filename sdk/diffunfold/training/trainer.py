"""The training loop: random task per batch, EDM noise levels, the uncertainty-weighted loss,
Adam, gradient clipping, EMA, bfloat16 autocast on GPUs, CSV logs, periodic validation PSNR on
held-out images, atomic checkpoints with exact resume, and scale-out with torchrun +
DistributedDataParallel (``torchrun --nproc_per_node=N -m diffunfold train ...``)."""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from ..errors import DiffUnfoldError, InputError
from ..hardware import has_native_bf16
from ..safe_io import write_json
from .checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from .config import TrainConfig
from .data import TrainingBatches, batch_loader, validation_set
from .evaluate import evaluate, format_rows
from .loss import UnfoldingObjective
from .model import DiffUnfolding
from .package_weights import initialise_from
from .sampler import to_tensor
from .scan_validation import COLUMNS as SCAN_COLUMNS
from .scan_validation import HeldOutScans
from .scan_validation import format_row as format_scan_row
from .self_supervised import SSDUObjective, is_self_supervised, objective_inputs


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        """The process's place in a torchrun launch (one process when not launched by torchrun)."""
        return cls(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"train.device = {name!r} but no CUDA device is visible; use 'auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def make_optimizer(model: DiffUnfolding, t) -> torch.optim.Adam:
    """Adam over the networks and, at ``weights_lr_scale`` x the rate, the weight generators
    (tau, gamma, u); with ``freeze_regularizers`` over the generators only."""
    generators = [*model.tau.parameters(), *model.gamma.parameters(), *model.uncertainty.parameters()]
    ids = {id(p) for p in generators}
    networks = [p for p in model.parameters() if id(p) not in ids]
    if t.freeze_regularizers:  # learn only tau, gamma and u around fixed (e.g. init_from) networks
        for p in networks:
            p.requires_grad_(False)
    groups = [{"params": generators, "lr_scale": t.weights_lr_scale}]
    if not t.freeze_regularizers:
        groups.insert(0, {"params": networks, "lr_scale": 1.0})
    return torch.optim.Adam(groups, lr=t.lr, betas=(0.9, 0.999), eps=1e-8)


def learning_rate(t, step: int) -> float:
    """The learning rate of a step: a linear warm-up, flat, then a cosine down to 0 over the last
    ``decay_steps`` (short runs end far better on a decayed rate than on the flat one)."""
    lr = t.lr * min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else t.lr
    decay = min(t.decay_steps, t.steps)
    start = t.steps - decay
    if decay and step >= start:
        lr *= 0.5 * (1.0 + math.cos(math.pi * (step - start + 1) / (decay + 1)))
    return lr


def ema_update(batch: int, halflife_images: float, rampup: float):
    """EDM's EMA: half-life in images, limited to ``rampup`` x the images seen so far, so
    short runs average over their recent past instead of their random start."""

    def update(averaged, current, n_averaged):
        seen = (int(n_averaged) + 1) * batch
        halflife = min(halflife_images, seen * rampup) if rampup > 0 else halflife_images
        beta = 0.5 ** (batch / max(halflife, 1e-8))
        torch._foreach_lerp_(averaged, current, 1.0 - beta)

    return update


class CSVLog:
    """Append-only CSV (kept across resumes)."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(columns)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])


class _SkippedSteps:
    """A step whose loss or gradient is not finite makes no update, and is logged; several in a
    row stop the run (the model itself has gone bad, not one batch)."""

    LIMIT = 5

    def __init__(self, path: Path):
        self.path, self.run = path, 0

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor, step: int, batch: dict) -> bool:
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            self.run = 0
            return False
        self.run += 1
        with open(self.path, "a") as f:
            f.write(f'{step},{loss.item()},{float(grad_norm)},{batch["task"]},"{batch["params"]}"\n')
        if self.run >= self.LIMIT:
            raise DiffUnfoldError(
                f"the loss or its gradient was not finite at {self.run} steps in a row "
                f"(last: step {step}, task {batch['task']} {batch['params']}); lower "
                "train.lr or resume from the last checkpoint"
            )
        return True


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank, 7]).generate_state(1)[0])


def train(cfg: TrainConfig, out_dir: str | Path | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg``; checkpoints and logs go to ``out_dir`` (default ``cfg.out_dir``).

    Returns a summary: steps done, seconds, last loss, the final validation rows, the newest
    checkpoint.
    """
    out = Path(out_dir or cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    ctx = Distributed.from_env()
    if ctx.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cfg.train.device != "cpu" and torch.cuda.is_available() else "gloo")
    try:
        return _train(cfg, out, ckpt_dir, ctx, resume, progress)
    finally:
        if ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _previous_checkpoint(ckpt_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from; a run never writes over another's checkpoints."""
    previous = latest_checkpoint(ckpt_dir)
    if previous is not None and not resume:
        raise InputError(
            f"{ckpt_dir} already holds checkpoints (newest: {previous.name}); pass --resume "
            "to continue that run, or choose another output folder"
        )
    if resume and previous is None:
        raise InputError(f"--resume: no complete checkpoint in {ckpt_dir}; start without --resume")
    return previous


def _build(cfg: TrainConfig, device, previous: Path | None):
    """Model, EMA, optimizer, the first step and the parameter counts: fresh (or from ``train.init_from``), or the
    state of checkpoint ``previous`` when resuming."""
    t = cfg.train
    torch.manual_seed(t.seed)  # the same initial weights on every process
    model = DiffUnfolding(cfg.model).to(device)
    model.check_image_size((cfg.data.size, cfg.data.size))
    if t.init_from and previous is None:
        initialise_from(model, t.init_from, adapt_attention=t.init_adapt_attention)
    counts = model.parameter_counts()  # before any freezing: the model's size
    ema = AveragedModel(
        model, multi_avg_fn=ema_update(t.batch_size, t.ema_halflife_images, t.ema_rampup), use_buffers=True
    )
    optimizer = make_optimizer(model, t)
    start = 0 if previous is None else int(load_training_state(previous, model, ema, optimizer)["step"])
    if start >= t.steps:
        raise InputError(f"the run is already at step {start} of {t.steps}; raise train.steps to go on")
    return model, ema, optimizer, start, counts


def _open_logs(out: Path, cfg: TrainConfig) -> tuple[CSVLog, CSVLog]:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict(), indent=1)
    log = CSVLog(
        out / "log.csv",
        ["step", "loss", "mse", "weighted_mse", "u", "lr", "grad_norm", "task", "images_per_s", "elapsed_s"],
    )
    val_log = CSVLog(
        out / "val.csv", ["step", "task", "psnr_model", "psnr_pinv", "psnr_baseline", "ssim_model", "ssim_baseline"]
    )
    return log, val_log


def _validate(module, val, cfg: TrainConfig, val_log: CSVLog, bar, step: int) -> list[dict]:
    """The EMA model on the held-out images; rows to val.csv and a table to the console."""
    module.eval()
    if isinstance(val, HeldOutScans):  # no references: held-out lines, to val_scans.csv
        row = {"step": step, **val.run(module, cfg.val.steps, cfg.val.sampler, cfg.train.seed)}
        CSVLog(val_log.path.with_name("val_scans.csv"), SCAN_COLUMNS).write(
            {k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()}
        )
        (bar.write if bar else print)(f"validation at step {step}: {format_scan_row(row)}")
        return [row]
    images, maps = val
    rows = evaluate(
        module,
        images,
        cfg.val.tasks,
        cfg.val.noise,
        cfg.val.steps,
        cfg.val.sampler,
        seed=cfg.train.seed,
        coil_maps=maps,
    )
    for r in rows:
        val_log.write(
            {
                "step": step,
                "task": r["task"],
                **{
                    k: f"{r[k]:.4f}"
                    for k in ("psnr_model", "psnr_pinv", "psnr_baseline", "ssim_model", "ssim_baseline")
                },
            }
        )
    (bar.write if bar else print)(f"validation at step {step}:\n{format_rows(rows)}")
    return rows


def _log_step(
    log: CSVLog, bar, done: int, terms: dict, lr: float, grad_norm, task: str, speed: float, elapsed: float
) -> None:
    loss = float(terms["loss"].item())
    log.write(
        {
            "step": done,
            "loss": f"{loss:.6f}",
            "mse": f"{terms['mse'].mean().item():.6g}",
            "weighted_mse": f"{terms['weighted'].mean().item():.6g}",
            "u": f"{terms['u'].mean().item():.4f}",
            "lr": f"{lr:.3g}",
            "grad_norm": f"{float(grad_norm):.4g}",
            "task": task,
            "images_per_s": f"{speed:.2f}",
            "elapsed_s": f"{elapsed:.1f}",
        }
    )
    if bar:
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{speed:.1f}")


def _gradient(objective, model, batch: dict, space, device, amp: bool, grad_clip: float):
    """The loss terms of one batch and, when the loss is finite, its (clipped) gradient in the
    parameters' ``.grad`` and their norm; NaN when it is not."""
    if is_self_supervised(batch):  # no clean image: the SENSE stand-in and the held-out k-space
        inputs = objective_inputs(batch, space, device)
    else:
        x = space.to_model(to_tensor(batch["x"], device))
        y = to_tensor(batch["y"], device)
        sigma = to_tensor(batch["sigma"], device)
        noise = to_tensor(batch["noise"], device)
        noise_std = to_tensor(np.asarray(batch["sigma_y"], dtype=np.float32), device)
        inputs = (x, sigma, noise, y, batch["operator"], noise_std)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        terms = objective(*inputs)
    for p in model.parameters():
        p.grad = None
    grad_norm = torch.tensor(math.nan)
    if torch.isfinite(terms["loss"]):
        terms["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    return terms, grad_norm


def _announce(
    cfg: TrainConfig, model, counts: dict, device: torch.device, ctx: Distributed, start: int, amp: bool
) -> None:
    t = cfg.train
    print(
        f"diffunfold train: {cfg.name}, {counts['total']:,} parameters "
        f"({counts['regularizers']:,} in {len(model.regularizers)} regulariser(s)"
        + (", frozen" if t.freeze_regularizers else "")
        + f"), K={model.stages}, "
        f"device {device}, {ctx.world} process(es), steps {start}..{t.steps}, batch {t.batch_size}"
        + (", bfloat16 autocast" if amp else ""),
        flush=True,
    )
    if amp and device.type == "cpu" and not has_native_bf16():
        # a Zen 3 (AVX2 only): 170 s a small-preset step against 6.0 in float32 (bench/train_step.py)
        print(
            "warning: train.cpu_bf16 on a CPU without native bfloat16 (no AVX-512 BF16 or AMX): "
            "autocast emulates it and a step is several times slower than float32 here; "
            "set train.cpu_bf16=false",
            file=sys.stderr,
            flush=True,
        )


def _loader(cfg: TrainConfig, ctx: Distributed, start: int) -> torch.utils.data.DataLoader:
    """This process's batches from step ``start`` on (``TrainingBatches`` makes them whole)."""
    return batch_loader(TrainingBatches(cfg, ctx.rank, ctx.world, start), cfg)


def _progress_bar(t, start: int):
    from tqdm.auto import tqdm

    return tqdm(total=t.steps, initial=start, desc="training", unit="step", dynamic_ncols=True)


def _step(
    objective,
    model,
    ema,
    optimizer,
    skips: _SkippedSteps,
    batch: dict,
    space,
    device: torch.device,
    amp: bool,
    t,
    rank: int,
) -> tuple[dict, torch.Tensor, float]:
    """One optimiser step on ``batch`` (skipped where the loss or gradient is not finite), then
    the EMA; returns the loss terms, the gradient norm and the learning rate."""
    step = int(batch["step"])
    lr = learning_rate(t, step)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    torch.manual_seed(_step_seed(t.seed, step, rank))  # dropout draws depend on the step only
    model.train()
    terms, grad_norm = _gradient(objective, model, batch, space, device, amp, t.grad_clip)
    if not skips.check(terms["loss"], grad_norm, step, batch):
        optimizer.step()
    ema.update_parameters(model)
    return terms, grad_norm, lr


def _train(cfg: TrainConfig, out: Path, ckpt_dir: Path, ctx: Distributed, resume: bool, progress: bool) -> dict:
    t = cfg.train
    device = pick_device(t.device, ctx.local_rank)
    if t.threads:
        torch.set_num_threads(t.threads)
    previous = _previous_checkpoint(ckpt_dir, resume)
    model, ema, optimizer, start, counts = _build(cfg, device, previous if resume else None)

    objective = _objective(model, ctx, device, t.supervision)
    amp = t.amp and (device.type == "cuda" or (device.type == "cpu" and t.cpu_bf16))
    space = model.space

    # a denoiser restores nothing by itself: the zero-shot solvers' benchmarks judge it
    val = validation_set(cfg) if ctx.main and cfg.model.kind == "unfolding" else None
    if ctx.main:
        log, val_log = _open_logs(out, cfg)
        _announce(cfg, model, counts, device, ctx, start, amp)
    loader = _loader(cfg, ctx, start)
    bar = _progress_bar(t, start) if progress and ctx.main else None

    last_rows: list[dict] = []
    last_loss = math.nan
    skips = _SkippedSteps(out / "skipped_steps.csv")
    ckpt_path = previous
    t0 = time.perf_counter()
    tick, tick_step = t0, start

    def validate(step: int) -> list[dict]:
        return _validate(ema.module, val, cfg, val_log, bar, step) if val is not None else []

    for batch in loader:
        terms, grad_norm, lr = _step(objective, model, ema, optimizer, skips, batch, space, device, amp, t, ctx.rank)
        done = int(batch["step"]) + 1
        last_loss = float(terms["loss"].item())

        if ctx.main:
            if done % t.log_every == 0 or done == t.steps:
                now = time.perf_counter()
                speed = (done - tick_step) * t.batch_size / max(now - tick, 1e-9)
                tick, tick_step = now, done
                _log_step(log, bar, done, terms, lr, grad_norm, batch["task"], speed, now - t0)
            if bar:
                bar.update(1)
        final = done == t.steps
        if (t.val_every and done % t.val_every == 0) or final:
            if ctx.main:
                last_rows = validate(done)
            ctx.barrier()
        if (t.checkpoint_every and done % t.checkpoint_every == 0) or final:
            if ctx.main:
                ckpt_path = _save(ckpt_dir, done, model, ema, optimizer, cfg, counts, ctx)
            ctx.barrier()
    if bar:
        bar.close()
    return _summary(t, start, t0, last_loss, last_rows, ckpt_path, counts)


def _objective(model: DiffUnfolding, ctx: Distributed, device: torch.device, supervision: str = "supervised"):
    """The training objective, wrapped for DistributedDataParallel when there are several processes."""
    objective = SSDUObjective(model) if supervision == "ssdu" else UnfoldingObjective(model)
    if ctx.world > 1:
        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    return objective


def _save(ckpt_dir: Path, done: int, model, ema, optimizer, cfg: TrainConfig, counts, ctx: Distributed) -> Path:
    """Write the checkpoint of step ``done`` (and drop the oldest beyond train.keep_checkpoints)."""
    return save_checkpoint(
        ckpt_dir,
        done,
        model,
        ema,
        optimizer,
        cfg.to_dict(),
        {"parameters": counts, "world_size": ctx.world},
        keep=cfg.train.keep_checkpoints,
    )


def _summary(t, start: int, t0: float, last_loss: float, last_rows: list[dict], ckpt_path, counts) -> dict:
    """What :func:`train` returns: steps, time, the last loss, validation rows and checkpoint."""
    return {
        "steps": t.steps,
        "started_at": start,
        "seconds": time.perf_counter() - t0,
        "loss": last_loss,
        "validation": last_rows,
        "checkpoint": str(ckpt_path) if ckpt_path else None,
        "parameters": counts,
    }

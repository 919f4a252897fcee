"""What the learned baselines (``cedm.py``, ``varnet.py``, ``ssdiffrecon.py``) share: the training
data (the SDK's own ``TrainingBatches``, so a baseline sees exactly the batches the unfolded
model is trained on), atomic single-file safetensors checkpoints with ``--resume``, EDM's EMA
and learning-rate schedule (``diffunfold.training.trainer``), the training loop with its
progress bar, and the command-line options every script takes.

A checkpoint is one ``.safetensors`` file (model, EMA and Adam tensors; the settings, the step
and the training config as JSON in its metadata), written to a temporary name and renamed into
place, so an interrupted write never leaves a half checkpoint. Never pickles.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.optim.swa_utils import AveragedModel

from diffunfold.errors import InputError
from diffunfold.safe_io import atomic_write
from diffunfold.training.config import TrainConfig, load_config
from diffunfold.training.data import TrainingBatches, batch_loader
from diffunfold.training.trainer import ema_update, learning_rate

ROOT = Path(__file__).resolve().parents[2]
FORMAT = "diffunfold-learned-baseline/1"
_NAME = re.compile(r"^step-(\d{8})\.safetensors$")
PHOTOS = ROOT / "data" / "photos"
MRI = ROOT / "data" / "mri"


def image_config(task: str, extra: list[str] | None = None) -> TrainConfig:
    """The ``small`` preset on the real photos (``data/photos``), one task family."""
    sets = [
        'data.source="folder"',
        f'data.path="{PHOTOS / "train"}"',
        f'data.val_path="{PHOTOS / "held-out"}"',
        "data.native_crops=true",
        "data.cache_images=true",
        f'data.tasks=["{task}"]',
    ]
    return load_config("small", sets + list(extra or []))


def mri_config(kind: str, acceleration: float, extra: list[str] | None = None) -> TrainConfig:
    """The ``mri-small`` preset on the training heads (``data/mri``) through the scanner
    pipeline (estimated maps, native-resolution windows), one mask."""
    sets = [
        'data.source="volumes"',
        f'data.path="{MRI / "train"}"',
        f'data.val_path="{MRI / "held-out"}"',
        "data.native_crops=true",
        "data.scanner=true",
        f'data.mri_patterns=[["{kind}", {float(acceleration)}]]',
    ]
    return load_config("mri-small", sets + list(extra or []))


def parse_mask(text: str) -> tuple[str, float]:
    """``gaussian1d:4`` -> ``("gaussian1d", 4.0)``."""
    kind, sep, acc = text.partition(":")
    try:
        value = float(acc)
    except ValueError:
        value = -1.0
    if not sep or value <= 1:
        raise InputError(f"--mask looks like KIND:ACCELERATION (e.g. gaussian1d:4), got {text!r}")
    return kind, value


def add_training_arguments(p: argparse.ArgumentParser, steps: int, lr: float) -> None:
    """The options every baseline's ``train`` command takes."""
    p.add_argument("--out", required=True, help="run folder: checkpoints step-NNNNNNNN.safetensors and log.csv")
    p.add_argument("--steps", type=int, default=steps, help=f"optimiser steps in all (default {steps})")
    p.add_argument("--batch", type=int, default=8, help="images per step (default 8, as the bundled models)")
    p.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr:g})")
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps (default 50)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept (default 3; 0: all)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the networks (faster on AVX-512 BF16)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader processes preparing batches (default 1)")
    p.add_argument("--seed", type=int, default=0, help="the data seed (batches are fixed by seed and step)")
    p.add_argument(
        "--batch-cache",
        metavar="DIR",
        help="MRI: keep each batch in DIR once made, for another baseline trained on the same data and seed",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="more overrides of the training config, as `diffunfold train --set` takes them",
    )


def config_overrides(args) -> list[str]:
    """The command line's settings as TrainConfig overrides (a cosine decay over the whole run)."""
    return [
        f"train.steps={args.steps}",
        f"train.batch_size={args.batch}",
        f"train.lr={args.lr}",
        f"train.warmup_steps={args.warmup}",
        f"train.decay_steps={args.steps}",
        f"train.seed={args.seed}",
        f"data.workers={args.workers}",
        *args.set,
    ]


# -- checkpoints -------------------------------------------------------------------------


def list_checkpoints(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def save_checkpoint(folder: Path, step: int, model, ema, optimizer, meta: dict, keep: int = 3) -> Path:
    """``folder/step-<step>.safetensors``, atomically; keeps the newest ``keep`` (0: all)."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim/{idx}/{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    header = {**meta, "step": int(step), "param_groups": opt["param_groups"]}
    path = Path(folder) / f"step-{int(step):08d}.safetensors"
    text = {"format": FORMAT, "meta": json.dumps(header)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=text), durable=True)
    if keep > 0:
        for old in list_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(meta, tensors)`` of a checkpoint file, or of the newest one in a run folder."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise InputError(f"{path} holds no step-*.safetensors checkpoint; train into it first")
        path = found[-1]
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} does not exist; give a step-*.safetensors file or its run folder")
    try:
        with safe_open(str(path), framework="pt") as f:
            info = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # a damaged or foreign file: say which
        raise InputError(f"{path} is not a readable safetensors checkpoint ({exc})") from None
    if info.get("format") != FORMAT:
        raise InputError(f"{path} is not a learned-baseline checkpoint (format {info.get('format')!r})")
    return json.loads(info["meta"]), tensors


def part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def load_ema_model(checkpoint: str | Path, kind: str, label: str, make: Callable[[dict], torch.nn.Module]):
    """``(model, meta)``: the EMA weights of a ``kind`` checkpoint (file or run folder) in
    ``make(model settings)``; another baseline's checkpoint is refused, naming ``label`` ("a cEDM")."""
    meta, tensors = read_checkpoint(checkpoint)
    if meta["settings"].get("kind") != kind:
        raise InputError(f"{checkpoint} is not {label} checkpoint (kind {meta['settings'].get('kind')!r})")
    model = make(meta["settings"]["model"])
    ema = {k[len("module.") :]: v for k, v in part(tensors, "ema").items() if k.startswith("module.")}
    model.load_state_dict(ema)
    return model, meta


def _optimizer_state(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict] = {}
    for key, v in part(tensors, "optim").items():
        idx, k = key.split("/", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": groups}


# -- batches ---------------------------------------------------------------------------

_CACHED = ("x", "y", "sigma", "noise", "sigma_y")


class CachedBatches(torch.utils.data.Dataset):
    """``TrainingBatches`` of MRI scanner batches, each kept as ``<folder>/<step>.npz`` once made,
    so that two baselines trained on the same config and seed (VarNet and cEDM) pay for the
    scanner pipeline's ESPIRiT once. A batch is fixed by (config, seed, step), so a cached one
    is the batch itself; the folder's name holds a hash of the data settings and the seed."""

    def __init__(self, cfg: TrainConfig, folder: str | Path, start: int = 0):
        self.inner = TrainingBatches(cfg, start=start)
        data = {k: v for k, v in cfg.to_dict()["data"].items() if k != "workers"}  # workers do not change a batch
        key = json.dumps([data, cfg.train.seed, cfg.train.batch_size], sort_keys=True)
        digest = __import__("hashlib").sha256(key.encode()).hexdigest()[:12]
        self.folder = Path(folder) / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        self.start = start

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> dict:
        from diffunfold.physics.mri import MultiCoilMRI

        path = self.folder / f"{self.start + int(i):08d}.npz"
        if path.exists():
            with np.load(path) as f:
                item = {k: f[k] for k in _CACHED}
                item["operator"] = MultiCoilMRI(f["maps"], f["mask"])
                item["step"] = int(f["step"])
                return item
        item = self.inner[i]
        arrays = {k: np.asarray(item[k]) for k in _CACHED}
        op = item["operator"]
        arrays.update(maps=op.coil_maps.astype(np.complex64), mask=op.mask.astype(np.float32), step=item["step"])
        atomic_write(path, lambda tmp: _savez(tmp, arrays))
        return item


def _savez(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# -- training ----------------------------------------------------------------------------


def make_ema(model: torch.nn.Module, cfg: TrainConfig) -> AveragedModel:
    t = cfg.train
    return AveragedModel(
        model, multi_avg_fn=ema_update(t.batch_size, t.ema_halflife_images, t.ema_rampup), use_buffers=True
    )


def _resume(out: Path, model, ema, optimizer, settings: dict) -> int:
    meta, tensors = read_checkpoint(out)
    if meta["settings"] != settings:
        raise InputError(
            f"the newest checkpoint in {out} was written for other settings ({meta['settings']}); "
            "resume with the options it was trained with, or choose another --out"
        )
    model.load_state_dict(part(tensors, "model"))
    ema.load_state_dict(part(tensors, "ema"))
    optimizer.load_state_dict(_optimizer_state(tensors, meta["param_groups"]))
    return int(meta["step"])


def train(
    model: torch.nn.Module,
    settings: dict,
    cfg: TrainConfig,
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
    out: str | Path,
    resume: bool = False,
    checkpoint_every: int = 100,
    keep: int = 3,
    bf16: bool = False,
    progress: bool = True,
    batch_cache: str | Path | None = None,
) -> dict:
    """Adam with EDM's EMA on ``loss_fn(model, batch)`` over ``cfg``'s batches; checkpoints
    into ``out``. ``settings`` rebuild the model (``load`` reads them back); ``batch_cache``:
    a folder for :class:`CachedBatches` (MRI). Returns a summary."""
    out = Path(out)
    if not resume and list_checkpoints(out):
        raise InputError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    ema = make_ema(model, cfg)
    start = _resume(out, model, ema, optimizer, settings) if resume and list_checkpoints(out) else 0
    meta = {"settings": settings, "config": cfg.to_dict()}
    batches = CachedBatches(cfg, batch_cache, start) if batch_cache else TrainingBatches(cfg, start=start)
    loader = batch_loader(batches, cfg)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "log.csv").open("a", buffering=1)  # line-buffered: readable while it runs
    bar = _bar(cfg.train.steps, start, progress)
    t0, losses, done = time.perf_counter(), [], start
    for batch in loader:
        loss = _step(model, ema, optimizer, batch, cfg, loss_fn, bf16)
        done = int(batch["step"]) + 1
        losses.append(loss)
        log.write(f"{done},{loss:.6g},{time.perf_counter() - t0:.2f}\n")
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4g}")
        if done % checkpoint_every == 0 or done == cfg.train.steps:
            save_checkpoint(out, done, model, ema, optimizer, meta, keep)
    bar.close()
    log.close()
    seconds = time.perf_counter() - t0
    steps = done - start
    return {"steps": steps, "seconds": seconds, "s_per_step": seconds / max(steps, 1), "last_loss": losses[-1:]}


def _bar(total: int, start: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="training", unit="step", dynamic_ncols=True, disable=not enabled)


def _step(model, ema, optimizer, batch: dict, cfg: TrainConfig, loss_fn, bf16: bool) -> float:
    """One Adam step (skipped when the loss is not finite), then the EMA."""
    step = int(batch["step"])
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(cfg.train, step)
    torch.manual_seed(cfg.train.seed * 1_000_003 + step)  # any random draw depends on the step only
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(model, batch)
    if math.isfinite(float(loss.detach())):
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
    ema.update_parameters(model)
    return float(loss.detach())


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_from_args(model, settings: dict, cfg, loss, args) -> dict:
    """:func:`train` with the run options every baseline's command line shares."""
    return train(
        model,
        settings,
        cfg,
        loss,
        args.out,
        args.resume,
        args.checkpoint_every,
        args.keep,
        args.bf16,
        batch_cache=args.batch_cache,
    )


def train_command(name: str, args, build: Callable[[], tuple], loss) -> int:
    """Every baseline's ``train`` command: ``build()`` -> ``(model, settings, cfg)``, then
    :func:`train_from_args`; a refusal prints ``error: ...`` and exits with status 2."""
    try:
        model, settings, cfg = build()
        print(f"{name}: {count_parameters(model):,} parameters, batch {args.batch}", flush=True)
        summary = train_from_args(model, settings, cfg, loss, args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary, flush=True)
    return 0

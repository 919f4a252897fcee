"""Checkpoints: safetensors for every tensor, plus a small JSON of settings and step.

A checkpoint is ``ckpt-<step>.safetensors`` (model, EMA and optimizer tensors) and
``ckpt-<step>.json`` (format, step, config, optimizer hyper-parameters, the sha256 of the
tensors file). Both are written to a temporary file, flushed to disk and renamed into place;
the JSON is written last, so a checkpoint without its JSON (a write that was interrupted) is
never picked up, and a checksum mismatch is refused. Never pickles.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..package import sha256_file
from ..safe_io import atomic_write, write_json
from .model import DiffUnfolding, ModelSettings

FORMAT = "diffunfold-checkpoint/1"
_NAME = re.compile(r"^ckpt-(\d{8})\.json$")


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            tensors[f"optim/{idx}/{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        idx, k = key.split("/", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: DiffUnfolding,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict,
    extra: dict | None = None,
    keep: int = 3,
) -> Path:
    """Write the checkpoint of ``step``; keep the newest ``keep`` (0: all). Returns the JSON path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    tensors.update(opt_tensors)
    stem = f"ckpt-{int(step):08d}"
    weights = directory / f"{stem}.safetensors"
    atomic_write(
        weights, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT, "step": str(step)}), durable=True
    )
    meta = {
        "format": FORMAT,
        "step": int(step),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "weights": weights.name,
        "sha256": sha256_file(weights),
        "model": model.settings.to_dict(),
        "config": config,
        "optimizer": opt_meta,
        **(extra or {}),
    }
    json_path = directory / f"{stem}.json"
    write_json(json_path, meta, indent=1, durable=True)  # last: its presence marks a complete checkpoint
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)
    return json_path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints (their JSON exists) in step order."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint JSON from a JSON/safetensors path or a run folder (its newest checkpoint)."""
    p = Path(path)
    if p.is_dir():
        found = latest_checkpoint(p) or latest_checkpoint(p / "checkpoints")
        if found is None:
            raise InputError(f"no complete checkpoint (ckpt-*.json) in {str(p)!r}")
        return found
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.exists():
        raise InputError(
            f"checkpoint {str(p)!r} not found (its .json is written last; a missing one "
            "means the write was interrupted: use the previous checkpoint)"
        )
    return p


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(meta, tensors)`` of a checkpoint, after checking its format and checksum."""
    json_path = resolve_checkpoint(path)
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{json_path} is not valid JSON ({exc}); the checkpoint is damaged") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{json_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    weights = json_path.with_name(meta["weights"])
    if not weights.exists():
        raise InputError(f"{weights} is missing; the checkpoint is incomplete")
    digest = sha256_file(weights)
    if digest != meta["sha256"]:
        raise InputError(
            f"{weights} does not match the checksum in {json_path.name} "
            f"({digest[:12]} != {meta['sha256'][:12]}): the file was changed or damaged"
        )
    return meta, load_file(weights)


def _split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def load_training_state(
    path: str | Path, model: DiffUnfolding, ema: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict:
    """Restore model, EMA and optimizer in place; returns the checkpoint's meta (with ``step``)."""
    meta, tensors = read_checkpoint(path)
    if ModelSettings.from_dict(meta["model"]).to_dict() != model.settings.to_dict():
        raise InputError(
            "the checkpoint was written for different model settings than this config; "
            "resume with the config it was trained with"
        )
    model.load_state_dict(_split(tensors, "model"))
    ema.load_state_dict(_split(tensors, "ema"))
    optimizer.load_state_dict(_optimizer_state(_split(tensors, "optim"), meta["optimizer"]))
    return meta


def load_model(
    path: str | Path, weights: str = "ema", device: str | torch.device = "cpu"
) -> tuple[DiffUnfolding, dict]:
    """The model of a checkpoint with its EMA (default) or raw weights, in eval mode."""
    if weights not in ("ema", "model"):
        raise InputError(f"weights must be 'ema' or 'model', got {weights!r}")
    meta, tensors = read_checkpoint(path)
    model = DiffUnfolding(ModelSettings.from_dict(meta["model"]))
    state = _split(tensors, weights)
    if weights == "ema":  # torch.optim.swa_utils.AveragedModel keeps the network under "module."
        state = {k[len("module.") :]: v for k, v in state.items() if k.startswith("module.")}
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def checkpoint_summary(meta: dict[str, Any]) -> str:
    return f"step {meta['step']} ({meta.get('time', '?')})"

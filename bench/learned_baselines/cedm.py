"""cEDM, conditional EDM (the paper's Appendix C.1): an EDM denoiser ``D(x; s, c)`` whose U-Net
also receives the measurement brought to image space, ``c``, concatenated to its input; one
model per task, sampled with EDM's Heun sampler (18 steps, 35 network calls, the paper's cEDM).

``D(x; s, c) = c_skip(s) x + c_out(s) F([c_in(s) x, c]; c_noise(s))``: EDM's preconditioning
on the x part only (``diffunfold.edm``); ``c`` is already at the data's scale. The U-Net is
the SDK's (``diffunfold.training.unet.UNet``) at the bundled models' preset (32 channels, mult
[1, 2, 2, 4], 1 block, attention at H/8 and in the middle), with ``in_channels`` = image
channels + conditioning channels. Trained with EDM's loss ``lambda(s) ||D - x||^2`` on the
SDK's own training batches (``TrainingBatches``, one task family).

The conditioning ``c`` (:func:`condition`), in model space:

* images: ``A^T y / ||A||^2``, the adjoint normalised by the operator's Lipschitz constant. It
  is linear in ``y`` and defined for every operator at the image size (SR: nearest-neighbour
  upsampling; inpainting: ``y`` with zeros at the missing pixels, plus the mask as one more
  channel). For a blur it is ``y`` blurred once more: each frequency's signal and noise are
  scaled alike, so no information is lost, and no noise is amplified as a Wiener or pseudo-
  inverse estimate would at sigma_y 0.05; the network learns the inversion itself.
* MRI: the zero-filled image combined with the (estimated) coil maps, ``A^H y`` (2 channels:
  real, imaginary).

Start (``--init``): the bundled package's U-Net. Its input convolution gets zero weights for
the conditioning channels, and its 4-stage embedding is folded at stage 0 (the stage's vector
added to the embedding's first bias, which is exactly how it enters), so that at step 0 cEDM
*is* the bundled regulariser at stage 0, the stage that sees the noisy input as cEDM does.

    python bench/learned_baselines/cedm.py train --task gaussian_blur --init samples/models/image-small \\
        --out runs/cedm-gaussian-blur --steps 1500 --bf16
    python bench/learned_baselines/cedm.py train --task mri --mask gaussian1d:4 \\
        --init samples/models/mri-small --out runs/cedm-mri-g1d4 --steps 600 --bf16

In Python: ``load(checkpoint).restore(y, operator, noise_std, seed)`` -> the image (user space).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffunfold import edm  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402
from diffunfold.spaces import DataSpace  # noqa: E402
from diffunfold.training.model import UNetSettings  # noqa: E402
from diffunfold.training.package_weights import fold_stage  # noqa: E402
from diffunfold.training.unet import UNet  # noqa: E402
from learned_baselines import shared  # noqa: E402

PRESET = {
    "channels": 32,
    "channel_mult": [1, 2, 2, 4],
    "num_blocks": 1,
    "attention_levels": [3],
    "mid_attention": True,
    "head_channels": 32,
}
IMAGE_TASKS = ("gaussian_blur", "anisotropic_blur", "sr", "inpainting")
STEPS, SAMPLER = 18, "heun"  # 35 network calls: the paper's cEDM


def condition_channels(task: str, space: DataSpace) -> int:
    return space.model_channels + (1 if task == "inpainting" else 0)


def condition(y, operator, space: DataSpace) -> np.ndarray:
    """The measurement in image space, model-space float32 ``(B, C_cond, H, W)`` (module docstring)."""
    back = np.asarray(operator.AT(y)) / operator.lipschitz
    c = np.asarray(space.to_model(back), dtype=np.float32)
    if operator.task == "inpainting":
        mask = np.broadcast_to(np.asarray(operator.mask, dtype=np.float32)[:, :1], (len(c), 1, *c.shape[-2:]))
        c = np.concatenate([c, 2 * mask - 1], axis=1)
    return c


class ConditionalEDM(nn.Module):
    """``D(x; s, c)``; ``settings``: ``{"data", "channels", "task", "unet"}`` (JSON)."""

    def __init__(self, settings: dict):
        super().__init__()
        self.settings = settings
        self.space = DataSpace(settings["data"], int(settings["channels"]))
        self.task = settings["task"]
        self.cond_channels = condition_channels(self.task, self.space)
        c = self.space.model_channels
        self.unet = UNetSettings(**settings["unet"]).build(c + self.cond_channels, c)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        f = self.unet(torch.cat([edm.c_in(s) * x, cond.to(x.dtype)], dim=1), edm.c_noise(sigma.to(x.dtype)))
        return edm.c_skip(s) * x + edm.c_out(s) * f.to(x.dtype)


def make_settings(task: str, preset: dict | None = None, channels: int = 3) -> dict:
    if task != "mri" and task not in IMAGE_TASKS:
        raise InputError(f"--task must be one of {(*IMAGE_TASKS, 'mri')}, got {task!r}")
    data = "mri" if task == "mri" else "image"
    return {"data": data, "channels": 1 if data == "mri" else channels, "task": task, "unet": dict(preset or PRESET)}


def from_regularizer(model: ConditionalEDM, unet: UNet) -> None:
    """Copy an unconditional (possibly stage-shared) U-Net into ``model``: zero weights for the
    conditioning channels, stage 0's embedding folded into ``map0``'s bias."""
    state = fold_stage({k: v.detach().clone() for k, v in unet.state_dict().items()})
    w = state["input_conv.weight"]
    state["input_conv.weight"] = torch.cat([w, w.new_zeros(w.shape[0], model.cond_channels, *w.shape[2:])], dim=1)
    try:
        model.unet.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"the package's U-Net does not fit the cEDM preset: {str(exc)[:300]}") from None


def init_from_package(model: ConditionalEDM, package: str | Path) -> None:
    """Start from a Diff-Unfolding package's (or training checkpoint's) first regulariser, or
    from another cEDM checkpoint (its EMA weights; the same task and U-Net)."""
    from diffunfold.package import ModelPackage
    from diffunfold.training.model import DiffUnfolding, ModelSettings
    from diffunfold.training.package_weights import initialise_from

    path = Path(package)
    if path.suffix == ".safetensors" or shared.list_checkpoints(path):
        model.load_state_dict(load(path).model.state_dict())
        return
    if (path / "manifest.json").exists():
        settings = ModelSettings.from_dict(ModelPackage.open(path).settings)
    else:
        from diffunfold.training.checkpoint import load_model

        settings = load_model(path)[0].settings
    source = DiffUnfolding(settings)
    initialise_from(source, str(path))
    from_regularizer(model, source.regularizers[0].unet)


def cedm_loss(model: ConditionalEDM, batch: dict) -> torch.Tensor:
    """EDM's loss ``mean_b lambda(s) ||D(x + s n; s, c) - x||^2 / numel`` on one batch. With
    ``settings["levels"] = [p_mean, p_std]`` the batch's levels (EDM's ln s ~ N(-1.2, 1.2^2)) are
    mapped to ln s ~ N(p_mean, p_std^2), the same draw standardised (``--levels``)."""
    space = model.space
    x = torch.as_tensor(np.asarray(space.to_model(batch["x"]), dtype=np.float32))
    cond = torch.as_tensor(condition(batch["y"], batch["operator"], space))
    sigma = torch.as_tensor(batch["sigma"], dtype=torch.float32)
    if model.settings.get("levels"):
        p_mean, p_std = model.settings["levels"]
        sigma = torch.exp(p_mean + p_std * (sigma.log() - edm.P_MEAN) / edm.P_STD)
    noise = torch.as_tensor(batch["noise"], dtype=torch.float32)
    d = model(x + sigma.reshape(-1, 1, 1, 1) * noise, sigma, cond)
    mse = ((d.float() - x) ** 2).flatten(1).mean(1)
    return (edm.loss_weight(sigma) * mse).mean()


@torch.no_grad()
def sample(model: ConditionalEDM, cond: np.ndarray, seeds, steps: int = STEPS, sampler: str = SAMPLER) -> np.ndarray:
    """EDM's deterministic sampler from ``x ~ N(0, 80^2)``; model space ``(B, C, H, W)``."""
    model.eval()
    c = torch.as_tensor(cond)
    shape = (model.space.model_channels, *cond.shape[-2:])
    x = torch.as_tensor(edm.initial_noise(edm.seeds_for(seeds, len(cond)), shape))

    def denoise(v, s):
        return model(v, torch.full((len(v),), s, dtype=torch.float32), c)

    out, _ = edm.sample_loop(denoise, x, edm.schedule(steps), sampler)
    return out.numpy()


class Restorer:
    """A trained cEDM behind the comparison table's interface."""

    def __init__(self, model: ConditionalEDM, meta: dict):
        self.model, self.meta = model, meta
        self.nfe = edm.nfe_of(STEPS, SAMPLER)
        self.parameters = shared.count_parameters(model)

    def restore(self, y, operator, noise_std=None, seed: int = 0) -> np.ndarray:
        """The restored image in user space (images clipped to [0, 1]; MRI complex). ``noise_std``
        is not used: cEDM reads the noise level off its input, as trained."""
        space = self.model.space
        given = operator.spec().get("task", operator.task)  # anisotropic blur is a GaussianBlur too
        if given != self.model.task:
            raise InputError(f"this cEDM was trained for {self.model.task!r}, not {given!r}")
        y = np.asarray(y)
        if y.ndim != 4:
            raise InputError(f"y must be a batch (B, C, H, W), got shape {y.shape}")
        cond = condition(y, operator, space)
        m = self.model.unet.size_multiple
        if cond.shape[-1] % m or cond.shape[-2] % m:
            raise InputError(f"image size {cond.shape[-2:]} must be a multiple of {m}; crop or pad it")
        x = space.to_user(sample(self.model, cond, seed))
        return np.asarray(space.clip(x))


def load(checkpoint: str | Path) -> Restorer:
    """A trained cEDM (its EMA weights) from a checkpoint file or run folder."""
    model, meta = shared.load_ema_model(checkpoint, "cedm", "a cEDM", ConditionalEDM)
    return Restorer(model.eval(), meta)


def build(args) -> tuple[ConditionalEDM, dict, object]:
    """The model, its settings and the training config a command line asks for."""
    extra = shared.config_overrides(args)
    if args.task == "mri":
        cfg = shared.mri_config(*shared.parse_mask(args.mask), extra)
    else:
        cfg = shared.image_config(args.task, extra)
    preset = {k: v for k, v in cfg.model.unet.__dict__.items() if k != "dropout"}
    preset = {k: list(v) if isinstance(v, tuple) else v for k, v in preset.items()}
    model_settings = make_settings(args.task, preset, cfg.model.channels)
    if args.levels:
        if args.levels[1] <= 0:
            raise InputError(f"--levels P_MEAN P_STD needs P_STD > 0, got {args.levels}")
        model_settings["levels"] = [float(v) for v in args.levels]
    model = ConditionalEDM(model_settings)
    settings = {"kind": "cedm", "model": model_settings, "init": args.init, "mask": args.mask}
    return model, settings, cfg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python bench/learned_baselines/cedm.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train one cEDM (one task) into --out")
    tr.add_argument("--task", required=True, help=f"one of {(*IMAGE_TASKS, 'mri')}")
    tr.add_argument(
        "--mask", default="gaussian1d:4", help="MRI: the one mask, KIND:ACCELERATION (default gaussian1d:4)"
    )
    tr.add_argument(
        "--init",
        help="start from this package's (or checkpoint's, or a cEDM run's) U-Net, e.g. samples/models/image-small",
    )
    tr.add_argument(
        "--levels",
        type=float,
        nargs=2,
        metavar=("P_MEAN", "P_STD"),
        help="training noise levels ln s ~ N(P_MEAN, P_STD^2) instead of EDM's (-1.2, 1.2): a diagnostic variant",
    )
    shared.add_training_arguments(tr, steps=1500, lr=1e-4)
    args = ap.parse_args(argv)

    def build_and_start():
        model, settings, cfg = build(args)
        if args.init and not args.resume:
            init_from_package(model, args.init)
        return model, settings, cfg

    return shared.train_command(f"cEDM {args.task}", args, build_and_start, cedm_loss)


if __name__ == "__main__":
    sys.exit(main())

"""SSDiffRecon (Korkmaz, Cukur and Patel, MICCAI 2023), the baseline of the paper's Table 4: a
conditional diffusion model for multi-coil MRI trained from undersampled k-space only, whose
network unrolls cross-attention transformer layers with data-consistency layers. Written here
in torch from the paper and the description of its public (TensorFlow) release.

**The diffusion** is DDPM's: betas linear from 1e-4 to 0.02 over T = 1000 steps for training,
the network predicting the clean image ``x_0``. Sampling, as the release evaluates: the same
linear betas over 5 steps, started from the zero-filled image ``A^H y`` (not from noise),
DDPM's ancestral step with the fixed-large variance; 5 network calls. The network is told the
step ``t``, never the noise level of the measurement.

**Self-supervised training.** A batch carries no clean image (the SDK's
``train.supervision = "ssdu"`` batches, ``diffunfold.training.self_supervised``): the measured
points are split into a data part ``Theta`` and a loss part ``Lambda``. ``x_0`` is the
zero-filled image of the data part, ``A_Theta^H y_Theta``, as in the release; the network sees
``x_t`` and ``y_Theta``; the loss is the mean absolute k-space error on ``Lambda``,
``|M_Lambda (F S D - y)|`` over the held-out points and coils.

**The network** works at full resolution (no down-sampling), ``channels`` wide:

* a mapper turns ``t`` into ``latents`` local latent vectors and one global one (a time
  embedding spread over learned latent positions, then residual MLP layers with self-attention
  among the local latents);
* a 7x7 stem convolution, then ``blocks`` blocks, each two layers (a 3x3 convolution modulated
  by the global latent, StyleGAN2's modulation and demodulation; a cross-attention from every
  pixel to the local latents whose output scales the normalised features, GANformer's
  multiplicative integration; leaky ReLU) with a skip, then a data-consistency unit (1x1 to the
  image, hard data consistency, 1x1 back, leaky ReLU) with a skip;
* a 1x1 output convolution modulated by the global latent, then data consistency.

Hard data consistency puts the measured coil k-space where it was measured:
``R F^-1 (M y + (1 - M) F S x)``, ``R = sum_c conj(S_c) .`` (the coil combination).

Differences from the release, on purpose: data consistency and the loss use the measured coil
k-space ``y`` itself (the release re-projects its coil-combined zero-filled image, ``F S A^H y``,
which is not ``y`` where the maps are estimated); the coil maps are the scanner pipeline's
ESPIRiT maps, as every method here sees them; the split keeps the calibration region whole in
the data part and holds ``--loss-fraction`` of the other measured points out (the release: 5 %
of all measured points, the default here too); the mapper has 4 layers (the release: 8) and the
layers no fixed noise maps; the image is not clipped (MRI images are normalised by the 99th
percentile of the magnitude, so about 1 % of the pixels exceed 1). Defaults: the release's 64
channels, 6 blocks, 16 latents of 32 dimensions.

    python bench/learned_baselines/ssdiffrecon.py train --mask gaussian2d:4 --out runs/ssdiffrecon-g2d4 --steps 1000

In Python: ``load(checkpoint).restore(y, operator, noise_std, seed)`` -> the complex image.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffunfold.errors import InputError  # noqa: E402
from learned_baselines import shared  # noqa: E402
from learned_baselines.varnet import combine, fft2c, ifft2c, physics  # noqa: E402

DEFAULTS = {"channels": 64, "blocks": 6, "latents": 16, "latent_dim": 32, "mapper_layers": 4}
TRAIN_T, SAMPLE_T = 1000, 5  # DDPM steps for training; the release's sampling steps
BETA_START, BETA_END = 1e-4, 0.02
LOSS_FRACTION = 0.05  # the release's split: 95 % of the measured points to the data part
SLOPE = 0.2  # leaky ReLU


class Schedule:
    """DDPM's linear betas over ``steps``: the forward marginals and the posterior step."""

    def __init__(self, steps: int):
        b = torch.linspace(BETA_START, BETA_END, steps, dtype=torch.float64)
        abar = torch.cumprod(1 - b, 0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.steps = steps
        self.signal, self.noise = abar.sqrt(), (1 - abar).sqrt()
        self.coef_x0 = b * prev.sqrt() / (1 - abar)
        self.coef_xt = (1 - prev) * (1 - b).sqrt() / (1 - abar)
        posterior = b * (1 - prev) / (1 - abar)
        large = torch.cat([posterior[1:2], b[1:]]) if steps > 1 else b  # "fixed large"
        self.std = large.sqrt()

    def at(self, name: str, t: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)[t].float().view(-1, 1, 1, 1)


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The transformer's sinusoidal embedding of the step index, (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def pixel_positions(h: int, w: int, dim: int) -> torch.Tensor:
    """Sinusoidal embeddings of each pixel's position *relative to the image* (HW, dim), so a
    model trained on 64 px windows places the pixels of a 256 px slice in the same range."""
    quarter = dim // 4
    freqs = math.pi * 2.0 ** torch.arange(quarter, dtype=torch.float32)
    rows = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    cols = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    a, b = r.reshape(-1, 1) * freqs, c.reshape(-1, 1) * freqs
    return torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], dim=1)


class Mapper(nn.Module):
    """``t`` -> ``(B, latents + 1, dim)``: the local latents, then the global one."""

    def __init__(self, latents: int, dim: int, layers: int):
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(dim, dim)
        self.positions = nn.Parameter(torch.randn(latents + 1, dim))
        self.attention = nn.ModuleList(nn.MultiheadAttention(dim, 1, batch_first=True) for _ in range(layers))
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(SLOPE), nn.Linear(dim, dim)) for _ in range(layers)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        z = self.embed(time_embedding(t, self.dim))[:, None] + self.positions
        z = z * torch.rsqrt(z.pow(2).mean(dim=-1, keepdim=True) + 1e-8)
        for attention, mlp in zip(self.attention, self.mlp):
            local = z[:, :-1]
            local = local + attention(local, local, local, need_weights=False)[0]
            z = torch.cat([local, z[:, -1:]], dim=1)
            z = z + mlp(z)
        return z


class ModulatedConv(nn.Module):
    """StyleGAN2's modulated convolution, in its unfused form: the input channels scaled by an
    affine map of the global latent, a shared convolution, then (``demodulate``) each output
    channel divided by the norm its modulated weights would have."""

    def __init__(self, cin: int, cout: int, kernel: int, dim: int, demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel) / math.sqrt(cin * kernel * kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.affine = nn.Linear(dim, cin)
        nn.init.zeros_(self.affine.weight)
        nn.init.ones_(self.affine.bias)  # starts unmodulated
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)  # (B, cin)
        out = F.conv2d(x * s[:, :, None, None], self.weight, padding=self.weight.shape[-1] // 2)
        if self.demodulate:
            norms = (s.pow(2) @ self.weight.pow(2).sum(dim=(2, 3)).T + 1e-8).rsqrt()  # (B, cout)
            out = out * norms[:, :, None, None]
        return out + self.bias[:, None, None]


class CrossAttention(nn.Module):
    """Every pixel attends to the local latents; the result scales the normalised features."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.query, self.key = nn.Linear(channels, dim), nn.Linear(dim, dim)
        self.value = nn.Linear(dim, channels)
        nn.init.zeros_(self.value.weight)
        nn.init.zeros_(self.value.bias)  # starts as a plain normalisation
        self.scale = dim**-0.5

    def forward(self, x: torch.Tensor, latents: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        f = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        weights = torch.softmax(self.scale * (self.query(f) + positions) @ self.key(latents).transpose(1, 2), dim=-1)
        f = F.layer_norm(f, (c,)) * (1 + weights @ self.value(latents))
        return f.transpose(1, 2).reshape(b, c, h, w)


class Layer(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.conv = ModulatedConv(channels, channels, 3, dim)
        self.attention = CrossAttention(channels, dim)

    def forward(self, x, local, glob, positions):
        return F.leaky_relu(self.attention(self.conv(x, glob), local, positions), SLOPE)


class Block(nn.Module):
    """Two layers with a skip, then the data-consistency unit with a skip."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.layers = nn.ModuleList([Layer(channels, dim), Layer(channels, dim)])
        self.to_image, self.from_image = nn.Conv2d(channels, 2, 1), nn.Conv2d(2, channels, 1)

    def forward(self, x, local, glob, positions, consistent):
        skip = x
        for layer in self.layers:
            x = layer(x, local, glob, positions)
        x = x + skip
        return x + F.leaky_relu(self.from_image(consistent(self.to_image(x))), SLOPE)


def data_consistency(image: torch.Tensor, y: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hard data consistency on a (real, imag) image (B, 2, H, W): the measured coil k-space where
    ``mask`` is 1, the image's own elsewhere; coil-combined back to (B, 2, H, W)."""
    x = torch.complex(image[:, :1].float(), image[:, 1:].float())
    k = torch.where(mask > 0, y, fft2c(maps * x))
    out = combine(ifft2c(k), maps)
    return torch.cat([out.real, out.imag], dim=1)


class SSDiffRecon(nn.Module):
    def __init__(self, settings: dict):
        super().__init__()
        self.settings = settings
        c, d = int(settings["channels"]), int(settings["latent_dim"])
        if d % 4:
            raise InputError(f"--latent-dim must be a multiple of 4, got {d}")
        self.mapper = Mapper(int(settings["latents"]), d, int(settings["mapper_layers"]))
        self.stem = nn.Conv2d(2, c, 7, padding=3)
        self.blocks = nn.ModuleList(Block(c, d) for _ in range(int(settings["blocks"])))
        self.out = ModulatedConv(c, 2, 1, d, demodulate=False)

    def forward(self, x_t, t, y, maps, mask) -> torch.Tensor:
        """``x_t`` (B, 2, H, W), ``t`` (B,) step indices, ``y`` (B, Nc, H, W) measured coil
        k-space, ``maps``, ``mask`` -> the clean image's estimate (B, 2, H, W), data-consistent."""
        z = self.mapper(t)
        local, glob = z[:, :-1], z[:, -1]
        positions = pixel_positions(*x_t.shape[-2:], local.shape[-1])
        consistent = lambda image: data_consistency(image, y, maps, mask)  # noqa: E731
        x = self.stem(x_t)
        for block in self.blocks:
            x = block(x, local, glob, positions, consistent)
        return consistent(self.out(x, glob))


def two_channels(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x.real, x.imag], dim=1)


def ssdiffrecon_loss(model: SSDiffRecon, batch: dict) -> torch.Tensor:
    """The self-supervised loss of an ``ssdu`` batch (module docstring); reads no clean image."""
    if "loss_y" not in batch:
        raise InputError('SSDiffRecon trains from self-supervised batches: set train.supervision="ssdu"')
    y, maps, mask = physics(batch["y"], batch["operator"])
    loss_y, _, held_out = physics(batch["loss_y"], batch["loss_operator"])
    x0 = two_channels(combine(ifft2c(y), maps))  # the data part's zero-filled image
    schedule = Schedule(TRAIN_T)
    t = torch.randint(0, TRAIN_T, (len(x0),))
    x_t = schedule.at("signal", t) * x0 + schedule.at("noise", t) * torch.randn_like(x0)
    d = model(x_t, t, y, maps, mask)
    residual = held_out * (fft2c(maps * torch.complex(d[:, :1].float(), d[:, 1:].float())) - loss_y)
    points = (held_out.expand_as(residual) > 0).sum().clamp(min=1)
    return residual.abs().sum() / points


@torch.no_grad()
def sample(model: SSDiffRecon, y, maps, mask, seed: int, steps: int = SAMPLE_T) -> torch.Tensor:
    """The release's sampler: ``steps`` ancestral DDPM steps from the zero-filled image."""
    schedule = Schedule(steps)
    gen = torch.Generator().manual_seed(int(seed))
    x = two_channels(combine(ifft2c(y), maps))
    for i in reversed(range(steps)):
        t = torch.full((len(x),), i, dtype=torch.long)
        d = model(x, t, y, maps, mask)
        x = schedule.at("coef_x0", t) * d + schedule.at("coef_xt", t) * x
        if i > 0:
            x = x + schedule.at("std", t) * torch.randn(x.shape, generator=gen)
    return torch.complex(x[:, :1], x[:, 1:])


class Restorer:
    """A trained SSDiffRecon behind the comparison tables' interface."""

    kind = "mri"

    def __init__(self, model: SSDiffRecon, meta: dict, steps: int = SAMPLE_T):
        self.model, self.meta, self.steps = model.eval(), meta, int(steps)
        self.nfe = self.steps
        self.parameters = shared.count_parameters(model)

    def restore(self, y, operator, noise_std=None, seed: int = 0) -> np.ndarray:
        y, maps, mask = physics(y, operator)
        return sample(self.model, y, maps, mask, seed, self.steps).numpy()


def load(checkpoint: str | Path) -> Restorer:
    """A trained SSDiffRecon (its EMA weights) from a checkpoint file or run folder."""
    model, meta = shared.load_ema_model(checkpoint, "ssdiffrecon", "an SSDiffRecon", SSDiffRecon)
    return Restorer(model, meta)


def self_supervised_overrides(loss_fraction: float) -> list[str]:
    """The SDK's SSDU batches, split by points as the release does."""
    return ['train.supervision="ssdu"', 'train.ssdu_split="points"', f"train.ssdu_fraction={float(loss_fraction)}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python bench/learned_baselines/ssdiffrecon.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train one SSDiffRecon (one mask) from undersampled k-space into --out")
    tr.add_argument("--mask", default="gaussian2d:4", help="the one mask, KIND:ACCELERATION (default gaussian2d:4)")
    for key, value in DEFAULTS.items():
        tr.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=value, help=f"default {value}")
    tr.add_argument(
        "--loss-fraction",
        type=float,
        default=LOSS_FRACTION,
        help=f"share of the measured points outside the calibration region held out for the loss "
        f"(default {LOSS_FRACTION}, the release's)",
    )
    shared.add_training_arguments(tr, steps=1000, lr=5e-4)
    args = ap.parse_args(argv)

    def build():
        if args.batch_cache:
            raise InputError("--batch-cache keeps supervised batches; SSDiffRecon trains without it")
        overrides = self_supervised_overrides(args.loss_fraction) + shared.config_overrides(args)
        cfg = shared.mri_config(*shared.parse_mask(args.mask), overrides)
        model_settings = {k: getattr(args, k) for k in DEFAULTS}
        if min(model_settings.values()) < 1:
            raise InputError(f"every size setting must be >= 1, got {model_settings}")
        settings = {"kind": "ssdiffrecon", "model": model_settings, "mask": args.mask, "loss": args.loss_fraction}
        return SSDiffRecon(model_settings), settings, cfg

    return shared.train_command("SSDiffRecon", args, build, ssdiffrecon_loss)


if __name__ == "__main__":
    sys.exit(main())

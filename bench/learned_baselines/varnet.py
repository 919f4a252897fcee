"""E2E-VarNet (Sriram et al. 2020), the fastMRI standard, for multi-coil MRI, written here in torch.

T cascades refine the multi-coil k-space ``k`` (starting from the measured ``y``); cascade t is

    k <- k - eta_t M (k - y) + F S r_t,   r_t = std * U_t((R F^-1 k - mean) / std),

``M`` the sampling mask, ``F`` the centred orthonormal 2-D FFT, ``S`` the coil maps,
``R = sum_c conj(S_c) .`` the coil combination, ``U_t`` a plain U-Net (conv, instance norm,
leaky ReLU; (real, imaginary) as 2 channels) on the normalised image, and ``eta_t`` a learned
soft data-consistency weight (start 1). The result is ``R F^-1 k`` after the last cascade.
Where ``M`` is 0 only the network changes ``k``; where it is 1 the data term pulls ``k``
towards ``y``. Each U-Net's last layer starts at zero, so an untrained VarNet returns the
zero-filled image.

Differences from the paper, on purpose: the coil maps are the *estimated* (ESPIRiT) maps the
scanner pipeline gives (``diffunfold.scanner``), not a learned sensitivity network, so it sees
the maps Diff-Unfolding sees; the loss is L1 on the complex image (real and imaginary parts)
against the clean image as those maps see it (the target ``mri-small`` is trained on), not
SSIM on the root-sum-of-squares magnitude. Defaults: the paper's 12 cascades, each a 4-level
U-Net with 6 base channels: 3.27 M parameters (``mri-small``'s U-Net: 3.24 M). Training data: the SDK's
``TrainingBatches`` on the two training heads, 64 px native windows, the scanner pipeline, one
mask.

    python bench/learned_baselines/varnet.py train --mask gaussian1d:4 --out runs/varnet-g1d4 --steps 1500

In Python: ``load(checkpoint).restore(y, operator, noise_std, seed)`` -> the complex image
(``noise_std`` and ``seed`` are not used: the network is deterministic and not told the noise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffunfold.errors import InputError  # noqa: E402
from learned_baselines import shared  # noqa: E402

DEFAULTS = {"cascades": 12, "chans": 6, "pools": 4}


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two axes (the convention of ``diffunfold.physics.mri``)."""
    axes = (-2, -1)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=axes), dim=axes, norm="ortho"), dim=axes)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    axes = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(k, dim=axes), dim=axes, norm="ortho"), dim=axes)


def _conv_block(i: int, o: int) -> nn.Sequential:
    layers = []
    for a, b in ((i, o), (o, o)):
        layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.InstanceNorm2d(b), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


class PlainUNet(nn.Module):
    """``pools`` average-pool levels of two 3x3 conv blocks each, transposed-conv upsampling,
    skip concatenations, a 1x1 output convolution that starts at zero."""

    def __init__(self, channels: int = 2, chans: int = 8, pools: int = 4):
        super().__init__()
        widths = [chans * 2**i for i in range(pools + 1)]
        self.down = nn.ModuleList([_conv_block(channels, widths[0])])
        self.down.extend(_conv_block(widths[i], widths[i + 1]) for i in range(pools))
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for i in reversed(range(pools)):
            self.up.append(
                nn.Sequential(
                    nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2, bias=False),
                    nn.InstanceNorm2d(widths[i]),
                    nn.LeakyReLU(0.2),
                )
            )
            self.merge.append(_conv_block(2 * widths[i], widths[i]))
        self.out = nn.Conv2d(widths[0], channels, 1)
        nn.init.zeros_(self.out.weight), nn.init.zeros_(self.out.bias)
        self.size_multiple = 2**pools

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else nn.functional.avg_pool2d(h, 2))
            skips.append(h)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            h = merge(torch.cat([up(h), skips.pop()], dim=1))
        return self.out(h)


def combine(coil_images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``R``: ``sum_c conj(S_c) x_c``, (B, 1, H, W)."""
    return (maps.conj() * coil_images).sum(dim=1, keepdim=True)


class Cascade(nn.Module):
    """One unrolled step: the soft data consistency and the network's k-space refinement."""

    def __init__(self, chans: int, pools: int):
        super().__init__()
        self.unet = PlainUNet(2, chans, pools)
        self.eta = nn.Parameter(torch.ones(()))

    def refinement(self, k: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """``F S r``: the network's image correction brought back to coil k-space."""
        img = combine(ifft2c(k), maps)
        x = torch.cat([img.real, img.imag], dim=1)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
        r = std * self.unet((x - mean) / std).float()
        return fft2c(maps * torch.complex(r[:, :1], r[:, 1:]))

    def forward(self, k: torch.Tensor, y: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return k - self.eta * mask * (k - y) + self.refinement(k, maps)


class VarNet(nn.Module):
    def __init__(self, settings: dict):
        super().__init__()
        self.settings = settings
        self.cascades = nn.ModuleList(
            Cascade(int(settings["chans"]), int(settings["pools"])) for _ in range(int(settings["cascades"]))
        )
        self.size_multiple = 2 ** int(settings["pools"])

    def forward(self, y: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``y`` (B, Nc, H, W) measured k-space, ``maps`` (B or 1, Nc, H, W), ``mask`` (B or 1,
        1, H, W) -> the complex image (B, 1, H, W)."""
        k = y
        for cascade in self.cascades:
            k = cascade(k, y, maps, mask)
        return combine(ifft2c(k), maps)


def physics(y, operator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``y``, the operator's coil maps and mask as complex64 / float32 tensors."""
    if getattr(operator, "task", None) != "mri" or not hasattr(operator, "coil_maps"):
        raise InputError(
            f"E2E-VarNet reconstructs multi-coil MRI; got a {getattr(operator, 'task', operator)!r} operator"
        )
    y = torch.as_tensor(np.asarray(y, dtype=np.complex64))
    if y.ndim != 4 or y.shape[1] != operator.ncoils:
        raise InputError(f"y must be (B, {operator.ncoils}, H, W) coil k-space, got shape {tuple(y.shape)}")
    maps = torch.as_tensor(np.asarray(operator.coil_maps, dtype=np.complex64))
    mask = torch.as_tensor(np.asarray(operator.mask, dtype=np.float32))
    return y, maps, mask


def varnet_loss(model: VarNet, batch: dict) -> torch.Tensor:
    """L1 of the real and imaginary parts against the target ``x`` (B, 1, H, W)."""
    out = model(*physics(batch["y"], batch["operator"]))
    diff = out - torch.as_tensor(np.asarray(batch["x"], dtype=np.complex64))
    return (diff.real.abs() + diff.imag.abs()).mean()


class Restorer:
    """A trained E2E-VarNet behind the comparison table's interface."""

    nfe = 1  # one forward pass (T cascades)

    def __init__(self, model: VarNet, meta: dict):
        self.model, self.meta = model, meta
        self.parameters = shared.count_parameters(model)

    @torch.no_grad()
    def restore(self, y, operator, noise_std=None, seed: int = 0) -> np.ndarray:
        y, maps, mask = physics(y, operator)
        m = self.model.size_multiple
        if y.shape[-1] % m or y.shape[-2] % m:
            raise InputError(f"image size {tuple(y.shape[-2:])} must be a multiple of {m}; crop or pad the k-space")
        return self.model.eval()(y, maps, mask).numpy()


def load(checkpoint: str | Path) -> Restorer:
    """A trained VarNet (its EMA weights) from a checkpoint file or run folder."""
    model, meta = shared.load_ema_model(checkpoint, "varnet", "a VarNet", VarNet)
    return Restorer(model.eval(), meta)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python bench/learned_baselines/varnet.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train one E2E-VarNet (one mask) into --out")
    tr.add_argument("--mask", default="gaussian1d:4", help="the one mask, KIND:ACCELERATION (default gaussian1d:4)")
    for key, value in DEFAULTS.items():
        tr.add_argument(f"--{key}", type=int, default=value, help=f"default {value}")
    shared.add_training_arguments(tr, steps=1500, lr=3e-4)
    args = ap.parse_args(argv)

    def build():
        cfg = shared.mri_config(*shared.parse_mask(args.mask), shared.config_overrides(args))
        model_settings = {k: getattr(args, k) for k in DEFAULTS}
        if min(model_settings.values()) < 1:
            raise InputError(f"--cascades, --chans and --pools must be >= 1, got {model_settings}")
        return VarNet(model_settings), {"kind": "varnet", "model": model_settings, "mask": args.mask}, cfg

    return shared.train_command("E2E-VarNet", args, build, varnet_loss)


if __name__ == "__main__":
    sys.exit(main())

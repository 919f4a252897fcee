"""Training configuration: TOML (or YAML) files with [model], [data], [train] and [val]
tables; shipped presets (``tiny``, ``small``, ``paper``, ``mri-small``) load by name.

Every key is checked: an unknown key is an error that lists the known ones, so a typo never
silently trains the wrong thing.
"""

from __future__ import annotations

import tomllib
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import edm
from ..errors import InputError, require
from ..physics.mri import MASK_KINDS
from ..physics.tasks import MRI_TRAINING_PATTERNS, canonical_task, parse_value
from .model import ModelSettings, _from_dict
from .self_supervised import LOSS_FRACTION, check_settings

PRESET_DIR = Path(__file__).with_name("presets")
SOURCES = ("bundled", "folder", "fastmri", "phantom", "volumes", "scans")
IMAGE_TASKS = ("gaussian_blur", "anisotropic_blur", "sr", "inpainting")


@dataclass
class DataSettings:
    source: str = "bundled"  # bundled | folder | fastmri | phantom | volumes | scans
    # image folder, fastMRI file/folder, volumes folder or prepared scans (diffunfold prepare-scans) (training)
    path: str | None = None
    val_path: str | None = None  # fastMRI file/folder, or image folder, for validation
    native_crops: bool = (
        False  # folder: crops from native resolution to the whole photo; volumes: windows at a scanner's pixel size
    )
    scanner: bool = False  # MRI: measure, then estimate maps, noise and scale as inference does (diffunfold.scanner)
    map_floor: float = 0.3  # scanner: weight of the maps' residual in the noise level (ScannerSettings.map_floor)
    whole_fraction: float = 0.0  # folder, with native_crops: this share of crops a photo shrunk whole
    cache_images: bool = False  # folder: decode each photo once per worker (~90 % of a batch's CPU time)
    size: int = 64  # training crop (pixels, square)
    tasks: tuple[str, ...] = IMAGE_TASKS  # a task named twice is drawn twice as often
    inpainting_missing: tuple[float, float] = (0.2, 0.6)  # fraction of pixels missing, uniform (paper 4.1)
    sr_factors: tuple[int, ...] = (4, 8, 16)  # those the crop size allows, drawn alike (a repeat: twice as often)
    mri_patterns: tuple[tuple[str, float], ...] = MRI_TRAINING_PATTERNS
    noise_max: float = 0.1  # images: sigma_y ~ U[0, noise_max] (paper 4.1)
    mri_noise: float = 0.01  # MRI: sigma_y ~ U[0, mri_noise * max|A x|] per image
    # Of the draws, this fraction is exactly noise-free and this one log-uniform over
    # [1e-3, 1] x the maximum (low noise); the rest uniform as above (0 and 0: the paper's).
    noise_zero_fraction: float = 0.0
    noise_log_fraction: float = 0.0
    ncoils: int = 15
    workers: int = 0  # DataLoader worker processes preparing batches
    # BLAS / OpenMP threads in each worker (0: the libraries' default, one per core): the worker
    # shares the cores with torch's threads, and oversubscribed spinning threads stall both
    worker_threads: int = 1

    def __post_init__(self):
        if self.source not in SOURCES:
            raise InputError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "volumes" and not (self.path and self.val_path):
            raise InputError(
                "data.source = 'volumes' needs data.path and data.val_path (the "
                "train/ and held-out/ folders of `diffunfold data mri-volumes`)"
            )
        if self.source in ("folder", "fastmri", "scans") and not self.path:
            raise InputError(f"data.source = {self.source!r} needs data.path (the {self.source} to train on)")
        self.tasks = tuple(canonical_task(t) for t in self.tasks)
        self.mri_patterns = tuple((str(k), float(a)) for k, a in self.mri_patterns)
        lo, hi = self.inpainting_missing = tuple(float(v) for v in self.inpainting_missing)
        if not 0 < lo <= hi < 1:
            raise InputError(f"data.inpainting_missing must be [low, high] with 0 < low <= high < 1, got {[lo, hi]}")
        if not 0.0 <= float(self.whole_fraction) <= 1.0:
            raise InputError(f"data.whole_fraction must be in [0, 1], got {self.whole_fraction!r}")
        self.sr_factors = tuple(int(f) for f in self.sr_factors)
        if not self.sr_factors or min(self.sr_factors) < 2:
            raise InputError(f"data.sr_factors must be integers >= 2, got {list(self.sr_factors)}")
        bad = [k for k, _ in self.mri_patterns if k not in MASK_KINDS]
        if bad:
            raise InputError(f"unknown MRI mask kind(s) {bad}; choose from {MASK_KINDS}")
        if self.workers < 0 or self.worker_threads < 0:
            raise InputError(
                f"data.workers ({self.workers}) and data.worker_threads ({self.worker_threads}) must be >= 0"
            )
        if not 0 <= self.noise_max or not 0 <= self.mri_noise:
            raise InputError("noise levels must be >= 0")
        z, g = self.noise_zero_fraction, self.noise_log_fraction
        if not (0 <= z and 0 <= g and z + g <= 1):
            raise InputError(
                f"noise_zero_fraction ({z}) and noise_log_fraction ({g}) must be >= 0 and sum to at most 1"
            )

    @property
    def is_mri(self) -> bool:
        return self.source in ("fastmri", "phantom", "volumes", "scans")


@dataclass
class TrainSettings:
    steps: int = 1000
    batch_size: int = 8  # global: split over the processes of a distributed run
    lr: float = 2e-4
    weights_lr_scale: float = 1.0  # learning-rate factor for tau, gamma and u (tiny networks
    # whose outputs Adam moves by about lr per step)
    warmup_steps: int = 0  # linear learning-rate ramp
    decay_steps: int = 0  # cosine decay of the learning rate to 0 over the last N steps
    # (all of them in a run shorter than N)
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    ema_halflife_images: float = 500_000.0  # EDM's EMA, half-life in training images...
    ema_rampup: float = 0.05  # ...limited to this fraction of the images seen so far
    amp: bool = True  # bfloat16 autocast for the networks on CUDA...
    # ...and on the CPU with this: 0.68x the time per step of float32 on the 2-core Zen 4 (AVX-512
    # BF16), gradients within 2 % (bench/results/train_step-*.md); off until a whole run is compared
    cpu_bf16: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0: torch's default)
    log_every: int = 10
    val_every: int = 500  # 0: only at the end
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    # Start the regularisers (and u) from a model package or checkpoint, e.g. one trained with
    # another data step; tau and gamma start fresh. Ignored on --resume.
    init_from: str | None = None
    # Let init_from's U-Net differ from this config's in its attention layers only: those it
    # lacks start as the identity, those this config lacks are dropped (training/attention_layout.py)
    init_adapt_attention: bool = False
    # Train only the weight generators (tau, gamma, u), the regularisers fixed: with few
    # training images, fine-tuning the networks memorises them (README, "Which data step").
    freeze_regularizers: bool = False
    # MRI without fully sampled references (training/self_supervised.py): "ssdu" splits each
    # draw's measured points into a data part and a held-out loss part (ssdu_fraction of those
    # outside the calibration region, as whole lines of a 1-D pattern or as points)
    supervision: str = "supervised"
    ssdu_fraction: float = LOSS_FRACTION
    ssdu_split: str = "lines"
    ssdu_standin: str = "measured"  # the clean image's stand-in: SENSE of all measured points, or of the data part

    def __post_init__(self):
        check_settings(self.supervision, self.ssdu_fraction, self.ssdu_split, self.ssdu_standin)


@dataclass
class ValSettings:
    tasks: tuple[dict, ...] = (
        {"task": "gaussian_blur", "sigma": 2.0},
        {"task": "sr", "factor": 4},
        {"task": "inpainting", "missing": 0.4},
    )
    noise: float = 0.05  # sigma_y of the validation measurements
    steps: int = 18
    sampler: str = "euler"
    images: int = 5  # at most this many held-out images (0: no validation at all)

    def __post_init__(self):
        if self.images < 0:
            raise InputError(f"val.images must be >= 0 (0 skips validation), got {self.images}")
        self.tasks = tuple(dict(t) for t in self.tasks)
        for t in self.tasks:
            if "task" not in t:
                raise InputError(f"each [[val.tasks]] entry needs a 'task' key, got {t}")
            canonical_task(t["task"])
        edm.check_sampler(self.sampler)


@dataclass
class TrainConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    val: ValSettings = field(default_factory=ValSettings)
    out_dir: str = "runs/diffunfold"
    name: str = "custom"

    def __post_init__(self):
        if self.data.is_mri != (self.model.data == "mri"):
            raise InputError(
                f"data.source {self.data.source!r} does not fit model.data {self.model.data!r}: "
                "MRI sources (volumes, fastmri, phantom, scans) need model.data = 'mri' and channels = 1"
            )
        if self.train.supervision == "ssdu" and not self.data.is_mri:
            raise InputError(
                "train.supervision = 'ssdu' splits measured k-space: it needs an MRI data.source "
                "(volumes, fastmri, phantom or scans); use 'supervised' for images"
            )
        if self.data.source == "scans" and self.train.supervision != "ssdu":
            raise InputError(
                "data.source = 'scans' holds undersampled k-space only, with no fully sampled image to "
                "supervise with: set train.supervision = 'ssdu'"
            )
        if self.train.batch_size < 1 or self.train.steps < 1:
            raise InputError("train.steps and train.batch_size must be positive")
        if self.train.decay_steps < 0:
            raise InputError(f"train.decay_steps must be >= 0, got {self.train.decay_steps}")
        high = [
            self.data.size // 2**level for level in self.model.unet.attention_levels if self.data.size // 2**level > 32
        ]
        if high:
            warnings.warn(
                f"self-attention at {high} px: above 32x32 attention dominates the cost of the "
                "U-Net (quadratic in pixels); consider higher model.unet.attention_levels",
                stacklevel=2,
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "custom") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown table(s)/key(s) {unknown} in the config; known: {sorted(known)}")
        return cls(
            model=ModelSettings.from_dict(d.get("model", {})),
            data=_from_dict(DataSettings, d.get("data", {}), "data"),
            train=_from_dict(TrainSettings, d.get("train", {}), "train"),
            val=_from_dict(ValSettings, d.get("val", {}), "val"),
            out_dir=d.get("out_dir", f"runs/{name}"),
            name=d.get("name", name),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["data"]["tasks"] = list(self.data.tasks)
        d["data"]["mri_patterns"] = [list(p) for p in self.data.mri_patterns]
        d["val"]["tasks"] = [dict(t) for t in self.val.tasks]
        return d


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_config_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise InputError(
            f"config {str(p)!r} not found; give a .toml/.yaml file or a preset name ({', '.join(preset_names())})"
        )
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        yaml = require("yaml", "train")
        return yaml.safe_load(text) or {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: not valid TOML: {exc}") from None


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """``["train.steps=200", "model.unet.channels=32"]`` applied to a config dict (TOML values)."""
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"an override looks like table.key=value, got {item!r}")
        node = d
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"override {item!r}: {p!r} is not a table")
        node[parts[-1]] = parse_value(value.strip())
    return d


def load_config(source: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A preset name (``tiny``, ``small``, ...) or a TOML/YAML file, plus ``table.key=value``
    overrides."""
    src = str(source)
    if src in preset_names():
        path, name = PRESET_DIR / f"{src}.toml", src
    else:
        path, name = Path(src), Path(src).stem
    return TrainConfig.from_dict(apply_overrides(read_config_file(path), overrides or []), name=name)

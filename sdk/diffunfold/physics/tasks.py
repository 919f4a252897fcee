"""Tasks by name: ``make_operator("sr", image_shape=(256, 256), factor=4)``, and the random task
samplers that training draws one operator per batch from (paper, section 4.1)."""

from __future__ import annotations

import inspect
import math
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from .base import LinearOperator
from .blur import GaussianBlur, MotionBlur
from .inpainting import Inpainting
from .mri import MASK_KINDS, MultiCoilMRI, birdcage_maps, default_center_fraction, mri_mask
from .superres import SR_KERNELS, SuperResolution


def _gaussian_blur(image_shape, sigma: float = 3.0):
    """Isotropic Gaussian deblurring; sigma: kernel std in pixels (paper: 3.0 at 256 px)."""
    return GaussianBlur(image_shape, float(sigma))


def _anisotropic_blur(image_shape, sigma: Sequence[float] = (4.0, 1.5), angle: float = math.pi / 4):
    """Anisotropic Gaussian deblurring; sigma: (std along, std across) in px; angle: radians."""
    return GaussianBlur(image_shape, tuple(float(s) for s in sigma), float(angle))


def _motion_blur(image_shape, length: float = 9.0, angle: float = math.pi / 6):
    """Linear motion deblurring (never trained on); length in px, angle in radians."""
    return MotionBlur(image_shape, length, angle)


def _sr(image_shape, factor: int = 4, kernel: str = "box"):
    """Super-resolution by an integer factor; kernel: box (block average) or bicubic."""
    return SuperResolution(image_shape, factor, kernel)


def _inpainting(image_shape, missing: float = 0.4, seed: int | None = 0, mask=None):
    """Random pixel ("dust-like") inpainting; missing: probability a pixel is lost."""
    if mask is not None:
        return Inpainting(mask)
    return Inpainting.random(image_shape, missing, seed)


def _box_inpainting(image_shape, size: float | Sequence[int] = 0.4, seed: int | None = None):
    """One missing box (never trained on); size: fraction of each side or (rows, cols)."""
    return Inpainting.box(image_shape, size, seed)


def _mri(
    image_shape,
    kind: str = "gaussian1d",
    acceleration: float = 4.0,
    ncoils: int = 15,
    center_fraction: float | None = None,
    seed: int = 0,
    coil_maps=None,
):
    """Multi-coil MRI; kind: a mask family; coil_maps: given, else simulated birdcage coils."""
    mask = mri_mask(kind, image_shape, acceleration, center_fraction, seed)
    if coil_maps is not None:
        return MultiCoilMRI(coil_maps, mask)
    recipe = {
        "task": "mri",
        "image_shape": tuple(int(s) for s in image_shape)[-2:],
        "kind": kind,
        "acceleration": float(acceleration),
        "ncoils": int(ncoils),
        "center_fraction": center_fraction,
        "seed": seed,
    }
    return MultiCoilMRI(birdcage_maps(ncoils, image_shape), mask, recipe=recipe)


TASKS: dict[str, Callable[..., LinearOperator]] = {
    "gaussian_blur": _gaussian_blur,
    "anisotropic_blur": _anisotropic_blur,
    "motion_blur": _motion_blur,
    "sr": _sr,
    "inpainting": _inpainting,
    "box_inpainting": _box_inpainting,
    "mri": _mri,
}
ALIASES = {
    "deblur": "gaussian_blur",
    "aniso_deblur": "anisotropic_blur",
    "motion": "motion_blur",
    "super_resolution": "sr",
    "inpaint": "inpainting",
    "box_inpaint": "box_inpainting",
}


def task_names() -> list[str]:
    return list(TASKS)


def task_help(name: str) -> str:
    """One line: the task's purpose and its parameters with their defaults."""
    fn = TASKS[canonical_task(name)]
    params = [f"{p.name}={p.default!r}" for p in list(inspect.signature(fn).parameters.values())[1:]]
    return f"{(fn.__doc__ or '').strip()}  [{', '.join(params)}]"


def canonical_task(name: str) -> str:
    key = ALIASES.get(name, name)
    if key not in TASKS:
        raise InputError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)} (aliases: {', '.join(ALIASES)})")
    return key


def make_operator(task: str, image_shape: Sequence[int], given: Any = None, **params) -> LinearOperator:
    """Build a task's operator from its short name and parameters (see ``TASKS``).

    ``make_operator(**op.spec())`` rebuilds ``op`` when it was built from parameters alone.
    """
    if given:
        raise InputError(
            f"this {task} operator was built from given arrays ({', '.join(given)}); "
            "rebuild it from those arrays with its class"
        )
    fn = TASKS[canonical_task(task)]
    allowed = list(inspect.signature(fn).parameters)[1:]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InputError(f"unknown parameter(s) {unknown} for task {task!r}; it takes {allowed}")
    return fn(image_shape, **params)


@dataclass
class SampledTask:
    task: str
    params: dict
    operator: LinearOperator


def allowed_sr_factors(image_shape: Sequence[int], factors: Sequence[int], min_lr_size: int = 8) -> tuple[int, ...]:
    """The SR factors an image size allows: dividing both sides and leaving >= min_lr_size px."""
    h, w = tuple(int(s) for s in image_shape)[-2:]
    return tuple(f for f in factors if h % f == 0 and w % f == 0 and min(h, w) // f >= min_lr_size)


@dataclass
class TaskSampler:
    """Draws a random image-restoration task (operator and parameters) per training batch.

    Families and ranges follow the paper (section 4.1): isotropic and anisotropic Gaussian
    blur, SR x4/x8/x16 (limited to what the image size allows), and dust-like inpainting with
    0.2-0.6 of the pixels missing. Ranges are in pixels at the training resolution.
    """

    image_shape: tuple[int, int]
    families: tuple[str, ...] = ("gaussian_blur", "anisotropic_blur", "sr", "inpainting")
    blur_sigma: tuple[float, float] = (1.0, 3.5)
    aniso_sigma: tuple[float, float] = (0.5, 4.0)
    sr_factors: tuple[int, ...] = (4, 8, 16)
    sr_kernels: tuple[str, ...] = ("box",)
    missing: tuple[float, float] = (0.2, 0.6)
    min_lr_size: int = 8
    _sr_allowed: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self):
        self.image_shape = tuple(int(s) for s in self.image_shape)[-2:]
        self.families = tuple(canonical_task(f) for f in self.families)
        bad = [f for f in self.families if f not in ("gaussian_blur", "anisotropic_blur", "sr", "inpainting")]
        if bad or not self.families:
            raise InputError(
                f"TaskSampler draws from gaussian_blur, anisotropic_blur, sr, inpainting; got {bad or 'none'}"
            )
        if any(k not in SR_KERNELS for k in self.sr_kernels):
            raise InputError(f"sr_kernels must be among {SR_KERNELS}, got {self.sr_kernels}")
        self._sr_allowed = allowed_sr_factors(self.image_shape, self.sr_factors, self.min_lr_size)
        if "sr" in self.families and not self._sr_allowed:
            raise InputError(
                f"no SR factor of {self.sr_factors} fits a {self.image_shape} image with >= "
                f"{self.min_lr_size} px left; drop 'sr' or use larger images"
            )

    @property
    def sr_factors_in_use(self) -> tuple[int, ...]:
        return self._sr_allowed

    def sample(self, rng: np.random.Generator) -> SampledTask:
        family = self.families[int(rng.integers(len(self.families)))]
        if family == "gaussian_blur":
            params = {"sigma": float(rng.uniform(*self.blur_sigma))}
        elif family == "anisotropic_blur":
            params = {
                "sigma": (float(rng.uniform(*self.aniso_sigma)), float(rng.uniform(*self.aniso_sigma))),
                "angle": float(rng.uniform(0, math.pi)),
            }
        elif family == "sr":
            params = {
                "factor": int(rng.choice(self._sr_allowed)),
                "kernel": str(self.sr_kernels[int(rng.integers(len(self.sr_kernels)))]),
            }
        else:
            params = {"missing": float(rng.uniform(*self.missing)), "seed": int(rng.integers(2**31))}
        return SampledTask(family, params, make_operator(family, self.image_shape, **params))


# The paper's MRI training patterns: three families at two accelerations each (section 4.1).
MRI_TRAINING_PATTERNS: tuple[tuple[str, float], ...] = (
    ("uniform1d", 4),
    ("uniform1d", 8),
    ("gaussian1d", 4),
    ("gaussian1d", 8),
    ("gaussian2d", 8),
    ("gaussian2d", 16),
)


@dataclass
class MRITaskSampler:
    """Draws an MRI sampling pattern per batch: the paper's three families at two
    accelerations each (uniform 1-D 4x/8x, Gaussian 1-D 4x/8x, Gaussian 2-D 8x/16x)."""

    patterns: tuple[tuple[str, float], ...] = MRI_TRAINING_PATTERNS

    def __post_init__(self):
        bad = [k for k, _ in self.patterns if k not in MASK_KINDS]
        if bad:
            raise InputError(f"unknown mask kinds {bad}; choose from {MASK_KINDS}")

    center_floor: float = 0.0  # the fully sampled centre's fraction at least this

    def sample(self, rng: np.random.Generator, coil_maps) -> SampledTask:
        kind, acc = self.patterns[int(rng.integers(len(self.patterns)))]
        params = {"kind": kind, "acceleration": float(acc), "seed": int(rng.integers(2**31))}
        if self.center_floor > default_center_fraction(acc):
            params["center_fraction"] = float(self.center_floor)
        shape = tuple(coil_maps.shape[-2:])
        return SampledTask("mri", params, make_operator("mri", shape, coil_maps=coil_maps, **params))


def parse_value(text: str) -> Any:
    """A parameter value written on a command line, read as TOML (``2``, ``[4, 1.5]``,
    ``"box"``), else the bare string (``box``). Used for task words and config overrides."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_task_words(words: Sequence[str]) -> tuple[str, dict]:
    """``["sr", "factor=4"]`` -> ``("sr", {"factor": 4})``: the task name made canonical and the
    parameter names checked against the task's (unknown ones are refused with the list)."""
    if not words:
        raise InputError("a task needs a name, e.g. --task gaussian_blur sigma=2")
    name = canonical_task(words[0])  # unknown: the error lists the known tasks
    params: dict[str, Any] = {}
    for w in words[1:]:
        key, sep, value = w.partition("=")
        if not sep or not key:
            hint = (
                " (give the INPUT files before --task: its words run to the next option)"
                if "." in w or "/" in w
                else ""
            )
            raise InputError(f"task parameters look like name=value, got {w!r}{hint}")
        params[key.strip()] = parse_value(value.strip())
    allowed = list(inspect.signature(TASKS[name]).parameters)[1:]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InputError(
            f"unknown parameter(s) {unknown} for task {name!r}; it takes {allowed} (see `diffunfold tasks`)"
        )
    return name, params

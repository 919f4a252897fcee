"""Every value a user types, parsed and checked where it enters the command line.

The parsers here are argparse ``type=`` functions (and one ``action=`` for ``--task``): a bad
value stops the command while its arguments are read, before anything is loaded or written,
with one line naming the option, the value and the valid range. The same checks serve the
parameters of ``--task NAME k=v``, whose values are read as TOML.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import Any

from .errors import InputError
from .physics.mri import MASK_KINDS
from .physics.superres import SR_KERNELS

SEED_MAX = 2**32 - 1


def _show(v: float | None) -> str:
    return "" if v is None else str(int(v)) if float(v).is_integer() else f"{v:g}"


class Bounded:
    """A number in a range: ``Bounded(0, integer=True)`` is an integer >= 0. Called with a
    string (argparse's ``type=``) it parses and checks; ``check(value, label)`` checks a value
    already parsed (a task parameter)."""

    def __init__(
        self,
        lo: float | None = None,
        hi: float | None = None,
        *,
        integer: bool = False,
        lo_open: bool = False,
        hi_open: bool = False,
        meaning: str = "",
    ):
        self.lo, self.hi, self.integer = lo, hi, integer
        self.lo_open, self.hi_open, self.meaning = lo_open, hi_open, meaning
        self.__name__ = "integer" if integer else "number"  # argparse names the type by it

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo, hi = _show(self.lo), _show(self.hi)
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            text = f"{kind} in {left}{lo}, {hi}{right}"
        elif self.lo is not None:
            text = f"{kind} {'>' if self.lo_open else '>='} {lo}"
        elif self.hi is not None:
            text = f"{kind} {'<' if self.hi_open else '<='} {hi}"
        else:
            text = f"a finite {'integer' if self.integer else 'number'}"
        return text + (f" ({self.meaning})" if self.meaning else "")

    def _fits(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return self.hi is None or (v < self.hi or (not self.hi_open and v == self.hi))

    def check(self, value: Any, label: str) -> int | float:
        """``value`` (an int or float, not a bool) in range, else InputError naming ``label``."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and self.integer and isinstance(value, float):
            ok = value.is_integer()
        if not ok or not self._fits(float(value)):
            raise InputError(f"{label} must be {self.describe()}, got {value!r}")
        return int(value) if self.integer else float(value)

    def __call__(self, text: str) -> int | float:
        try:
            value: Any = int(text, 10) if self.integer else float(text)
        except (TypeError, ValueError):
            value = None
        if value is None or not self._fits(float(value)):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value


# The values the commands share.
SEED = Bounded(0, SEED_MAX, integer=True)
THREADS = Bounded(0, 1024, integer=True, meaning="0: all cores")
STEPS = Bounded(1, 1000, integer=True)
SAMPLES = Bounded(1, 256, integer=True)
COUNT = Bounded(1, 100_000, integer=True)
COILS = Bounded(1, 128, integer=True)
# --noise is everywhere the measurement's noise std in the units of the data; a level relative
# to the data has its own flag ending in -rel (mri --noise-rel, demo --mri-noise-rel).
NOISE = Bounded(0, 1, meaning="a standard deviation, images in [0, 1]")
KSPACE_NOISE = Bounded(0, 1, meaning="a fraction of max|k|")
ACCELERATION = Bounded(1, 1024)
CENTER_FRACTION = Bounded(0, 1, lo_open=True, hi_open=True)
MASK_SIDE = Bounded(2, 16384, integer=True)


class Renamed(argparse.Action):
    """An old spelling whose meaning now has another name (``add_argument("--noise",
    action=Renamed, now="--noise-rel F, a fraction of max|k|")``): refused with one line naming
    the new flag, never read as it, so an old command line cannot silently mean something else.
    Hidden from ``--help``."""

    def __init__(self, option_strings, dest, now: str = "", **kwargs):
        self.now = now
        kwargs.update(help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        raise argparse.ArgumentError(self, f"is not an option of this command; use {self.now}")


def image_side(lo: int, hi: int = 16384) -> Bounded:
    return Bounded(lo, hi, integer=True, meaning="pixels")


def choice(options) -> Callable[[Any, str], str]:
    def check(value: Any, label: str) -> str:
        if value not in options:
            raise InputError(f"{label} must be one of {', '.join(options)}, got {value!r}")
        return value

    return check


def number_or_pair(number: Bounded) -> Callable[[Any, str], Any]:
    """One number, or a list of two (e.g. an anisotropic blur's two widths)."""

    def check(value: Any, label: str) -> Any:
        if isinstance(value, list):
            if len(value) != 2:
                raise InputError(f"{label} must be {number.describe()} or a list of two, got {value!r}")
            return [number.check(v, label) for v in value]
        return number.check(value, label)

    return check


def box_size(value: Any, label: str) -> Any:
    """A box's size: a fraction of each side in (0, 1), or [rows, cols] in pixels."""
    if isinstance(value, list):
        if len(value) != 2:
            raise InputError(f"{label} must be a fraction in (0, 1) or [rows, cols], got {value!r}")
        return [Bounded(1, integer=True).check(v, label) for v in value]
    return Bounded(0, 1, lo_open=True, hi_open=True, meaning="a fraction of each side").check(value, label)


def text_value(value: Any, label: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{label} must be a file name, got {value!r}")
    return value


# Each task parameter's type and range (the operators check the ranges that depend on the image).
TASK_PARAMETERS: dict[str, dict[str, Callable[[Any, str], Any]]] = {
    "gaussian_blur": {"sigma": Bounded(0, 100, lo_open=True, meaning="pixels").check},
    "anisotropic_blur": {
        "sigma": number_or_pair(Bounded(0, 100, lo_open=True, meaning="pixels")),
        "angle": Bounded(meaning="radians").check,
    },
    "motion_blur": {"length": Bounded(1, 1000, meaning="pixels").check, "angle": Bounded(meaning="radians").check},
    "sr": {"factor": Bounded(2, 1024, integer=True).check, "kernel": choice(SR_KERNELS)},
    "inpainting": {
        "missing": Bounded(0, 1, hi_open=True, meaning="the fraction of pixels lost").check,
        "seed": SEED.check,
        "mask": text_value,
    },
    "box_inpainting": {"size": box_size, "seed": SEED.check},
    "mri": {
        "kind": choice(MASK_KINDS),
        "acceleration": ACCELERATION.check,
        "ncoils": COILS.check,
        "center_fraction": CENTER_FRACTION.check,
        "seed": SEED.check,
    },
}


def parse_task(words: list[str]) -> dict:
    """``["sr", "factor=4"]`` -> ``{"task": "sr", "factor": 4}``, every value checked."""
    from .physics.tasks import parse_task_words

    for w in words[1:]:
        if "=" not in w and ("." in w or "/" in w or os.path.exists(w)):
            raise InputError(
                f"{w!r} follows --task but is not a name=value parameter; it looks like an "
                "INPUT: give the INPUTs before --task (its words run to the next option)"
            )
    name, params = parse_task_words(words)
    raw = {w.partition("=")[0].strip(): w.partition("=")[2].strip() for w in words[1:]}
    checks = TASK_PARAMETERS.get(name, {})
    for key, value in params.items():
        if key in checks:
            params[key] = checks[key](value, f"{name} {key}={raw.get(key, value)}:")
    return {"task": name, **params}


class TaskAction(argparse.Action):
    """``--task NAME k=v ...`` read and checked as it is parsed: ``{"task": NAME, **params}``;
    with ``append=True`` each ``--task`` adds one to a list."""

    def __init__(self, option_strings, dest, append: bool = False, **kwargs):
        self.append = append
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            task = parse_task(list(values))
        except InputError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        if self.append:
            setattr(namespace, self.dest, (getattr(namespace, self.dest, None) or []) + [task])
        else:
            setattr(namespace, self.dest, task)


def slice_ranges(text: str) -> str:
    """``--slices``: ``all`` or ``0,3-5`` (inclusive ranges; a negative number counts from the
    end). The syntax and the order of each range are checked here; the file's slice count
    later, by :func:`parse_slices`. Returns the text unchanged."""
    try:
        split_slice_ranges(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def split_slice_ranges(text: str) -> list[tuple[int, int]] | None:
    """``"all"`` -> None; ``"0,3-5"`` -> ``[(0, 0), (3, 5)]``; InputError on bad syntax or a
    reversed range (``3-1``)."""
    if text.strip().lower() == "all":
        return None
    ranges = []
    for part in text.split(","):
        part = part.strip()
        a, sep, b = part.partition("-") if not part.startswith("-") else (part, "", "")
        try:
            lo = int(a)
            hi = int(b) if sep else lo
        except ValueError:
            raise InputError(f"slices are a list like 0,3-5 (inclusive ranges) or 'all', got {text!r}") from None
        if (lo >= 0) == (hi >= 0) and hi < lo:
            raise InputError(f"the slice range {part!r} is reversed: write it low-high, e.g. {hi}-{lo}")
        ranges.append((lo, hi))
    return ranges


def parse_slices(text: str | None, count: int) -> list[int]:
    """``None`` -> the middle slice; ``"all"``; ``"0,3-5"`` (inclusive ranges, negatives from the end)."""
    if text is None:
        return [count // 2]
    ranges = split_slice_ranges(text)
    if ranges is None:
        return list(range(count))
    out: list[int] = []
    for lo, hi in ranges:
        lo, hi = (lo + count if lo < 0 else lo), (hi + count if hi < 0 else hi)
        if not (0 <= lo < count and 0 <= hi < count):
            raise InputError(f"--slices {text!r} is out of range: the file has {count} slices (0..{count - 1})")
        if hi < lo:
            raise InputError(f"--slices {text!r} holds a reversed range ({lo} after {hi}); write ranges low-high")
        out.extend(s for s in range(lo, hi + 1) if s not in out)
    return out


__all__ = [
    "Bounded",
    "SEED",
    "THREADS",
    "TaskAction",
    "parse_slices",
    "parse_task",
    "slice_ranges",
    "split_slice_ranges",
]


def add_churn_arguments(parser: argparse.ArgumentParser, churn_help: str) -> None:
    """``--churn S_CHURN`` and ``--churn-range S_MIN S_MAX``: EDM's stochastic sampler."""
    parser.add_argument("--churn", type=Bounded(0), metavar="S_CHURN", help=churn_help)
    parser.add_argument(
        "--churn-range",
        type=Bounded(0),
        nargs=2,
        metavar=("S_MIN", "S_MAX"),
        help="the noise levels where --churn re-noises (default 0.05 50, EDM's)",
    )


def churn_setting(s_churn: float | None, churn_range: list[float] | None):
    """The ``edm.Churn`` the two options ask for; None where neither is given (the package's)."""
    from .edm import Churn

    if s_churn is None and churn_range is None:
        return None
    if s_churn is None:
        raise InputError("--churn-range needs --churn S_CHURN (the amount of re-noising)")
    lo, hi = churn_range or (Churn.s_min, Churn.s_max)
    if lo > hi:
        raise InputError(f"--churn-range: S_MIN {lo:g} is above S_MAX {hi:g}")
    return Churn(s_churn=float(s_churn), s_min=float(lo), s_max=float(hi))


def add_contrast_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--contrast none|stretch``: the contrast stretch of flat images (``diffunfold.contrast``)."""
    from .contrast import CONTRASTS

    parser.add_argument("--contrast", choices=CONTRASTS, help=help_text)


def add_ensemble_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--ensemble none|flips``: the self-ensemble of posterior samples (``diffunfold.ensemble``)."""
    from .ensemble import ENSEMBLES

    parser.add_argument("--ensemble", choices=ENSEMBLES, help=help_text)


# ``--method``: the names of ``diffunfold.runtime.zero_shot.names()`` (kept here so that building the
# parser imports no numpy; tests/test_zero_shot.py holds the two equal) and what each costs.
METHOD_NAMES = ("diff-unfolding", "dps", "diffpir", "pnp-edm", "dds")
METHOD_HELP = (
    "diff-unfolding: the unfolded model's own sampler (unfolding packages; their default). Zero-shot "
    "solvers, for denoiser packages (model.kind = denoiser), with their network calls per image at the "
    "defaults: dps 3000 (1000 steps, each the denoiser and a finite-difference JVP of 2 calls), "
    "diffpir 100 (100 steps, exact data step), pnp-edm 1888 (100 split-Gibbs iterations, each an EDM "
    "prior step from the coupling level down), dds 50 (50 DDIM steps, 5 CG steps each; made for MRI). "
    "--steps sets the method's step (pnp-edm: iteration) count. docs/zero-shot-solvers.md says which to use"
)


def add_method_argument(parser: argparse.ArgumentParser) -> None:
    """``--method NAME``: the unfolding sampler or a zero-shot solver (``diffunfold.runtime.zero_shot``)."""
    parser.add_argument("--method", type=str.lower, choices=METHOD_NAMES, metavar="NAME", help=METHOD_HELP)

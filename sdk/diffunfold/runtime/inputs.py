"""What a solve is given, checked before any work: the measurement against the operator and the
model, and the options that are plain numbers."""

from __future__ import annotations

import numpy as np

from .._array import check_finite, describe, is_complex
from ..errors import InputError
from ..physics.base import LinearOperator


def prepare_measurement(y, operator: LinearOperator, space, xp):
    """Check ``y`` against the operator and the model's data ``space``, and move it to the
    working precision (float32 / complex64) on ``xp``'s device. Returns ``(y, was_numpy)``."""
    if not isinstance(operator, LinearOperator):
        raise InputError(
            f"operator must be a diffunfold LinearOperator (make_operator(task, ...)), got {type(operator).__name__}"
        )
    if operator.complex_image != space.complex:
        what = "an MRI" if space.complex else "an image"
        raise InputError(
            f"this package holds {what} model but the operator is {operator.task}; "
            f"use a package trained for {operator.task}"
        )
    was_numpy = isinstance(y, np.ndarray)
    if not was_numpy and type(y).__module__.split(".")[0] != "cupy":
        raise InputError(f"y must be a numpy or CuPy array, got {type(y).__name__}")
    operator.check_measurement(y)
    check_finite(y, "the measurement y")
    if not space.complex and int(y.shape[1]) != space.channels:
        raise InputError(
            f"this model restores {space.channels}-channel images but y is {describe(y)}; "
            + ("repeat a grey image to 3 channels" if space.channels == 3 else "convert it to grey")
        )
    dtype = xp.complex64 if is_complex(y) else xp.float32
    y_dev = xp.asarray(y).astype(dtype, copy=False)
    for hw in operator.image_shape:
        if hw < 8:
            raise InputError(f"images of {operator.image_shape} are too small (at least 8x8)")
    return y_dev, was_numpy


def check_stages(stages, k: int) -> int | None:
    """The unfolding stages per denoiser call: None (all ``k``) or a whole number from 1 to ``k``."""
    if stages is None:
        return None
    if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or not 1 <= stages <= k:
        raise InputError(f"stages must be an integer from 1 to the package's K = {k}, got {stages!r}")
    return int(stages)


def check_samples(samples) -> None:
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise InputError(f"samples must be a positive integer, got {samples!r}")

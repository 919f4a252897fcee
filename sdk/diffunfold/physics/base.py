"""The linear operator interface every forward model implements.

An operator is a plain object holding a few constant arrays (kernel spectra, masks, coil
maps). Its methods take arrays of any array-API namespace (numpy, CuPy, torch) and return
arrays of the same kind, on the same device, at the same precision; the constants are moved
there once and cached. Subclasses implement ``_forward``/``_adjoint``/``_pinv``; the public
methods here add the checks, so the checks live in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._array import check_finite, describe, device_of, is_complex, like, namespace, real_dtype_for
from ..errors import InputError
from .cg import conjugate_gradient

NoiseStd = float | Sequence[float] | np.ndarray
Seed = int | Sequence[int] | None


class LinearOperator:
    """``y = A x`` with ``||A||_2 <= 1``; images are ``(B, C, H, W)``.

    Attributes:
        task: the short task name (``make_operator(task, **spec)`` rebuilds the operator).
        image_shape: ``(H, W)`` of the images it acts on.
        complex_image: True for MRI (complex images ``(B, 1, H, W)``).
        channels: the channel count it requires, or None for any.
        batch: the batch size its constants were built for (per-image masks or coil maps),
            or None when the constants are shared by every image of a batch.
    """

    task: str = "operator"
    complex_image: bool = False
    channels: int | None = None
    # True where ``_normal`` (``A^H A``) is cheaper than ``_adjoint(_forward(.))`` (MRI): the
    # gradient is then ``A^H A x - A^H y`` with ``A^H y`` kept between calls.
    fast_normal: bool = False

    def __init__(self, image_shape: Sequence[int], batch: int | None = None):
        shape = tuple(int(s) for s in image_shape)[-2:]
        if len(shape) != 2 or min(shape) < 1:
            raise InputError(f"image_shape must end with (H, W) positive sizes, got {image_shape!r}")
        self.image_shape = shape
        self.batch = batch
        self._cache: dict[tuple, Any] = {}
        self._y_memo: tuple | None = None  # (a copy of the last y, {name: what was derived from it})

    # -- what subclasses provide ---------------------------------------------------------
    def _forward(self, x):
        raise NotImplementedError

    def _adjoint(self, y):
        raise NotImplementedError

    def _pinv(self, y):
        raise NotImplementedError

    def _normal(self, x):
        """``A^H A x``; subclasses with a cheaper form override it (and set ``fast_normal``)."""
        return self._adjoint(self._forward(x))

    @property
    def lipschitz(self) -> float:
        """``||A||_2^2``, the Lipschitz constant of ``grad``: exact or a tight upper bound,
        given by each class. The unfolded model divides its gradient step by it, so that a
        learned step size means the same for every operator (SR x4 has ``||A||^2 = 1/16``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define lipschitz")

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of ``A(x)`` for an image batch of shape ``x_shape``."""
        return tuple(x_shape)

    def spec(self) -> dict:
        """Parameters that rebuild this operator with ``make_operator``."""
        return {}

    # -- public API ------------------------------------------------------------------------
    def A(self, x):
        """Forward model ``A x``."""
        self._check_image(x, "x")
        return self._forward(x)

    __call__ = A

    def AT(self, y):
        """Exact adjoint ``A^H y``."""
        self._check_measurement(y, "y")
        return self._adjoint(y)

    def pinv(self, y):
        """A cheap pseudo-inverse (exact where the operator allows it, see each class)."""
        self.check_measurement(y)
        return self._pinv(y)

    def normal(self, x):
        """The normal operator ``A^H A x``."""
        self._check_image(x, "x")
        return self._normal(x)

    def grad(self, x, y):
        """Gradient of the data fidelity ``0.5 ||A x - y||^2``: ``A^H (A x - y)``, computed as
        ``A^H A x - A^H y`` where the operator has a fast normal operator (``A^H y`` once per
        measurement, see :meth:`_adjoint_y`)."""
        self._check_image(x, "x")
        self._check_measurement(y, "y")
        if self.fast_normal:
            if int(y.shape[0]) != int(x.shape[0]) or y.dtype != x.dtype:
                raise InputError(
                    f"y is {describe(y)} but x is {describe(x)}; x and y must describe the same batch, "
                    "in the same precision"
                )
            return self._normal(x) - self._adjoint_y(y)
        ax = self._forward(x)
        if tuple(ax.shape) != tuple(y.shape):
            raise InputError(
                f"y has shape {tuple(y.shape)} but A(x) has shape {tuple(ax.shape)}; "
                "x and y must describe the same batch"
            )
        if ax.dtype != y.dtype:
            raise InputError(f"y is {describe(y)} but A(x) is {describe(ax)}; give x and y the same precision")
        return self._adjoint(ax - y)

    # CG steps of the default ``prox`` when the caller gives none; closed forms ignore it.
    prox_iterations: int = 30

    def prox(self, v, y, weight, iterations: int | None = None):
        """The data-consistency (proximal) step of the normalised fidelity at ``v``:

        ``argmin_x ||A x - y||^2 / (2 L) + weight / 2 ||x - v||^2`` with ``L = ||A||^2``, the
        solution of ``(A^H A / L + weight I) x = A^H y / L + weight v``. ``weight`` (> 0, one
        value or one per image) is the trust in ``v``: small trusts ``y`` (a noise-free ``y`` is
        then matched exactly where ``A`` sees), large keeps ``v``. Unlike a gradient step it is
        stable for every weight. Exact where the operator has a closed form (blur, inpainting,
        SR); otherwise ``iterations`` (default ``prox_iterations``) CG steps started from ``v``
        (MRI)."""
        self._check_image(v, "v")
        self._check_measurement(y, "y")
        steps = self.prox_iterations if iterations is None else int(iterations)
        if steps < 1:
            raise InputError(f"iterations must be >= 1, got {iterations}")
        return self._prox(v, y, self._per_image(weight, v), steps)

    def _prox(self, v, y, weight, iterations: int):
        lip = self.lipschitz

        def normal(u):
            return self._normal(u) / lip + weight * u

        return conjugate_gradient(normal, self._adjoint_y(y) / lip + weight * v, v, iterations)

    def _adjoint_y(self, y):
        """``A^H y``, kept for the last ``y`` seen (:meth:`_for_measurement`)."""
        return self._for_measurement(y, "A^H y", self._adjoint)

    def _for_measurement(self, y, name: str, compute):
        """``compute(y)``, kept under ``name`` for the last ``y`` seen: a solve calls the data step
        K x NFE times with the same measurement. The memo holds a copy of that ``y`` and is used
        only while the ``y`` given is equal to it by value (one comparison, much cheaper than an
        FFT or ``A^H``), so a measurement changed in place is never served a stale result.
        Tensors that carry a gradient are not memoised."""
        if getattr(y, "requires_grad", False):
            return compute(y)
        memo = self._y_memo
        if memo is None or not _same_array(memo[0], y):
            memo = self._y_memo = (namespace(y).asarray(y, copy=True), {})
        hit = memo[1].get(name)
        if hit is None:
            hit = memo[1][name] = compute(y)
        return hit

    @staticmethod
    def _per_image(weight, ref):
        """A float, or per-image weights as a ``(B, 1, 1, 1)`` real array of ``ref``'s kind."""
        if isinstance(weight, (int, float, np.floating, np.integer)):
            return float(weight)
        xp = namespace(ref)
        w = like(weight, ref, dtype=real_dtype_for(xp, ref.dtype))
        return xp.reshape(w, (-1, 1, 1, 1))

    def check_measurement(self, y) -> None:
        """Validate a measurement: shape, dtype and finiteness (one reduction over ``y``)."""
        self._check_measurement(y, "the measurement y")
        check_finite(y, "the measurement y")

    def measure(self, x, noise_std: NoiseStd = 0.0, seed: Seed = None):
        """Simulate ``y = A x + e`` with Gaussian ``e`` of standard deviation ``noise_std``.

        ``noise_std`` is one value or one per image. ``seed`` is an int (one generator for
        the batch), a sequence of ints (one generator per image, so an image's noise does not
        depend on the rest of its batch) or None (fresh entropy). For complex measurements the
        noise is circular: real and imaginary parts each have variance ``noise_std**2 / 2``.
        The noise is drawn on the host with numpy, so a seed gives the same noise on every
        backend.
        """
        self._check_image(x, "x")
        check_finite(x, "the image x")
        y = self._forward(x)
        std = check_noise_std(noise_std, int(y.shape[0]))
        if not np.any(std > 0):
            return y
        noise = gaussian_noise(tuple(y.shape), seed, complex_=is_complex(y))
        noise *= std.reshape((-1,) + (1,) * (noise.ndim - 1)) if std.ndim else std
        noise = like(noise, y, dtype=y.dtype)
        support = self._measured(y)
        return y + (noise if support is None else noise * support)

    def _measured(self, y):
        """Where ``y`` holds measurements (1) and where the operator always returns 0, such as
        missing pixels or unsampled k-space; None when every entry is measured. Noise goes only
        where something is measured."""
        return None

    # -- helpers for subclasses -------------------------------------------------------------
    def _const(self, key: str, value, ref, dtype=None):
        """``value`` moved to ``ref``'s namespace/device (and ``dtype``), cached per target."""
        xp = namespace(ref)
        cache_key = (key, xp.__name__, str(device_of(ref)), str(dtype))
        hit = self._cache.get(cache_key)
        if hit is None:
            hit = like(value() if callable(value) else value, ref, dtype=dtype)
            self._cache[cache_key] = hit
        return hit

    def _check_dtype(self, x, what: str) -> None:
        xp = namespace(x)
        if self.complex_image:
            if x.dtype not in (xp.complex64, xp.complex128):
                raise InputError(
                    f"{what} must be complex64 or complex128 for {self.task}, got {describe(x)}; "
                    "MRI images and k-space are complex (convert real images with x.astype(complex64))"
                )
        elif x.dtype not in (xp.float32, xp.float64):
            raise InputError(
                f"{what} must be float32 or float64 for {self.task}, got {describe(x)}; "
                "images are real floats in [0, 1] (divide uint8 images by 255)"
            )

    def _check_batch(self, x, what: str) -> None:
        if self.batch is not None and self.batch > 1 and int(x.shape[0]) != self.batch:
            raise InputError(
                f"{what} has batch size {int(x.shape[0])} but this {self.task} operator holds "
                f"per-image masks or maps for {self.batch} images"
            )

    def _check_image(self, x, what: str) -> None:
        namespace(x)  # a list or a foreign array type gets its own message first
        if getattr(x, "ndim", None) != 4 or tuple(x.shape[-2:]) != self.image_shape:
            got = describe(x) if hasattr(x, "shape") else type(x).__name__
            raise InputError(
                f"{what} must have shape (B, C, {self.image_shape[0]}, {self.image_shape[1]}) "
                f"for this {self.task} operator, got {got}"
            )
        if self.channels is not None and int(x.shape[1]) != self.channels:
            raise InputError(f"{what} must have {self.channels} channel(s) for {self.task}, got {describe(x)}")
        self._check_dtype(x, what)
        self._check_batch(x, what)

    def _expected_measurement_hw(self) -> tuple[int, int]:
        return self.image_shape

    def _check_measurement(self, y, what: str) -> None:
        hw = self._expected_measurement_hw()
        namespace(y)
        if getattr(y, "ndim", None) != 4 or tuple(y.shape[-2:]) != hw:
            got = describe(y) if hasattr(y, "shape") else type(y).__name__
            raise InputError(
                f"{what} must have shape (B, C, {hw[0]}, {hw[1]}) for this {self.task} operator, got {got}"
            )
        self._check_dtype(y, what)
        self._check_batch(y, what)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k not in ("task", "image_shape"))
        return f"{type(self).__name__}({self.image_shape}, {params})"


def _same_array(seen, y) -> bool:
    """``y`` is ``seen`` by value: the same kind, shape, precision, device and entries."""
    return (
        type(seen) is type(y)
        and seen.shape == y.shape
        and seen.dtype == y.dtype
        and device_of(seen) == device_of(y)
        and bool(namespace(y).all(seen == y))
    )


def check_noise_std(noise_std: NoiseStd, batch: int) -> np.ndarray:
    """The one check of a noise level (``measure``, the baselines, the solvers): ``noise_std``, a
    number or one per image of ``batch``, as float64 of shape ``()`` or ``(batch,)``, finite and
    >= 0. Raises :class:`InputError` otherwise."""
    try:
        std = np.asarray(noise_std, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"noise_std must be a number or one number per image, got {noise_std!r}") from None
    if std.ndim > 1 or (std.ndim == 1 and std.shape[0] != batch):
        raise InputError(f"noise_std must be a number or one value per image ({batch}), got shape {std.shape}")
    if not np.all(np.isfinite(std)) or np.any(std < 0):
        raise InputError(f"noise_std must be finite and >= 0, got {noise_std!r}")
    return std


def gaussian_noise(shape: tuple[int, ...], seed: Seed, complex_: bool) -> np.ndarray:
    """Standard normal noise (float64 or complex128 of unit variance) from a seed."""

    def draw(rng: np.random.Generator, shp):
        if complex_:
            return (rng.standard_normal(shp) + 1j * rng.standard_normal(shp)) / np.sqrt(2.0)
        return rng.standard_normal(shp)

    if seed is None or isinstance(seed, (int, np.integer)):
        return draw(np.random.default_rng(seed), shape)
    seeds = list(seed)
    if len(seeds) != shape[0]:
        raise InputError(f"got {len(seeds)} seeds for a batch of {shape[0]} images; give one per image")
    return np.stack([draw(np.random.default_rng(int(s)), shape[1:]) for s in seeds])

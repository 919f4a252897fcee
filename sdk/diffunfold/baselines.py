"""Classical baselines: what a reconstruction without a learned prior gives, for figures and
tables next to the trained model ("measurement, classical baseline, Diff-Unfolding, ...").

=====================  ========================  ==========================================
operator               :func:`baseline_name`     method
=====================  ========================  ==========================================
Convolution (blurs)    "Wiener"                  :func:`wiener_deconvolution`, natural prior
SuperResolution        "pinv"                    the exact pseudo-inverse (least squares)
Inpainting             "normalised convolution"  :func:`normalised_convolution`
MultiCoilMRI           "zero-filled SENSE"       ``op.pinv`` (``A^H y``)
=====================  ========================  ==========================================

Like the operators, the reconstructions take numpy, torch or CuPy arrays and return the same
kind on the same device at the same precision; the constant arrays are built on the host in
float64 and moved once (cached on the operator).

The natural-image prior is the classic ``S(f) = c / |f|^2`` power spectrum (``f`` in cycles
per pixel, per-pixel normalisation: ``S(f) = E|X(f)|^2 / (H W)`` for an unnormalised DFT). Its
constant was fitted on the bundled *training* images only (:func:`calibrate_priors` on
``BundledImages(size=64, split="train", channels=1)``, epochs 0-7: 112 random crops); the
held-out images are never used. ``f^2 S(f)`` of those crops is flat within a factor of 2
from 1/64 to 1/2 cycle/pixel, and the same at 64 and 128 px (at 256 px only the top octave
falls off), so the classic ``alpha = 2`` is kept (not fitted) and the constant does not
depend on the image size. The fit was not tuned on PSNR: on the training centre crops
(Gaussian sigma 2 and motion blur, noise 0.01-0.1) ``c / 2`` would gain 0.1-0.4 dB and
``2 c`` lose 0.4-1 dB, so the constant is within a fraction of a dB of the best.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._array import complex_dtype_for, fft_of, like, namespace, real_dtype_for
from .errors import InputError
from .physics.base import LinearOperator, NoiseStd, check_noise_std
from .physics.blur import Convolution
from .physics.inpainting import Inpainting
from .physics.mri import MultiCoilMRI
from .physics.superres import SuperResolution

__all__ = [
    "PRIORS",
    "NATURAL_SPECTRUM_C",
    "FLAT_SIGNAL_VAR",
    "MIN_NOISE_STD",
    "wiener_deconvolution",
    "normalised_convolution",
    "classical_baseline",
    "baseline_name",
    "calibrate_priors",
]

PRIORS = ("natural", "flat")
# c of S(f) = c / |f|^2: calibrate_priors() on the training crops gives 7.03e-4 (grey,
# 64 px; 7.4e-4 in colour, 7.2e-4 at 128 px).
NATURAL_SPECTRUM_C = 7.0e-4
# Mean per-image pixel variance of the same crops (0.0156): the "flat" prior's S (Tikhonov eps =
# noise_var / FLAT_SIGNAL_VAR).
FLAT_SIGNAL_VAR = 0.016
# The Wiener filter raises smaller noise levels (0 included) to these, per precision: an
# exact inverse divides by |K|^2 ~ 1e-17, and a float32 measurement carries ~1e-7 of rounding
# noise that a lower floor amplifies (a smooth test image: 109 dB with 1e-4, 72 dB with 1e-6).
# Both are below 8-bit quantisation noise (1/255/sqrt(12) ~ 1e-3).
MIN_NOISE_STD = {"float32": 1e-4, "float64": 1e-6}

# Normalised convolution: the finest Gaussian (px) and the certainty (local fraction of
# observed weight) below which the next coarser scale takes over. Chosen on the training
# crops (random 40 % / 80 % missing and a centred box); within 0.2 dB of the best setting
# tried in each case.
_NC_SIGMA0 = 0.5
_NC_CERTAINTY = 0.1


def _clip01(x):
    return namespace(x).clip(x, 0.0, 1.0)


# --------------------------------------------------------------------------------- Wiener


def _frequencies(shape: tuple[int, int]) -> np.ndarray:
    """``|f|`` in cycles/pixel on the rfft2 grid of ``shape``."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return np.sqrt(fy**2 + fx**2)


def _inverse_prior(shape: tuple[int, int], prior: str) -> np.ndarray:
    """``1 / S(f)`` on the rfft2 grid, with 0 at DC.

    S is infinite at DC for both priors: nothing is assumed about an image's mean, so the
    filter passes the mean untouched (``|K(0)| = 1``) instead of shrinking it towards 0.
    """
    f = _frequencies(shape)
    if prior == "natural":
        return f**2 / NATURAL_SPECTRUM_C
    inv = np.full(f.shape, 1.0 / FLAT_SIGNAL_VAR)
    inv[0, 0] = 0.0
    return inv


def wiener_deconvolution(op: Convolution, y, noise_std: NoiseStd, prior: str = "natural", *, clip: bool = True):
    """Wiener filter ``X = conj(K) Y / (|K|^2 + noise_var / S(f))`` for a blur ``op``.

    Args:
        op: a :class:`~diffunfold.physics.Convolution` (GaussianBlur, MotionBlur, ...).
        y: the blurred, noisy measurement ``(B, C, H, W)``.
        noise_std: the noise standard deviation, one value or one per image; values below
            :data:`MIN_NOISE_STD` of ``y``'s precision (0 included) are raised to it.
        prior: ``"natural"``: ``S(f) = NATURAL_SPECTRUM_C / |f|^2`` (natural images in
            [0, 1]); ``"flat"``: ``S = FLAT_SIGNAL_VAR`` (Tikhonov, ``eps = noise_var /
            signal_var``). Either way the mean (DC) passes unchanged.
        clip: clip the result to [0, 1].

    The filter is recomputed per call from cached ``conj(K)``, ``|K|^2`` and ``1/S``: one
    element-wise division, and no cache that grows with every new noise level.
    """
    if not isinstance(op, Convolution):
        raise InputError(
            f"wiener_deconvolution needs a Convolution operator (a blur), got {type(op).__name__}; "
            "use classical_baseline(op, y, noise_std) for other operators"
        )
    if prior not in PRIORS:
        raise InputError(f"unknown prior {prior!r}; choose one of {PRIORS}")
    op.check_measurement(y)
    xp = namespace(y)
    real_t, complex_t = real_dtype_for(xp, y.dtype), complex_dtype_for(xp, y.dtype)
    floor = MIN_NOISE_STD["float32" if real_t == xp.float32 else "float64"]
    var = np.maximum(check_noise_std(noise_std, int(y.shape[0])), floor) ** 2

    conj_k = op._const("wiener:K*", lambda: np.conj(op._spectrum), y, dtype=complex_t)
    power = op._const("wiener:|K|^2", lambda: np.abs(op._spectrum) ** 2, y, dtype=real_t)
    inv_s = op._const(f"wiener:1/S:{prior}", lambda: _inverse_prior(op.image_shape, prior), y, dtype=real_t)
    # (B, 1, 1, 1) for per-image levels; the denominator is > 0 everywhere: at DC it is
    # |K(0)|^2 = 1, elsewhere var * inv_s > 0.
    var = float(var) if var.ndim == 0 else like(var.reshape(-1, 1, 1, 1), y, dtype=real_t)
    filt = conj_k / (power + var * inv_s)

    fft = fft_of(y)
    x = fft.irfftn(fft.rfftn(y, axes=(-2, -1)) * filt, s=op.image_shape, axes=(-2, -1))
    return _clip01(x) if clip else x


def calibrate_priors(images) -> dict[str, float]:
    """Fit the two priors' constants to clean images ``(N, C, H, W)`` in [0, 1] (numpy).

    ``natural_c``: with ``alpha = 2`` fixed, the log-space least-squares ``c`` of
    ``S(f) = c / |f|^2`` against the periodogram averaged over images and channels, in
    logarithmic radial bins from the lowest frequency to 1/2 cycle/pixel (each octave counts
    the same). ``flat_var``: the mean per-image, per-channel pixel variance. This is how
    :data:`NATURAL_SPECTRUM_C` and :data:`FLAT_SIGNAL_VAR` were obtained.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or min(x.shape[-2:]) < 8:
        raise InputError(f"calibrate_priors expects (N, C, H, W) images of 8 px or more, got {x.shape}")
    h, w = x.shape[-2:]
    periodogram = (np.abs(np.fft.rfft2(x)) ** 2 / (h * w)).mean(axis=(0, 1))
    f = _frequencies((h, w))
    edges = np.geomspace(1.0 / min(h, w), 0.5, 13)
    log_c = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (f >= lo) & (f < hi)
        if sel.any():
            f_bin = np.exp(np.log(f[sel]).mean())
            log_c.append(np.log(periodogram[sel].mean() * f_bin**2))
    return {"natural_c": float(np.exp(np.mean(log_c))), "flat_var": float(x.var(axis=(2, 3)).mean())}


# -------------------------------------------------------------------------------- inpainting


def _gaussian_spectrum(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """rfft2 of a normalised Gaussian (std ``sigma`` px) centred at [0, 0] on a periodic grid.
    Sampled in space, so the kernel is non-negative (and the weights below are >= 0)."""
    h, w = shape
    dy = (np.arange(h) + h // 2) % h - h // 2
    dx = (np.arange(w) + w // 2) % w - w // 2
    kernel = np.exp(-0.5 * (dy[:, None] ** 2 + dx[None, :] ** 2) / sigma**2)
    return np.fft.rfft2(kernel / kernel.sum()).real  # symmetric kernel: real spectrum


def normalised_convolution(op: Inpainting, y, *, clip: bool = True):
    """Fill the missing pixels with a Gaussian-weighted average of the observed ones.

    At each scale ``sigma`` the estimate is ``(g * (m y)) / (g * m)`` (normalised convolution,
    Knutsson & Westin): ``g * m`` is the certainty, the share of the Gaussian's weight that
    falls on observed pixels. Scales go from ``max(H, W) / 4`` down to 0.5 px, each fine scale
    taking over where its certainty is high enough, so small holes get a local average and
    large ones a smooth fill (the coarsest fallback is the mean of the observed pixels).
    Convolutions are FFTs on a zero-padded grid: the padding is "unobserved", so the image
    borders are handled exactly, with no wrap-around. Observed pixels are kept as measured
    (then clipped with ``clip``). An image with no observed pixel gives zeros.
    """
    if not isinstance(op, Inpainting):
        raise InputError(f"normalised_convolution needs an Inpainting operator, got {type(op).__name__}")
    op.check_measurement(y)
    xp = namespace(y)
    fft = fft_of(y)
    h, w = op.image_shape
    padded = (2 * h, 2 * w)  # wrap-around distance >= 4 sigma for the coarsest sigma
    real_t = real_dtype_for(xp, y.dtype)

    mask = op._const("nc:mask", op.mask, y, dtype=y.dtype)
    observed = mask * y

    def spectrum(v):
        v = xp.concat([v, xp.zeros_like(v)], axis=-1)
        v = xp.concat([v, xp.zeros_like(v)], axis=-2)
        return fft.rfftn(v, axes=(-2, -1))

    def smooth(v_hat, sigma):
        g = op._const(f"nc:g{sigma!r}", lambda: _gaussian_spectrum(padded, sigma), y, dtype=real_t)
        return fft.irfftn(v_hat * g, s=padded, axes=(-2, -1))[..., :h, :w]

    tiny = 1e-12
    weight = xp.sum(mask, axis=(-2, -1), keepdims=True)
    estimate = xp.sum(observed, axis=(-2, -1), keepdims=True) / xp.clip(weight, min=tiny)
    sigmas = [_NC_SIGMA0 * 2.0**k for k in range(32) if _NC_SIGMA0 * 2.0**k <= max(h, w) / 4]
    observed_hat, mask_hat = spectrum(observed), spectrum(mask)
    for sigma in reversed(sigmas):
        num, den = smooth(observed_hat, sigma), smooth(mask_hat, sigma)
        trust = xp.clip(den / _NC_CERTAINTY, 0.0, 1.0)  # FFT rounding can make den ~ -1e-8
        estimate = trust * (num / xp.clip(den, min=tiny)) + (1.0 - trust) * estimate
    x = observed + (1.0 - mask) * estimate
    return _clip01(x) if clip else x


# ---------------------------------------------------------------------------------- dispatch


def _sr_pinv(op, y, noise_std):
    return _clip01(op.pinv(y))


def _wiener(op, y, noise_std):
    return wiener_deconvolution(op, y, noise_std, "natural")


def _inpaint(op, y, noise_std):
    return normalised_convolution(op, y)


def _zero_filled(op, y, noise_std):
    return op.pinv(y)  # complex images: no clipping


# Checked in order with isinstance, so subclasses (GaussianBlur, MotionBlur) dispatch too.
_BASELINES = (
    (Convolution, "Wiener", _wiener),
    (SuperResolution, "pinv", _sr_pinv),
    (Inpainting, "normalised convolution", _inpaint),
    (MultiCoilMRI, "zero-filled SENSE", _zero_filled),
)


def _lookup(op: Any):
    for cls, name, fn in _BASELINES:
        if isinstance(op, cls):
            return name, fn
    kinds = ", ".join(cls.__name__ for cls, _, _ in _BASELINES)
    what = type(op).__name__
    if not isinstance(op, LinearOperator):
        raise InputError(f"expected a diffunfold operator ({kinds}), got {what}")
    raise InputError(f"there is no classical baseline for {what}; baselines exist for {kinds}")


def baseline_name(op: LinearOperator) -> str:
    """The figure label of :func:`classical_baseline` for ``op``: "Wiener", "pinv",
    "normalised convolution" or "zero-filled SENSE"."""
    return _lookup(op)[0]


def classical_baseline(op: LinearOperator, y, noise_std: NoiseStd):
    """The reconstruction a classical method gives for ``y = A x + noise``.

    * blurs (:class:`Convolution` and subclasses): :func:`wiener_deconvolution` with the
      natural-image prior and the given ``noise_std``;
    * :class:`SuperResolution`: ``op.pinv``, the exact Moore-Penrose pseudo-inverse, i.e. the
      least-squares (minimum-norm) upsampling (nearest-neighbour for the box kernel);
    * :class:`Inpainting`: :func:`normalised_convolution` (observed pixels kept);
    * :class:`MultiCoilMRI`: zero-filled SENSE, ``A^H y`` (``op.pinv``).

    Real images are clipped to [0, 1]; MRI images are complex and returned as they are.
    ``noise_std`` (one value or one per image) is validated for every operator but only the
    Wiener filter uses it. Raises :class:`InputError` for an operator with no baseline.
    """
    _, fn = _lookup(op)
    batch = int(y.shape[0]) if getattr(y, "ndim", 0) >= 1 else 1
    check_noise_std(noise_std, batch)
    return fn(op, y, noise_std)

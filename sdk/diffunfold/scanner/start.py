"""Where a scan's reconstruction starts: a SENSE estimate plus noise, not pure noise.

Sampling from pure noise draws one posterior sample, and a sample's error is about twice the
posterior mean's (its own spread adds to the mean's). Where the measurement nearly fixes the
image (a 2-D pattern seen by 15 coils) that spread is what is left: on a held-out 256 px slice
(Gaussian 2-D 8x, true maps, no noise) each of four samples scored 43.2-43.5 dB against
CG-SENSE's 45.6, their mean 46.9. Starting from a regularised SENSE estimate plus noise of a
small level and running only the schedule's steps below it (Chung et al. 2022, "come closer,
diffuse faster") keeps the sample near what the data fix, with 3-7 instead of 18 steps: 47.8 dB
in 3. Where whole lines are missing (1-D patterns: coherent aliasing) the start must be
noisier, so that the network and not the aliasing fills the gaps; and where the data are noisy
it must drown the noise the SENSE estimate carries, whose level is found by passing white
noise of the measurement's level through the same (linear) estimate.

What comes back (the readout): for 2-D patterns, one denoiser call on the start, which
estimates the posterior *mean* given it (what a sampler's last step returns): smoother than a
sample and, by squared error, better: +1.2 dB without noise and +2.0 dB with noise 0.02 over the
sampled tail on 256 px validation slices, in one call instead of 3-5. For 1-D patterns the
sampled tail stays (the one call lost 1.3-4 dB there: the aliasing of whole missing lines is
not noise the network removes in one step), re-spaced to 4 steps from its start level rather
than the 7 of the 18-step schedule below it (0.7-1.1 dB better there, 16 calls instead of 28),
and wherever several samples are asked for.

How high the one call starts depends on how much of the image the pattern leaves out. A head
at 64 or 128 px keeps much of its energy where a Gaussian 2-D 8x pattern has thinned out
(a pattern of given acceleration spreads over the whole matrix; the head's spectrum stays
within a few dozen samples of the centre), and the SENSE estimate misses it: there a call at
0.4 beat one at 0.0229 by up to 2 dB (true maps, 24 validation slices), while at 192-320 px it
lost up to 2.5 dB. The share of the energy the pattern samples, read from the measured
k-space without the coil maps (:func:`sampled_energy`: 0.66-0.80 at 64-128 px, 0.86-0.98 at
192-320 px), tells them apart.

The levels are model units (the scan scaled to a 99th percentile of 1). They were chosen on
256 px slices of the training volumes, not the held-out head (docs/mri-and-scanner.md,
bench/results/scanner-start-validation.md): 1-D 4x within 0.2 dB of the full schedule from 0.5
up (in the 18-step schedule's steps); 2-D 8x sampled best at 0.05 without noise and flat from
2x the estimate's noise up with it; the 2-D one call best at 0.0229 without noise (against
0.01, 0.05, 0.1) and at the estimate's noise with it (against 0.75x and 1.5x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter

from ..errors import InputError
from ..physics.mri import MultiCoilMRI
from .coils import calibration_region
from .prepare import Prepared
from .simulate import white_noise

START_METHODS = ("sense", "noise")
READOUTS = ("auto", "mean", "sample")
# Start levels of a sampled tail by sampling pattern: whole lines (1-D: just above the 18-step
# schedule's level 0.58535, so that a given schedule's tail starts there) and points (2-D); and
# the least multiple of the noise in the SENSE estimate.
LINE_SIGMA = 0.586
POINT_SIGMA = 0.05
NOISE_MARGIN = 2.0
# A 1-D pattern's tail runs in this many steps from its start level (EDM's spacing), not the
# 7 of the 18-step schedule below it: fewer calls, and 0.7-1.1 dB better on validation slices.
LINE_STEPS = 4
# The one call's level where the estimate carries no noise; with noise, the level the estimate
# carries (its complex rms, counted whole: its errors are more than white noise).
MEAN_SIGMA = 0.0229
# Where a 2-D pattern samples less than this share of the image's energy (:func:`sampled_energy`,
# over windows of ENERGY_WINDOW k-space samples: 0.66-0.80 for a head at 64 and 128 px, 0.86-0.98
# at 192-320 px, Gaussian 8x), the SENSE estimate misses too much for a call at MEAN_SIGMA to
# restore, and the one call is made at OPEN_SIGMA, unless the held-out error is above OPEN_TRUST:
# maps that explain the data that poorly (ESPIRiT's at 128 px: 0.14-0.18; the true maps on the
# validation slices: 0.02-0.10) lost 1-2.7 dB there.
SAMPLED_ENERGY_LIMIT = 0.83
ENERGY_WINDOW = 5
OPEN_SIGMA = 0.4
OPEN_TRUST = 0.12
# Above this cross-validated error of the SENSE estimate (model units) the data leave too much
# to the prior for a start near them: a sample from far above them instead, OPEN_STEPS steps from
# the estimate plus noise OPEN_START (at least NOISE_MARGIN x its own). On the 20 open slice-cells
# of the 64 px validation slices (bench/experiments/scanner_open_schedule.py) that gained 0.08-0.23 dB
# per cell over the 18-step schedule from pure noise (worst slice -0.03) in 20 calls instead of 72.
OPEN_LIMIT = 0.2
OPEN_START = 1.0
OPEN_STEPS = 5
HELD_OUT_FRACTION = 0.1
# The SENSE estimate: Tikhonov weight (relative to ||A||^2) and CG iterations (2-D patterns;
# 1-D ones are solved exactly row by row).
SENSE_WEIGHT = 1e-3
SENSE_ITERATIONS = 20


@dataclass(frozen=True)
class StartSettings:
    """``method``: ``sense`` (a SENSE estimate plus noise) or ``noise`` (the full schedule from
    pure noise); ``sigma``: the start's noise level, None for the pattern's own; ``readout``:
    ``mean`` (one denoiser call: the posterior mean's estimate), ``sample`` (the schedule's
    tail: a posterior sample) or ``auto`` (the mean for 2-D patterns when one sample is asked
    for and no number of steps, else a sample)."""

    method: str = "sense"
    sigma: float | None = None
    readout: str = "auto"
    sense_weight: float = SENSE_WEIGHT
    sense_iterations: int = SENSE_ITERATIONS

    def checked(self) -> StartSettings:
        if self.method not in START_METHODS:
            raise InputError(f"the start must be one of {START_METHODS}, got {self.method!r}")
        if self.readout not in READOUTS:
            raise InputError(f"the readout must be one of {READOUTS}, got {self.readout!r}")
        if self.sigma is not None and not (np.isfinite(self.sigma) and self.sigma > 0):
            raise InputError(f"the start's sigma must be a positive number or None, got {self.sigma!r}")
        if not (np.isfinite(self.sense_weight) and self.sense_weight > 0):
            raise InputError(f"sense_weight must be a positive number, got {self.sense_weight!r}")
        if (
            isinstance(self.sense_iterations, bool)
            or not isinstance(self.sense_iterations, int)
            or self.sense_iterations < 1
        ):
            raise InputError(f"sense_iterations must be a positive integer, got {self.sense_iterations!r}")
        return self


def too_open(prepared: Prepared, settings: StartSettings) -> bool:
    """Whether the data leave too much to the prior for a start near them
    (:func:`held_out_error` above ``OPEN_LIMIT``; never when the level is given); the error goes
    to ``prepared.info``."""
    if settings.sigma is not None:
        return False
    error = held_out_error(prepared, settings)
    prepared.info["held_out_error"] = error
    return error > OPEN_LIMIT


def readout(prepared: Prepared, settings: StartSettings, samples: int = 1, steps: int | None = None) -> str:
    """``mean`` or ``sample``: the setting, or for ``auto`` the mean where the pattern samples
    points, one sample is asked for and no number of steps."""
    if settings.readout == "mean" and (samples > 1 or steps is not None):
        raise InputError(
            "the mean readout is one denoiser call: it takes no samples > 1 or steps; "
            "ask for readout='sample' to draw posterior samples"
        )
    if settings.readout != "auto":
        return settings.readout
    points = not prepared.operator.samples_lines
    return "mean" if points and samples == 1 and steps is None else "sample"


def held_out_error(prepared: Prepared, settings: StartSettings) -> float:
    """How much the data leave open: a tenth of the measured lines (1-D) or points (2-D) outside
    the calibration region is held out, the SENSE estimate from the rest predicts them, and the
    error per held-out location (all coils; the same for white noise of the measured level
    taken out), spread over the locations never measured, is an image-space rms. It grows where
    the image has energy the pattern misses (small matrices, high accelerations)."""
    op = prepared.operator
    mask = np.asarray(op.mask, dtype=np.float32)[0, 0]
    held = _held_out(mask, op.samples_lines)
    if not held.any():
        return 0.0
    rest = MultiCoilMRI(np.asarray(op.coil_maps)[0], mask - held)
    rest.row_prox = False  # CG: an exact 1-D step would cost a second eigendecomposition
    zeros = np.zeros((1, 1, *op.image_shape), dtype=np.complex64)

    def miss(y) -> float:  # mean squared prediction error per held-out location
        estimate = rest.prox(zeros, y * (mask - held), settings.sense_weight, settings.sense_iterations)
        return float(np.sum(np.abs((np.asarray(op.A(estimate)) - y) * held) ** 2) / held.sum())

    noise = miss(_white(prepared)) if prepared.noise_std > 0 else 0.0
    return float(np.sqrt(max(miss(prepared.y) - noise, 0.0) * np.mean(mask == 0)))


def _white(prepared: Prepared) -> np.ndarray:
    """White k-space noise of the measurement's level where the mask samples (fixed seed)."""
    shape, op = prepared.y.shape, prepared.operator
    white = white_noise(shape, np.random.default_rng(0)) * prepared.noise_std
    return (white * np.asarray(op.mask)).astype(np.complex64)


def _held_out(mask: np.ndarray, lines: bool) -> np.ndarray:
    """A tenth of the sampled lines or points outside the calibration region (fixed seed)."""
    outside = mask > 0
    region = calibration_region(mask)
    outside[region[0], region[1]] = False
    rng = np.random.default_rng(0)
    held = np.zeros_like(mask)
    if lines:
        cols = np.flatnonzero(outside.all(axis=0) & (mask[0] > 0))
        held[:, rng.choice(cols, max(1, int(HELD_OUT_FRACTION * len(cols))), replace=False)] = 1.0
    else:
        points = np.argwhere(outside)
        pick = points[rng.choice(len(points), max(1, int(HELD_OUT_FRACTION * len(points))), replace=False)]
        held[pick[:, 0], pick[:, 1]] = 1.0
    return held


def sampled_energy(prepared: Prepared) -> float:
    """The share of the image's k-space energy that falls where the pattern samples: the measured
    power (all coils, less the noise floor of the outermost samples) averaged over windows of
    ENERGY_WINDOW samples, weighted by the share of each window the mask samples. No coil maps
    enter (estimated ones would bias it). The window is fixed in k-space samples (cycles per
    field of view), where an object's spectrum lives whatever the matrix, so the share grows with
    the matrix: a pattern of given acceleration spreads its samples further out on a larger one
    and covers the object's energy more densely."""
    mask = np.asarray(prepared.operator.mask, dtype=np.float64)[0, 0]
    power = np.sum(np.abs(prepared.y[0].astype(np.complex128)) ** 2, axis=0)
    h, w = mask.shape
    radius = np.hypot(*np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij"))
    outer = (mask > 0) & (radius > 0.7)
    floor = np.median(power[outer]) if outer.sum() >= 8 else prepared.y.shape[1] * prepared.noise_std**2
    power = np.maximum(power - floor, 0.0) * mask
    density = uniform_filter(mask, ENERGY_WINDOW, mode="wrap")
    local = uniform_filter(power, ENERGY_WINDOW, mode="wrap") / np.maximum(density, 1e-12)
    total = float(np.sum(local))
    return float(np.sum(local * density) / total) if total > 0 else 1.0


def _mean_base(prepared: Prepared) -> float:
    """The one call's level before the noise: OPEN_SIGMA where the pattern samples little of the
    image's energy and the maps explain the data (the held-out error), else MEAN_SIGMA."""
    share = prepared.info["sampled_energy"] = sampled_energy(prepared)
    trusted = prepared.info.get("held_out_error", 0.0) <= OPEN_TRUST
    return OPEN_SIGMA if share < SAMPLED_ENERGY_LIMIT and trusted else MEAN_SIGMA


def _mean_schedule(prepared: Prepared, s: StartSettings, noise: float) -> dict:
    """The mean readout's solve options: one call at the given level, or at the larger of
    :func:`_mean_base` and the estimate's noise; from OPEN_SIGMA on data without noise, a second
    call at MEAN_SIGMA (two calls: 0.1-0.4 dB more on all eight 64 px validation slices; with
    noise, 0.4-1.4 dB less)."""
    level = s.sigma or max(_mean_base(prepared), noise)
    if s.sigma is None and level == OPEN_SIGMA and noise < MEAN_SIGMA:
        prepared.info["start"] = (
            f"SENSE estimate, two denoiser calls at {level:.3g} and {MEAN_SIGMA:.3g} (the posterior mean)"
        )
        return {"init_sigma": level, "init_noise": noise, "steps": 2, "sigma_max": level, "sigma_min": MEAN_SIGMA}
    given = "" if s.sigma is None else " (given)"
    prepared.info["start"] = f"SENSE estimate, one denoiser call at {level:.3g}{given} (the posterior mean)"
    return {"init_sigma": level, "init_noise": noise, "steps": 1, "sigma_max": level}


def _open_schedule(prepared: Prepared, noise: float, steps: int | None) -> dict:
    """Where the data leave too much open: a posterior sample from the estimate plus noise
    OPEN_START (or NOISE_MARGIN x the estimate's own), in OPEN_STEPS steps, or the tail below it
    of a ``steps``-step schedule where the caller gives one."""
    level = max(OPEN_START, NOISE_MARGIN * noise)
    how = f"{OPEN_STEPS} steps" if steps is None else f"the tail of a {steps}-step schedule"
    prepared.info["start"] = (
        f"SENSE estimate + noise {level:.3g}, {how} (the data leave much open: "
        f"held-out error {prepared.info['held_out_error']:.3f} > {OPEN_LIMIT:g}; a posterior sample)"
    )
    if steps is not None:
        return {"init_sigma": level, "init_noise": noise}
    return {"init_sigma": level, "init_noise": noise, "steps": OPEN_STEPS, "sigma_max": level}


def estimate_noise(prepared: Prepared, settings: StartSettings) -> float:
    """The rms noise of the SENSE estimate: white k-space noise of the measurement's level (not
    the maps' residual), sampled by the mask, through the same (linear) estimate."""
    if prepared.noise_std <= 0:
        return 0.0
    out = _sense_estimate(prepared.operator, _white(prepared), settings)
    return float(np.sqrt(np.mean(np.abs(out) ** 2)))


def _sense_estimate(op: MultiCoilMRI, y, settings: StartSettings) -> np.ndarray:
    """The regularised SENSE estimate of ``y``: the data step's prox from zero (linear in ``y``)."""
    zeros = np.zeros((1, 1, *op.image_shape), dtype=np.complex64)
    return np.asarray(op.prox(zeros, y, settings.sense_weight, settings.sense_iterations), dtype=np.complex64)


def sense_start(prepared: Prepared, settings: StartSettings | None = None, samples: int = 1, steps=None) -> dict:
    """``Solver.solve`` options that start a prepared scan from its SENSE estimate (``init``,
    ``init_sigma``, ``init_noise``; for the mean readout also ``steps=1`` and ``sigma_max``: a
    one-call schedule; for a 1-D pattern's tail ``steps=LINE_STEPS`` from ``sigma_max``);
    empty for the ``noise`` start, asked for or chosen. ``samples`` and ``steps``: what the
    caller asks of the solve (they choose the readout; given steps, the tail is that many-step
    schedule's below the start). Says what it chose in ``prepared.info["start"]``."""
    s = (settings or StartSettings()).checked()
    if s.method == "noise":
        prepared.info["start"] = "noise"
        return {}
    open_ = too_open(prepared, s)
    noise = estimate_noise(prepared, s)
    op = prepared.operator
    begin = {"init": _sense_estimate(op, prepared.y, s)}
    if open_:
        return {**begin, **_open_schedule(prepared, noise, steps)}
    given = "" if s.sigma is None else " (given)"
    if readout(prepared, s, samples, steps) == "mean":
        return {**begin, **_mean_schedule(prepared, s, noise)}
    pattern = LINE_SIGMA if op.samples_lines else POINT_SIGMA
    sigma = s.sigma or max(pattern, NOISE_MARGIN * noise)
    if op.samples_lines and steps is None:  # the tail re-spaced to LINE_STEPS from the start
        prepared.info["start"] = f"SENSE estimate + noise {sigma:.3g}{given}, {LINE_STEPS} steps (a posterior sample)"
        return {**begin, "init_sigma": sigma, "steps": LINE_STEPS, "sigma_max": sigma}
    prepared.info["start"] = f"SENSE estimate + noise {sigma:.3g}{given} (a posterior sample)"
    return {**begin, "init_sigma": sigma}

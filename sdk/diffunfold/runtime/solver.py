"""The torch-free solver: EDM's loop around the unfolded denoiser, on any backend.

``D(x_t, s; y, A)`` runs K stages in model space exactly as the training side's
``DiffUnfolding.forward``: the same ``edm.sample_loop``, the same ``edm.initial_noise`` per
image and the same stage update (``diffunfold.unfolding.stage``: the package's gradient or
proximal data step, on the operators' numpy or CuPy code). Only ``R_k`` and ``(tau, gamma)``
come from the backend; ``(tau, gamma)`` are evaluated once per schedule and cached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import edm
from .._array import check_finite, describe, is_complex, to_numpy
from ..errors import InputError
from ..noise import resolve_noise_std
from ..package import ModelPackage
from ..unfolding import stage
from ..physics.base import LinearOperator
from .backends import Backend, create_backend


@dataclass
class Timing:
    """Seconds spent, summed over all samples: the networks (``R_k``; device work waited for),
    the physics (data-fidelity gradients), and the rest (sampler arithmetic, copies, Python)."""

    network: float = 0.0
    physics: float = 0.0
    total: float = 0.0
    network_calls: int = 0

    @property
    def sampler(self) -> float:
        return max(self.total - self.network - self.physics, 0.0)

    def as_dict(self) -> dict[str, float]:
        return {"network_s": self.network, "physics_s": self.physics, "sampler_s": self.sampler,
                "total_s": self.total, "network_calls": self.network_calls}

    def __str__(self) -> str:
        t = max(self.total, 1e-12)
        return (f"{self.total:.3f} s: network {self.network:.3f} s ({100 * self.network / t:.0f} %), "
                f"physics {self.physics:.3f} s ({100 * self.physics / t:.0f} %), "
                f"sampler {self.sampler:.3f} s ({100 * self.sampler / t:.0f} %)")


@dataclass
class Solution:
    images: Any                    # user space (B, C, H, W); the posterior mean when samples > 1
    std: Any | None                # per-pixel std over the samples (samples > 1; magnitude for MRI)
    nfe: int                       # calls of D per sample (each is K regulariser calls)
    seeds: list[int]
    samples: int
    timing: Timing
    backend: str
    extra: dict = field(default_factory=dict)
    draws: Any | None = None       # the individual posterior samples (samples, B, C, H, W) when samples > 1


class Solver:
    """Restore images with a model package. Build it with :meth:`load`."""

    def __init__(self, package: ModelPackage, backend: Backend, why: str = ""):
        self.package = package
        self.backend = backend
        self.backend_reason = why
        self.space = package.space
        self.stages = package.stages
        self.size_multiple = package.size_multiple
        self._weights_cache: dict[tuple[float, ...], tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def load(cls, package: str | Path | ModelPackage, backend: str = "auto", device: str = "cpu",
             threads: int | None = None, **options) -> "Solver":
        """Open (and verify) a package and start a backend: ``auto`` (the fastest one really
        present: tensorrt > onnxruntime > torch; see ``solver.backend_reason``), ``tensorrt``,
        ``onnxruntime`` or ``torch``. ``device``: ``cpu``, ``cuda`` or ``cuda:N``. ``options``
        for TensorRT: ``cuda_graphs=True`` (replay each engine call as a CUDA graph),
        ``engines=DIR`` (engines built with ``--out`` elsewhere)."""
        pkg = package if isinstance(package, ModelPackage) else ModelPackage.open(package)
        be, why = create_backend(pkg, backend, device, threads, **options)
        return cls(pkg, be, why)

    @property
    def backend_name(self) -> str:
        return self.backend.describe()

    @property
    def xp(self):
        return self.backend.xp

    # -- the learned parts -------------------------------------------------------------------
    def weights_for(self, sigmas: Sequence[float]) -> dict[float, tuple[list[float], list[float]]]:
        """``{sigma: (tau, gamma)}``, K values each, for a schedule; computed once and cached."""
        key = tuple(float(s) for s in sigmas if s > 0)
        hit = self._weights_cache.get(key)
        if hit is None:
            tau, gamma = self.backend.weights(np.asarray(key, dtype=np.float32))
            for name, v in (("tau", tau), ("gamma", gamma)):
                if v.shape != (len(key), self.stages) or not np.all(np.isfinite(v)) or np.any(v <= 0):
                    raise InputError(f"the weight generator returned an invalid {name} {v.shape}; "
                                     "the package is damaged: export it again")
            hit = (tau.astype(np.float32), gamma.astype(np.float32))
            self._weights_cache[key] = hit
        tau, gamma = hit
        # Python floats (exact copies of the float32 values): they scale numpy and CuPy arrays
        # alike without changing their precision.
        return {s: (tau[i].tolist(), gamma[i].tolist()) for i, s in enumerate(key)}

    def _regularize(self, x, sigma: float, k: int, timing: Timing):
        h, w = x.shape[-2:]
        m = self.size_multiple
        ph, pw = -h % m, -w % m
        t0 = time.perf_counter()
        if ph or pw:  # the U-Net needs multiples of 2^(levels-1): reflect-pad, run, crop
            mode = "reflect" if ph < h and pw < w else "edge"
            xp = self.xp
            r = self.backend.regularize(xp.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode), sigma, k)
            r = r[:, :, :h, :w]
        else:
            r = self.backend.regularize(x, sigma, k)
        self.backend.synchronize()
        timing.network += time.perf_counter() - t0
        timing.network_calls += 1
        return r

    def denoise(self, x, sigma: float, y, operator: LinearOperator, weights: dict, timing: Timing,
                noise_var=None):
        """``D(x; sigma, y, A)`` in model space (one schedule point). ``noise_var``: sigma_y^2
        per image ``(B,)``, for a noise-aware package."""
        tau, gamma = weights[float(sigma)]
        pkg = self.package
        for k in range(self.stages):
            r = self._regularize(x, sigma, k, timing)
            t0 = time.perf_counter()
            x = stage(x, r, y, operator, self.space, tau[k], gamma[k], pkg.data_step, sigma=float(sigma),
                      noise_var=noise_var, noise_floor=pkg.noise_floor, prox_iterations=pkg.prox_iterations)
            self.backend.synchronize()
            timing.physics += time.perf_counter() - t0
        return x

    # -- the public entry point ----------------------------------------------------------------
    def solve(self, y, operator: LinearOperator, steps: int | None = None, sampler: str | None = None,
              seed: int | Sequence[int] | None = 0, samples: int = 1, sigma_min: float | None = None,
              sigma_max: float | None = None, rho: float | None = None, progress: bool = False,
              batch_samples: bool = True, noise_std=None) -> Solution:
        """Restore a batch from measurements ``y`` (numpy or CuPy; returned in the same kind).

        ``steps``/``sampler`` default to the package's schedule (18 Euler steps). ``seed``: an
        int (image i uses ``seed + i``) or one per image; an image's result does not depend on
        the rest of its batch. ``samples > 1`` draws that many posterior samples per image and
        returns their mean and per-pixel standard deviation; with ``batch_samples`` they run
        side by side in one batch where the operator allows it (faster, same results).
        ``noise_std``: the measurement noise sigma_y (a number or one per image) that a
        noise-aware package weighs the data step by; None estimates it from ``y``
        (``diffunfold.noise``), and ``solution.extra`` records the value used and whether it
        was estimated. Packages that are not noise-aware ignore it.
        """
        sched = self.package.schedule
        steps = sched["steps"] if steps is None else steps
        sampler = edm.check_sampler(sched["sampler"] if sampler is None else sampler)
        sigmas = edm.schedule(steps, sched["sigma_min"] if sigma_min is None else sigma_min,
                              sched["sigma_max"] if sigma_max is None else sigma_max,
                              sched["rho"] if rho is None else rho)
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
            raise InputError(f"samples must be a positive integer, got {samples!r}")
        y_dev, return_numpy = self._prepare(y, operator)
        batch = int(y_dev.shape[0])
        seeds = edm.seeds_for(seed, batch)
        shape = (self.space.model_channels, *operator.image_shape)
        weights = self.weights_for(sigmas)
        timing = Timing()
        noise_var, extra = self._noise_variance(noise_std, operator, y, batch)

        # Posterior samples run side by side in the batch when the operator's constants are
        # shared by every image (blur, SR, one mask, one set of coil maps): one network call per
        # stage instead of one per sample. Each image's start is still its own (seed, sample)
        # draw, and results do not depend on batch composition, so this changes only the speed.
        together = samples > 1 and batch_samples and (operator.batch is None or operator.batch <= 1)
        rounds = 1 if together else int(samples)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps * rounds, desc=f"restoring ({sampler}, {self.backend.name})", unit="step",
                       leave=False)

        xp = self.xp
        draws, nfe = [], 0
        t_start = time.perf_counter()
        try:
            if together:
                y_all = xp.concatenate([y_dev] * int(samples), axis=0)
                var_all = None if noise_var is None else xp.concatenate([noise_var] * int(samples))
                x = xp.asarray(np.concatenate([edm.initial_noise(seeds, shape, float(sigmas[0]), sample=j)
                                               for j in range(int(samples))]))
                x, nfe = edm.sample_loop(lambda v, s: self.denoise(v, s, y_all, operator, weights, timing, var_all), x,
                                         sigmas, sampler, on_step=(lambda i: bar.update(1)) if bar else None)
                x = self.space.clip(self.space.to_user(x))
                draws = [x[j * batch:(j + 1) * batch] for j in range(int(samples))]
            else:
                for j in range(int(samples)):
                    x = xp.asarray(edm.initial_noise(seeds, shape, float(sigmas[0]), sample=j))
                    x, nfe = edm.sample_loop(lambda v, s: self.denoise(v, s, y_dev, operator, weights, timing,
                                                                       noise_var), x,
                                             sigmas, sampler, on_step=(lambda i: bar.update(1)) if bar else None)
                    draws.append(self.space.clip(self.space.to_user(x)))
            self.backend.synchronize()
        finally:
            if bar is not None:
                bar.close()
        timing.total = time.perf_counter() - t_start
        stack = None
        if samples == 1:
            images, std = draws[0], None
        else:
            stack = xp.stack(draws)
            images = stack.mean(axis=0)
            # ddof=1: the unbiased sample std, as torch's (the reference) computes it
            std = (xp.abs(stack) if self.space.complex else stack).std(axis=0, ddof=1)
        if not bool(xp.all(xp.isfinite(images))):
            raise InputError("the restoration is not finite; the package or the measurement is broken "
                             "(check the operator's parameters and y's scale)")
        if return_numpy:
            images = to_numpy(images)
            std = None if std is None else to_numpy(std)
            stack = None if stack is None else to_numpy(stack)
        return Solution(images=images, std=std, nfe=nfe, seeds=seeds, samples=int(samples), timing=timing,
                        backend=self.backend_name, extra=extra, draws=stack)

    def _noise_variance(self, noise_std, operator: LinearOperator, y, batch: int) -> tuple[Any, dict]:
        """sigma_y^2 per image on the device, and what to report of it, for a noise-aware
        package (given, or estimated from ``y``); ``(None, {})`` for the others."""
        if not self.package.noise_aware:
            return None, {}
        std = resolve_noise_std(noise_std, operator, y, batch)
        extra = {"noise_std": std.tolist(), "noise_std_estimated": noise_std is None}
        return self.xp.asarray(std**2, dtype=self.xp.float32), extra

    def _prepare(self, y, operator: LinearOperator):
        """Check ``y`` against the operator and the model, and move it to the working precision
        (float32 / complex64) on the backend's device. Returns ``(y, was_numpy)``."""
        if not isinstance(operator, LinearOperator):
            raise InputError(f"operator must be a diffunfold LinearOperator (make_operator(task, ...)), "
                             f"got {type(operator).__name__}")
        if operator.complex_image != self.space.complex:
            what = "an MRI" if self.space.complex else "an image"
            raise InputError(f"this package holds {what} model but the operator is {operator.task}; "
                             f"use a package trained for {operator.task}")
        was_numpy = isinstance(y, np.ndarray)
        if not was_numpy and type(y).__module__.split(".")[0] != "cupy":
            raise InputError(f"y must be a numpy or CuPy array, got {type(y).__name__}")
        operator.check_measurement(y)
        check_finite(y, "the measurement y")
        if not self.space.complex and int(y.shape[1]) != self.space.channels:
            raise InputError(f"this model restores {self.space.channels}-channel images but y is {describe(y)}; "
                             + ("repeat a grey image to 3 channels" if self.space.channels == 3 else
                                "convert it to grey"))
        xp = self.xp
        dtype = xp.complex64 if is_complex(y) else xp.float32
        y_dev = xp.asarray(y).astype(dtype, copy=False)
        for hw in operator.image_shape:
            if hw < 8:
                raise InputError(f"images of {operator.image_shape} are too small (at least 8x8)")
        return y_dev, was_numpy

"""The torch-free solver: EDM's loop around the unfolded denoiser, on any backend.

``D(x_t, s; y, A)`` runs K stages in model space exactly as the training side's
``DiffUnfolding.forward``: the same ``edm.sample_loop``, the same ``edm.initial_noise`` per
image and the same stage update (``diffunfold.unfolding.stage``: the package's gradient or
proximal data step, on the operators' numpy or CuPy code). Only ``R_k`` and ``(tau, gamma)``
come from the backend; ``(tau, gamma)`` are evaluated once per schedule and cached.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import edm, fast_schedule, formulations
from ..contrast import Contrast, Stretch
from ..contrast import estimate as estimate_stretch
from ..ensemble import check_ensemble, flip_axes, oriented
from ..errors import InputError
from ..noise import resolve_noise_std
from ..package import ModelPackage
from ..physics.base import LinearOperator
from ..unfolding import stage
from . import tiling, zero_shot
from .backends import Backend, create_backend
from .inputs import check_samples, prepare_measurement
from .solution import Solution, Timing, progress_hook, summarise_draws
from .solve_run import SolveRun, plan_stages
from .tiling import TilePlan
from .warm_start import WarmStart, check_start_options, warm_start
from .zero_shot.solve import solve as solve_zero_shot


class Solver:
    """Restore images with a model package. Build it with :meth:`load`; :meth:`solve` restores.

    Options of :meth:`solve` beyond the schedule, the seed, the samples and the noise level:
    ``tile``: how the regulariser meets a large image (``diffunfold.runtime.tiling``):
    ``"auto"`` (the whole image up to the side the package records as measured, memory
    permitting; else the tiles it records, or tiles sized from its training size and the memory
    available; images no larger than a tile run whole), a tile side in pixels, or None/0 for the whole
    image at once. The expected memory is checked first, and a solve that cannot fit is
    refused with the reason. ``churn``: EDM's stochastic sampler
    (:class:`diffunfold.edm.Churn`, a number for its ``S_churn``, or 0 for the deterministic
    ODE); None: the package's (off unless its schedule says otherwise). Its noise is drawn
    per (image seed, sample, step). ``ensemble``: ``"flips"`` gives posterior sample j's
    regulariser the j-th of four flips of the image (``diffunfold.ensemble``), ``"none"``
    not; None: the package's. ``contrast``: ``"stretch"`` (or a
    :class:`diffunfold.contrast.Contrast`) restores flat images at a photo's contrast and
    maps the result back, exactly through the physics; ``"colour"`` also moves each colour
    channel's level to mid-grey and back; ``"none"`` neither; None: the package's.
    ``solution.extra["contrast_gain"]`` has each gain. ``init``: an estimate of the images
    (user space, shaped like them; e.g. a classical reconstruction) to start from instead of
    pure noise: the solve runs only the schedule's steps at or below ``init_sigma`` (model
    units, as the schedule's), so fewer network calls, and adds to the estimate the noise that
    brings what it carries (``init_noise``, default 0) up to the first of them
    (``diffunfold.runtime.warm_start``); the estimate's errors must be small against
    ``init_sigma`` for the result to lose nothing (``diffunfold.scanner`` picks all three for MRI).
    """

    def __init__(self, package: ModelPackage, backend: Backend, why: str = ""):
        self.package = package
        self.backend = backend
        self.backend_reason = why
        self.space = package.space
        self.stages = package.stages
        self.size_multiple = package.size_multiple
        self._weights_cache: dict[tuple[float, ...], tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def load(
        cls,
        package: str | Path | ModelPackage,
        backend: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
        **options,
    ) -> Solver:
        """Open (and verify) a package and start a backend: ``auto`` (the fastest really present: tensorrt >
        openvino (CPUs with native bf16) > onnxruntime > torch; see ``solver.backend_reason``), ``tensorrt``,
        ``openvino``, ``onnxruntime`` or ``torch``. ``device``: ``cpu``, ``cuda`` or ``cuda:N``. ``options``: TensorRT
        ``cuda_graphs=True`` (replay each engine call as a CUDA graph), ``engines=DIR`` (built with ``--out``);
        OpenVINO ``precision="bf16"|"f32"``, ``cache_dir=DIR``, ``attention="fused"|"spelled"``; ONNX Runtime
        ``spinning=True|False``; torch (``model.safetensors``, see ``diffunfold add-torch-weights``): ``compile=True``,
        and on CUDA ``precision="fp16"`` (the U-Net in half precision) and ``cuda_graphs=True`` (per shape, stage)."""
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
                    raise InputError(
                        f"the weight generator returned an invalid {name} {v.shape}; "
                        "the package is damaged: export it again"
                    )
            hit = (tau.astype(np.float32), gamma.astype(np.float32))
            self._weights_cache[key] = hit
        tau, gamma = hit
        # Python floats (exact copies of the float32 values): they scale numpy and CuPy arrays
        # alike without changing their precision.
        return {s: (tau[i].tolist(), gamma[i].tolist()) for i, s in enumerate(key)}

    def _regularize(
        self, x, sigma: float, k: int, timing: Timing, plan: TilePlan | None = None, groups: list | None = None
    ):
        """``R_k(x; sigma)``; ``groups``: row ranges and the flips their samples see
        (``diffunfold.ensemble``), None for all rows as they are."""
        t0 = time.perf_counter()
        r = oriented(
            lambda u: tiling.regularize(
                lambda v: self.backend.regularize(v, sigma, k), u, plan or TilePlan(None), self.size_multiple, self.xp
            ),
            x,
            groups or [],
        )
        self.backend.synchronize()
        timing.network += time.perf_counter() - t0
        timing.network_calls += 1
        return r

    def plan(self, shape: tuple[int, int], rows: int = 1, tile: Any = "auto") -> TilePlan:
        """How ``R_k`` will run on ``rows`` images of ``shape`` (``tile``: ``"auto"``, a side in
        pixels, or None/0 for untiled), after checking that the solve fits in memory: an
        :class:`InputError` with the reason where it cannot."""
        budget = tiling.available_memory(self.backend.device_kind)
        settings, m = self.package.settings, self.size_multiple
        plan = tiling.plan_tiles(
            settings, self.package.manifest, tile, tuple(shape), m, self.backend.device_kind, budget, rows
        )
        tiling.check_memory(settings, plan, rows, self.space.model_channels, tuple(shape), m, budget)
        return plan

    def denoise(
        self,
        x,
        sigma: float,
        y,
        operator: LinearOperator,
        weights: dict,
        timing: Timing,
        noise_var=None,
        plan: TilePlan | None = None,
        groups: list | None = None,
        stages: int | None = None,
    ):
        """``D(x; sigma, y, A)`` in model space (one schedule point). ``noise_var``: sigma_y^2
        per image ``(B,)``, for a noise-aware package; ``plan``: the regulariser's tiles;
        ``groups``: the self-ensemble's orientations (``_regularize``); ``stages``: run the
        first this many of the K stages (None: all)."""
        tau, gamma = weights[float(sigma)]
        pkg = self.package
        for k in range(self.stages if stages is None else stages):
            r = self._regularize(x, sigma, k, timing, plan, groups)
            t0 = time.perf_counter()
            x = stage(
                x,
                r,
                y,
                operator,
                self.space,
                tau[k],
                gamma[k],
                pkg.data_step,
                sigma=float(sigma),
                noise_var=noise_var,
                noise_floor=pkg.noise_floor,
                prox_iterations=pkg.prox_iterations,
            )
            self.backend.synchronize()
            timing.physics += time.perf_counter() - t0
        return x

    # -- the public entry point ----------------------------------------------------------------
    def solve(
        self,
        y,
        operator: LinearOperator,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int | Sequence[int] | None = 0,
        samples: int = 1,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float | None = None,
        progress: bool | Callable[[int, int], None] = False,
        batch_samples: bool = True,
        noise_std=None,
        tile: Any = "auto",
        churn=None,
        ensemble: str | None = None,
        contrast=None,
        init=None,
        init_sigma: float | None = None,
        init_noise: float = 0.0,
        stages: int | None = None,
        schedule: str | None = None,
        method: str | None = None,
        method_options: dict | None = None,
    ) -> Solution:
        """Restore a batch from measurements ``y`` (numpy or CuPy; returned in the same kind).

        ``schedule``: ``"fast"`` (a few steps from the classical estimate plus noise: ``diffunfold.fast_schedule``;
        what image packages run by default), ``"full"`` (EDM's 18 Euler steps from pure noise, the paper's loop) or
        None for the package's default. ``steps``/``sampler``/``sigma_*``/``rho`` override the chosen schedule's.
        ``stages``: the first this many of the K stages per call (None: all, or the fast schedule's). ``seed``: an int
        (image i uses ``seed + i``) or one per image; an image's result does not depend on the rest of its batch.
        ``samples > 1`` draws that many posterior samples per image and returns their mean and per-pixel standard
        deviation; with ``batch_samples`` they run side by side in one batch where the operator allows it (faster,
        same results). ``noise_std``: the measurement noise sigma_y (a number or one per image) that a noise-aware
        package weighs the data step by; None estimates it from ``y`` (``diffunfold.noise``), and ``solution.extra``
        records the value used and whether it was estimated. Packages that are not noise-aware ignore it.
        ``progress``: True for a progress bar over the sampler steps, or a callable ``progress(done, total)`` called
        after each step. ``tile``, ``churn``, ``ensemble``, ``contrast``, ``init``, ``init_sigma`` and
        ``init_noise``: see the class. ``method``: None or ``"diff-unfolding"``; a denoiser package takes a zero-shot
        solver (``diffunfold.runtime.zero_shot``: ``steps`` its step count, ``method_options`` its settings).
        """
        if (name := zero_shot.route(method, self.package.kind, method_options)) is not None:
            return solve_zero_shot(self, name, locals())  # the arguments above, by name
        check_start_options(init, init_sigma, init_noise)
        fast = fast_schedule.choose(schedule, self.package.fast_schedule, self.package.path)
        sigmas, sampler, coefficients = self._schedule(steps, sampler, sigma_min, sigma_max, rho, init_sigma, fast)
        check_samples(samples)
        y_dev, return_numpy = self._prepare(y, operator)
        run, extra = self._setup(y_dev, y, operator, sigmas, sampler, seed, noise_std, churn, ensemble, contrast)
        extra["schedule"] = "full" if fast is None else f"fast ({fast.start} start)"
        run.coefficients = coefficients
        run.init = self._start_estimate(run, y_dev, y, noise_std, fast, init, init_noise)
        run.stages, run.step_stages = plan_stages(stages, self.stages, fast, (steps, sigma_min, sigma_max, rho), run)
        together = samples > 1 and batch_samples and (operator.batch is None or operator.batch <= 1)
        run.plan = self.plan(operator.image_shape, len(run.seeds) * (int(samples) if together else 1), tile)
        draws, nfe = self._sample(run, int(samples), together, progress)
        calls = run.timing.network_calls // (1 if together else int(samples))
        return self._finish(draws, return_numpy, nfe, run.seeds, int(samples), run.timing, extra, run.plan, calls)

    def _sample(self, run: SolveRun, samples: int, together: bool, progress) -> tuple[list, int]:
        """Every posterior sample (side by side in one batch, or one after the other), timed,
        with the progress bar or callback over the sampler steps."""
        step, close = progress_hook(
            progress,
            (len(run.sigmas) - 1) * (1 if together else samples),
            f"restoring ({run.sampler}, {self.backend.name})",
        )
        t_start = time.perf_counter()
        try:
            sample = self._sample_together if together else self._sample_rounds
            draws, nfe = sample(run, samples, step)
            self.backend.synchronize()
        finally:
            close()
        run.timing.total = time.perf_counter() - t_start
        return draws, nfe

    def _schedule(self, steps, sampler, sigma_min, sigma_max, rho, init_sigma, fast):
        """The noise levels of a solve (the package's full or ``fast`` schedule unless
        overridden; its tail from ``init_sigma`` when it starts from a given estimate), the
        sampler, and the Euler step coefficients where "native" resolves to a formulation's own
        (:func:`diffunfold.formulations.solver`; else None)."""
        sched = {**self.package.schedule, **({} if fast is None else fast.as_dict())}
        steps = sched["steps"] if steps is None else steps
        sampler = edm.check_sampler(sched["sampler"] if sampler is None else sampler)
        # the fast schedule is EDM's rho-spaced levels; the full one the formulation's (its manifest's)
        sigmas = formulations.schedule(
            "edm" if fast is not None else sched["formulation"],
            steps,
            sched["sigma_min"] if sigma_min is None else sigma_min,
            sched["sigma_max"] if sigma_max is None else sigma_max,
            sched["rho"] if rho is None else rho,
        )
        sigmas = sigmas if init_sigma is None else edm.start_at(sigmas, init_sigma)
        # the ODE solver is the network's formulation's, whichever levels it walks
        return (sigmas, *formulations.solver(self.package.schedule["formulation"], sampler, sigmas))

    def _start_estimate(self, run: SolveRun, y_dev, y, noise_std, fast, init, init_noise) -> WarmStart | None:
        """Where the samples start: the given estimate, the fast schedule's classical estimate of
        the (unstretched) measurement, or None for pure noise. The classical one uses sigma_y as
        resolved for the solve (or estimated from ``y`` where nothing resolved it)."""
        if fast is not None and init is None:
            std = run.noise_std
            if std is None:
                std = resolve_noise_std(noise_std, run.operator, y, len(run.seeds))
            init, init_noise = fast_schedule.classical_start(run.operator, y_dev, std), 0.0
        shape = (len(run.seeds), self.space.channels, *run.operator.image_shape)
        return warm_start(init, init_noise, shape, self.space, self.xp, run.stretch)

    def _setup(
        self, y_dev, y, operator: LinearOperator, sigmas, sampler: str, seed, noise_std, churn, ensemble, contrast
    ) -> tuple[SolveRun, dict]:
        """What the sampling loops share: seeds, sampler settings, the (tau, gamma) table, the
        contrast stretch and the noise level, resolved once."""
        batch = int(y_dev.shape[0])
        seeds = edm.seeds_for(seed, batch)
        if churn is None:  # the package's churn is for its ODE samplers: the stochastic ones bring their own noise
            churn = edm.Churn() if sampler in edm.STOCHASTIC else self.package.churn
        churn = edm.Churn.of(churn)
        ensemble = self.package.ensemble if ensemble is None else check_ensemble(ensemble)
        # the denoiser runs at the re-noised levels too: one weight evaluation covers both
        weights = self.weights_for(np.unique(np.concatenate([sigmas, churn.sigma_hats(sigmas)])))
        contrast = self.package.contrast if contrast is None else Contrast.of(contrast)
        std = self._noise_level(noise_std, contrast, operator, y, batch)  # the one resolution of sigma_y
        stretch = self._stretch(contrast, y_dev, operator, std, batch)
        noise_var, extra = self._noise_variance(std, noise_std is None, stretch)
        extra["method"] = zero_shot.UNFOLDING
        if stretch is not None and stretch.identity:
            stretch = None  # no image is flat: the plain solve, exactly
        if stretch is not None:
            y_dev = stretch.measurement(y_dev, self._a_ones(operator, batch))
        run = SolveRun(
            y_dev,
            operator,
            weights,
            noise_var,
            TilePlan(None),
            seeds,
            sigmas,
            sampler,
            churn,
            ensemble,
            Timing(),
            stretch,
            noise_std=std,
        )
        return run, extra

    def _start(self, run: SolveRun, sample: int):
        """Where posterior sample ``sample`` starts: noise at the first level, or the estimate with
        the noise that brings it there."""
        first = float(run.sigmas[0])
        level = first if run.init is None else run.init.added_noise(first)
        x = self.xp.asarray(edm.initial_noise(run.seeds, self._shape(run), level, sample=sample))
        return x if run.init is None else x + run.init.estimate

    def _sample_together(self, run: SolveRun, samples: int, step) -> tuple[list, int]:
        """Every posterior sample side by side in one batch."""
        xp, batch = self.xp, len(run.seeds)
        y_all = xp.concatenate([run.y] * samples, axis=0)
        var_all = None if run.noise_var is None else xp.concatenate([run.noise_var] * samples)
        x = xp.concatenate([self._start(run, j) for j in range(samples)])
        groups = [(j * batch, (j + 1) * batch, flip_axes(run.ensemble, j)) for j in range(samples)]
        x, nfe = edm.sample_loop(
            lambda v, s: self.denoise(
                v, s, y_all, run.operator, run.weights, run.timing, var_all, run.plan, groups, run.stages_at(s)
            ),
            x,
            run.sigmas,
            run.sampler,
            step,
            run.churn,
            lambda i: self.xp.asarray(
                np.concatenate([edm.churn_noise(run.seeds, self._shape(run), i, j) for j in range(samples)])
            ),
            run.coefficients,
        )
        return [self._user(run, x[j * batch : (j + 1) * batch]) for j in range(samples)], nfe

    def _sample_rounds(self, run: SolveRun, samples: int, step) -> tuple[list, int]:
        """One posterior sample after the other."""
        draws, nfe = [], 0
        for j in range(samples):
            x = self._start(run, j)
            groups = [(0, len(run.seeds), flip_axes(run.ensemble, j))]
            x, nfe = edm.sample_loop(
                lambda v, s: self.denoise(
                    v,
                    s,
                    run.y,
                    run.operator,
                    run.weights,
                    run.timing,
                    run.noise_var,
                    run.plan,
                    groups,
                    run.stages_at(s),
                ),
                x,
                run.sigmas,
                run.sampler,
                step,
                run.churn,
                lambda i, j=j: self.xp.asarray(edm.churn_noise(run.seeds, self._shape(run), i, j)),
                run.coefficients,
            )
            draws.append(self._user(run, x))
        return draws, nfe

    def _user(self, run: SolveRun, x):
        """A sample in user space: back at the image's own contrast when stretched, then clipped."""
        x = self.space.to_user(x)
        return self.space.clip(x if run.stretch is None else run.stretch.image(x))

    def _shape(self, run: SolveRun) -> tuple[int, ...]:
        return (self.space.model_channels, *run.operator.image_shape)

    def _finish(
        self,
        draws: list,
        return_numpy: bool,
        nfe: int,
        seeds: list[int],
        samples: int,
        timing: Timing,
        extra: dict,
        plan: TilePlan,
        calls_per_sample: int,
    ) -> Solution:
        """The posterior mean (and std over the samples), checked finite, in the input's kind, with
        how the network ran (``plan``) and the network calls one sample of an image cost."""
        images, std, stack = summarise_draws(draws, self.xp, self.space.complex, return_numpy)
        return Solution(
            images=images,
            std=std,
            nfe=nfe,
            seeds=seeds,
            samples=samples,
            timing=timing,
            backend=self.backend_name,
            extra=extra,
            draws=stack,
            tiling=plan.describe(),
            calls_per_sample=calls_per_sample,
        )

    def _noise_level(
        self, noise_std, contrast: Contrast | None, operator: LinearOperator, y, batch: int
    ) -> np.ndarray | None:
        """sigma_y per image, float64 ``(B,)``, resolved once per solve (given and checked, or
        estimated from ``y``: ``diffunfold.noise.resolve_noise_std``) where something uses it:
        a noise-aware package's data step or the contrast stretch; None elsewhere."""
        if contrast is not None and self.space.complex:
            raise InputError(
                "the contrast stretch is for image packages; MRI data is normalised by its 99th "
                "percentile instead (use contrast 'none')"
            )
        if not self.package.noise_aware and contrast is None:
            return None
        return resolve_noise_std(noise_std, operator, y, batch)

    def _noise_variance(self, std: np.ndarray | None, estimated: bool, stretch: Stretch | None) -> tuple[Any, dict]:
        """sigma_y^2 per image on the device (of the stretched measurement, when stretched), and
        what to report (the std used and whether it was ``estimated``), for a noise-aware
        package; ``(None, extra)`` for the others."""
        extra = {} if stretch is None else {"contrast_gain": stretch.gain.tolist()}
        if not self.package.noise_aware:
            return None, extra
        extra.update(noise_std=std.tolist(), noise_std_estimated=estimated)
        if stretch is not None:
            std = stretch.noise_std(std)
        return self.xp.asarray(std**2, dtype=self.xp.float32), extra

    def _stretch(
        self, contrast: Contrast | None, y_dev, operator: LinearOperator, std: np.ndarray | None, batch: int
    ) -> Stretch | None:
        """The contrast stretch of each image (None when off), from the resolved noise std."""
        if contrast is None:
            return None
        return estimate_stretch(y_dev, self._a_ones(operator, batch), std, contrast)

    def _a_ones(self, operator: LinearOperator, batch: int):
        """``A`` of the all-ones image: one row for shared physics, one per image otherwise."""
        rows = 1 if operator.batch is None or operator.batch <= 1 else batch
        return operator.A(self.xp.ones((rows, self.space.channels, *operator.image_shape), dtype=self.xp.float32))

    def _prepare(self, y, operator: LinearOperator):
        """``y`` checked and on the device at the working precision, and whether it was numpy."""
        return prepare_measurement(y, operator, self.space, self.xp)

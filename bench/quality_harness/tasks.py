"""The harness's tasks, noise levels and settings (``--quick`` and the full run differ only in
:class:`Settings`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class QualityTask:
    key: str
    label: str
    kind: str  # "image" or "mri"
    task: str  # physics.tasks name
    params: dict = field(default_factory=dict)

    def operator(self, size: int, seed: int, coils: int):
        from diffunfold.physics import make_operator

        params = dict(self.params)
        if self.task == "inpainting":
            params["seed"] = seed  # one mask per task, shared by its images
        if self.task == "mri":
            params.update(ncoils=coils, seed=seed)
        return make_operator(self.task, (size, size), **params)


TASKS = (
    QualityTask("gaussian_blur", "Gaussian blur (sigma 2)", "image", "gaussian_blur", {"sigma": 2.0}),
    QualityTask(
        "anisotropic_blur",
        "anisotropic blur (sigma 3 x 1, angle 0.6)",
        "image",
        "anisotropic_blur",
        {"sigma": [3.0, 1.0], "angle": 0.6},
    ),
    QualityTask("motion_blur", "motion blur (length 7)", "image", "motion_blur", {"length": 7.0}),
    QualityTask("sr_x4", "SR x4 (box)", "image", "sr", {"factor": 4, "kernel": "box"}),
    QualityTask("sr_x8", "SR x8 (box)", "image", "sr", {"factor": 8, "kernel": "box"}),
    QualityTask("inpainting_20", "inpainting, 20 % missing", "image", "inpainting", {"missing": 0.2}),
    QualityTask("inpainting_40", "inpainting, 40 % missing", "image", "inpainting", {"missing": 0.4}),
    QualityTask("inpainting_60", "inpainting, 60 % missing", "image", "inpainting", {"missing": 0.6}),
    QualityTask("mri_uniform1d_4x", "MRI, uniform 1-D 4x", "mri", "mri", {"kind": "uniform1d", "acceleration": 4.0}),
    QualityTask("mri_uniform1d_8x", "MRI, uniform 1-D 8x", "mri", "mri", {"kind": "uniform1d", "acceleration": 8.0}),
    QualityTask("mri_gaussian1d_4x", "MRI, Gaussian 1-D 4x", "mri", "mri", {"kind": "gaussian1d", "acceleration": 4.0}),
    QualityTask("mri_gaussian2d_8x", "MRI, Gaussian 2-D 8x", "mri", "mri", {"kind": "gaussian2d", "acceleration": 8.0}),
)
TASK_BY_KEY = {t.key: t for t in TASKS}

IMAGE_NOISE = (0.0, 0.01, 0.05, 0.1)  # sigma_y, images in [0, 1]
MRI_NOISE = (0.0, 0.01)  # fraction of max|A x| per image (0.01: the paper's)


@dataclass(frozen=True)
class Settings:
    """What one run does; ``--quick`` and the full run differ only here."""

    size: int = 64
    images: int = 5
    samples: int = 4
    steps: int | None = None  # None: the package's (18)
    sampler: str | None = None  # None: the package's; "euler", "heun" or "native"
    sigma_min: float | None = None  # None: the package's (0.002); the last D's noise level
    churn: float | None = None  # None: the package's; EDM's S_churn (0: the ODE)
    ensemble: str | None = None  # None: the package's; "none" or "flips"
    contrast: str | None = None  # None: the package's; "none" or "stretch" (images)
    schedule: str | None = None  # None: the package's; "fast" or "full" (image packages)
    tasks: tuple[str, ...] = tuple(t.key for t in TASKS)
    image_noise: tuple[float, ...] = IMAGE_NOISE
    mri_noise: tuple[float, ...] = MRI_NOISE
    # Oracle grids. Tikhonov: lam of ||A x - y||^2 + lam ||D x||^2 (images in [0, 1]).
    tikhonov_grid: tuple[float, ...] = tuple(float(v) for v in np.logspace(-6, 1, 15))
    # CG-SENSE: lam of ||A x - y||^2 + lam ||x||^2 (||A|| <= 1), each at every CG iteration count.
    sense_grid: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1)
    sense_iterations: tuple[int, ...] = (10, 30, 100, 300)
    # L1-wavelet: lam as a fraction of max|A^H y| (scale-free), run from the largest down, each
    # warm-started from the previous: a continuation, which also converges the small lams.
    l1_grid: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 0.0)
    l1_iterations: int = 100


QUICK = Settings(
    size=64,
    images=1,
    samples=2,
    steps=4,
    tasks=("gaussian_blur", "inpainting_40", "mri_gaussian1d_4x", "mri_gaussian2d_8x"),
    image_noise=(0.0, 0.05),
    mri_noise=(0.0, 0.01),
    tikhonov_grid=(1e-6, 1e-4, 1e-2, 1.0),
    sense_grid=(0.0, 1e-2),
    sense_iterations=(30,),
    l1_grid=(1e-2, 1e-4, 0.0),
    l1_iterations=50,
)

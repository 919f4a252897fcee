"""Forward models ("physics") shared by training (torch, autograd), the CPU runtime (numpy)
and the GPU runtime (CuPy): one implementation, written against the array API.

Every operator has ``A``, ``AT`` (exact adjoint), ``pinv``, ``grad(x, y) = AT(A x - y)`` and
``measure(x, noise_std, seed)``, returns arrays of the kind it is given, and has
``||A||_2 <= 1``.
"""

from .base import LinearOperator, gaussian_noise
from .blur import Convolution, GaussianBlur, MotionBlur
from .checks import adjoint_error, pinv_consistency, random_pair, spectral_norm
from .inpainting import Inpainting
from .mri import (
    MASK_KINDS,
    MultiCoilMRI,
    birdcage_maps,
    default_center_fraction,
    estimate_coil_maps,
    fft2c,
    ifft2c,
    mri_mask,
    normalize_coil_maps,
    rss,
)
from .superres import SR_KERNELS, SuperResolution, downsampling_matrix
from .tasks import (
    ALIASES,
    TASKS,
    MRITaskSampler,
    SampledTask,
    TaskSampler,
    allowed_sr_factors,
    canonical_task,
    make_operator,
    task_help,
    task_names,
)

__all__ = [
    "LinearOperator",
    "gaussian_noise",
    "Convolution",
    "GaussianBlur",
    "MotionBlur",
    "SuperResolution",
    "SR_KERNELS",
    "downsampling_matrix",
    "Inpainting",
    "MultiCoilMRI",
    "MASK_KINDS",
    "mri_mask",
    "default_center_fraction",
    "birdcage_maps",
    "estimate_coil_maps",
    "normalize_coil_maps",
    "fft2c",
    "ifft2c",
    "rss",
    "TASKS",
    "ALIASES",
    "make_operator",
    "canonical_task",
    "task_names",
    "task_help",
    "TaskSampler",
    "MRITaskSampler",
    "SampledTask",
    "allowed_sr_factors",
    "adjoint_error",
    "spectral_norm",
    "pinv_consistency",
    "random_pair",
]

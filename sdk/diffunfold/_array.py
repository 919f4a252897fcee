"""Array-API plumbing shared by the physics, the metrics and (later) the runtime.

Everything here works for numpy, CuPy and torch arrays through ``array_api_compat``, and
imports none of them eagerly: the runtime must stay importable with torch absent.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .errors import InputError

__all__ = [
    "namespace",
    "fft_of",
    "device_of",
    "to_numpy",
    "like",
    "complex_dtype_for",
    "real_dtype_for",
    "is_complex",
    "check_finite",
    "describe",
]


def namespace(*arrays: Any):
    """The array-API namespace of ``arrays`` (numpy, CuPy or torch, wrapped)."""
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        kinds = ", ".join(sorted({type(a).__name__ for a in arrays}))
        raise InputError(f"expected numpy, CuPy or torch arrays, got {kinds}; convert with numpy.asarray(...)") from exc


# Arrays from this many elements on are transformed with every core; smaller ones with one.
# bench/fft_threads.py (forward + inverse complex64 FFTs of B x 15 coil images, 2-D and 1-D) on
# the quiet 2-core development machine: at 245 760 elements (64 px batch 4, 128 px batch 1)
# threads were 0.64-1.12x (median 1.08: no gain), at 983 040 (128 px batch 4, 256 px batch 1)
# 0.56-0.77x, at 3 932 160 0.58-1.21x (median 0.89); bench/results/fft_threads-amd-epyc-2cores.md.
# So the switch sits between the two smaller counts.
FFT_THREADS_FROM = 1 << 19


class _ScipyFFT:
    """``scipy.fft`` with array-API names, using every core (``workers=-1``) for arrays of
    :data:`FFT_THREADS_FROM` elements or more and one below.

    For numpy arrays it beats ``numpy.fft`` several times over: float32 stays float32, the
    strided second axis of a 2-D transform is fast, and the batch of transforms is threaded
    (results are identical for any thread count: threads split independent 1-D transforms).
    """

    def __init__(self):
        import scipy.fft

        self._fft = scipy.fft
        self.fftshift, self.ifftshift = scipy.fft.fftshift, scipy.fft.ifftshift

    @staticmethod
    def workers(x) -> int:
        return -1 if x.size >= FFT_THREADS_FROM else 1

    def fftn(self, x, axes=None, norm=None):
        return self._fft.fftn(x, axes=axes, norm=norm, workers=self.workers(x))

    def ifftn(self, x, axes=None, norm=None):
        return self._fft.ifftn(x, axes=axes, norm=norm, workers=self.workers(x))

    def rfftn(self, x, axes=None, norm=None):
        return self._fft.rfftn(x, axes=axes, norm=norm, workers=self.workers(x))

    def irfftn(self, x, s=None, axes=None, norm=None):
        return self._fft.irfftn(x, s=s, axes=axes, norm=norm, workers=self.workers(x))


_SCIPY_FFT: _ScipyFFT | None = None


def fft_of(x: Any):
    """The FFT namespace for ``x`` (array-API names and keywords: ``rfftn``, ``axes=``...):
    ``scipy.fft`` (threaded) for numpy arrays, the array library's own ``fft`` otherwise."""
    global _SCIPY_FFT
    if isinstance(x, np.ndarray):
        if _SCIPY_FFT is None:
            _SCIPY_FFT = _ScipyFFT()
        return _SCIPY_FFT
    return namespace(x).fft


def device_of(x: Any):
    return array_api_compat.device(x)


def to_numpy(x: Any) -> np.ndarray:
    """A host numpy copy (or view) of any supported array; detaches torch tensors."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def is_complex(x: Any) -> bool:
    return namespace(x).isdtype(x.dtype, "complex floating")


def complex_dtype_for(xp, dtype):
    """complex64 for float32/complex64 input, complex128 for float64/complex128."""
    if dtype in (xp.float32, xp.complex64):
        return xp.complex64
    return xp.complex128


def real_dtype_for(xp, dtype):
    if dtype in (xp.float32, xp.complex64):
        return xp.float32
    return xp.float64


def like(value: Any, ref: Any, dtype=None):
    """``value`` (an array of any supported kind) as an array of ``ref``'s namespace and device.

    Goes through the host when the namespaces differ; callers cache the result (see
    ``physics.base.LinearOperator._const``), so this never runs inside a sampling loop.
    """
    xp = namespace(ref)
    dev = device_of(ref)
    if not isinstance(value, np.ndarray):
        src_xp = namespace(value)
        if src_xp is xp and device_of(value) == dev:
            return value if dtype is None or value.dtype == dtype else xp.astype(value, dtype)
        value = to_numpy(value)
    out = xp.asarray(value, device=dev)
    return out if dtype is None or out.dtype == dtype else xp.astype(out, dtype)


def check_finite(x: Any, what: str) -> None:
    """Raise a clear error if ``x`` holds NaN or Inf (one reduction; a sync on GPUs)."""
    xp = namespace(x)
    if is_complex(x):
        finite = xp.all(xp.isfinite(xp.real(x))) and xp.all(xp.isfinite(xp.imag(x)))
    else:
        finite = xp.all(xp.isfinite(x))
    if not bool(finite):
        raise InputError(
            f"{what} contains NaN or Inf values; check the acquisition or the preprocessing "
            "that produced it (nothing was computed)"
        )


def describe(x: Any) -> str:
    """'torch float32 (2, 3, 64, 64)' for error messages."""
    mod = type(x).__module__.split(".")[0]
    return f"{mod} {str(x.dtype).replace('torch.', '')} {tuple(x.shape)}"

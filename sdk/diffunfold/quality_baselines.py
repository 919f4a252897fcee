"""Strong classical baselines for the quality harness (``bench/quality.py``), each at its best
setting, so that a learned solver is measured against the best a classical method can do.

Several of them are **oracles**: a regularisation weight is chosen per image from a grid by
its PSNR against the ground truth, which no method can know in practice. An oracle is an
upper bound on what that classical method achieves with any one rule for its weight.

Images (real ``(B, C, H, W)`` in [0, 1]):

* :func:`tikhonov_fft` / :func:`tikhonov_cg`: ``argmin ||A x - y||^2 + lam ||D x||^2`` with
  ``D`` the finite differences (the image gradient). For a blur (a circular convolution) the
  solution is one FFT division, with periodic differences; otherwise (SR, inpainting) the
  normal equations are solved by ``scipy.sparse.linalg.cg`` in float64, with differences
  that stop at the border (Neumann). :func:`oracle_tikhonov` picks ``lam`` per image.
* :func:`bicubic_upsampling`: scikit-image's cubic spline resize of the low-resolution image.
* :func:`biharmonic_inpainting`: scikit-image's ``inpaint_biharmonic`` (observed pixels kept).

MRI (complex ``(B, 1, H, W)``, k-space ``(B, Ncoil, H, W)``), through SigPy (the ``eval``
extra; :func:`sigpy_status` says whether it is usable):

* :func:`cg_sense`: SigPy's ``SenseRecon`` (CG on ``A^H A + lam I``) with the true coil maps.
* :func:`espirit_maps`: coil maps estimated by SigPy's ``EspiritCalib`` from the fully
  sampled centre of the measured k-space alone.
* :func:`l1_wavelet`: SigPy's ``L1WaveletRecon`` (``0.5 ||A x - y||^2 + lam ||W x||_1``,
  Daubechies-4 wavelets).

SigPy's SENSE operator is ``sqrt(w) F(S x)`` with the centred orthonormal FFT
(``fftshift(fftn(ifftshift(x), norm="ortho"))``), the same convention as
:class:`~diffunfold.physics.MultiCoilMRI`; :func:`check_sigpy_forward` verifies the two agree
numerically for an operator before any SigPy result is used.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .metrics import psnr
from .physics.blur import Convolution
from .physics.inpainting import Inpainting
from .physics.mri import MultiCoilMRI
from .physics.superres import SuperResolution

__all__ = [
    "OracleResult",
    "tikhonov_fft",
    "tikhonov_cg",
    "oracle_tikhonov",
    "bicubic_upsampling",
    "biharmonic_inpainting",
    "sigpy_status",
    "check_sigpy_forward",
    "cg_sense",
    "fully_sampled_centre",
    "espirit_maps",
    "l1_wavelet",
    "oracle_search",
]


@dataclass
class OracleResult:
    """Per image: the estimate at the best grid value, that value and its PSNR."""

    images: np.ndarray  # (B, C, H, W)
    lam: list[float]
    psnr: list[float]


# ------------------------------------------------------------------------------ image helpers


def _difference_power(shape: tuple[int, int]) -> np.ndarray:
    """``|D(f)|^2`` of the periodic forward differences on the rfft2 grid:
    ``4 sin^2(pi f_y) + 4 sin^2(pi f_x)`` (0 at DC only)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return 4 * np.sin(np.pi * fy) ** 2 + 4 * np.sin(np.pi * fx) ** 2


def tikhonov_fft(op: Convolution, y, lam: float | Sequence[float]) -> np.ndarray:
    """``X = conj(K) Y / (|K|^2 + lam |D|^2)`` for a blur: the exact minimiser of
    ``||k * x - y||^2 + lam ||D x||^2`` with periodic differences (float64, unclipped).
    ``lam`` is one value or one per image; at DC ``|K(0)| = 1`` keeps it well defined."""
    if not isinstance(op, Convolution):
        raise InputError(f"tikhonov_fft needs a Convolution operator, got {type(op).__name__}")
    y = np.asarray(y, dtype=np.float64)
    lam = np.asarray(lam, dtype=np.float64).reshape(-1, 1, 1, 1)
    spectrum = op._spectrum
    power = np.abs(spectrum) ** 2
    filt = np.conj(spectrum) / (power + lam * _difference_power(op.image_shape))
    return np.fft.irfft2(np.fft.rfft2(y) * filt, s=op.image_shape)


def _dtd(v: np.ndarray) -> np.ndarray:
    """``D^T D v`` for forward differences that stop at the border (Neumann): minus the
    discrete Laplacian with reflecting boundaries, over the last two axes."""
    out = np.zeros_like(v)
    gy = np.diff(v, axis=-2)
    out[..., :-1, :] -= gy
    out[..., 1:, :] += gy
    gx = np.diff(v, axis=-1)
    out[..., :, :-1] -= gx
    out[..., :, 1:] += gx
    return out


def tikhonov_cg(
    op, y, lam: float, x0: np.ndarray | None = None, rtol: float = 1e-10, maxiter: int = 2000
) -> np.ndarray:
    """``argmin ||A x - y||^2 + lam ||D x||^2`` for one image: ``(A^T A + lam D^T D) x = A^T y``
    by ``scipy.sparse.linalg.cg`` on a ``LinearOperator`` around ``op.A``/``op.AT`` in float64.

    ``y`` is one measurement ``(1, C, h, w)``; returns ``(1, C, H, W)`` float64, unclipped.
    ``x0`` warm-starts CG (e.g. from the solution at a neighbouring ``lam``). ``rtol`` is
    tight because with a small ``lam`` the equations of the pixels ``A`` does not see are
    ``lam``-small: a loose tolerance stops before they converge. The system is
    positive definite for ``lam > 0`` whenever ``A`` sees constant images (blur, SR,
    inpainting with at least one observed pixel).
    """
    from scipy.sparse.linalg import LinearOperator, cg

    if lam <= 0:
        raise InputError(f"tikhonov_cg needs lam > 0, got {lam}")
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 4 or y.shape[0] != 1:
        raise InputError(f"tikhonov_cg solves one image at a time: y must be (1, C, h, w), got {y.shape}")
    shape = (1, int(y.shape[1]), *op.image_shape)
    n = int(np.prod(shape))

    def normal(v):
        v = np.asarray(v, dtype=np.float64).reshape(shape)
        return (op.AT(op.A(v)) + lam * _dtd(v)).ravel()

    system = LinearOperator((n, n), matvec=normal, dtype=np.float64)
    rhs = np.asarray(op.AT(y), dtype=np.float64).ravel()
    start = None if x0 is None else np.asarray(x0, dtype=np.float64).ravel()
    x, _ = cg(system, rhs, x0=start, rtol=rtol, maxiter=maxiter)
    return x.reshape(shape)


def oracle_search(
    solve: Callable[[int, float, np.ndarray | None], np.ndarray],
    truth: np.ndarray,
    grid: Sequence[float],
    score: Callable[[np.ndarray, np.ndarray], float],
) -> OracleResult:
    """Per image ``i``, ``solve(i, lam, previous)`` for every ``lam`` of ``grid`` (in the order
    given; ``previous`` is the last estimate, for warm starts) and keep the one whose
    ``score(estimate, truth[i])`` is highest. Estimates are ``(1, C, H, W)``."""
    images, lams, scores = [], [], []
    for i in range(truth.shape[0]):
        best, best_lam, best_score, prev = None, math.nan, -math.inf, None
        for lam in grid:
            est = solve(i, float(lam), prev)
            prev = est
            s = score(est, truth[i : i + 1])
            if s > best_score or best is None:
                best, best_lam, best_score = est, float(lam), s
        images.append(best)
        lams.append(best_lam)
        scores.append(float(best_score))
    return OracleResult(np.concatenate(images), lams, scores)


def _image_score(est, truth) -> float:
    return float(psnr(np.clip(est, 0.0, 1.0), truth, 1.0)[0])


def oracle_tikhonov(op, y, truth, grid: Sequence[float], rtol: float = 1e-10, maxiter: int = 2000) -> OracleResult:
    """Tikhonov with the gradient regulariser, ``lam`` chosen per image from ``grid`` by PSNR
    against ``truth`` (an ORACLE), by FFT for a blur and by CG otherwise. Estimates are
    clipped to [0, 1], as returned to a user."""
    y = np.asarray(y)
    truth = np.asarray(truth, dtype=np.float64)
    if isinstance(op, Convolution):

        def solve(i, lam, prev):
            return tikhonov_fft(op, y[i : i + 1], lam)
    else:
        # Large to small lam: each solve warm-starts from the smoother previous one.
        grid = sorted(grid, reverse=True)

        def solve(i, lam, prev):
            return tikhonov_cg(op, y[i : i + 1], lam, prev, rtol, maxiter)

    res = oracle_search(solve, truth, grid, _image_score)
    res.images = np.clip(res.images, 0.0, 1.0)
    return res


def bicubic_upsampling(op: SuperResolution, y) -> np.ndarray:
    """The low-resolution images upsampled to the operator's size by scikit-image's cubic
    spline (``resize(order=3)``, reflecting borders), clipped to [0, 1]."""
    from skimage.transform import resize

    if not isinstance(op, SuperResolution):
        raise InputError(f"bicubic_upsampling needs a SuperResolution operator, got {type(op).__name__}")
    y = np.asarray(y, dtype=np.float64)
    h, w = op.image_shape
    out = np.stack([resize(img, (img.shape[0], h, w), order=3, mode="reflect", anti_aliasing=False) for img in y])
    return np.clip(out, 0.0, 1.0)


def biharmonic_inpainting(op: Inpainting, y) -> np.ndarray:
    """scikit-image's biharmonic inpainting (``inpaint_biharmonic`` with ``channel_axis``) of
    the missing pixels; observed pixels are kept as measured. Clipped to [0, 1]."""
    from skimage.restoration import inpaint_biharmonic

    if not isinstance(op, Inpainting):
        raise InputError(f"biharmonic_inpainting needs an Inpainting operator, got {type(op).__name__}")
    y = np.asarray(y, dtype=np.float64)
    mask = op.mask
    out = []
    for i, img in enumerate(y):
        m = mask[i if mask.shape[0] > 1 else 0]
        if m.shape[0] > 1:
            raise InputError("biharmonic_inpainting needs one mask for all channels")
        missing = m[0] < 0.5
        if not missing.any():
            out.append(img)
            continue
        filled = inpaint_biharmonic(np.moveaxis(img, 0, -1), missing, channel_axis=-1)
        out.append(np.moveaxis(filled, -1, 0))
    return np.clip(np.stack(out), 0.0, 1.0)


# -------------------------------------------------------------------------------------- MRI


def sigpy_status() -> str | None:
    """None when SigPy can be used, else why not (for the tables)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sigpy  # noqa: F401
            import sigpy.mri.app  # noqa: F401
    except Exception as exc:  # ImportError, or numba failing to load
        return f"sigpy is not usable ({type(exc).__name__}: {exc}); install the eval extra: pip install -e '.[eval]'"
    return None


def _one_mask(op: MultiCoilMRI, i: int = 0) -> np.ndarray:
    return op.mask[i if op.mask.shape[0] > 1 else 0, 0]


def _one_maps(op: MultiCoilMRI, i: int = 0) -> np.ndarray:
    return op.coil_maps[i if op.coil_maps.shape[0] > 1 else 0]


def check_sigpy_forward(op: MultiCoilMRI, seed: int = 0) -> float:
    """The relative difference between ``sigpy.mri.linop.Sense(maps, weights=mask)`` and
    ``op.A`` on a random complex image (and the same for the adjoint): ~1e-16 when the two
    forward models agree. Raises ``InputError`` above 1e-6."""
    import sigpy.mri as mr

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 1, *op.image_shape)) + 1j * rng.standard_normal((1, 1, *op.image_shape))
    sense = mr.linop.Sense(_one_maps(op), weights=_one_mask(op))
    ours = np.asarray(op.A(x))[0]
    forward = float(np.linalg.norm(sense(x[0, 0]) - ours) / np.linalg.norm(ours))
    adjoint_ours = np.asarray(op.AT(ours[None]))[0, 0]
    adjoint = float(np.linalg.norm(sense.H(ours) - adjoint_ours) / np.linalg.norm(adjoint_ours))
    err = max(forward, adjoint)
    if not err < 1e-6:
        raise InputError(
            f"sigpy's SENSE operator differs from diffunfold's MultiCoilMRI by {err:.2e} "
            "(the FFT centring or normalisation convention changed); its baselines would be wrong"
        )
    return err


def cg_sense(op: MultiCoilMRI, y, lam: float, max_iter: int | Sequence[int] = 30, i: int = 0):
    """CG-SENSE with Tikhonov ``lam ||x||^2`` (SigPy's ``SenseRecon``: CG on ``A^H A + lam I``)
    of image ``i`` of ``y`` with the operator's true coil maps and its mask as the weights.

    ``max_iter`` an int: the ``(1, 1, H, W)`` complex result after that many CG iterations.
    A sequence of ints: one CG run to the largest, returning ``{iterations: image}`` for each
    (early stopping regularises too: with ``lam = 0`` and noise, fewer iterations are better;
    without noise, many more than 30 are, as CG converges slowly on these problems).
    """
    import sigpy.mri.app as app

    stops = sorted({int(m) for m in np.atleast_1d(max_iter)})
    y = np.asarray(y, dtype=np.complex128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recon = app.SenseRecon(
            y[i], _one_maps(op, i), lamda=float(lam), weights=_one_mask(op, i), max_iter=stops[-1], show_pbar=False
        )
        path: dict[int, np.ndarray] = {}
        done = 0
        while not recon.alg.done():
            recon.alg.update()
            done += 1
            if done in stops:
                path[done] = np.array(recon.x)[None, None]
    final = np.array(recon.x)[None, None]
    for m in stops:  # CG that converged early (residual 0) stops before the last checkpoints
        path.setdefault(m, final)
    return path[stops[0]] if np.ndim(max_iter) == 0 else path


def fully_sampled_centre(mask: np.ndarray) -> int:
    """The side of the largest centred square of k-space that the (H, W) ``mask`` samples
    fully, centred as SigPy's ``resize`` crops (start ``n // 2 - c // 2``)."""
    h, w = mask.shape
    side = 0
    for c in range(1, min(h, w) + 1):
        top, left = h // 2 - c // 2, w // 2 - c // 2
        if not np.all(mask[top : top + c, left : left + c] > 0.5):
            break
        side = c
    return side


def espirit_maps(op: MultiCoilMRI, y, i: int = 0) -> tuple[np.ndarray, dict]:
    """Coil maps for image ``i`` by ESPIRiT (SigPy's ``EspiritCalib``) from its measured k-space.

    The calibration region is the largest fully sampled centred square (``calib_width``), the
    kernel ``min(6, calib_width - 1)`` wide (at least 3, at most ``calib_width``) and
    ``crop=0``: SigPy's default ``crop=0.95`` zeroes the maps wherever the eigenvalue is below
    0.95, which with the few centre lines of a 64 px image is everywhere. Returns the maps
    ``(Ncoil, H, W)`` and the settings used; raises ``InputError`` when the centre is smaller
    than 2 px.
    """
    import sigpy.mri.app as app

    y = np.asarray(y, dtype=np.complex128)
    width = fully_sampled_centre(_one_mask(op, i))
    if width < 2:
        raise InputError(f"the mask samples only {width} px of the k-space centre fully; ESPIRiT needs >= 2")
    kernel = min(width, min(6, max(3, width - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = app.EspiritCalib(y[i], calib_width=width, kernel_width=kernel, crop=0.0, show_pbar=False).run()
    maps = np.asarray(maps)
    if not np.all(np.isfinite(maps)):
        raise InputError("ESPIRiT gave non-finite coil maps")
    return maps, {"calib_width": width, "kernel_width": kernel}


def l1_wavelet(
    y_coils: np.ndarray,
    maps: np.ndarray,
    mask: np.ndarray,
    lam: float,
    max_iter: int = 100,
    x0: np.ndarray | None = None,
) -> np.ndarray:
    """SigPy's ``L1WaveletRecon`` of one k-space ``(Ncoil, H, W)`` with ``maps`` and the mask as
    weights: ``(1, 1, H, W)`` complex. FISTA with the step ``alpha = 1``: maps with
    ``sum_c |S_c|^2 <= 1`` (ours and ESPIRiT's) and a binary mask give ``||A|| <= 1``, so
    SigPy's power iteration for the step size is skipped. ``x0`` warm-starts it."""
    import sigpy.mri.app as app

    start = None if x0 is None else np.asarray(x0, dtype=np.complex128).reshape(maps.shape[1:]).copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = app.L1WaveletRecon(
            np.asarray(y_coils, dtype=np.complex128),
            maps,
            lamda=float(lam),
            weights=mask,
            max_iter=int(max_iter),
            alpha=1.0,
            x=start,
            show_pbar=False,
        ).run()
    return np.asarray(x)[None, None]

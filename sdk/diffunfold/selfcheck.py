"""The operator self-check behind ``diffunfold selfcheck``: every task's operator is built at a
given size and checked for an exact adjoint, ``||A|| <= 1`` and agreement between every
array backend present; on a bundled test image it reports what the classical ``pinv``
recovers from a noisy measurement (the baseline a trained model must beat)."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field

import numpy as np

from ._array import to_numpy
from .physics import adjoint_error, make_operator, random_pair, spectral_norm
from .physics.base import LinearOperator

# (task, parameters) checked by default: the paper's tasks plus the unseen ones.
DEFAULT_CASES: tuple[tuple[str, dict], ...] = (
    ("gaussian_blur", {"sigma": 3.0}),
    ("anisotropic_blur", {"sigma": (4.0, 1.5), "angle": 0.785}),
    ("motion_blur", {"length": 9.0, "angle": 0.5}),
    ("sr", {"factor": 4}),
    ("sr", {"factor": 4, "kernel": "bicubic"}),
    ("inpainting", {"missing": 0.4}),
    ("box_inpainting", {"size": 0.4}),
    ("mri", {"kind": "uniform1d", "acceleration": 4}),
    ("mri", {"kind": "gaussian1d", "acceleration": 4}),
    ("mri", {"kind": "gaussian2d", "acceleration": 8}),
)
ADJOINT_TOL = {"float64": 1e-5, "float32": 1e-4}
PARITY_TOL = 1e-9


@dataclass
class CheckRow:
    task: str
    params: dict
    adjoint_error: dict = field(default_factory=dict)  # backend -> float64 relative error
    adjoint_error_f32: float = float("nan")
    norm: float = float("nan")
    parity_error: dict = field(default_factory=dict)  # backend -> max |numpy - backend|
    pinv_psnr: float | None = None
    ok: bool = True


def available_backends() -> list[str]:
    """Array backends present: numpy always, torch and CuPy (with a GPU) when installed."""
    names = ["numpy"]
    if importlib.util.find_spec("torch") is not None:
        names.append("torch")
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                names.append("cupy")
        except Exception:  # no driver: CuPy is installed but unusable
            pass
    return names


def _convert(arr: np.ndarray, backend: str):
    if backend == "numpy":
        return arr
    if backend == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(arr))
    import cupy

    return cupy.asarray(arr)


def _test_image(task: str, size: int) -> np.ndarray:
    """A held-out bundled image (natural tasks) or a phantom (MRI), as a batch of one."""
    from .data.image_datasets import BundledImages
    from .data.phantom import random_phantom

    if task == "mri":
        return random_phantom((size, size), rng=0)[None, None].astype(np.complex128)
    return BundledImages(size=size, split="val")[0][None].astype(np.float64)  # centre crop


def _psnr(estimate, target: np.ndarray) -> float:
    """PSNR of a batch of one: data range 1 for images in [0, 1], the target's max for MRI."""
    from .metrics import psnr

    return float(psnr(estimate, target, data_range=None if np.iscomplexobj(target) else 1.0)[0])


def check_operator(
    op: LinearOperator, backends: list[str], image: np.ndarray | None = None, noise_std: float = 0.01
) -> CheckRow:
    spec = op.spec()
    row = CheckRow(
        task=spec.get("task", op.task), params={k: v for k, v in spec.items() if k not in ("task", "image_shape")}
    )
    x, y = random_pair(op, seed=0)
    for b in backends:
        row.adjoint_error[b] = adjoint_error(op, _convert(x, b), _convert(y, b))
        got = to_numpy(op.AT(_convert(y, b)))
        row.parity_error[b] = float(np.max(np.abs(got - op.AT(y))))
    x32, y32 = random_pair(op, dtype=np.float32, seed=1)
    row.adjoint_error_f32 = adjoint_error(op, x32, y32)
    row.norm = spectral_norm(op, x, iters=40)
    if image is not None:
        measured = op.measure(image, noise_std, seed=0)
        row.pinv_psnr = _psnr(op.pinv(measured), image)
    row.ok = (
        max(row.adjoint_error.values()) < ADJOINT_TOL["float64"]
        and row.adjoint_error_f32 < ADJOINT_TOL["float32"]
        and row.norm <= 1 + 1e-6
        and max(row.parity_error.values()) < PARITY_TOL
    )
    return row


def run_selfcheck(
    size: int = 64,
    backends: list[str] | None = None,
    with_images: bool = True,
    cases=DEFAULT_CASES,
    progress: bool = True,
) -> list[CheckRow]:
    from tqdm.auto import tqdm

    backends = backends or available_backends()
    rows = []
    for task, params in tqdm(cases, desc="checking operators", disable=not progress, leave=False):
        op = make_operator(task, (size, size), **params)
        image = _test_image(task, size) if with_images else None
        rows.append(check_operator(op, backends, image))
    return rows


def format_rows(rows: list[CheckRow]) -> str:
    """A Markdown table of the results."""
    backends = list(rows[0].adjoint_error) if rows else []
    head = (
        ["task", "parameters"]
        + [f"adjoint err ({b}, f64)" for b in backends]
        + ["adjoint err (f32)", "||A|| (power it.)", "max |numpy - other|", "pinv PSNR dB", "ok"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r.params.items() if v is not None)
        others = [v for b, v in r.parity_error.items() if b != "numpy"]
        cells = (
            [r.task, params]
            + [f"{r.adjoint_error[b]:.1e}" for b in backends]
            + [
                f"{r.adjoint_error_f32:.1e}",
                f"{r.norm:.4f}",
                f"{max(others):.1e}" if others else "-",
                f"{r.pinv_psnr:.2f}" if r.pinv_psnr is not None else "-",
                "yes" if r.ok else "NO",
            ]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rows_as_dicts(rows: list[CheckRow]) -> list[dict]:
    return [asdict(r) for r in rows]


__all__ = [
    "CheckRow",
    "run_selfcheck",
    "check_operator",
    "format_rows",
    "available_backends",
    "rows_as_dicts",
    "DEFAULT_CASES",
]

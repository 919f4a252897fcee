"""Self-supervised MRI training from undersampled k-space only (``train.supervision = "ssdu"``).

SSDU (Yaman et al. 2020): each draw splits the measured k-space points ``Omega`` at random into
a data part ``Theta``, which the model is given (``y_Theta``, ``A_Theta``), and a loss part
``Lambda``, on which its output is scored in k-space: ``||M_Lambda (A D - y)||^2``. No fully
sampled image is read on this path; a batch carries none (:func:`to_self_supervised` drops it).

Choices (docs/training.md, "Self-supervised MRI"):

* ``Lambda`` is ``train.ssdu_fraction`` (SSDU's rho, 0.4) of the measured points *outside the
  calibration region*, which stays whole in ``Theta`` (as SSDU keeps its ACS lines): the coil
  maps come from it, and at 64 px the calibration block is half of a 4x 1-D pattern's lines, so
  rho of every measured point would leave the data part nearly nothing outside it.
* ``train.ssdu_split = "lines"`` holds out whole phase-encode lines of a 1-D pattern, so the data
  part is itself a 1-D pattern (the problem the model meets at inference, and the exact row-wise
  data step still applies); ``"points"`` holds out single points (SSDU's own choice). 2-D
  patterns have no lines and are always split by points.
* The clean image the diffusion noises is not available. Its stand-in is the regularised SENSE
  estimate of *all* measured points through the (estimated) maps, the same estimate inference
  starts from (``diffunfold.scanner.start``): the least-squares image the data support, which
  carries the measured information and none of the zero-filled image's aliasing (exact for
  1-D patterns). It leaks ``Lambda`` into the noisy input only at low noise levels, where the
  supervised target is nearly the input too. ``train.ssdu_standin = "data"``: from the data
  part alone.
* The k-space error is normalised per held-out location and real channel,
  ``||M_Lambda (A D - y)||^2 / (2 |Lambda|)``: for an error spread evenly over k-space it equals
  the supervised loss's model-space MSE (``A`` is an isometry where the object is), so EDM's
  weight ``lambda(s)`` and the learned uncertainty ``u(s)`` keep their meaning. Measurement noise
  on ``y_Lambda`` adds a constant floor that ``u(s)`` absorbs.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import formulations
from ..errors import InputError
from ..physics.mri import MultiCoilMRI
from ..scanner.coils import calibration_region
from ..scanner.start import SENSE_ITERATIONS, SENSE_WEIGHT
from .loss import LossTerms
from .model import DiffUnfolding
from .sampler import to_tensor

SUPERVISIONS = ("supervised", "ssdu")
SPLITS = ("lines", "points")
STANDINS = ("measured", "data")  # the SENSE estimate of every measured point, or of the data part only
LOSS_FRACTION = 0.4  # SSDU's rho
SPLIT_STREAM = 2**32 - 4  # the per-image stream of the split (never an image index; see data.py)


def check_settings(supervision: str, fraction: float, split: str, standin: str = "measured") -> None:
    """Refuse unknown names and a loss fraction outside (0, 1), listing what is allowed."""
    if supervision not in SUPERVISIONS:
        raise InputError(f"train.supervision must be one of {list(SUPERVISIONS)}, got {supervision!r}")
    if split not in SPLITS:
        raise InputError(f"train.ssdu_split must be one of {list(SPLITS)}, got {split!r}")
    if standin not in STANDINS:
        raise InputError(f"train.ssdu_standin must be one of {list(STANDINS)}, got {standin!r}")
    if not 0.0 < float(fraction) < 1.0:
        raise InputError(
            f"train.ssdu_fraction must be in (0, 1) (the share of measured points held out for the loss; "
            f"SSDU uses {LOSS_FRACTION}), got {fraction!r}"
        )


def split_mask(mask: np.ndarray, fraction: float, rng: np.random.Generator, split: str = "lines"):
    """``mask`` (H, W) -> ``(theta, lam)``, float32 (H, W): disjoint, covering the measured points,
    the calibration region whole in ``theta``; ``lam`` holds ``fraction`` of the measured points
    outside it (at least one line or point). A pattern that measures nothing outside its
    calibration region is split as a whole."""
    measured = np.asarray(mask) > 0.5
    rows, cols = calibration_region(measured)
    outside = measured.copy()
    outside[rows, cols] = False
    if not outside.any():  # all in the calibration region (uniform 8x at 64 px): split that, or no loss
        outside = measured.copy()
    lam = np.zeros(measured.shape, dtype=bool)
    one_d = bool(np.all(measured == measured[:1]))
    if split == "lines" and one_d:
        lines = np.flatnonzero(outside[0])
        if len(lines):
            lam[:, rng.choice(lines, max(1, round(fraction * len(lines))), replace=False)] = True
    else:
        points = np.flatnonzero(outside)
        if len(points):
            lam.flat[rng.choice(points, max(1, round(fraction * len(points))), replace=False)] = True
    return (measured & ~lam).astype(np.float32), lam.astype(np.float32)


def sense_standin(operator: MultiCoilMRI, y: np.ndarray) -> np.ndarray:
    """The regularised SENSE estimate of ``y`` through ``operator`` (complex (B, 1, H, W)): the
    clean image's stand-in (inference's start, ``scanner.start``)."""
    zeros = np.zeros((operator.batch, 1, *operator.image_shape), dtype=np.complex64)
    return np.asarray(operator.prox(zeros, y, SENSE_WEIGHT, SENSE_ITERATIONS), dtype=np.complex64)


def to_self_supervised(
    item: dict, rngs: list[np.random.Generator], fraction: float, split: str, standin: str = "measured"
) -> dict:
    """A measured batch ``{"y", "operator", ...}`` (shared mask, its clean ``x`` dropped unread)
    -> the self-supervised one: ``x0`` the SENSE stand-in of all measured points, ``y`` and
    ``operator`` the data part, ``loss_y``, ``loss_operator`` and ``loss_count`` the held-out
    part. ``rngs``: one split stream per image; ``standin = "data"`` takes the stand-in from the
    data part alone (no held-out point reaches the model's input)."""
    item = {k: v for k, v in item.items() if k != "x"}
    op: MultiCoilMRI = item["operator"]
    y = np.asarray(item["y"])
    maps = np.broadcast_to(op.coil_maps, (len(y), *op.coil_maps.shape[1:]))
    mask = np.asarray(op.mask, dtype=np.float32)
    pairs = [split_mask(mask[min(i, len(mask) - 1), 0], fraction, g, split) for i, g in enumerate(rngs)]
    theta = np.stack([t for t, _ in pairs])[:, None]
    lam = np.stack([m for _, m in pairs])[:, None]
    item["y"] = (y * theta).astype(np.complex64)
    item["operator"] = MultiCoilMRI(maps, theta)
    item["x0"] = sense_standin(item["operator"], item["y"]) if standin == "data" else sense_standin(op, y)
    item["loss_y"] = (y * lam).astype(np.complex64)
    item["loss_operator"] = MultiCoilMRI(maps, lam)
    item["loss_count"] = lam.reshape(len(y), -1).sum(axis=1).astype(np.float32)
    return item


def split_rngs(seed: int, step: int, first: int, count: int) -> list[np.random.Generator]:
    """The split's own per-image streams: the scan, noise levels and diffusion draws are those of
    a supervised run with the same seed."""
    return [np.random.default_rng([seed, step, first + j, SPLIT_STREAM]) for j in range(count)]


def held_out_error(d_model: torch.Tensor, loss_y, loss_operator: MultiCoilMRI, count: torch.Tensor, space):
    """``||M_Lambda (A D - y)||^2 / (2 |Lambda|)`` per image (B,), ``D`` in model space."""
    with torch.autocast(d_model.device.type, enabled=False):
        residual = loss_operator.A(space.to_user(d_model.float())) - loss_y
        return (residual.abs() ** 2).flatten(1).sum(dim=1) / (2.0 * count.clamp(min=1.0))


def ssdu_loss(model: DiffUnfolding, x0, sigma, noise, y, operator, loss_y, loss_operator, count, noise_std=None):
    """The supervised loss's form (``exp(-u(s)) lambda(s) mse + u(s)``) with the MSE measured on the
    held-out k-space points: ``D(x0 + s n, s; y_Theta, A_Theta)`` against ``y_Lambda``."""
    s = sigma.reshape(-1, 1, 1, 1)
    d = model(x0 + s * noise, sigma, y, operator, noise_std=noise_std)
    mse = held_out_error(d, loss_y, loss_operator, count, model.space)
    weighted = formulations.get(model.settings.formulation).loss_weight(sigma, model.settings.sigma_data) * mse
    u = model.uncertainty(sigma)[:, 0]
    return LossTerms(
        loss=(torch.exp(-u) * weighted + u).mean(), mse=mse.detach(), weighted=weighted.detach(), u=u.detach()
    )


class SSDUObjective(torch.nn.Module):
    """:func:`ssdu_loss` as one module (as ``UnfoldingObjective``, for DistributedDataParallel)."""

    def __init__(self, model: DiffUnfolding):
        super().__init__()
        self.model = model

    def forward(self, x0, sigma, noise, y, operator, noise_std, loss_y, loss_operator, count) -> dict:
        t = ssdu_loss(self.model, x0, sigma, noise, y, operator, loss_y, loss_operator, count, noise_std)
        return {"loss": t.loss, "mse": t.mse, "weighted": t.weighted, "u": t.u}


def objective_inputs(batch: dict, space, device) -> tuple:
    """The :class:`SSDUObjective` arguments of a self-supervised batch, as tensors on ``device``;
    only the stand-in, the data part and the held-out part are read."""
    return (
        space.to_model(to_tensor(batch["x0"], device)),
        to_tensor(batch["sigma"], device),
        to_tensor(batch["noise"], device),
        to_tensor(batch["y"], device),
        batch["operator"],
        to_tensor(np.asarray(batch["sigma_y"], dtype=np.float32), device),
        to_tensor(batch["loss_y"], device),
        batch["loss_operator"],
        to_tensor(batch["loss_count"], device),
    )


def is_self_supervised(batch: dict) -> bool:
    return "loss_operator" in batch

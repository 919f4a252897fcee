"""The uncertainty-weighted EDM loss of Diff-Unfolding (algorithm.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import formulations
from ..physics.base import LinearOperator
from .model import DiffUnfolding


@dataclass
class LossTerms:
    loss: torch.Tensor  # the scalar to minimise
    mse: torch.Tensor  # (B,) plain per-image MSE of D against x (model space)
    weighted: torch.Tensor  # (B,) lambda(s) * mse
    u: torch.Tensor  # (B,) the learned log-variance u(s)


def unfolding_loss(
    model: DiffUnfolding,
    x: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    y,
    operator: LinearOperator,
    noise_std: torch.Tensor | None = None,
) -> LossTerms:
    """``mean_b [exp(-u(s)) lambda(s) ||D(x + s n, s; y, A) - x||^2 / numel + u(s)]``.

    ``x`` and ``noise`` are model-space ``(B, C', H, W)``, ``sigma`` and ``noise_std`` (the
    measurement's sigma_y, for noise-aware models) are ``(B,)``.
    """
    s = sigma.reshape(-1, 1, 1, 1)
    d = model(x + s * noise, sigma, y, operator, noise_std=noise_std)
    mse = ((d.float() - x) ** 2).flatten(1).mean(dim=1)
    weighted = formulations.get(model.settings.formulation).loss_weight(sigma, model.settings.sigma_data) * mse
    u = model.uncertainty(sigma)[:, 0]
    return LossTerms(
        loss=(torch.exp(-u) * weighted + u).mean(), mse=mse.detach(), weighted=weighted.detach(), u=u.detach()
    )


class UnfoldingObjective(torch.nn.Module):
    """The model and its loss as one module, so DistributedDataParallel sees every parameter
    (the uncertainty network included) used inside one ``forward``."""

    def __init__(self, model: DiffUnfolding):
        super().__init__()
        self.model = model

    def forward(self, x, sigma, noise, y, operator, noise_std=None) -> dict[str, torch.Tensor]:
        t = unfolding_loss(self.model, x, sigma, noise, y, operator, noise_std)
        return {"loss": t.loss, "mse": t.mse, "weighted": t.weighted, "u": t.u}

"""The unfolded posterior denoiser of Diff-Unfolding (algorithm.md sections 3-4).

``D(x_t, s; y, A)`` runs K stages, each one call of ``R_k``, an EDM-preconditioned U-Net (one
per stage, or one shared network told ``k``), and one data step with weights ``tau_k``,
``gamma_k`` from small generators of ``s``: the paper's gradient step
``x <- x - gamma_k(s) * (grad_g(x) + tau_k(s) * (x - R_k(x; s)))`` or a proximal step (the
model setting ``data_step``; :mod:`diffunfold.unfolding` holds the one copy of both that the
runtime shares).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from .. import edm, formulations
from ..ensemble import flip
from ..errors import InputError
from ..package_schema import MODEL_KINDS
from ..physics.base import LinearOperator
from ..spaces import DataSpace
from ..unfolding import NOISE_FLOOR, PROX_ITERATIONS, check_data_step, stage
from .unet import UNet, count_parameters


def _from_dict(cls, values: dict, where: str):
    """Build a settings dataclass, refusing unknown keys with the list of known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown setting(s) {unknown} in [{where}]; known: {sorted(known)}")
    return cls(**values)


@dataclass
class UNetSettings:
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_blocks: int = 2
    attention_levels: tuple[int, ...] = (3,)
    mid_attention: bool = True
    head_channels: int = 64
    dropout: float = 0.0

    def __post_init__(self):
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_levels = tuple(int(a) for a in self.attention_levels)

    def build(self, in_channels: int, out_channels: int, num_stages: int = 0) -> UNet:
        """The U-Net these settings describe (``num_stages > 0``: one network shared by that many
        unfolding stages)."""
        return UNet(
            in_channels,
            out_channels,
            channels=self.channels,
            channel_mult=self.channel_mult,
            num_blocks=self.num_blocks,
            attention_levels=self.attention_levels,
            mid_attention=self.mid_attention,
            head_channels=self.head_channels,
            dropout=self.dropout,
            num_stages=num_stages,
        )


@dataclass
class ModelSettings:
    """Everything that defines the network; stored in checkpoints and model packages."""

    data: str = "image"  # "image" or "mri"
    channels: int = 3  # user-space channels (MRI: 1 complex)
    # "unfolding": Diff-Unfolding's posterior denoiser. "denoiser": a plain unconditional EDM
    # denoiser D(x; s) = R(x; s) (one stage, no physics), the prior of the zero-shot solvers
    # (diffunfold.runtime.zero_shot) trained on the same data and U-Net for comparison.
    kind: str = "unfolding"
    stages: int = 6  # K, unfolding iterations
    shared: bool = False  # one network told k, or K separate networks
    unet: UNetSettings = field(default_factory=UNetSettings)
    weight_features: int = 16  # Fourier features of c_noise for tau, gamma, u
    tau_init: float = 1.0  # gamma*tau = 1 at init: each stage starts as "denoise,
    gamma_init: float = 1.0  # then one gradient step on the data fidelity"
    sigma_data: float = edm.SIGMA_DATA
    # VP, VE, iDDPM or EDM (diffunfold.formulations): the preconditioning of every R_k, the
    # training noise levels and loss weight, and the package's sampling schedule.
    formulation: str = formulations.DEFAULT
    # tau, gamma are evaluated at sigma clamped to this range. Above: training's noise levels
    # (ln s ~ N(P_MEAN, P_STD^2)) stop at +3 std (10.9), and beyond it the weight generators
    # extrapolate their Fourier features, which EDM's sampler (sigma_max = 80) hits on its first
    # steps (an MRI run diverged there). Below: EDM's sigma_min (0.002). Clamping at -3 std
    # (0.0082) instead cost the small image model 0.64 dB on deblurring and 0.62 dB on
    # inpainting (held-out, one sample) and changed MRI by 0.14 dB. The regularisers always see
    # the true sigma.
    # None: the formulation's (EDM: this range; the others: the levels they train and sample on).
    weights_sigma_range: tuple[float, float] | None = None
    # "gradient": the paper's eq. 9 (packages without the key are this). "proximal": relax
    # towards R_k by tau_k in (0, 2), then an exact data-consistency step (diffunfold.unfolding).
    data_step: str = "gradient"
    # proximal only: the data step's weight follows the measurement noise sigma_y (given, or
    # estimated from y), so a clean y is matched and a noisy one trusted as its noise allows.
    noise_aware: bool = False
    noise_floor: float = NOISE_FLOOR  # sigma_y below this counts as this
    prox_iterations: int = PROX_ITERATIONS  # CG steps of a proximal step with no closed form (MRI)

    def __post_init__(self):
        if isinstance(self.unet, dict):
            self.unet = _from_dict(UNetSettings, self.unet, "model.unet")
        if int(self.stages) < 1:
            raise InputError(f"stages (K) must be >= 1, got {self.stages}")
        if self.kind not in MODEL_KINDS:
            raise InputError(f"model.kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.kind == "denoiser" and (int(self.stages) != 1 or self.shared):
            raise InputError(
                "a denoiser (model.kind = 'denoiser') is one network without stages: set "
                "model.stages = 1 and model.shared = false"
            )
        if self.tau_init <= 0 or self.gamma_init <= 0:
            raise InputError("tau_init and gamma_init must be positive")
        self.formulation = formulations.check(self.formulation)
        if self.weights_sigma_range is None:
            self.weights_sigma_range = formulations.get(self.formulation).training_range
        lo, hi = (float(v) for v in self.weights_sigma_range)
        if not 0 < lo < hi:
            raise InputError(
                f"weights_sigma_range must be (low, high) with 0 < low < high, got {self.weights_sigma_range}"
            )
        self.weights_sigma_range = (lo, hi)
        check_data_step(self.data_step)
        if self.noise_aware and self.data_step != "proximal":
            raise InputError("noise_aware needs data_step = 'proximal' (the gradient step has no noise model)")
        if int(self.prox_iterations) < 1:
            raise InputError(f"prox_iterations must be >= 1, got {self.prox_iterations}")
        if not self.noise_floor > 0:
            raise InputError(f"noise_floor must be > 0, got {self.noise_floor}")
        if self.data_step == "proximal" and not 0 < self.tau_init < 2:
            raise InputError(f"with the proximal step tau lies in (0, 2); tau_init {self.tau_init} is outside")
        _ = self.space  # validates data and channels

    @property
    def space(self) -> DataSpace:
        return DataSpace(self.data, int(self.channels))

    @classmethod
    def from_dict(cls, values: dict) -> ModelSettings:
        return _from_dict(cls, dict(values), "model")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unet"]["channel_mult"] = list(d["unet"]["channel_mult"])
        d["unet"]["attention_levels"] = list(d["unet"]["attention_levels"])
        d["weights_sigma_range"] = list(d["weights_sigma_range"])
        return d


def _inverse_softplus(v: float) -> float:
    return v + math.log(-math.expm1(-v))


class NoiseLevelMLP(nn.Module):
    """A one-layer network of ``c_noise(s)``: fixed Fourier features -> linear -> ``out`` values.

    Zero-initialised weights, so at initialisation it returns ``init`` for every ``s``.
    ``positive=True`` applies softplus (the bias is set so that softplus gives ``init``);
    ``upper`` instead bounds the output to ``(0, upper)`` with a scaled sigmoid.
    """

    def __init__(
        self,
        out: int,
        features: int = 16,
        init: float = 0.0,
        positive: bool = False,
        scale: float = 1.0,
        upper: float | None = None,
    ):
        super().__init__()
        freqs = np.random.default_rng(1).standard_normal(features) * scale
        self.register_buffer("freqs", torch.tensor(freqs, dtype=torch.float32))
        self.linear = nn.Linear(2 * features, out)
        self.positive = positive
        self.upper = upper
        nn.init.zeros_(self.linear.weight)
        if upper is not None:
            bias = math.log(init / (upper - init))  # sigmoid(bias) * upper = init
        else:
            bias = _inverse_softplus(init) if positive else init
        nn.init.constant_(self.linear.bias, bias)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        with torch.autocast(sigma.device.type, enabled=False):  # tiny: always full precision
            phase = 2 * math.pi * edm.c_noise(sigma.to(self.freqs.dtype))[:, None] * self.freqs[None, :]
            out = self.linear(torch.cat([phase.cos(), phase.sin()], dim=1))
            if self.upper is not None:
                return self.upper * torch.sigmoid(out)
            return nn.functional.softplus(out) if self.positive else out


class Regularizer(nn.Module):
    """``R(x; s) = c_skip x + c_out F(c_in x; c_noise)``: the preconditioning of a diffusion
    formulation (EDM unless told; :mod:`diffunfold.formulations`) around a U-Net."""

    def __init__(self, unet: UNet, sigma_data: float = edm.SIGMA_DATA, formulation: str = formulations.DEFAULT):
        super().__init__()
        self.unet = unet
        self.sigma_data = float(sigma_data)
        self.formulation = formulations.get(formulation)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, stage: int | None = None) -> torch.Tensor:
        s, f, sd = sigma.to(x.dtype).reshape(-1, 1, 1, 1), self.formulation, self.sigma_data
        out = self.unet(f.c_in(s, sd) * x, f.c_noise(sigma.to(x.dtype)), stage)
        # The skip path stays in x's precision; only F runs under autocast.
        return f.c_skip(s, sd) * x + f.c_out(s, sd) * out.to(x.dtype)


class DiffUnfolding(nn.Module):
    """K unfolding stages, the weight generators tau_k(s), gamma_k(s), and the uncertainty u(s)."""

    def __init__(self, settings: ModelSettings):
        super().__init__()
        self.settings = settings
        self.space = settings.space
        u = settings.unet
        k = int(settings.stages)
        c = self.space.model_channels

        nets = [u.build(c, c, k)] if settings.shared else [u.build(c, c) for _ in range(k)]
        self.regularizers = nn.ModuleList(Regularizer(n, settings.sigma_data, settings.formulation) for n in nets)
        f = settings.weight_features
        # proximal: z = x - tau (x - r) with tau in (0, 2) is non-expansive in x
        tau_upper = 2.0 if settings.data_step == "proximal" else None
        self.tau = NoiseLevelMLP(k, f, settings.tau_init, positive=True, upper=tau_upper)
        self.gamma = NoiseLevelMLP(k, f, settings.gamma_init, positive=True)
        self.uncertainty = NoiseLevelMLP(1, f, 0.0)

    @property
    def stages(self) -> int:
        return int(self.settings.stages)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.settings.unet.channel_mult) - 1)

    def regularize(self, x: torch.Tensor, sigma: torch.Tensor, k: int) -> torch.Tensor:
        """``R_k(x; s)`` for stage ``k``."""
        if self.settings.shared:
            return self.regularizers[0](x, sigma, k)
        return self.regularizers[k](x, sigma)

    def weights(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tau, gamma)``, each ``(B, K)`` and positive, at sigma clamped to
        ``settings.weights_sigma_range`` (the noise levels training covers)."""
        lo, hi = self.settings.weights_sigma_range
        s = sigma.clamp(lo, hi)
        return self.tau(s), self.gamma(s)

    def fidelity_grad(self, x: torch.Tensor, y, operator: LinearOperator) -> torch.Tensor:
        """``grad_g`` in model space (see ``DataSpace.fidelity_grad``), outside autocast."""
        with torch.autocast(x.device.type, enabled=False):
            return self.space.fidelity_grad(operator, x, y)

    def forward(
        self,
        x_t: torch.Tensor,
        sigma,
        y,
        operator: LinearOperator,
        noise_std=None,
        flip_axes: tuple[int, ...] = (),
        stages: int | None = None,
    ) -> torch.Tensor:
        """``D(x_t, s; y, A)`` in model space. ``sigma``: a number or one value per image.
        ``noise_std``: the measurement noise sigma_y, a number or one per image (needed by a
        noise-aware model, ignored otherwise). ``flip_axes``: the regularisers see ``x`` flipped
        along these axes and their output is flipped back (``diffunfold.ensemble``). ``stages``:
        run only the first this many of the K stages (None: all)."""
        sigma = self._sigma_batch(sigma, x_t)
        if self.settings.kind == "denoiser":  # the physics plays no part: a prior only
            return flip(self.regularizers[0](flip(x_t, flip_axes), sigma), flip_axes)
        tau, gamma = self.weights(sigma)
        s = self.settings
        noise_var = None
        if s.noise_aware:
            if noise_std is None:
                raise InputError(
                    "this model is noise-aware: give noise_std (sigma_y), or estimate it with "
                    "diffunfold.noise.estimate_noise_std(operator, y)"
                )
            noise_var = self._sigma_batch(noise_std, x_t) ** 2
        x = x_t
        for k in range(self.stages if stages is None else stages):
            r = flip(self.regularize(flip(x, flip_axes), sigma, k), flip_axes)
            # The physics runs outside autocast: FFTs do not run in half precision.
            with torch.autocast(x.device.type, enabled=False):
                x = stage(
                    x,
                    r,
                    y,
                    operator,
                    self.space,
                    tau[:, k, None, None, None],
                    gamma[:, k] if s.data_step == "proximal" else gamma[:, k, None, None, None],
                    s.data_step,
                    sigma=sigma,
                    noise_var=noise_var,
                    noise_floor=s.noise_floor,
                    prox_iterations=int(s.prox_iterations),
                )
        return x

    denoise = forward

    @staticmethod
    def _sigma_batch(sigma, x: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if s.ndim == 0:
            s = s.expand(x.shape[0])
        if s.shape != (x.shape[0],):
            raise InputError(f"sigma must be a number or one value per image ({x.shape[0]}), got {tuple(s.shape)}")
        return s

    def parameter_counts(self) -> dict[str, int]:
        counts = {
            "regularizers": sum(count_parameters(r) for r in self.regularizers),
            "weight_generators": count_parameters(self.tau) + count_parameters(self.gamma),
            "uncertainty": count_parameters(self.uncertainty),
        }
        counts["total"] = sum(counts.values())
        return counts

    def check_image_size(self, hw) -> None:
        m = self.size_multiple
        if hw[0] % m or hw[1] % m:
            raise InputError(
                f"image size {tuple(hw)} must be a multiple of {m} for this model "
                f"({len(self.settings.unet.channel_mult)} resolution levels); crop or pad it"
            )

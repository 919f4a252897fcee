"""The one place where the user's data space and the network's model space meet.

User space (algorithm.md 1): images ``(B, C, H, W)`` in [0, 1]; MRI complex ``(B, 1, H, W)``
normalised by the 99th percentile of the magnitude. Model space: real ``(B, C', H, W)``:
``x_model = 2 x - 1`` for images; for MRI the (real, imag) channels, already in about
[-1, 1], unscaled. The diffusion runs in model space; the data-fidelity gradient is computed
in user space and carried to model space by the chain rule (``grad_model = grad_user / scale``).
Array-API code: numpy, CuPy and torch (with autograd) alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ._array import is_complex, namespace
from .errors import InputError

DATA_KINDS = ("image", "mri")


@dataclass(frozen=True)
class DataSpace:
    kind: str = "image"
    channels: int = 3  # user-space channels (1 for MRI: one complex channel)

    def __post_init__(self):
        if self.kind not in DATA_KINDS:
            raise InputError(f"data kind must be one of {DATA_KINDS}, got {self.kind!r}")
        if self.kind == "mri" and self.channels != 1:
            raise InputError("MRI images have one complex channel")
        if self.kind == "image" and self.channels not in (1, 3):
            raise InputError(f"images have 1 (grey) or 3 (colour) channels, got {self.channels}")

    @property
    def complex(self) -> bool:
        return self.kind == "mri"

    @property
    def model_channels(self) -> int:
        return 2 if self.complex else self.channels

    @property
    def scale(self) -> float:
        return 1.0 if self.complex else 2.0

    @property
    def offset(self) -> float:
        return 0.0 if self.complex else -1.0

    @property
    def data_range(self) -> tuple[float, float] | None:
        """The range user-space results are clipped to (None: MRI, not clipped)."""
        return None if self.complex else (0.0, 1.0)

    def _pack(self, x):
        if not self.complex:
            return x
        if not is_complex(x):
            raise InputError(f"MRI images must be complex (B, 1, H, W), got dtype {x.dtype}")
        xp = namespace(x)
        return xp.concat([xp.real(x), xp.imag(x)], axis=1)

    def to_model(self, x):
        """User space -> model space."""
        return self._pack(x) * self.scale + self.offset

    def to_user(self, x_model):
        """Model space -> user space (complex for MRI)."""
        x = (x_model - self.offset) / self.scale
        if self.complex:
            return x[:, 0:1] + 1j * x[:, 1:2]
        return x

    def grad_to_model(self, grad_user):
        """A user-space gradient carried to model space: d/dx_model = (1/scale) d/dx_user.
        For complex images the real gradient of 0.5||Ax - y||^2 w.r.t. (Re x, Im x) is
        (Re, Im) of A^H(Ax - y), which ``_pack`` gives."""
        return self._pack(grad_user) / self.scale

    def fidelity_grad(self, operator, x_model, y):
        """The unfolding's data-fidelity step direction in model space: the gradient of
        ``||A x - y||^2 / (2 ||A||^2)`` at ``x = to_user(x_model)``. Dividing by ``||A||^2``
        (``operator.lipschitz``, a constant of the operator, never of the batch) makes one
        learned step size stable for every operator: without it the SR x4 fidelity would be
        16x weaker than a blur's. Training and the runtime both call this."""
        return self.grad_to_model(operator.grad(self.to_user(x_model), y)) / operator.lipschitz

    def clip(self, x_user):
        """Clip a user-space result to the data range (images only)."""
        if self.data_range is None:
            return x_user
        return namespace(x_user).clip(x_user, *self.data_range)

    def to_dict(self) -> dict:
        return asdict(self)

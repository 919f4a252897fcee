"""The training side of diffunfold: the unfolded model, its loss, training, checkpoints and
the torch reference sampler. Needs torch (``pip install 'diffunfold[train]'``)."""

from ..errors import require

require("torch", "train")

from .model import DiffUnfolding, ModelSettings, UNetSettings  # noqa: E402
from .sampler import restore  # noqa: E402

__all__ = ["DiffUnfolding", "ModelSettings", "UNetSettings", "restore"]

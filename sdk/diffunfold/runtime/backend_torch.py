"""The torch reference backend: the training side's own network, rebuilt from the package's
``model.safetensors``. torch is imported only when this backend is built."""

from __future__ import annotations

import numpy as np

from ..errors import InputError, MissingDependencyError, require
from ..package import ModelPackage
from .backend_base import Backend


class TorchBackend(Backend):
    """The training side's own modules, rebuilt from the package's ``model.safetensors``.

    The reference the other backends are checked against, and the GPU path where neither
    TensorRT nor ONNX Runtime CUDA is installed: CuPy arrays cross to torch through DLPack
    without copies."""

    name = "torch"

    def __init__(self, package: ModelPackage, device: str = "cpu", threads: int | None = None):
        super().__init__(package, device)
        torch = require("torch", "train")
        from safetensors.torch import load_file

        from ..training.model import DiffUnfolding, ModelSettings

        if package.torch_weights_file is None:
            raise InputError(
                f"package {package.path} was exported without model.safetensors; export it "
                "again without --no-torch-weights to use the torch backend"
            )
        self.torch = torch
        if self.device_kind == "cuda" and not torch.cuda.is_available():
            raise MissingDependencyError(
                f"torch {torch.__version__} cannot use CUDA here; install a CUDA build "
                "of torch, or use backend='onnxruntime' or 'tensorrt'"
            )
        if threads:
            torch.set_num_threads(int(threads))
        self.torch_device = (
            torch.device("cuda", self.device_index) if self.device_kind == "cuda" else torch.device("cpu")
        )
        model = DiffUnfolding(ModelSettings.from_dict(package.settings))
        model.load_state_dict(load_file(str(package.file(package.torch_weights_file))))
        self.model = model.to(self.torch_device).eval()

    def _to_torch(self, x):
        if self.device_kind == "cuda":
            return self.torch.from_dlpack(x)
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def _from_torch(self, t):
        if self.device_kind == "cuda":
            import cupy

            return cupy.from_dlpack(t)
        return t.numpy()

    def regularize(self, x, sigma: float, k: int):
        self._check_stage(k)
        with self.torch.inference_mode():
            xt = self._to_torch(x)
            s = self.torch.full((xt.shape[0],), float(sigma), dtype=self.torch.float32, device=self.torch_device)
            return self._from_torch(self.model.regularize(xt, s, k).contiguous())

    def weights(self, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            s = self.torch.from_numpy(np.asarray(sigmas, dtype=np.float32).reshape(-1)).to(self.torch_device)
            tau, gamma = self.model.weights(s)
            return tau.cpu().numpy(), gamma.cpu().numpy()

    def synchronize(self) -> None:
        if self.device_kind == "cuda":
            self.torch.cuda.synchronize(self.torch_device)

"""The torch backend: the training side's own network, rebuilt from the package's
``model.safetensors``. torch is imported only when this backend is built.

It is the reference the other backends are checked against, and the GPU path where neither
TensorRT nor ONNX Runtime CUDA can be installed (the lent GPU machines): CuPy arrays cross to
torch and back through DLPack without copies. A package exported without ``model.safetensors``
(the bundled ones) gets it with ``diffunfold add-torch-weights PACKAGE``.

Options (``Solver.load(package, backend="torch", device=..., **options)``):

* ``precision="fp32"`` (default) or ``"fp16"``: the U-Net's weights and activations in half
  precision on a CUDA device. What the network keeps in float32 stays so (the Fourier features
  of the noise level, the attention logits and softmax), and so do the EDM preconditioning
  around it (its skip path carries the image), the weight generators and the inputs and
  outputs. Refused on the CPU, where half-precision convolutions are slow and the ONNX
  backends are the fast path.
* ``cuda_graphs=True``: every network call captured once as a CUDA graph per (input shape,
  stage) and replayed afterwards (:mod:`.backend_torch_graphs`). CUDA only.
* ``compile=True``: ``torch.compile`` (inductor) around the regulariser, on the CPU too. The
  first calls at a new shape or stage compile (tens of seconds on a CPU; inductor caches on
  disk); with ``cuda_graphs`` the compiled network is what is captured.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError, MissingDependencyError, require
from ..package import ModelPackage
from .backend_base import Backend, parse_device

PRECISIONS = ("fp32", "fp16")


def check_torch_options(device: str, precision: str, cuda_graphs: bool, compile: bool) -> None:
    """Refuse what cannot run on ``device`` before anything is loaded (InputError, saying why)."""
    kind, _ = parse_device(device)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS} for the torch backend, got {precision!r}")
    for name, value in (("cuda_graphs", cuda_graphs), ("compile", compile)):
        if not isinstance(value, bool):
            raise InputError(f"{name} must be True or False, got {value!r}")
    if kind != "cuda" and precision == "fp16":
        raise InputError(
            "precision='fp16' runs the torch backend's network in half precision on a CUDA GPU "
            "(device='cuda'); on the CPU use precision='fp32' (the default), or backend='openvino' "
            "for bf16 on CPUs that have it"
        )
    if kind != "cuda" and cuda_graphs:
        raise InputError(
            "cuda_graphs=True captures the torch backend's network calls as CUDA graphs, which needs "
            "device='cuda'; on the CPU leave it False (compile=True is the CPU's option)"
        )


def half_precision_unets(torch, model) -> None:
    """Put every U-Net of ``model`` in float16 (its parameters; the Fourier frequencies, a buffer,
    stay float32) behind a cast of its input to float16 and of its output back to float32, so
    the EDM preconditioning around it and everything else keep their float32."""

    class HalfUNet(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, x, c_noise, stage=None):
            return self.unet(x.half(), c_noise, stage).float()

    with torch.no_grad():
        for reg in model.regularizers:
            for p in reg.unet.parameters():
                p.data = p.data.half()
            reg.unet = HalfUNet(reg.unet)


class TorchBackend(Backend):
    """The training side's modules, rebuilt from the package's ``model.safetensors``; the module
    docstring lists the options."""

    name = "torch"

    def __init__(
        self,
        package: ModelPackage,
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "fp32",
        cuda_graphs: bool = False,
        compile: bool = False,
    ):
        super().__init__(package, device)
        check_torch_options(device, precision, cuda_graphs, compile)
        torch = require("torch", "train")
        if package.torch_weights_file is None:
            raise InputError(
                f"package {package.path} was exported without model.safetensors; add it with "
                f"`diffunfold add-torch-weights {package.path}` (read back from its ONNX graphs), or "
                "export it again without --no-torch-weights, to use the torch backend"
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
        self.precision, self.cuda_graphs, self.compiled = precision, cuda_graphs, compile
        self.model = self._load_model()
        self._net = torch.compile(self.model.regularize) if compile else self.model.regularize
        self._graphs = None
        if cuda_graphs:
            from .backend_torch_graphs import GraphCache

            self._graphs = GraphCache(torch, self._net, self.torch_device)

    def _load_model(self):
        from safetensors.torch import load_file

        from ..training.model import DiffUnfolding, ModelSettings

        package = self.package
        model = DiffUnfolding(ModelSettings.from_dict(package.settings))
        model.load_state_dict(load_file(str(package.file(package.torch_weights_file))))
        model = model.float().to(self.torch_device).eval()
        if self.precision == "fp16":
            half_precision_unets(self.torch, model)
        return model

    def _to_torch(self, x):
        if self.device_kind == "cuda":
            return self.torch.from_dlpack(x).to(self.torch.float32)
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def _from_torch(self, t):
        if self.device_kind == "cuda":
            import cupy

            return cupy.from_dlpack(t)
        return t.numpy()

    def regularize(self, x, sigma: float, k: int):
        self._check_stage(k)
        torch = self.torch
        with torch.inference_mode():
            xt = self._to_torch(x)
            if self._graphs is not None:
                r = self._graphs.run(xt, float(sigma), k)
            else:
                s = torch.full((xt.shape[0],), float(sigma), dtype=torch.float32, device=self.torch_device)
                r = self._net(xt, s, k)
            return self._from_torch(r.contiguous())

    def weights(self, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            s = self.torch.from_numpy(np.asarray(sigmas, dtype=np.float32).reshape(-1)).to(self.torch_device)
            tau, gamma = self.model.weights(s)
            return tau.cpu().numpy(), gamma.cpu().numpy()

    def synchronize(self) -> None:
        if self.device_kind == "cuda":
            self.torch.cuda.synchronize(self.torch_device)

    def describe(self) -> str:
        extras = (
            [self.precision] + (["CUDA graphs"] if self.cuda_graphs else []) + (["compiled"] if self.compiled else [])
        )
        return f"torch on {self.device_kind} ({', '.join(extras)})"

"""Add ``model.safetensors`` to a package exported without it (``--no-torch-weights``), so that
the torch backend, the GPU path where neither TensorRT nor ONNX Runtime CUDA can be installed,
can load it. The ONNX files are not touched.

The weights are read back from the package's own ONNX graphs
(:func:`diffunfold.training.package_weights.package_state`) and stored as the export stores
them: parameters in float16 when the package's weights are float16 (``networks.weights_dtype``;
the bundled packages), buffers as they are. What the graphs do not hold is taken from the
model's construction: the fixed Fourier frequencies of the weight generators (a fixed seed) and
the training-only uncertainty head u (its initial values; no runtime reads it). The file's
metadata says so.

Nothing is final before the check passes: the torch model rebuilt from the new file against the
package's ONNX graphs in ONNX Runtime, on random inputs at two sizes for every stage, and the
weight generators on the schedule's noise levels; the largest relative error
``max|onnx - torch| / max|onnx|`` must be within ``tolerance`` (both hold the same float16
weights: about 1e-6 on the bundled packages). Then the file is renamed into place and the
manifest rewritten (``networks.torch_weights``, its ``files`` entry, ``manifest_sha256``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import edm
from ..errors import InputError
from ..package import MANIFEST, ModelPackage, write_manifest
from ..safe_io import atomic_write
from ..training.model import DiffUnfolding, ModelSettings
from ..training.package_weights import package_state
from .onnx_check import _rel_err, _session, default_check_sizes

TORCH_WEIGHTS = "model.safetensors"
TOLERANCE = 1e-4


@dataclass
class WeightsCheck:
    """The torch model from the new file against the package's ONNX graphs in ONNX Runtime."""

    sizes: list[list[int]]
    tolerance: float
    per_stage: dict[str, float] = field(default_factory=dict)  # "regularizer.onnx, stage 0": error
    weights_rel_err: float = 0.0

    @property
    def worst(self) -> float:
        return max([*self.per_stage.values(), self.weights_rel_err])

    @property
    def passed(self) -> bool:
        return self.worst <= self.tolerance

    def report(self) -> str:
        sizes = ", ".join("x".join(map(str, s)) for s in self.sizes)
        lines = [f"torch (from the new {TORCH_WEIGHTS}) against ONNX Runtime, random inputs at {sizes}:"]
        lines += [f"  {name}: max relative error {err:.2e}" for name, err in self.per_stage.items()]
        lines.append(f"  weight generators: max relative error {self.weights_rel_err:.2e}")
        verdict = "passed" if self.passed else "FAILED"
        lines.append(f"  {verdict} (tolerance {self.tolerance:.0e})")
        return "\n".join(lines)


def package_tensors(pkg: ModelPackage) -> dict[str, torch.Tensor]:
    """The state dict to store: read back from the graphs, parameters in the package's weight
    dtype, buffers as they are; the weight generators' frequencies and u from construction."""
    model = DiffUnfolding(ModelSettings.from_dict(pkg.settings))
    params = {name for name, _ in model.named_parameters()}
    read = package_state(pkg)
    lost = sorted(k for k in params if k not in read and not k.startswith("uncertainty."))
    if lost:
        raise InputError(
            f"{pkg.path}: {len(lost)} weight(s) cannot be read back from the ONNX graphs ({lost[:3]}); "
            "export the package again from its checkpoint (without --no-torch-weights)"
        )
    half = pkg.manifest["networks"].get("weights_dtype") == "float16"
    state = {}
    for name, initial in model.state_dict().items():
        tensor = read.get(name, initial).float()
        state[name] = (tensor.half() if half and name in params else tensor).contiguous()
    return state


def _probe(rng: np.random.Generator, b: int, c: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images across the schedule's range, sigma_max (and sigma_min) included."""
    sigma = np.exp(rng.uniform(np.log(edm.SIGMA_MIN), np.log(edm.SIGMA_MAX), b))
    sigma[0] = edm.SIGMA_MAX
    if b > 1:
        sigma[1] = edm.SIGMA_MIN
    x = 0.5 * rng.standard_normal((b, c, h, w)) + sigma[:, None, None, None] * rng.standard_normal((b, c, h, w))
    return x.astype(np.float32), sigma.astype(np.float32)


def check_weights(pkg: ModelPackage, weights: Path, tolerance: float = TOLERANCE, seed: int = 0) -> WeightsCheck:
    """The torch model loaded from ``weights`` (as the torch backend loads it) against the
    package's ONNX graphs: every stage of every regulariser, and the weight generators."""
    from safetensors.torch import load_file

    model = DiffUnfolding(ModelSettings.from_dict(pkg.settings))
    model.load_state_dict(load_file(str(weights)))
    model = model.float().eval()
    rng = np.random.default_rng(seed)
    c = int(pkg.manifest["data"]["model_channels"])
    sizes = default_check_sizes(pkg.size_multiple)
    check = WeightsCheck(sizes=[list(s) for s in sizes], tolerance=tolerance)
    for index, name in enumerate(pkg.regularizer_files):
        sess = _session(pkg.file(name))
        for k in range(pkg.stages) if pkg.shared else [index]:
            errors = []
            for b, h, w in sizes:
                x, sigma = _probe(rng, b, c, h, w)
                feeds = {"x": x, "sigma": sigma, **({"stage": np.full(b, k, np.int64)} if pkg.shared else {})}
                (got,) = sess.run(["r"], feeds)
                with torch.inference_mode():
                    want = model.regularize(torch.from_numpy(x), torch.from_numpy(sigma), k).numpy()
                errors.append(_rel_err(want, got))
            check.per_stage[f"{name}, stage {k}"] = max(errors)
    sigmas = np.unique(np.concatenate([edm.schedule(18)[:-1], np.exp(rng.uniform(-6.2, 4.4, 16))])).astype(np.float32)
    tau, gamma = _session(pkg.file(pkg.weights_file)).run(None, {"sigma": sigmas})
    with torch.inference_mode():
        t_want, g_want = model.weights(torch.from_numpy(sigmas))
    check.weights_rel_err = max(_rel_err(t_want.numpy(), tau), _rel_err(g_want.numpy(), gamma))
    return check


def _refuse_links(folder: Path, pkg: ModelPackage | None = None) -> None:
    """No link anywhere this command reads or writes: the folder, the manifest, the files it lists
    and the weights file (a write must never go through a link, nor vouch for a linked file)."""
    names = [MANIFEST, TORCH_WEIGHTS] + (list(pkg.manifest["files"]) if pkg else [])
    for path in [folder] + [folder / n for n in names]:
        if path.is_symlink():
            raise InputError(
                f"{path} is a symbolic link (to {os.readlink(path)}); add-torch-weights writes into the "
                "package and vouches for its files, so it refuses links: give the real folder, or copy "
                "the real files into the package"
            )


def _refuse_existing(pkg: ModelPackage, overwrite: bool) -> None:
    target = pkg.path / TORCH_WEIGHTS
    listed = pkg.torch_weights_file
    if overwrite or (listed is None and not os.path.lexists(target)):
        return
    what = f"lists torch weights ({listed})" if listed else f"has a {TORCH_WEIGHTS} its manifest does not list"
    raise InputError(f"{pkg.path} already {what}; pass --overwrite to replace them (read again from the ONNX graphs)")


def add_torch_weights(
    package: str | Path, overwrite: bool = False, tolerance: float = TOLERANCE, log=print
) -> tuple[ModelPackage, WeightsCheck]:
    """Write ``model.safetensors`` into ``package`` from its ONNX graphs, check it, list it in the
    manifest; returns the package opened (and verified) again and the check."""
    from safetensors.torch import save_file

    folder = Path(package)
    _refuse_links(folder)
    pkg = ModelPackage.open(folder)
    _refuse_links(folder, pkg)
    _refuse_existing(pkg, overwrite)
    state = package_tensors(pkg)
    dtype = "float16" if any(t.dtype == torch.float16 for t in state.values()) else "float32"
    metadata = {
        "source": "read back from the package's ONNX graphs by `diffunfold add-torch-weights`",
        "parameters": dtype,
        "from_construction": "tau.freqs, gamma.freqs (fixed seed); uncertainty.* (initial values: not in the "
        "graphs, unused at inference)",
    }
    found: list[WeightsCheck] = []

    def write_and_check(tmp: Path) -> None:
        save_file(state, str(tmp), metadata=metadata)
        found.append(check_weights(pkg, tmp, tolerance))
        log(found[-1].report())
        if not found[-1].passed:
            raise InputError(
                f"{pkg.path}: the torch weights read back from the graphs differ from ONNX Runtime by "
                f"{found[-1].worst:.2e} > {tolerance:.0e}; nothing was written (the package may use a "
                "layer this reader does not know: export it again from its checkpoint)"
            )

    atomic_write(folder / TORCH_WEIGHTS, write_and_check, mode=0o644)
    manifest = dict(pkg.manifest)
    old = pkg.torch_weights_file
    manifest["networks"] = dict(manifest["networks"], torch_weights=TORCH_WEIGHTS)
    files = [n for n in manifest["files"] if n not in (old, TORCH_WEIGHTS)] + [TORCH_WEIGHTS]
    write_manifest(folder, manifest, files)
    size = (folder / TORCH_WEIGHTS).stat().st_size
    log(f"wrote {folder / TORCH_WEIGHTS} ({size / 1e6:.1f} MB) and updated {MANIFEST}")
    return ModelPackage.open(folder), found[-1]


__all__ = ["TOLERANCE", "TORCH_WEIGHTS", "WeightsCheck", "add_torch_weights", "check_weights", "package_tensors"]

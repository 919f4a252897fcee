"""The export's self-check: every graph of a freshly written package run in ONNX Runtime and in
torch on the same random inputs, with the relative errors and the largest activation (which
must fit FP16's range). :mod:`.onnx_export` runs it before a package is moved into place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from .. import edm
from ..training.model import DiffUnfolding

FP16_MAX = 65504.0


@dataclass
class ExportCheck:
    """ONNX Runtime against torch on random inputs: relative errors ``max|ort - torch| / max|torch|``."""

    sizes: list[list[int]]
    regularizer_rel_err: float
    weights_rel_err: float
    tolerance: float
    max_abs_activation: float = 0.0  # the largest |value| of any float tensor in the graph
    max_activation_node: str = ""
    per_file: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return max(self.regularizer_rel_err, self.weights_rel_err) <= self.tolerance

    def report(self) -> str:
        lines = [f"export check (ONNX Runtime vs torch, sizes {', '.join('x'.join(map(str, s)) for s in self.sizes)}):"]
        lines += [f"  {name}: max relative error {err:.2e}" for name, err in self.per_file.items()]
        lines.append(
            f"  weight generators: max relative error {self.weights_rel_err:.2e} (tolerance {self.tolerance:.0e})"
        )
        lines.append(
            f"  FP16 headroom: largest activation {self.max_abs_activation:.3g} at {self.max_activation_node} "
            f"(FP16 max {FP16_MAX:.0f})"
        )
        return "\n".join(lines)


def _session(path: Path, all_outputs: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not all_outputs:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    # Expose every float intermediate as an output, to measure the activations' range.
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    known = {o.name for o in model.graph.output}
    for vi in model.graph.value_info:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and vi.name not in known:
            model.graph.output.append(vi)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(want))):
        return float("inf")  # NaN never passes
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12))


def check_package(
    model: DiffUnfolding,
    pkg_dir: Path,
    names: list[str],
    weights_name: str,
    sizes: Sequence[tuple[int, int, int]],
    tolerance: float,
    seed: int = 0,
) -> ExportCheck:
    """Run every exported graph in ONNX Runtime and in torch on the same random inputs."""
    rng = np.random.default_rng(seed)
    c = model.space.model_channels
    per_file: dict[str, float] = {}
    peak, peak_node = 0.0, ""
    for index, name in enumerate(names):
        sess = _session(pkg_dir / name, all_outputs=True)
        out_names = [o.name for o in sess.get_outputs()]
        errs = []
        for b, h, w in sizes:
            # noisy images over the whole schedule's range, sigma_min and sigma_max included
            sigma = np.exp(rng.uniform(np.log(edm.SIGMA_MIN), np.log(edm.SIGMA_MAX), b))
            sigma[0] = edm.SIGMA_MAX
            if b > 1:
                sigma[1] = edm.SIGMA_MIN
            x = (
                0.5 * rng.standard_normal((b, c, h, w)) + sigma[:, None, None, None] * rng.standard_normal((b, c, h, w))
            ).astype(np.float32)
            feeds = {"x": x, "sigma": sigma.astype(np.float32)}
            k = int(rng.integers(model.stages)) if model.settings.shared else index
            if model.settings.shared:
                feeds["stage"] = np.full(b, k, dtype=np.int64)
            outs = dict(zip(out_names, sess.run(None, feeds)))
            with torch.no_grad():
                want = model.regularize(torch.from_numpy(x), torch.from_numpy(feeds["sigma"]), k).numpy()
            errs.append(_rel_err(outs["r"], want))
            for n, v in outs.items():
                m = float(np.max(np.abs(v))) if v.size else 0.0
                if m > peak:
                    peak, peak_node = m, f"{name}:{n}"
        per_file[name] = max(errs)
    sigmas = np.unique(np.concatenate([edm.schedule(18)[:-1], np.exp(rng.uniform(-6.2, 4.4, 16))])).astype(np.float32)
    tau, gamma = _session(pkg_dir / weights_name).run(None, {"sigma": sigmas})
    with torch.no_grad():
        t_want, g_want = model.weights(torch.from_numpy(sigmas))
    w_err = max(_rel_err(tau, t_want.numpy()), _rel_err(gamma, g_want.numpy()))
    return ExportCheck(
        sizes=[list(s) for s in sizes],
        regularizer_rel_err=max(per_file.values()),
        weights_rel_err=w_err,
        tolerance=tolerance,
        max_abs_activation=peak,
        max_activation_node=peak_node,
        per_file=per_file,
    )


def default_check_sizes(size_multiple: int) -> list[tuple[int, int, int]]:
    """Two sizes, square and not, batch 1 and 2, each a multiple of the network's size step."""
    m = max(size_multiple, 8)
    return [(1, 2 * m, 2 * m), (2, 3 * m, 4 * m)]

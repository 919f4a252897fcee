"""A trained DiffUnfolding (EMA weights) -> a model package of ONNX graphs and a manifest.

Each regulariser is exported with its preconditioning inside the graph (EDM's, or the model's
``formulation``: :mod:`diffunfold.formulations`), so the runtime feeds ``(x, sigma[, stage])``
in model space and gets ``R_k(x; sigma)`` back, with dynamic batch, height and width. The
weight generators become one small graph ``sigma -> (tau, gamma)`` that the runtime evaluates
once per schedule.

FP16 safety (the known failure of diffusion U-Nets under FP16 TensorRT): the TorchScript
exporter writes each GroupNorm as a single ``InstanceNormalization`` node between reshapes (no
decomposed mean/variance chain that could overflow in FP16), the attention logits and softmax
are explicitly float32 in the network, and the engine build pins normalisation and softmax
layers to FP32 (``diffunfold.engines``). The export's self-check also records the largest
activation anywhere in the graph, which must fit FP16's range.

The package is written to a temporary folder beside the target and renamed into place at the
end, so an interrupted export never leaves a half package behind.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .. import __version__, edm
from ..contrast import Contrast
from ..ensemble import check_ensemble
from ..errors import InputError
from ..fast_schedule import IMAGE_DEFAULT
from ..formulations import manifest_schedule as formulation_schedule
from ..package import ModelPackage, write_manifest
from ..training.model import DiffUnfolding
from .onnx_check import FP16_MAX, ExportCheck, check_package, default_check_sizes  # noqa: F401 (re-exported)

OPSET = 17
ATTENTION_FORMS = ("fused", "spelled")  # diffunfold/attention_graph.py says why fused


@contextlib.contextmanager
def attention_form(model: nn.Module, form: str) -> Iterator[None]:
    """Export every ``SelfAttention`` of ``model`` in ``form`` inside the block: ``fused`` (one
    ``com.microsoft::MultiHeadAttention`` node) or ``spelled`` (MatMul-Softmax-MatMul)."""
    from ..training.unet import SelfAttention

    if form not in ATTENTION_FORMS:
        raise InputError(f"attention must be one of {ATTENTION_FORMS}, got {form!r}")
    layers = [m for m in model.modules() if isinstance(m, SelfAttention)]
    for m in layers:
        m.fused_export = form == "fused"
    try:
        yield
    finally:
        for m in layers:
            m.fused_export = False


class RegularizerGraph(nn.Module):
    """``(x, sigma[, stage]) -> R(x; sigma)`` for export: one stage's network, or the shared one."""

    def __init__(self, model: DiffUnfolding, index: int):
        super().__init__()
        self.reg = model.regularizers[index]
        self.shared = bool(model.settings.shared)

    def forward(self, x, sigma, stage=None):
        return self.reg(x, sigma, stage if self.shared else None)


class WeightsGraph(nn.Module):
    """``sigma (B,) -> tau (B, K), gamma (B, K)``, exactly ``DiffUnfolding.weights`` (its clamp
    of sigma to the trained range included)."""

    def __init__(self, model: DiffUnfolding):
        super().__init__()
        self.model = model

    def forward(self, sigma):
        return self.model.weights(sigma)


def _export(
    module: nn.Module,
    args: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer chatter
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path))


def store_fp16(path: Path, min_size: int = 16) -> int:
    """Rewrite ``path`` with every float32 initializer of ``min_size``+ elements that float16
    holds exactly stored as float16 behind a ``Cast`` back to float32: half the file, the same
    float32 graph (ONNX Runtime folds the casts when it loads the model). Returns the count."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph, casts, kept, count = model.graph, [], [], 0
    for init in graph.initializer:
        a = numpy_helper.to_array(init)
        if (
            init.data_type == onnx.TensorProto.FLOAT
            and a.size >= min_size
            and np.array_equal(a.astype(np.float16).astype(np.float32), a)
        ):
            kept.append(numpy_helper.from_array(a.astype(np.float16), init.name + "_fp16"))
            casts.append(
                helper.make_node(
                    "Cast", [init.name + "_fp16"], [init.name], to=onnx.TensorProto.FLOAT, name=init.name + "_cast"
                )
            )
            count += 1
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return count


def _write_networks(
    model: DiffUnfolding,
    tmp: Path,
    opset: int,
    attention: str,
    fp16_weights: bool,
    torch_weights: bool,
    log: Callable[[str], None],
) -> tuple[list[str], list[str]]:
    """The regulariser graph(s), the weight generators and (optionally) the torch weights in
    ``tmp``; returns ``(regulariser file names, every file written)``."""
    c, m = model.space.model_channels, model.size_multiple
    example_hw = (2 * max(m, 8), 2 * max(m, 8))
    x = torch.randn(2, c, *example_hw)
    sigma = torch.tensor([1.0, 0.5])
    img_axes = {0: "batch", 2: "height", 3: "width"}
    names = []
    for index in range(len(model.regularizers)):
        name = "regularizer.onnx" if model.settings.shared else f"regularizer_{index}.onnx"
        graph = RegularizerGraph(model, index)
        if model.settings.shared:
            args, inputs = (x, sigma, torch.tensor([0, 1])), ["x", "sigma", "stage"]
        else:
            args, inputs = (x, sigma), ["x", "sigma"]
        axes = {"x": img_axes, "r": img_axes, "sigma": {0: "batch"}, "stage": {0: "batch"}}
        log(f"exporting {name} ...")
        with attention_form(model, attention):
            _export(
                graph, args, tmp / name, inputs, ["r"], {n: a for n, a in axes.items() if n in inputs + ["r"]}, opset
            )
        names.append(name)
    _export(
        WeightsGraph(model),
        (torch.tensor([1.0, 0.5]),),
        tmp / "weights.onnx",
        ["sigma"],
        ["tau", "gamma"],
        {"sigma": {0: "n"}, "tau": {0: "n"}, "gamma": {0: "n"}},
        opset,
    )
    files = names + ["weights.onnx"]
    if fp16_weights:
        for name in files:
            store_fp16(tmp / name)
    if torch_weights:
        from safetensors.torch import save_file

        params = {n for n, _ in model.named_parameters()}
        save_file(
            {
                n: (t.half() if fp16_weights and n in params else t).detach().contiguous()
                for n, t in model.state_dict().items()
            },
            str(tmp / "model.safetensors"),
        )
        files.append("model.safetensors")
    return names, files


def _fast_entry(model) -> dict:
    """The image packages' fast schedule, for this model's number of stages."""
    return IMAGE_DEFAULT.for_stages(model.stages).manifest_entry()


def _manifest(
    model: DiffUnfolding,
    names: list[str],
    tasks: Sequence[str],
    sampling: dict,
    opset: int,
    attention: str,
    fp16_weights: bool,
    torch_weights: bool,
    source: dict | None,
    report,
    extra: dict | None,
) -> dict:
    """What the runtime reads about a package (the file checksums are added on writing);
    ``sampling``: the schedule's churn and ensemble, where not the defaults."""
    space, shared = model.space, bool(model.settings.shared)
    unfolding = model.settings.kind == "unfolding"
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "diffunfold_version": __version__,
        "model": model.settings.to_dict(),
        "stages": model.stages,
        "shared": shared,
        "data": {
            "kind": space.kind,
            "channels": space.channels,
            "model_channels": space.model_channels,
            "range": list(space.data_range) if space.data_range else None,
            "size_multiple": model.size_multiple,
        },
        "tasks": list(tasks),
        "schedule": {
            "steps": 18,
            "sampler": "euler",
            **formulation_schedule(model.settings.formulation),
            "sigma_data": model.settings.sigma_data,
            **sampling,
            # the fast schedule starts from the unfolded model's classical estimate: not a denoiser's
            **({"fast": _fast_entry(model)} if space.kind == "image" and unfolding else {}),
        },
        "networks": {
            "regularizers": names,
            "weights": "weights.onnx",
            "torch_weights": "model.safetensors" if torch_weights else None,
            "weights_dtype": "float16" if fp16_weights else "float32",
            "inputs": {
                "x": "float32 (B, C, H, W), model space",
                "sigma": "float32 (B,)",
                **({"stage": "int64 (B,)"} if shared else {}),
            },
            "opset": opset,
            "attention": attention,
        },
        "parameters": model.parameter_counts(),
        "source": source or {},
        "export_check": asdict(report) if report else None,
        **(extra or {}),
    }


def export_model(
    model: DiffUnfolding,
    out_dir: str | Path,
    *,
    tasks: Sequence[str] = (),
    source: dict | None = None,
    extra: dict | None = None,
    opset: int = OPSET,
    torch_weights: bool = True,
    fp16_weights: bool = False,
    check: bool = True,
    tolerance: float = 1e-4,
    check_sizes: Sequence[tuple[int, int, int]] | None = None,
    overwrite: bool = False,
    attention: str = "fused",
    churn=None,
    ensemble: str = "none",
    contrast=None,
    sampler: str = "euler",
    log: Callable[[str], None] = print,
) -> ModelPackage:
    """Write ``model`` (float32, eval mode) as a package in ``out_dir`` and return it, verified.

    ``check``: run ONNX Runtime against torch at ``check_sizes`` and raise if the relative error
    exceeds ``tolerance`` (the errors are logged either way and kept in the manifest).
    ``fp16_weights``: round the parameters to float16 and store them so (half the package; the
    graphs still compute in float32). The check then compares against the rounded model, so it
    stays exact; the rounding's own effect is the difference between the two packages' results.
    ``attention``: ``fused`` (one node per attention layer, ``export/attention.py``) or
    ``spelled`` (MatMul-Softmax-MatMul, as packages before it).
    ``churn``: the stochastic-sampler setting the package's schedule asks for (``edm.Churn.of``;
    None or 0: the deterministic ODE), and ``ensemble`` the self-ensemble of posterior samples
    (``diffunfold.ensemble``), and ``contrast`` the stretch of flat images (``diffunfold.contrast``;
    images only), and ``sampler`` the sampler of both schedules (``edm.SAMPLERS``): what the
    runtime then uses unless told otherwise.
    """
    churn = edm.Churn.of(churn)
    check_ensemble(ensemble)
    contrast = Contrast.of(contrast)
    out = Path(out_dir)
    _check_request(model, contrast, out, overwrite, sampler, churn)
    model = model.float().cpu().eval()
    if fp16_weights:
        model = _rounded_to_fp16(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        names, files = _write_networks(model, tmp, opset, attention, fp16_weights, torch_weights, log)
        report = _check_export(model, tmp, names, check_sizes, tolerance, log) if check else None
        sampling = _sampling(churn, ensemble, contrast, sampler)
        manifest = _manifest(
            model, names, tasks, sampling, opset, attention, fp16_weights, torch_weights, source, report, extra
        )
        write_manifest(tmp, manifest, files)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB)")
    return ModelPackage.open(out)


def _check_request(
    model: DiffUnfolding, contrast: Contrast | None, out: Path, overwrite: bool, sampler: str, churn: edm.Churn
) -> None:
    """Refuse a contrast stretch for an MRI model, an unknown sampler or one with churn beside it,
    and a used ``out`` folder without ``overwrite``."""
    edm.check_churn_fits(edm.check_sampler(sampler), churn)
    if contrast is not None and model.space.complex:
        raise InputError("the contrast stretch is for image models; an MRI package cannot ask for it")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{str(out)!r} already exists and is not empty; choose another --out or pass --overwrite")


def _sampling(churn: edm.Churn, ensemble: str, contrast: Contrast | None, sampler: str) -> dict:
    """The manifest's sampling settings: only those that differ from the runtime's defaults."""
    return {
        **({"sampler": sampler} if sampler != "euler" else {}),
        **({"churn": churn.as_dict()} if churn.active else {}),
        **({"ensemble": ensemble} if ensemble != "none" else {}),
        **({"contrast": contrast.as_dict()} if contrast is not None else {}),
    }


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished package from ``tmp`` to ``out`` (replacing what is there), readable by all."""
    for f in tmp.iterdir():  # mkdtemp/mkstemp make owner-only files; a package is shared
        f.chmod(0o644)
    tmp.chmod(0o755)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def _rounded_to_fp16(model: DiffUnfolding) -> DiffUnfolding:
    """A copy of ``model`` with every parameter rounded to float16 (kept in float32)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def _check_export(model: DiffUnfolding, tmp: Path, names, check_sizes, tolerance: float, log: Callable[[str], None]):
    """ONNX Runtime against torch on the package written in ``tmp`` (logged); an InputError
    beyond ``tolerance``, a warning where an activation exceeds the FP16 range."""
    sizes = check_sizes or default_check_sizes(model.size_multiple)
    report = check_package(model, tmp, names, "weights.onnx", sizes, tolerance)
    log(report.report())
    if not report.passed:
        raise InputError(
            f"export check failed: ONNX Runtime differs from torch by more than {tolerance:.0e} "
            f"(regularisers {report.regularizer_rel_err:.2e}, weights {report.weights_rel_err:.2e}); "
            "the package was not written"
        )
    if report.max_abs_activation > FP16_MAX:
        log(
            f"warning: an activation reaches {report.max_abs_activation:.3g} > FP16 max; "
            "build engines in FP32 or retrain"
        )
    return report


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, weights: str = "ema", **kwargs) -> ModelPackage:
    """Export a training checkpoint (a ckpt-*.json, its .safetensors, or a run folder: its newest)."""
    from ..training.checkpoint import load_model, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    model, meta = load_model(path, weights=weights)
    data = meta.get("config", {}).get("data", {})
    is_mri = model.space.kind == "mri"
    # a config repeats a task to draw it more often; the package names each task once
    tasks = ["mri"] if is_mri else list(dict.fromkeys(data.get("tasks", [])))
    if model.settings.kind == "denoiser":  # a prior: trained on no task
        tasks = []
    extra = {"mri_patterns": data.get("mri_patterns")} if is_mri else {}
    if data.get("size"):  # the runtime sizes its regulariser tiles from the training crop
        extra["train_size"] = int(data["size"])
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    source = {
        "checkpoint": path.name,
        "run": run_dir.name,
        "step": meta["step"],
        "weights": weights,
        "checkpoint_sha256": meta["sha256"],
        "preset": meta.get("config", {}).get("name"),
    }
    return export_model(model, out_dir, tasks=tasks, source=source, extra=extra, **kwargs)

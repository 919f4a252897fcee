"""Where a training run starts from (``train.init_from``): another package or checkpoint, and
the torch weights of an exported model package read back from its ONNX graphs.

Packages keep their weights in ``model.safetensors`` unless exported with
``--no-torch-weights`` (the bundled ones are, to stay small). This recovers the same state
from the ONNX initialisers so such a package can still be fine-tuned
(``train.init_from``). Parameters keep their torch names in the graph, except the GroupNorm
affines, which export as anonymous Mul/Add constants and are named here by the node that
uses them, and the U-Net's Fourier frequencies, folded into ``2 pi freqs``. The result is
checked against the graph by the caller's use, and here against the model's own buffers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, require
from ..package import ModelPackage
from .model import DiffUnfolding, ModelSettings
from .unet import SelfAttention


def _initialisers(path) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    onnx = require("onnx", "export")
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in graph.initializer}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    # fp16-stored packages keep "<name>_fp16" behind a Cast, and the exporter shares equal
    # tensors through an Identity (image-small's zero tau and gamma weights): look through both
    for node in graph.node:
        if node.op_type in ("Cast", "Identity") and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
            users[node.output[0]] = users.get(node.output[0], [])
    return values, users


def _module_of(node_name: str) -> tuple[str, str]:
    """'/reg/unet/enc.2/enc.2.0/norm1/Mul' -> ('unet.enc.2.0.norm1', 'Mul')."""
    parts = node_name.split("/")[2:]
    op, parts = parts[-1], parts[:-1]
    parts = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p + "."))]
    return ".".join(parts), op


def _regularizer_state(path, prefix: str, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    values, users = _initialisers(path)
    state = {}
    for key in expected:
        name = "reg." + key[len(prefix) :]
        if name in values:
            state[key] = values[name]
        elif name + "_fp16" in values:
            state[key] = values[name + "_fp16"]
    for const in [n for n in values if n.startswith("onnx::")]:
        nodes = [u for u in users.get(const, []) if u.op_type != "Cast"]
        nodes += [u for c in users.get(const, []) if c.op_type == "Cast" for u in users.get(c.output[0], [])]
        if len(nodes) != 1 or nodes[0].op_type not in ("Mul", "Add"):
            continue
        module, op = _module_of(nodes[0].name)
        if module.endswith("unet") and op == "Mul":
            state[prefix + module + ".freqs"] = values[const] / (2 * math.pi)
        else:
            state[prefix + module + (".weight" if op == "Mul" else ".bias")] = values[const]
    missing = [k for k in expected if k not in state]
    if missing:
        raise InputError(f"{path}: cannot recover {missing[:3]} from the graph; fine-tune from a checkpoint instead")
    return {k: torch.from_numpy(np.ascontiguousarray(state[k]).reshape(expected[k].shape)) for k in expected}


def package_state(pkg: ModelPackage) -> dict[str, torch.Tensor]:
    """The package's regulariser and weight-generator tensors as a ``DiffUnfolding`` state
    dict (u, never exported, is absent)."""
    model = DiffUnfolding(ModelSettings.from_dict(pkg.settings))
    expected = model.state_dict()
    state = {}
    for i, name in enumerate(pkg.regularizer_files):
        prefix = f"regularizers.{i}."
        state.update(
            _regularizer_state(pkg.file(name), prefix, {k: v for k, v in expected.items() if k.startswith(prefix)})
        )
    values, _ = _initialisers(pkg.file(pkg.weights_file))
    for gen in ("tau", "gamma"):
        for p in ("weight", "bias"):
            name = f"model.{gen}.linear.{p}"
            v = values.get(name, values.get(name + "_fp16"))
            if v is not None:
                state[f"{gen}.linear.{p}"] = torch.from_numpy(v.reshape(expected[f"{gen}.linear.{p}"].shape))
    freqs = [k for k in state if k.endswith("unet.freqs")]
    if any(not torch.allclose(state[k], expected[k], rtol=1e-5) for k in freqs):
        raise InputError(f"{pkg.path}: the recovered Fourier frequencies differ from the model's")
    return state


def initialise_from(model: DiffUnfolding, source: str, adapt_attention: bool = False) -> None:
    """Copy the regularisers and u from a model package (its model.safetensors) or a
    checkpoint (EMA weights) into ``model``; tau and gamma keep their initial values, since
    they mean different things for another data step. The networks must have the same shape,
    except, with ``adapt_attention``, in their attention layers (``attention_layout``)."""
    source_model, state = _source_state(Path(source))
    if adapt_attention:
        from .attention_layout import remap_attention

        state = remap_attention(state, source_model, model)
    state = _fold_stage_embedding(state, model)
    keep = {k: v for k, v in state.items() if k.startswith(("regularizers.", "uncertainty."))}
    missing, unexpected = model.load_state_dict(keep, strict=False)
    new_attention = _start_as_identity(model, missing) if adapt_attention else set()
    wrong = [
        k
        for k in missing
        if k.startswith("regularizers.")  # u is absent from packages
        and k.rsplit(".", 2)[0] not in new_attention
    ]
    if wrong or unexpected:
        unet = dataclasses.asdict(source_model.settings.unet)
        hint = "; give the config its U-Net: " + " ".join(
            f"--set model.unet.{k}={json.dumps(v)}" for k, v in unet.items()
        )
        raise InputError(
            f"train.init_from {source}: the networks do not match this config "
            f"(missing {wrong[:3]}, unexpected {list(unexpected)[:3]}){hint}"
            + (
                ""
                if adapt_attention
                else ", or set train.init_adapt_attention=true if only the attention layers differ"
            )
        )


def fold_stage(state: dict[str, torch.Tensor], prefix: str = "", stage: int = 0) -> dict[str, torch.Tensor]:
    """A stage-shared U-Net's state (keys under ``prefix``) as the state of the same U-Net
    without stage conditioning, at ``stage``: the stage embedding is added to the noise
    embedding's first layer, so it folds exactly into that layer's bias. Stage 0 is the one that
    sees the noisy image itself. A state without a stage embedding comes back as it is."""
    key = prefix + "stage_embed.weight"
    if key not in state:
        return state
    state = dict(state)
    bias = prefix + "map0.bias"
    state[bias] = state[bias] + state.pop(key)[stage].to(state[bias].dtype)
    return state


def _fold_stage_embedding(state: dict[str, torch.Tensor], model: DiffUnfolding) -> dict:
    """An unfolded model's stage 0 for a network without stage conditioning (a denoiser)."""
    if model.regularizers[0].unet.stage_embed is not None:
        return state
    return fold_stage(state, "regularizers.0.unet.")


def _start_as_identity(model: DiffUnfolding, missing: list[str]) -> set[str]:
    """Zero the output projection of the attention layers the source did not have, so the
    network starts as the source's; their names."""
    new = {
        n
        for n, m in model.named_modules()
        if isinstance(m, SelfAttention) and any(k.startswith(n + ".") for k in missing)
    }
    with torch.no_grad():
        for n in new:
            proj = model.get_submodule(n).proj
            proj.weight.zero_(), proj.bias.zero_()
    return new


def _source_state(path: Path) -> tuple[DiffUnfolding, dict[str, torch.Tensor]]:
    """The model an init_from source describes (its layout) and its weights."""
    from safetensors.torch import load_file

    from .checkpoint import load_model

    if not (path / "manifest.json").exists():
        model = load_model(path)[0]
        return model, model.state_dict()
    pkg = ModelPackage.open(path)
    if pkg.torch_weights_file is None:  # exported without them: read the ONNX graphs back
        state = package_state(pkg)
    else:
        state = {k: v.float() for k, v in load_file(str(pkg.file(pkg.torch_weights_file))).items()}
    return DiffUnfolding(ModelSettings.from_dict(pkg.settings)), state

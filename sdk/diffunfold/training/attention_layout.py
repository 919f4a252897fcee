"""Carry a trained U-Net's weights over to one with attention at other levels
(``train.init_adapt_attention``).

Attention layers sit in a stack right after its residual block, so adding or dropping one
renumbers the layers after it (``dec.3.2.conv`` becomes ``dec.3.1.conv``). This maps each
stack's layers by kind instead: the n-th non-attention layer to the n-th, an attention layer
to the target's attention layer where it has one and nowhere where it has none. Attention
layers that only the target has keep their initial state: their output projection starts at
zero, so they start as the identity and the network computes what the source computed, less
the dropped layers.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .unet import SelfAttention, _Stack


def stack_layout(model: nn.Module) -> dict[str, list[bool]]:
    """Each stack's qualified name -> for each of its layers, whether it is attention."""
    return {
        name: [isinstance(c, SelfAttention) for c in m] for name, m in model.named_modules() if isinstance(m, _Stack)
    }


def _layer_map(source: list[bool], target: list[bool]) -> dict[int, int]:
    """Source layer index -> target layer index, matched by kind and order."""

    def of_kind(kinds, attention):
        return [i for i, a in enumerate(kinds) if a == attention]

    out = dict(zip(of_kind(source, False), of_kind(target, False)))
    out.update(zip(of_kind(source, True), of_kind(target, True)))
    return out


def remap_attention(state: dict[str, torch.Tensor], source: nn.Module, target: nn.Module) -> dict[str, torch.Tensor]:
    """``source``'s ``state`` under ``target``'s layer names; dropped attention layers left out."""
    src, dst = stack_layout(source), stack_layout(target)
    if src.keys() != dst.keys() or any(src[k].count(False) != dst[k].count(False) for k in src):
        raise InputError(
            "the U-Nets differ in more than their attention layers (channels, levels or "
            "blocks); only attention_levels and mid_attention may differ"
        )
    maps = {name + ".": _layer_map(src[name], dst[name]) for name in src}
    out = {}
    for key, value in state.items():
        prefix = next((p for p in maps if key.startswith(p)), None)
        if prefix is None:
            out[key] = value
            continue
        index, rest = key[len(prefix) :].split(".", 1)
        new = maps[prefix].get(int(index))
        if new is not None:
            out[f"{prefix}{new}.{rest}"] = value
    return out

"""Attention in the exported graphs: one fused node, and the spelled-out form where a consumer
needs it. Needs onnx, never torch (the engine build uses it).

New packages write each self-attention as one ``com.microsoft::MultiHeadAttention`` node
(``(B, N, C)`` query, key, value; ``num_heads``; scale ``1/sqrt(C/heads)``). Why this operator,
checked with onnx 1.23, onnxruntime 1.32 and openvino 2026.4 on one 4096-token attention (two
heads of 32, what the small preset has at H/4 of a 256 px image; ``bench/attention.py``
measures the whole network; the exporter's switch is ``export_model(attention=...)``):

* ONNX Runtime's CPU kernel for it is a flash-style kernel: +6 MB peak instead of the 139 MB
  the MatMul-Softmax-MatMul form materialises (the N x N logits of both heads). The standard
  ``ai.onnx`` ``Attention`` (opset 23) materialises them in ONNX Runtime's CPU kernel (+265 MB)
  and would raise the whole graph to opset 23.
* OpenVINO's ONNX frontend reads it and runs its own fused SDPA kernel; OpenVINO also fuses
  the spelled-out form (existing packages), so it gains either way.
* TensorRT's ONNX parser does not read ``com.microsoft`` operators; :func:`spell_out` turns
  the node back into MatMul-Softmax-MatMul before the engine build (``diffunfold.engines``),
  which TensorRT fuses into its own attention kernels with the softmax kept in FP32.

Packages exported before (the spelled-out form) keep working everywhere unchanged.
"""

from __future__ import annotations

import numpy as np

FUSED_OP = ("com.microsoft", "MultiHeadAttention")


def is_fused(node) -> bool:
    return (node.domain, node.op_type) == FUSED_OP


def count_fused(model) -> int:
    """Fused attention nodes in an ``onnx.ModelProto``."""
    return sum(is_fused(n) for n in model.graph.node)


def _spelled_nodes(node, heads: int, scale: float, scope: str) -> tuple[list, list]:
    """``(nodes, initializers)`` computing what the fused ``node`` computes, named in ``scope``
    as the exporter names the spelled-out form (``<scope>/MatMul...``, ``<scope>/Softmax...``), so
    the engine build's FP32 policy finds them (``engines.fp32_layer_policy``)."""
    from onnx import helper, numpy_helper

    n = lambda op, what: f"{scope}/{op}_attention_{what}"
    split, merge, scale_name = n("Constant", "split"), n("Constant", "merge"), n("Constant", "scale")
    consts = [
        numpy_helper.from_array(np.array([0, 0, heads, -1], np.int64), split),
        numpy_helper.from_array(np.array([0, 0, -1], np.int64), merge),
        numpy_helper.from_array(np.array(scale, np.float32), scale_name),
    ]
    nodes, heads_of = [], {}
    for part, src, perm in (
        ("q", node.input[0], [0, 2, 1, 3]),
        ("k", node.input[1], [0, 2, 3, 1]),
        ("v", node.input[2], [0, 2, 1, 3]),
    ):  # (B, N, C) -> (B, h, N, d); k: (B, h, d, N)
        nodes += [
            helper.make_node("Reshape", [src, split], [n("Reshape", part)], name=n("Reshape", part)),
            helper.make_node(
                "Transpose", [n("Reshape", part)], [n("Transpose", part)], perm=perm, name=n("Transpose", part)
            ),
        ]
        heads_of[part] = n("Transpose", part)
    steps = [
        ("MatMul", "qk", [heads_of["q"], heads_of["k"]], {}),
        ("Mul", "scale", [None, scale_name], {}),
        ("Softmax", "weights", [None], {"axis": -1}),
        ("MatMul", "wv", [None, heads_of["v"]], {}),
        ("Transpose", "out", [None], {"perm": [0, 2, 1, 3]}),
        ("Reshape", "out", [None, merge], {}),
    ]
    prev = None
    for i, (op, what, inputs, attrs) in enumerate(steps):
        out = node.output[0] if i == len(steps) - 1 else n(op, what)
        nodes.append(helper.make_node(op, [prev if x is None else x for x in inputs], [out], name=n(op, what), **attrs))
        prev = out
    return nodes, consts


def spell_out(model):
    """A copy of ``onnx.ModelProto`` ``model`` with every fused attention node replaced by
    MatMul-Softmax-MatMul (standard ONNX ops); a model without one comes back unchanged."""
    import onnx
    from onnx import helper

    if not count_fused(model):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes = []
    for i, node in enumerate(graph.node):
        if not is_fused(node):
            nodes.append(node)
            continue
        if len(node.input) > 3 and any(node.input[3:]):
            raise ValueError(f"{node.name}: fused attention with bias, mask or cache cannot be spelled out here")
        heads = next(a.i for a in node.attribute if a.name == "num_heads")
        scale = next((a.f for a in node.attribute if a.name == "scale"), 0.0)
        if not scale:  # the operator's default, 1/sqrt(head size), needs shapes: diffunfold writes it
            raise ValueError(f"{node.name}: fused attention without a scale attribute cannot be spelled out here")
        scope = node.name.rsplit("/", 1)[0] if "/" in node.name else f"/attention_{i}"
        new, consts = _spelled_nodes(node, heads, scale, scope)
        graph.initializer.extend(consts)
        nodes += new
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(n.domain == FUSED_OP[0] for n in graph.node):
        kept = [o for o in out.opset_import if o.domain != FUSED_OP[0]]
        del out.opset_import[:]
        out.opset_import.extend(kept or [helper.make_opsetid("", 17)])
    onnx.checker.check_model(out)
    return out

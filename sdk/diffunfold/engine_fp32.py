"""The FP32 layer policy of a reduced-precision (FP16/BF16) TensorRT build: which layers of a
diffusion U-Net stay FP32. Pure functions of layer types and names, tested without a GPU or
TensorRT; :mod:`diffunfold.engines` applies them to a parsed network and re-exports them.
"""

from __future__ import annotations

from collections.abc import Iterable

# -- FP32 layers in a reduced-precision build -------------------------------------------------
#
# Why: diffusion U-Nets are the textbook case of FP16 TensorRT engines that return NaN or
# garbage. Three places overflow or lose everything in half precision:
#   * GroupNorm: the variance is a mean of squares over (C/G) * H * W values; activations of a
#     few hundred squared and summed leave FP16's range (max 65504) and the output is inf/NaN.
#     The exporter writes each GroupNorm as Reshape -> InstanceNormalization -> Reshape -> Mul ->
#     Add, which TensorRT imports as one NORMALIZATION layer: pinning that layer's compute
#     precision (and output) to FP32 is enough; the affine Mul/Add after it is harmless.
#   * attention: the logits q.k sum head_dim products over every pixel pair and exp() of them
#     overflows; the two MatMuls around the softmax, the scale between them and the softmax
#     itself stay FP32 (the network computes them in float32 on purpose, see training/unet.py).
#   * the EDM preconditioning around the network (c_in, c_noise = log(sigma)/4, r = c_skip x +
#     c_out F): a handful of elementwise ops on the input image at sigma up to 80, where the
#     unfolding step then uses x - r. Kept FP32: it costs nothing and keeps r's full precision.
# Reductions and powers anywhere (a decomposed norm would use them) are pinned as well. The
# convolutions, which are nearly all of the time, run in FP16.

# ONNX op -> the TensorRT layer type the ONNX parser makes of it (the main layer): for previews
# and tests on machines without TensorRT.
ONNX_TO_TRT_LAYER = {
    "InstanceNormalization": "NORMALIZATION",
    "GroupNormalization": "NORMALIZATION",
    "LayerNormalization": "NORMALIZATION",
    "Softmax": "SOFTMAX",
    "MatMul": "MATRIX_MULTIPLY",
    "Gemm": "MATRIX_MULTIPLY",
    "Conv": "CONVOLUTION",
    "ConvTranspose": "DECONVOLUTION",
    "Add": "ELEMENTWISE",
    "Sub": "ELEMENTWISE",
    "Mul": "ELEMENTWISE",
    "Div": "ELEMENTWISE",
    "Pow": "ELEMENTWISE",
    "Max": "ELEMENTWISE",
    "Min": "ELEMENTWISE",
    "Sqrt": "UNARY",
    "Exp": "UNARY",
    "Log": "UNARY",
    "Reciprocal": "UNARY",
    "Cos": "UNARY",
    "Sin": "UNARY",
    "Abs": "UNARY",
    "Neg": "UNARY",
    "ReduceMean": "REDUCE",
    "ReduceSum": "REDUCE",
    "ReduceMax": "REDUCE",
    "Sigmoid": "ACTIVATION",
    "Relu": "ACTIVATION",
    "Tanh": "ACTIVATION",
    "AveragePool": "POOLING",
    "MaxPool": "POOLING",
    "Resize": "RESIZE",
    "Reshape": "SHUFFLE",
    "Transpose": "SHUFFLE",
    "Cast": "CAST",
    "Concat": "CONCATENATION",
    "Gather": "GATHER",
    "Slice": "SLICE",
    "Shape": "SHAPE",
    "Constant": "CONSTANT",
    "Unsqueeze": "SHUFFLE",
    "Squeeze": "SHUFFLE",
}
_ATTENTION_WORDS = ("attn", "attention")
_NORM_OPS = ("InstanceNormalization", "GroupNorm", "LayerNorm")
_ARITHMETIC = ("ELEMENTWISE", "UNARY", "REDUCE")


def _split(layer_name: str) -> tuple[str, str]:
    """``"/reg/unet/mid/mid.1/MatMul_1"`` -> ``("/reg/unet/mid/mid.1", "MatMul_1")``."""
    if "/" not in layer_name:
        return "", layer_name
    scope, op = layer_name.rsplit("/", 1)
    return scope, op


def attention_scopes(layers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The module scopes that hold an attention: those with a SOFTMAX layer in them (the exporter
    names layers after the torch module path, e.g. ``/reg/unet/mid/mid.1/Softmax``)."""
    return frozenset(_split(name)[0] for kind, name in layers if kind == "SOFTMAX" and "/" in name)


def fp32_layer_policy(
    layer_type_name: str, layer_name: str, attention: frozenset[str] | set[str] | None = None
) -> bool:
    """Whether a layer of a reduced-precision (FP16/BF16) build is pinned to FP32.

    ``layer_type_name`` is ``trt.LayerType`` 's name (``"NORMALIZATION"``), ``layer_name`` the
    layer's name (the ONNX node's, e.g. ``/reg/unet/enc.2/enc.2.1/MatMul``); ``attention`` the
    scopes from :func:`attention_scopes` (without it, attention is recognised by MatMul nodes
    and by module names containing "attn"/"attention"). See the comment above for why.
    """
    t = layer_type_name.upper()
    scope, op = _split(layer_name)
    if t == "NORMALIZATION" or t == "SOFTMAX":
        return True
    if t.startswith("PLUGIN") and op.startswith(_NORM_OPS):  # InstanceNormalization_TRT plugin
        return True
    if t == "REDUCE" or (t == "ELEMENTWISE" and op.startswith("Pow")):
        return True
    in_attention = (scope in attention if attention else False) or any(w in scope.lower() for w in _ATTENTION_WORDS)
    if t == "MATRIX_MULTIPLY":
        # A conv U-Net has no MatMul outside attention (its Linear layers export as Gemm).
        return in_attention or (not attention and op.startswith("MatMul"))
    if t in _ARITHMETIC and in_attention:
        return True
    # The EDM preconditioning: the graph's top scope (one module deep, "/reg/Mul_3"), outside
    # the network body.
    if t in _ARITHMETIC and scope.count("/") == 1:
        return True
    return False


def preview_fp32_layers(nodes: Iterable[tuple[str, str]]) -> list[str]:
    """Names of the ONNX nodes ``(op_type, name)`` whose layers a FP16 build pins to FP32."""
    typed = [(ONNX_TO_TRT_LAYER.get(op, op.upper()), name) for op, name in nodes]
    scopes = attention_scopes(typed)
    return [name for kind, name in typed if fp32_layer_policy(kind, name, scopes)]

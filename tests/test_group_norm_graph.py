"""The reshape-free group norm (``diffunfold.group_norm_graph``) against the definition and the
exported form, on graphs built here in torch's exported pattern (no torch needed).

Tolerance: float32, 1e-5 relative to the output's largest value (the same arithmetic up to the
order of the sums; measured ~3e-7 on the bundled image U-Net)."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the graph rewrite needs onnx (the export or openvino extra)")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from diffunfold.group_norm_graph import find_group_norms, reduce_form  # noqa: E402


def exported_group_norm(
    channels: int = 8, groups: int = 4, opset: int = 17, scale: float = 1.0, static_channels: bool = True
):
    """x -> Conv 1x1 -> GroupNorm as torch exports it (Reshape (0, G, -1), InstanceNormalization,
    Reshape to Shape(x)) -> per-channel affine -> y."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((channels, channels, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([0, groups, -1], np.int64), "grouped"),
        numpy_helper.from_array(np.full(groups, scale, np.float32), "in_scale"),
        numpy_helper.from_array(np.zeros(groups, np.float32), "in_bias"),
        numpy_helper.from_array(rng.standard_normal((channels, 1, 1)).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal((channels, 1, 1)).astype(np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"]),
        helper.make_node("Reshape", ["h", "grouped"], ["r"]),
        helper.make_node("InstanceNormalization", ["r", "in_scale", "in_bias"], ["n"], epsilon=1e-5),
        helper.make_node("Shape", ["h"], ["shape"]),
        helper.make_node("Reshape", ["n", "shape"], ["back"]),
        helper.make_node("Mul", ["back", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["y"]),
    ]
    c = channels if static_channels else "C"
    graph = helper.make_graph(
        nodes,
        "gn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, "H", "W"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if not static_channels:  # a Conv of unknown width: drop the weight's static shape
        model.graph.initializer[0].CopyFrom(
            numpy_helper.from_array(np.zeros((channels, channels, 1, 1), np.float32), "w")
        )
        model.graph.node[0].input[1] = "w_dyn"
        model.graph.input.append(helper.make_tensor_value_info("w_dyn", TensorProto.FLOAT, None))
    return model


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def group_norm_definition(h, groups, gamma, beta, eps=1e-5):
    n, c = h.shape[:2]
    g = h.reshape(n, groups, -1).astype(np.float64)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    return g.reshape(h.shape) * gamma + beta


@pytest.mark.parametrize("opset", [17, 18])
def test_reduce_form_computes_the_group_norm(opset):
    model = exported_group_norm(opset=opset)
    assert len(find_group_norms(model)) == 1
    rewritten = reduce_form(model)
    onnx.checker.check_model(rewritten, full_check=True)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "InstanceNormalization" not in ops and "Reshape" not in ops and "Shape" not in ops
    assert ops.count("ReduceMean") == 2
    # An offset and a spread per image: the mean and the variance both matter.
    x = (np.random.default_rng(1).standard_normal((2, 8, 5, 7)) * [[[[3.0]]], [[[0.2]]]] + 4.0).astype(np.float32)
    before, after = run(model, x), run(rewritten, x)
    assert np.all(np.isfinite(after))
    assert np.max(np.abs(after - before)) / np.max(np.abs(before)) < 1e-5
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    h = np.einsum("oc,nchw->nohw", inits["w"][:, :, 0, 0], x)
    ref = group_norm_definition(h, 4, inits["gamma"], inits["beta"])
    assert np.max(np.abs(after - ref)) / np.max(np.abs(ref)) < 1e-5


def test_norms_it_cannot_prove_equal_are_left_as_exported():
    """A norm with its own scale, or on a tensor of unknown width, is kept, not guessed at."""
    for model in (exported_group_norm(scale=2.0), exported_group_norm(static_channels=False)):
        assert find_group_norms(model) == []
        assert [n.op_type for n in reduce_form(model).graph.node] == [n.op_type for n in model.graph.node]


def test_the_input_model_is_not_changed():
    model = exported_group_norm()
    before = model.SerializeToString()
    reduce_form(model)
    assert model.SerializeToString() == before

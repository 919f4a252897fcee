"""Fused attention in the exported graph against the spelled-out form.

New packages write each attention layer as one ``com.microsoft::MultiHeadAttention`` node
(``diffunfold/attention_graph.py``). Checked here on random inputs, ``max|a - b| / max|b|``:

* the fused package against the spelled-out one (the form of packages exported before), both
  through ONNX Runtime: 1e-5 (float32, the same arithmetic in another order; measured ~2e-7);
* the fused package through OpenVINO (float32) against the spelled-out one: 1e-4;
* ``spell_out`` of the fused graph (what the TensorRT build parses) against the spelled-out
  export: 1e-5, with no ``com.microsoft`` node or opset left.
"""

import numpy as np
import pytest

pytest.importorskip("torch", reason="building test packages needs torch (the export extra)")
onnx = pytest.importorskip("onnx", reason="building test packages needs onnx (the export extra)")
ort = pytest.importorskip("onnxruntime")

from helpers import tiny_model  # noqa: E402

from diffunfold.attention_graph import count_fused, spell_out  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402
from diffunfold.export import export_model  # noqa: E402


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention")
    model = tiny_model(shared=True, stages=2)
    return {form: export_model(model, root / form, attention=form, log=lambda s: None) for form in ("fused", "spelled")}


def run_ort(model_or_path, feeds):
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(["r"], feeds)[0]


def rel_err(a, b):
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))  # NaN never passes
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def feeds_for(b=2, h=32, w=24):
    rng = np.random.default_rng(0)
    sigma = np.array([0.3, 20.0][:b], np.float32)
    x = 0.5 * rng.standard_normal((b, 3, h, w)) + sigma[:, None, None, None] * rng.standard_normal((b, 3, h, w))
    return {"x": x.astype(np.float32), "sigma": sigma, "stage": np.arange(b, dtype=np.int64) % 2}


def test_new_exports_are_fused_and_say_so(packages):
    fused = onnx.load(str(packages["fused"].file("regularizer.onnx")))
    spelled = onnx.load(str(packages["spelled"].file("regularizer.onnx")))
    layers = sum(n.op_type == "Softmax" for n in spelled.graph.node)  # one per attention layer
    assert layers == 4 and count_fused(fused) == layers and count_fused(spelled) == 0
    assert not [n for n in fused.graph.node if n.op_type == "Softmax"]
    assert packages["fused"].manifest["networks"]["attention"] == "fused"
    assert packages["spelled"].manifest["networks"]["attention"] == "spelled"
    with pytest.raises(InputError, match="attention must be one of"):
        export_model(tiny_model(), "/nonexistent/never-written", attention="flash")


def test_fused_matches_spelled_out(packages):
    feeds = feeds_for()
    spelled = run_ort(packages["spelled"].file("regularizer.onnx"), feeds)
    assert rel_err(run_ort(packages["fused"].file("regularizer.onnx"), feeds), spelled) < 1e-5


def test_spell_out_gives_standard_ops(packages):
    fused = onnx.load(str(packages["fused"].file("regularizer.onnx")))
    plain = spell_out(fused)
    assert count_fused(plain) == 0 and count_fused(fused) == 4  # the input is left as it was
    assert not [o for o in plain.opset_import if o.domain == "com.microsoft"]
    assert not [n for n in plain.graph.node if n.domain]
    feeds = feeds_for(b=1, h=16, w=40)
    assert rel_err(run_ort(plain, feeds), run_ort(packages["spelled"].file("regularizer.onnx"), feeds)) < 1e-5
    spelled = onnx.load(str(packages["spelled"].file("regularizer.onnx")))
    assert spell_out(spelled) is spelled


def test_openvino_runs_the_fused_graph(packages, tmp_path):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from diffunfold.runtime.backend_openvino import OpenVinoBackend

    feeds = feeds_for()
    want = run_ort(packages["spelled"].file("regularizer.onnx"), feeds)
    be = OpenVinoBackend(packages["fused"], precision="f32", cache_dir=tmp_path)
    got = np.concatenate([be.regularize(feeds["x"][i : i + 1], float(feeds["sigma"][i]), i) for i in range(2)])
    assert rel_err(got, want) < 1e-4

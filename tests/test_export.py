"""Export: checkpoint -> model package (ONNX with the EDM preconditioning inside, manifest, checks)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs torch (the export extra)")
onnx = pytest.importorskip("onnx", reason="export needs onnx (the export extra)")
pytestmark = pytest.mark.torch

from helpers import tiny_model  # noqa: E402
from torch.optim.swa_utils import AveragedModel  # noqa: E402

from diffunfold import edm  # noqa: E402
from diffunfold.cli import main  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402
from diffunfold.export import export_checkpoint, export_model  # noqa: E402
from diffunfold.package import FORMAT, ModelPackage, sha256_file  # noqa: E402
from diffunfold.training.checkpoint import save_checkpoint  # noqa: E402

quiet = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def shared_pkg(tmp_path_factory):
    model = tiny_model(shared=True, stages=2)
    return model, export_model(model, tmp_path_factory.mktemp("e") / "pkg", tasks=["gaussian_blur", "sr"], **quiet)


def test_manifest_describes_the_model(shared_pkg):
    model, pkg = shared_pkg
    m = pkg.manifest
    assert m["format"] == FORMAT
    assert m["stages"] == 2 and m["shared"] is True
    assert m["data"] == {
        "kind": "image",
        "channels": 3,
        "model_channels": 3,
        "range": [0.0, 1.0],
        "size_multiple": model.size_multiple,
    }
    assert m["tasks"] == ["gaussian_blur", "sr"]
    assert m["schedule"]["steps"] == 18 and m["schedule"]["sigma_max"] == edm.SIGMA_MAX
    assert m["model"] == model.settings.to_dict()
    assert set(m["files"]) == {"regularizer.onnx", "weights.onnx", "model.safetensors"}
    for name, rec in m["files"].items():
        assert rec["sha256"] == sha256_file(pkg.path / name)
    check = m["export_check"]
    assert check["regularizer_rel_err"] < 1e-5 and check["weights_rel_err"] < 1e-5
    assert 0 < check["max_abs_activation"] < 65504


def test_regulariser_graph_is_preconditioned_and_dynamic(shared_pkg):
    """The ONNX graph maps (x, sigma, stage) to R = c_skip x + c_out F(c_in x; c_noise) at any
    batch and size; the norms are single InstanceNormalization nodes (no decomposed variance)."""
    import onnxruntime as ort

    model, pkg = shared_pkg
    graph = onnx.load(str(pkg.file("regularizer.onnx")))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert dims["x"] == ["batch", 3, "height", "width"] and dims["sigma"] == ["batch"]
    ops = {n.op_type for n in graph.graph.node}
    assert "InstanceNormalization" in ops and "MultiHeadAttention" in ops  # fused attention: test_attention.py
    assert not ops & {"ReduceMean", "ReduceSumSquare", "ReduceL2"}  # GroupNorm was not decomposed
    sess = ort.InferenceSession(str(pkg.file("regularizer.onnx")), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for b, h, w in [(1, 8, 8), (3, 24, 40)]:
        x = rng.standard_normal((b, 3, h, w)).astype(np.float32)
        sigma = np.exp(rng.uniform(-5, 4, b)).astype(np.float32)
        stage = rng.integers(0, 2, b).astype(np.int64)
        (r,) = sess.run(None, {"x": x, "sigma": sigma, "stage": stage})
        with torch.no_grad():
            s = torch.from_numpy(sigma).reshape(-1, 1, 1, 1)
            f = model.regularizers[0].unet(
                edm.c_in(s) * torch.from_numpy(x), edm.c_noise(torch.from_numpy(sigma)), torch.from_numpy(stage)
            )
            want = edm.c_skip(s) * torch.from_numpy(x) + edm.c_out(s) * f
        np.testing.assert_allclose(r, want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_separate_networks_export_one_graph_per_stage(tmp_path):
    model = tiny_model(shared=False, stages=3)
    pkg = export_model(model, tmp_path / "pkg", **quiet)
    assert pkg.regularizer_files == ["regularizer_0.onnx", "regularizer_1.onnx", "regularizer_2.onnx"]
    inputs = [i.name for i in onnx.load(str(pkg.file("regularizer_1.onnx"))).graph.input]
    assert inputs == ["x", "sigma"]


def test_check_failure_writes_nothing(tmp_path):
    with pytest.raises(InputError, match="export check failed"):
        export_model(tiny_model(), tmp_path / "pkg", tolerance=0.0, **quiet)
    assert not (tmp_path / "pkg").exists()
    assert not list(tmp_path.iterdir())  # the temporary folder is gone too


def test_existing_output_refused(tmp_path, shared_pkg):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        export_model(tiny_model(), tmp_path / "pkg", **quiet)
    assert (tmp_path / "pkg" / "notes.txt").read_text() == "mine"


def test_export_checkpoint_cli_takes_ema_weights(tmp_path, capsys):
    model = tiny_model(shared=True, stages=2)
    ema = AveragedModel(model)
    with torch.no_grad():  # make the EMA differ from the raw weights
        for p in ema.module.parameters():
            p.mul_(0.5)
    # a task repeated to draw it more often is named once in the package
    cfg = {"name": "tiny", "data": {"tasks": ["gaussian_blur", "inpainting", "gaussian_blur", "inpainting"]}}
    save_checkpoint(tmp_path / "run" / "checkpoints", 7, model, ema, torch.optim.Adam(model.parameters()), cfg)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "pkg")]) == 0
    out = capsys.readouterr().out
    assert "max relative error" in out and "step 7" in out
    pkg = ModelPackage.open(tmp_path / "pkg")
    assert pkg.tasks == ["gaussian_blur", "inpainting"]
    assert pkg.manifest["source"]["step"] == 7 and pkg.manifest["source"]["weights"] == "ema"
    assert pkg.manifest["source"]["run"] == "run"  # the run folder, not its checkpoints/ folder
    from safetensors.torch import load_file

    exported = load_file(str(pkg.file("model.safetensors")))
    name = "tau.linear.bias"
    torch.testing.assert_close(exported[name], ema.module.state_dict()[name])
    assert not torch.equal(exported[name], model.state_dict()[name])
    raw = export_checkpoint(tmp_path / "run", tmp_path / "raw", weights="model", check=False, **quiet)
    assert raw.manifest["source"]["weights"] == "model" and raw.manifest["export_check"] is None


def test_mri_package(tmp_path):
    pkg = export_model(tiny_model(data="mri", channels=1, stages=2), tmp_path / "mri", tasks=["mri"], **quiet)
    assert pkg.space.kind == "mri" and pkg.space.model_channels == 2
    assert pkg.manifest["data"]["range"] is None
    json.dumps(pkg.manifest)  # plain JSON all the way down


def test_weights_graph_keeps_the_sigma_clamp(shared_pkg):
    import onnxruntime as ort

    model, pkg = shared_pkg
    lo, hi = model.settings.weights_sigma_range
    sess = ort.InferenceSession(str(pkg.file("weights.onnx")), providers=["CPUExecutionProvider"])
    tau, gamma = sess.run(None, {"sigma": np.array([80.0, hi, 1e-4, lo], dtype=np.float32)})
    np.testing.assert_array_equal(tau[0], tau[1])
    np.testing.assert_array_equal(gamma[2], gamma[3])
    assert pkg.file("weights.onnx").stat().st_size < 20_000  # only the weight generators, no U-Net


def test_fp16_weights_halve_the_package_and_compute_in_float32(tmp_path, shared_pkg):
    """--fp16-weights stores the rounded parameters as float16 behind Casts: the file halves, the
    graph's inputs/outputs stay float32, it matches the rounded torch model exactly and the
    unrounded one to FP16's rounding, not more."""
    import onnxruntime as ort
    from onnx import numpy_helper

    model, full = shared_pkg
    half = export_model(model, tmp_path / "fp16", torch_weights=False, fp16_weights=True, **quiet)
    assert half.manifest["networks"]["weights_dtype"] == "float16"
    assert half.manifest["export_check"]["regularizer_rel_err"] < 1e-6
    weight_bytes = lambda p: sum(
        numpy_helper.to_array(i).nbytes  # noqa: E731
        for i in onnx.load(str(p.file("regularizer.onnx"))).graph.initializer
    )
    assert 0.45 < weight_bytes(half) / weight_bytes(full) < 0.55
    graph = onnx.load(str(half.file("regularizer.onnx"))).graph
    assert sum(numpy_helper.to_array(i).dtype == np.float16 for i in graph.initializer) >= 10
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in graph.input if i.name != "stage")

    rng = np.random.default_rng(3)
    feeds = {
        "x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32),
        "sigma": np.array([0.7], np.float32),
        "stage": np.array([1], np.int64),
    }
    run = lambda p: ort.InferenceSession(
        str(p.file("regularizer.onnx")),  # noqa: E731
        providers=["CPUExecutionProvider"],
    ).run(None, feeds)[0]
    r_half, r_full = run(half), run(full)
    assert r_half.dtype == np.float32
    diff = np.abs(r_half - r_full).max() / np.abs(r_full).max()
    assert 1e-7 < diff < 1e-2, diff  # rounded, yet close
    for p in model.parameters():  # the caller's model was not rounded in place
        if not torch.equal(p.half().float(), p):
            break
    else:
        pytest.fail("export with fp16_weights rounded the caller's model")

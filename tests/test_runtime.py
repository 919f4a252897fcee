"""The torch-free runtime against the torch reference sampler, its refusals and its invariances.

Tolerance: the runtime (numpy physics + ONNX Runtime) and the torch reference (torch physics +
torch networks), both float32, from the same seed and measurement, must agree to 1e-3 in
``max|runtime - torch| / max|torch|`` over a whole 18-step run (measured: about 1e-6).
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch reference needs torch (the train extra)")
pytest.importorskip("onnx", reason="building test packages needs onnx (the export extra)")
pytestmark = pytest.mark.torch

from helpers import (  # noqa: E402
    IMAGE_TASKS,
    MRI_TASKS,
    REL_TOL,
    SIZE,
    clean_images,
    operator_for,
    quiet,
    rel_err,
    tiny_model,
)

from diffunfold import edm  # noqa: E402
from diffunfold.errors import InputError, MissingDependencyError  # noqa: E402
from diffunfold.export import export_model  # noqa: E402
from diffunfold.package import ModelPackage  # noqa: E402
from diffunfold.physics import make_operator  # noqa: E402
from diffunfold.runtime import Solver, available_backends  # noqa: E402
from diffunfold.training.sampler import restore  # noqa: E402


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("task,params", IMAGE_TASKS + MRI_TASKS, ids=lambda v: v if isinstance(v, str) else "")
def test_runtime_matches_torch_reference(tiny_packages, task, params, sampler):
    model, pkg = tiny_packages["mri" if task == "mri" else "shared"]
    x = clean_images(mri=task == "mri")
    op = operator_for(task, params)
    y = op.measure(x, 0.01 if task == "mri" else 0.05, seed=[11, 12])
    solver = Solver.load(pkg, backend="onnxruntime")
    got = solver.solve(y, op, schedule="full", steps=18, sampler=sampler, seed=3)
    want = restore(model, torch.from_numpy(y), op, steps=18, sampler=sampler, seed=3)
    assert got.nfe == want.nfe == edm.nfe_of(18, sampler)
    assert got.images.shape == tuple(want.images.shape) and got.images.dtype == want.images.numpy().dtype
    assert rel_err(got.images, want.images.numpy()) < REL_TOL
    assert got.timing.network_calls == got.nfe * pkg.stages


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_separate_networks_and_both_backends(tiny_packages, backend):
    model, pkg = tiny_packages["separate"]
    x = clean_images()
    op = operator_for("gaussian_blur", {"sigma": 1.0})
    y = op.measure(x, 0.05, seed=[1, 2])
    got = Solver.load(pkg, backend=backend).solve(y, op, schedule="full", steps=10, sampler="heun", seed=[7, 9])
    want = restore(model, torch.from_numpy(y), op, steps=10, sampler="heun", seed=[7, 9])
    assert rel_err(got.images, want.images.numpy()) < REL_TOL


def test_posterior_samples_match_reference(tiny_packages):
    model, pkg = tiny_packages["mri"]
    op = operator_for("mri", {"kind": "gaussian1d", "acceleration": 4})
    y = op.measure(clean_images(mri=True), 0.01, seed=[1, 2])
    got = Solver.load(pkg, backend="onnxruntime").solve(y, op, schedule="full", steps=8, seed=0, samples=3)
    want = restore(model, torch.from_numpy(y), op, steps=8, seed=0, samples=3)
    assert got.samples == 3 and got.std.shape == (2, 1, SIZE, SIZE) and np.all(got.std > 0)
    assert rel_err(got.images, want.images.numpy()) < REL_TOL
    assert rel_err(got.std, want.std.numpy()) < 1e-2  # a difference of samples: looser, still tight


def test_results_do_not_depend_on_batch_composition(tiny_packages):
    _, pkg = tiny_packages["shared"]
    solver = Solver.load(pkg)
    x = np.concatenate([clean_images(), clean_images()[::-1]])  # 4 images
    op = operator_for("sr", {"factor": 2})
    y = op.measure(x, 0.05, seed=[1, 2, 3, 4])
    together = solver.solve(y, op, steps=6, seed=[10, 11, 12, 13]).images
    for i in range(4):
        alone = solver.solve(y[i : i + 1], op, steps=6, seed=[10 + i]).images
        np.testing.assert_allclose(alone[0], together[i], rtol=0, atol=1e-5)
    again = solver.solve(y, op, steps=6, seed=[10, 11, 12, 13]).images
    assert np.array_equal(again, together)  # the same seed gives the same output, bit for bit
    other = solver.solve(y, op, steps=6, seed=[20, 21, 22, 23]).images
    assert np.max(np.abs(other - together)) > 1e-3


def test_weights_evaluated_once_per_schedule(tiny_packages, monkeypatch):
    _, pkg = tiny_packages["shared"]
    solver = Solver.load(pkg)
    calls = []
    real = solver.backend.weights
    monkeypatch.setattr(solver.backend, "weights", lambda s: calls.append(len(s)) or real(s))
    op = operator_for("gaussian_blur", {"sigma": 1.0})
    y = op.measure(clean_images(), 0.05, seed=0)
    solver.solve(y, op, steps=5)
    solver.solve(y, op, steps=5, sampler="heun", samples=2)
    assert calls == [5]  # one batched call for the whole schedule, then cached
    solver.solve(y, op, steps=6)
    assert calls == [5, 6]


def test_sizes_that_are_not_a_multiple_are_padded(tiny_packages, monkeypatch):
    """A 31 x 45 image with a U-Net that needs multiples of 2: each regulariser call sees the
    image reflect-padded at its bottom and right to 32 x 46 and its result is cropped back (the
    physics stay at 31 x 45). The solve equals, to 1e-6, a solve whose regulariser does that by
    hand (np.pad, crop) with the solver's own padding off; padding the border any other way (edge)
    moves the result by far more (about 0.09), so the match checks the padding, not just a shape.
    (Its range needs no check: the solver clips every image result to [0, 1].)"""
    _, pkg = tiny_packages["shared"]
    assert pkg.size_multiple == 2
    op = make_operator("gaussian_blur", (31, 45), sigma=1.0)
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 31, 45)).astype(np.float32)
    y = op.measure(x, 0.05, seed=0)
    solver = Solver.load(pkg)
    seen, network = [], solver.backend.regularize
    monkeypatch.setattr(solver.backend, "regularize", lambda v, sigma, k: seen.append(v.shape) or network(v, sigma, k))
    out = solver.solve(y, op, steps=4)
    assert out.images.shape == (1, 3, 31, 45) and np.all(np.isfinite(out.images))
    assert out.tiling == "untiled" and len(seen) == out.nfe * pkg.stages and set(seen) == {(1, 3, 32, 46)}

    def padded_by_hand(mode):
        ref = Solver.load(pkg)
        ref.size_multiple = 1  # the solver pads nothing: the regulariser below pads and crops
        inner = ref.backend.regularize

        def regularize(v, sigma, k):
            h, w = v.shape[-2:]
            return inner(np.pad(v, ((0, 0), (0, 0), (0, -h % 2), (0, -w % 2)), mode=mode), sigma, k)[:, :, :h, :w]

        monkeypatch.setattr(ref.backend, "regularize", regularize)
        return ref.solve(y, op, steps=4).images

    np.testing.assert_allclose(out.images, padded_by_hand("reflect"), rtol=0, atol=1e-6)
    assert np.max(np.abs(out.images - padded_by_hand("edge"))) > 1e-2  # the border's content matters


def test_timing_breakdown(tiny_packages):
    _, pkg = tiny_packages["shared"]
    op = operator_for("gaussian_blur", {"sigma": 1.0})
    out = Solver.load(pkg).solve(op.measure(clean_images(), 0.05, seed=0), op, steps=4, samples=2, batch_samples=False)
    t = out.timing
    assert t.network > 0 and t.physics > 0 and t.sampler >= 0
    assert abs(t.network + t.physics + t.sampler - t.total) < 1e-6
    assert t.network_calls == 4 * 2 * pkg.stages
    assert "network" in str(t)


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["shape", "nan", "inf", "channels", "complex", "list", "torch"])
def test_bad_measurements_refused(tiny_packages, bad):
    _, pkg = tiny_packages["shared"]
    solver = Solver.load(pkg)
    op = operator_for("gaussian_blur", {"sigma": 1.0})
    y = op.measure(clean_images(), 0.05, seed=0)
    if bad == "shape":
        y, match = y[:, :, :16], "must have shape"
    elif bad in ("nan", "inf"):
        y = y.copy()
        y[0, 1, 3, 4] = np.nan if bad == "nan" else np.inf
        match = "NaN|Inf|finite"
    elif bad == "channels":
        y, match = y[:, :1], "3-channel"
    elif bad == "complex":
        y, match = y.astype(np.complex64), "float32 or float64"
    elif bad == "list":
        y, match = y.tolist(), "numpy"
    else:
        y, match = torch.from_numpy(y), "numpy or CuPy"
    with pytest.raises(InputError, match=match):
        solver.solve(y, op, steps=2)


def test_operator_of_another_kind_refused(tiny_packages):
    _, image_pkg = tiny_packages["shared"]
    _, mri_pkg = tiny_packages["mri"]
    mri_op = operator_for("mri", {"kind": "gaussian1d", "acceleration": 4})
    with pytest.raises(InputError, match="image model but the operator is mri"):
        Solver.load(image_pkg).solve(mri_op.measure(clean_images(mri=True), 0.0), mri_op)
    blur = operator_for("gaussian_blur", {"sigma": 1.0})
    with pytest.raises(InputError, match="MRI model"):
        Solver.load(mri_pkg).solve(blur.A(clean_images()), blur)
    with pytest.raises(InputError, match="steps must be a positive integer"):
        Solver.load(image_pkg).solve(blur.A(clean_images()), blur, steps=0)
    with pytest.raises(InputError, match="samples must be a positive integer"):
        Solver.load(image_pkg).solve(blur.A(clean_images()), blur, samples=0)


def copy_package(pkg, dest):
    import shutil

    shutil.copytree(pkg.path, dest)
    return dest


@pytest.mark.parametrize("name", ["regularizer.onnx", "weights.onnx", "model.safetensors"])
def test_changed_byte_in_any_file_refused(tiny_packages, tmp_path, name):
    _, pkg = tiny_packages["shared"]
    path = copy_package(pkg, tmp_path / "pkg")
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"{name} does not match the checksum"):
        Solver.load(path)


@pytest.mark.parametrize("name", ["regularizer.onnx", "weights.onnx", "model.safetensors"])
def test_missing_file_refused(tiny_packages, tmp_path, name):
    _, pkg = tiny_packages["shared"]
    path = copy_package(pkg, tmp_path / "pkg")
    (path / name).unlink()
    with pytest.raises(InputError, match=f"missing {name}"):
        Solver.load(path)


def test_edited_or_broken_manifest_refused(tiny_packages, tmp_path):
    _, pkg = tiny_packages["shared"]
    path = copy_package(pkg, tmp_path / "pkg")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["stages"] = 3
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="edited after export"):
        Solver.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        Solver.load(path)
    (path / "manifest.json").unlink()
    with pytest.raises(InputError, match="no manifest.json"):
        Solver.load(path)
    with pytest.raises(InputError, match="not a directory"):
        Solver.load(tmp_path / "nowhere")


def test_backend_choice(tiny_packages, tmp_path):
    _, pkg = tiny_packages["shared"]
    solver = Solver.load(pkg, backend="auto")
    best = "openvino" if available_backends(pkg)["openvino"].startswith("ok") else "onnxruntime"
    assert solver.backend.name == best and "auto" in solver.backend_reason  # more in test_openvino.py
    status = available_backends(pkg, "cpu")
    assert status["onnxruntime"].startswith("ok") and not status["tensorrt"].startswith("ok")
    with pytest.raises(InputError, match="backend must be one of"):
        Solver.load(pkg, backend="tflite")
    with pytest.raises(InputError, match="device must be"):
        Solver.load(pkg, device="tpu")
    if not _cuda_visible():
        with pytest.raises(InputError, match="CUDA device"):
            Solver.load(pkg, device="cuda")
    lean = export_model(tiny_model(), tmp_path / "lean", torch_weights=False, **quiet)
    with pytest.raises(InputError, match="without model.safetensors"):
        Solver.load(lean, backend="torch")
    opened = ModelPackage.open(lean.path)  # every file it lists is there and matches its checksum
    assert isinstance(opened, ModelPackage) and opened.torch_weights_file is None
    assert "model.safetensors" not in opened.manifest["files"] and not (lean.path / "model.safetensors").exists()
    assert pkg.torch_weights_file == "model.safetensors" and "model.safetensors" in pkg.manifest["files"]


def _cuda_visible() -> bool:
    from diffunfold.runtime.backends import cuda_available

    return cuda_available()


def test_tensorrt_backend_refused_without_tensorrt(tiny_packages):
    pytest.importorskip("diffunfold.runtime.backend_tensorrt")
    _, pkg = tiny_packages["shared"]
    with pytest.raises((InputError, MissingDependencyError)):
        Solver.load(pkg, backend="tensorrt", device="cpu")


def test_runtime_solves_with_torch_unimportable(tiny_packages, run_without_torch):
    """Architecture boundary 2: `import diffunfold.runtime` and a full solve, torch blocked."""
    image_pkg, mri_pkg = tiny_packages["shared"][1].path, tiny_packages["mri"][1].path
    run_without_torch(f"""
        import numpy as np
        import diffunfold.runtime
        from diffunfold.runtime import Solver
        from diffunfold.physics import make_operator
        from diffunfold.physics.mri import birdcage_maps
        x = np.random.default_rng(0).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
        solver = Solver.load({str(image_pkg)!r}, backend="onnxruntime")  # openvino: test_openvino.py
        assert solver.backend.name == "onnxruntime", solver.backend_reason
        op = make_operator("sr", (32, 32), factor=4)
        out = solver.solve(op.measure(x, 0.05, seed=0), op, steps=4, sampler="heun", samples=2)
        assert out.images.shape == (2, 3, 32, 32) and np.isfinite(out.images).all()
        mri = Solver.load({str(mri_pkg)!r})
        op = make_operator("mri", (32, 32), coil_maps=birdcage_maps(4, (32, 32)), kind="gaussian2d", acceleration=8)
        z = (x[:, :1] * np.exp(1j * x[:, 1:2])).astype(np.complex64)
        out = mri.solve(op.measure(z, 0.01, seed=0), op, steps=3)
        assert np.iscomplexobj(out.images) and np.isfinite(out.images).all()
        try:
            Solver.load({str(image_pkg)!r}, backend="torch")
        except ImportError as exc:
            assert "diffunfold[train]" in str(exc), exc
        else:
            raise AssertionError("the torch backend loaded without torch")
    """)


def test_iobinding_path_matches_plain_run(tiny_packages):
    """The GPU path binds inputs and outputs by address (IOBinding); the same code runs on the
    CPU with numpy addresses, so its names, shapes and dtypes are checked here."""
    from diffunfold.runtime.backends import OnnxRuntimeBackend

    _, pkg = tiny_packages["shared"]
    plain, bound = OnnxRuntimeBackend(pkg), OnnxRuntimeBackend(pkg, iobinding=True)
    x = np.random.default_rng(0).standard_normal((3, 3, 24, 40)).astype(np.float32)
    for k, sigma in [(0, 80.0), (1, 0.3)]:
        np.testing.assert_array_equal(bound.regularize(x, sigma, k), plain.regularize(x, sigma, k))
    op = operator_for("gaussian_blur", {"sigma": 1.0})
    y = op.measure(clean_images(), 0.05, seed=0)
    a = Solver(pkg, bound).solve(y, op, steps=4).images
    b = Solver(pkg, plain).solve(y.astype(np.float64), op, steps=4).images  # float64 y: cast to float32
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("task,params", [("sr", {"factor": 2}), ("inpainting", {"missing": 0.5})])
def test_posterior_samples_side_by_side_match_one_at_a_time(tiny_packages, task, params):
    """Samples batched together (shared operator constants) or drawn one after another: the
    same posterior mean and std. Per-image inpainting masks (operator.batch > 1) take the
    sequential path, as they must."""
    _, pkg = tiny_packages["shared"]
    solver = Solver.load(pkg)
    op = operator_for(task, params)
    y = op.measure(clean_images(), 0.05, seed=[1, 2])
    fast = solver.solve(y, op, steps=5, seed=4, samples=3)
    slow = solver.solve(y, op, steps=5, seed=4, samples=3, batch_samples=False)
    assert fast.timing.network_calls == 5 * pkg.stages * (1 if op.batch in (None, 1) else 3)
    assert slow.timing.network_calls == 5 * pkg.stages * 3
    assert fast.calls_per_sample == slow.calls_per_sample == 5 * pkg.stages
    np.testing.assert_allclose(fast.images, slow.images, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast.std, slow.std, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("task,params", [IMAGE_TASKS[0], MRI_TASKS[0]], ids=["gaussian_blur", "mri"])
def test_stochastic_sampler_matches_torch_reference(tiny_packages, task, params, sampler):
    """EDM's stochastic sampler: the runtime and the torch reference add the same noise at the
    same levels (per image seed, sample and step), so they agree as tightly as the ODE does."""
    model, pkg = tiny_packages["mri" if task == "mri" else "shared"]
    op = operator_for(task, params)
    y = op.measure(clean_images(mri=task == "mri"), 0.01 if task == "mri" else 0.05, seed=[11, 12])
    churn = edm.Churn(s_churn=7.2)
    solver = Solver.load(pkg, backend="onnxruntime")
    got = solver.solve(y, op, schedule="full", steps=10, sampler=sampler, seed=3, samples=2, churn=churn)
    want = restore(model, torch.from_numpy(y), op, steps=10, sampler=sampler, seed=3, samples=2, churn=churn)
    assert got.nfe == want.nfe == edm.nfe_of(10, sampler)
    assert rel_err(got.images, want.images.numpy()) < REL_TOL
    ode = solver.solve(y, op, steps=10, sampler=sampler, seed=3, samples=2, churn=0)
    assert np.max(np.abs(got.images - ode.images)) > 1e-3  # the re-noising did change the result


def test_stochastic_sampler_does_not_depend_on_batch_or_sample_order(tiny_packages):
    _, pkg = tiny_packages["shared"]
    solver = Solver.load(pkg)
    x = np.concatenate([clean_images(), clean_images()[::-1]])
    op = operator_for("sr", {"factor": 2})
    y = op.measure(x, 0.05, seed=[1, 2, 3, 4])
    together = solver.solve(y, op, steps=6, seed=[10, 11, 12, 13], samples=2, churn=5.0)
    rounds = solver.solve(y, op, steps=6, seed=[10, 11, 12, 13], samples=2, churn=5.0, batch_samples=False)
    np.testing.assert_allclose(together.images, rounds.images, rtol=0, atol=1e-5)
    alone = solver.solve(y[2:3], op, steps=6, seed=[12], samples=2, churn=5.0)
    np.testing.assert_allclose(alone.images[0], together.images[2], rtol=0, atol=1e-5)


def test_package_churn_is_the_default_and_can_be_overridden(tiny_packages, tmp_path):
    model, plain = tiny_packages["shared"]
    noisy = export_model(model, tmp_path / "churn", churn=edm.Churn(s_churn=7.2), check=False, **quiet)
    assert ModelPackage.open(noisy.path).churn == edm.Churn(s_churn=7.2) and not plain.churn.active
    op = operator_for("gaussian_blur", {"sigma": 1.0})
    y = op.measure(clean_images(), 0.05, seed=[1, 2])
    by_package = Solver.load(noisy).solve(y, op, steps=6, seed=1).images
    by_call = Solver.load(plain).solve(y, op, steps=6, seed=1, churn=7.2).images
    np.testing.assert_allclose(by_package, by_call, rtol=0, atol=1e-6)
    ode = Solver.load(plain).solve(y, op, steps=6, seed=1).images
    np.testing.assert_allclose(Solver.load(noisy).solve(y, op, steps=6, seed=1, churn=0).images, ode, rtol=0, atol=1e-6)
    assert np.max(np.abs(by_package - ode)) > 1e-3
    with pytest.raises(InputError, match="S_churn|churn"):
        Solver.load(plain).solve(y, op, steps=6, churn=-1.0)


@pytest.mark.parametrize("batch_samples", [True, False])
def test_flip_ensemble_matches_torch_reference(tiny_packages, batch_samples):
    """Posterior sample j's regulariser sees the j-th flip in the runtime (side by side or one
    sample after the other) and in the torch reference alike; sample 0 is the plain solve."""
    model, pkg = tiny_packages["shared"]
    op = operator_for("sr", {"factor": 4})
    y = op.measure(clean_images(), 0.05, seed=[11, 12])
    solver = Solver.load(pkg, backend="onnxruntime")
    got = solver.solve(
        y, op, schedule="full", steps=6, seed=3, samples=4, ensemble="flips", batch_samples=batch_samples
    )
    want = restore(model, torch.from_numpy(y), op, steps=6, seed=3, samples=4, ensemble="flips")
    assert rel_err(got.images, want.images.numpy()) < REL_TOL
    plain = solver.solve(y, op, schedule="full", steps=6, seed=3, samples=4, ensemble="none")
    np.testing.assert_allclose(got.draws[0], plain.draws[0], rtol=0, atol=1e-5)
    assert np.max(np.abs(got.draws[1] - plain.draws[1])) > 1e-4  # a flipped sample differs


def test_package_ensemble_is_the_default(tiny_packages, tmp_path):
    model, plain = tiny_packages["shared"]
    flipped = export_model(model, tmp_path / "flips", ensemble="flips", check=False, **quiet)
    assert ModelPackage.open(flipped.path).ensemble == "flips" and plain.ensemble == "none"
    op = operator_for("inpainting", {"missing": 0.5})
    y = op.measure(clean_images(), 0.05, seed=[1, 2])
    by_package = Solver.load(flipped).solve(y, op, steps=5, seed=1, samples=2).images
    by_call = Solver.load(plain).solve(y, op, steps=5, seed=1, samples=2, ensemble="flips").images
    np.testing.assert_allclose(by_package, by_call, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="ensemble"):
        Solver.load(plain).solve(y, op, steps=5, ensemble="rotations")
    with pytest.raises(InputError, match="ensemble"):
        export_model(model, tmp_path / "bad", ensemble="rotations", check=False, **quiet)

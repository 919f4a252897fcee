"""The proximal, noise-aware data step (diffunfold.unfolding): the model's settings, its use of
the measurement noise, training's noise draws, and the runtime against the torch reference.

Parity tolerance as for the paper's step (test_runtime.py): ``max|runtime - torch| / max|torch|``
below 1e-3 over a whole 18-step run, from the same seed and measurement.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch reference needs torch (the train extra)")
pytest.importorskip("onnx", reason="building test packages needs onnx (the export extra)")
pytestmark = pytest.mark.torch

from helpers import (  # noqa: E402
    IMAGE_TASKS,
    MRI_TASKS,
    TINY_UNET,
    clean_images,
    operator_for,
    proximal_model,
    rel_err,
)

from diffunfold.errors import InputError  # noqa: E402
from diffunfold.export import export_model  # noqa: E402
from diffunfold.noise import estimate_noise_std  # noqa: E402
from diffunfold.runtime import Solver  # noqa: E402
from diffunfold.training.config import load_config  # noqa: E402
from diffunfold.training.data import TrainingBatches  # noqa: E402
from diffunfold.training.model import DiffUnfolding, ModelSettings  # noqa: E402
from diffunfold.training.sampler import restore  # noqa: E402

REL_TOL = 1e-3


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("proximal")
    models = {
        "image": proximal_model(),
        "plain": proximal_model(noise_aware=False, seed=1),
        "mri": proximal_model(data="mri", channels=1, seed=2),
    }
    return {k: (m, export_model(m, root / k, log=lambda s: None)) for k, m in models.items()}


def test_settings_refuse_a_noise_model_without_the_proximal_step():
    with pytest.raises(InputError, match="noise_aware needs data_step = 'proximal'"):
        ModelSettings(noise_aware=True)
    with pytest.raises(InputError, match="data_step must be one of"):
        ModelSettings(data_step="newton")
    with pytest.raises(InputError, match="tau lies in"):
        ModelSettings(data_step="proximal", tau_init=2.5)


def test_proximal_weights_stay_in_their_stable_range():
    model = proximal_model()
    with torch.no_grad():
        model.tau.linear.bias.fill_(50.0)  # however far training pushes it
        tau, gamma = model.weights(torch.logspace(-3, 2, 20))
    assert torch.all(tau > 0) and torch.all(tau <= 2.0) and torch.all(gamma > 0)


def test_noise_aware_model_needs_the_noise_level():
    model = proximal_model()
    op = operator_for("gaussian_blur", {"sigma": 1.5})
    x = torch.from_numpy(clean_images())
    with pytest.raises(InputError, match="noise-aware: give noise_std"):
        model(2 * x - 1, 1.0, op.A(x), op)


def test_noise_free_inpainting_keeps_the_observed_pixels():
    """With sigma_y = 0 the restoration matches y where the mask observes, whatever the prior."""
    model = proximal_model()
    op = operator_for("inpainting", {"missing": 0.5})
    x = clean_images()
    y = op.measure(x, 0.0)
    out = restore(model, torch.from_numpy(y), op, steps=18, seed=0, noise_std=0.0).images.numpy()
    observed = np.broadcast_to(op.mask, out.shape) > 0
    assert np.max(np.abs(out - x)[observed]) < 2e-3  # the noise floor (1e-4) times a few
    # the paper's gradient step does not: it stays a fraction of the way to y
    rel = np.linalg.norm(op.A(out) - y) / np.linalg.norm(y)
    assert rel < 2e-3


def test_cleaner_measurements_give_better_restorations():
    model = proximal_model()
    op = operator_for("gaussian_blur", {"sigma": 1.5})
    x = clean_images()
    errs = []
    for s in (0.0, 0.05):
        y = op.measure(x, s, seed=[1, 2])
        out = restore(model, torch.from_numpy(y), op, steps=18, seed=0, noise_std=s).images.numpy()
        errs.append(np.mean((out - x) ** 2))
    assert errs[0] < errs[1]


@pytest.mark.parametrize("task,params", IMAGE_TASKS + MRI_TASKS, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_runtime_matches_torch_reference(packages, task, params, noise):
    model, pkg = packages["mri" if task == "mri" else "image"]
    x = clean_images(mri=task == "mri")
    op = operator_for(task, params)
    y = op.measure(x, noise, seed=[11, 12])
    got = Solver.load(pkg, backend="onnxruntime").solve(y, op, schedule="full", steps=18, seed=3, noise_std=noise)
    want = restore(model, torch.from_numpy(y), op, steps=18, seed=3, noise_std=noise)
    assert rel_err(got.images, want.images.numpy()) < REL_TOL
    assert got.extra == {
        "noise_std": [noise, noise],
        "noise_std_estimated": False,
        "schedule": "full",
        "method": "diff-unfolding",
    }


@pytest.mark.parametrize("task,params", [IMAGE_TASKS[0], MRI_TASKS[0]], ids=["gaussian_blur", "mri"])
def test_noise_aware_runtime_matches_torch_with_churn_and_flips(packages, task, params):
    """The stochastic sampler and the flip self-ensemble on a noise-aware model: the runtime
    and the torch reference weigh y by the same sigma_y and add the same re-noising."""
    model, pkg = packages["mri" if task == "mri" else "image"]
    op = operator_for(task, params)
    y = op.measure(clean_images(mri=task == "mri"), 0.05, seed=[11, 12])
    kw = dict(steps=10, seed=3, noise_std=0.05, samples=2, churn=7.2, ensemble="flips")
    got = Solver.load(pkg, backend="onnxruntime").solve(y, op, schedule="full", **kw)
    want = restore(model, torch.from_numpy(y), op, **kw)
    assert rel_err(got.images, want.images.numpy()) < REL_TOL


def test_runtime_matches_torch_without_noise_awareness(packages):
    model, pkg = packages["plain"]
    x = clean_images()
    op = operator_for("sr", {"factor": 4})
    y = op.measure(x, 0.02, seed=[1, 2])
    got = Solver.load(pkg, backend="onnxruntime").solve(y, op, schedule="full", steps=18, sampler="heun", seed=3)
    want = restore(model, torch.from_numpy(y), op, steps=18, sampler="heun", seed=3)
    assert rel_err(got.images, want.images.numpy()) < REL_TOL and got.extra == {
        "schedule": "full",
        "method": "diff-unfolding",
    }


def test_runtime_estimates_the_noise_when_not_given_and_says_so(packages):
    model, pkg = packages["image"]
    x = clean_images()
    op = operator_for("gaussian_blur", {"sigma": 1.5})
    y = op.measure(x, 0.05, seed=[1, 2])
    got = Solver.load(pkg, backend="onnxruntime").solve(y, op, schedule="full", steps=6, seed=3)
    assert got.extra["noise_std_estimated"] is True
    assert np.allclose(got.extra["noise_std"], estimate_noise_std(op, y))
    assert np.allclose(got.extra["noise_std"], 0.05, rtol=0.25)
    want = restore(model, torch.from_numpy(y), op, steps=6, seed=3)  # the reference estimates alike
    assert rel_err(got.images, want.images.numpy()) < REL_TOL


def test_posterior_samples_side_by_side_match_one_at_a_time(packages):
    _, pkg = packages["image"]
    x = clean_images(batch=1)
    op = operator_for("gaussian_blur", {"sigma": 1.5})
    y = op.measure(x, 0.01, seed=[1])
    solver = Solver.load(pkg, backend="onnxruntime")
    a = solver.solve(y, op, steps=6, seed=3, samples=3, noise_std=0.01)
    b = solver.solve(y, op, steps=6, seed=3, samples=3, noise_std=0.01, batch_samples=False)
    assert rel_err(a.images, b.images) < 1e-5


def test_training_draws_exact_zeros_and_low_noise_as_configured():
    cfg = load_config(
        "tiny",
        ["data.noise_zero_fraction=0.25", "data.noise_log_fraction=0.25", "train.batch_size=16", "train.steps=40"],
    )
    levels = np.concatenate([TrainingBatches(cfg)[i]["sigma_y"] for i in range(20)])
    assert 0.12 < np.mean(levels == 0) < 0.4
    assert 0.1 < np.mean((levels > 0) & (levels < 0.01)) < 0.45  # log-uniform share below 0.01
    assert np.all(levels <= cfg.data.noise_max) and np.all(levels >= 0)
    again = np.concatenate([TrainingBatches(cfg)[i]["sigma_y"] for i in range(20)])
    assert np.array_equal(levels, again)  # batches depend only on seed and step
    paper = load_config("tiny", ["train.batch_size=16", "train.steps=40"])
    assert not np.any(np.concatenate([TrainingBatches(paper)[i]["sigma_y"] for i in range(5)]) == 0)


@pytest.mark.parametrize("fp16", [False, True])
def test_init_from_a_package_without_torch_weights_recovers_its_networks(tmp_path, fp16):
    """train.init_from reads the regularisers back from the ONNX graphs (names, GroupNorm
    affines, the folded Fourier frequencies) and they compute what the package computes."""
    import onnxruntime as ort

    from diffunfold.package import ModelPackage
    from diffunfold.training.package_weights import initialise_from

    source = proximal_model(seed=4)
    pkg = export_model(source, tmp_path / "pkg", torch_weights=False, fp16_weights=fp16, log=lambda s: None)
    target = proximal_model(seed=9)
    initialise_from(target, str(pkg.path))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(pkg.file(pkg.regularizer_files[0])))
    want = sess.run(None, {"x": x, "sigma": np.full(2, 0.7, np.float32), "stage": np.ones(2, np.int64)})[0]
    with torch.no_grad():
        got = target.regularize(torch.from_numpy(x), torch.full((2,), 0.7), 1).numpy()
    assert rel_err(got, want) < 1e-5
    assert ModelPackage.open(pkg.path).torch_weights_file is None


def _unet_with_attention(levels, seed) -> DiffUnfolding:
    torch.manual_seed(seed)
    model = DiffUnfolding(
        ModelSettings(
            data="image",
            channels=3,
            stages=2,
            shared=True,
            data_step="proximal",
            unet={**TINY_UNET, "attention_levels": levels, "mid_attention": False},
        )
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _regularize(model, x):
    with torch.no_grad():
        return model.regularize(x, torch.full((x.shape[0],), 0.7), 1).numpy()


def test_init_adapt_attention_drops_and_adds_attention_layers(tmp_path):
    """train.init_adapt_attention: a U-Net without the source's attention layer gets every other
    layer, renumbered (the decoder's upsampling follows the attention); one with a new layer
    starts it as the identity, so it computes what its source computes."""
    from diffunfold.training.package_weights import initialise_from
    from diffunfold.training.unet import SelfAttention

    source = _unet_with_attention([1], seed=4)
    pkg = export_model(source, tmp_path / "with", log=lambda s: None)
    without = _unet_with_attention([], seed=9)
    with pytest.raises(InputError, match="attention_levels.*init_adapt_attention"):
        initialise_from(without, str(pkg.path))
    initialise_from(without, str(pkg.path), adapt_attention=True)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32))
    with torch.no_grad():  # the source with its (only) attention layers turned into the identity
        for m in source.modules():
            if isinstance(m, SelfAttention):
                m.proj.weight.zero_(), m.proj.bias.zero_()
    assert rel_err(_regularize(without, x), _regularize(source, x)) < 1e-6
    back = _unet_with_attention([1], seed=11)
    initialise_from(
        back, str(export_model(without, tmp_path / "without", log=lambda s: None).path), adapt_attention=True
    )
    assert rel_err(_regularize(back, x), _regularize(without, x)) < 1e-6

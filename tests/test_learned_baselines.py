"""The learned baselines of bench/learned_baselines: cEDM and E2E-VarNet (shapes, the zero-init
start, VarNet's data consistency, exact resume, refusals)."""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the learned baselines are torch models")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from learned_baselines import cedm, evaluate, shared, varnet  # noqa: E402

from diffunfold.errors import InputError  # noqa: E402
from diffunfold.physics.mri import MultiCoilMRI, birdcage_maps, mri_mask  # noqa: E402
from diffunfold.physics.tasks import make_operator  # noqa: E402
from diffunfold.training.config import load_config  # noqa: E402
from diffunfold.training.model import DiffUnfolding, ModelSettings  # noqa: E402

TINY = {
    "channels": 8,
    "channel_mult": [1, 2],
    "num_blocks": 1,
    "attention_levels": [],
    "mid_attention": True,
    "head_channels": 8,
}


def tiny_cedm(task="gaussian_blur"):
    torch.manual_seed(0)
    return cedm.ConditionalEDM(cedm.make_settings(task, TINY))


def mri_operator(size=16, ncoils=4, seed=1):
    maps = birdcage_maps(ncoils, (size, size)).astype(np.complex64)
    return MultiCoilMRI(maps, mri_mask("gaussian1d", (size, size), 4.0, seed=seed))


def test_condition_shapes_per_task():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 3, 16, 16)).astype(np.float32)
    space = tiny_cedm().space
    blur = make_operator("gaussian_blur", (16, 16), sigma=2.0)
    assert cedm.condition(blur.A(x), blur, space).shape == (2, 3, 16, 16)
    sr = make_operator("sr", (16, 16), factor=4)
    c = cedm.condition(sr.A(x), sr, space)  # A^T y / ||A||^2: nearest-neighbour upsampling of the box SR
    assert c.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(c[0, 0, :4, :4], c[0, 0, 0, 0], atol=1e-5)
    inp = make_operator("inpainting", (16, 16), missing=0.5, seed=0)
    c = cedm.condition(inp.A(x), inp, space)
    assert c.shape == (2, 4, 16, 16) and set(np.unique(c[:, 3])) <= {-1.0, 1.0}
    op = mri_operator()
    xm = (rng.standard_normal((2, 1, 16, 16)) + 1j * rng.standard_normal((2, 1, 16, 16))).astype(np.complex64)
    mri_space = tiny_cedm("mri").space
    assert cedm.condition(op.A(xm), op, mri_space).shape == (2, 2, 16, 16)


def test_cedm_forward_and_restore_shapes():
    model = tiny_cedm()
    x, cond = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    assert model(x, torch.tensor([0.5, 2.0]), cond).shape == (2, 3, 16, 16)
    blur = make_operator("gaussian_blur", (16, 16), sigma=2.0)
    y = blur.measure(np.full((1, 3, 16, 16), 0.5, np.float32), 0.05, seed=0)
    out = cedm.Restorer(model, {}).restore(y, blur, 0.05, seed=3)
    assert out.shape == (1, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert cedm.Restorer(model, {}).nfe == 35
    aniso = make_operator("anisotropic_blur", (16, 16), sigma=(2.0, 1.0), angle=0.6)  # a GaussianBlur by class
    y = aniso.measure(np.full((1, 3, 16, 16), 0.5, np.float32), 0.05, seed=0)
    assert cedm.Restorer(tiny_cedm("anisotropic_blur"), {}).restore(y, aniso, 0.05, seed=3).shape == (1, 3, 16, 16)


def test_zero_init_conditioning_starts_at_the_unconditional_stage_0():
    settings = ModelSettings(data="image", channels=3, stages=3, shared=True, unet=dict(TINY))
    torch.manual_seed(1)
    source = DiffUnfolding(settings)
    with torch.no_grad():  # trained-like weights (the output layer starts at zero) and stages that differ
        for p in source.regularizers[0].unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model = tiny_cedm()
    cedm.from_regularizer(model, source.regularizers[0].unet)
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 4.0])
    with torch.no_grad():
        want = source.regularize(x, sigma, 0)
        got = model(x, sigma, torch.randn(2, 3, 16, 16))
        other = model(x, sigma, torch.randn(2, 3, 16, 16))
        stage1 = source.regularize(x, sigma, 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other, got)  # the measurement has no effect yet
    assert (stage1 - want).abs().max() > 1e-3  # stage 0 was the one folded in


def test_varnet_cascade_data_consistency():
    torch.manual_seed(0)
    op = mri_operator()
    maps = torch.as_tensor(op.coil_maps.astype(np.complex64))
    mask = torch.as_tensor(op.mask.astype(np.float32))
    k = torch.randn(1, 4, 16, 16, dtype=torch.complex64)
    y = torch.randn(1, 4, 16, 16, dtype=torch.complex64) * mask
    cascade = varnet.Cascade(chans=4, pools=2)
    with torch.no_grad():
        cascade.eta.fill_(0.7)
        out = cascade(k, y, maps, mask)
        measured = mask.expand_as(k) > 0
        before, after = (k - y).abs()[measured], (out - y).abs()[measured]
        torch.testing.assert_close(after, 0.3 * before)  # moved towards y by eta
        torch.testing.assert_close(out[~measured], k[~measured])  # the untrained network adds nothing
        for p in cascade.unet.out.parameters():
            p.normal_()
        out = cascade(k, y, maps, mask)
        refine = cascade.refinement(k, maps)
        assert refine[~measured].abs().max() > 1e-3
        # unmeasured lines: exactly the network's k-space refinement, no data term
        torch.testing.assert_close(out[~measured], (k + refine)[~measured])


def test_untrained_varnet_is_the_zero_filled_image():
    op = mri_operator()
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 1, 16, 16)) + 1j * rng.standard_normal((2, 1, 16, 16))).astype(np.complex64)
    y = np.asarray(op.A(x))
    model = varnet.VarNet({"cascades": 2, "chans": 4, "pools": 2})
    out = varnet.Restorer(model, {}).restore(y, op)
    np.testing.assert_allclose(out, np.asarray(op.AT(y)), atol=1e-5)


def tiny_config(steps):
    sets = [f"train.steps={steps}", "train.batch_size=2", "train.warmup_steps=0", "train.decay_steps=0"]
    sets += ["data.size=32", "data.workers=0", 'data.tasks=["gaussian_blur"]']
    return load_config("small", sets)


def test_one_step_train_then_resume_is_exact(tmp_path):
    settings = {"kind": "cedm", "model": cedm.make_settings("gaussian_blur", TINY)}

    def run(out, steps, resume):
        torch.manual_seed(0)
        model = cedm.ConditionalEDM(settings["model"])
        shared.train(model, settings, tiny_config(steps), cedm.cedm_loss, out, resume, progress=False)

    run(tmp_path / "straight", 2, False)
    run(tmp_path / "resumed", 1, False)
    run(tmp_path / "resumed", 2, True)
    _, a = shared.read_checkpoint(tmp_path / "straight")
    meta, b = shared.read_checkpoint(tmp_path / "resumed")
    assert meta["step"] == 2 and a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    restorer = cedm.load(tmp_path / "resumed")
    torch.testing.assert_close(restorer.model.state_dict()["unet.map0.bias"], b["ema/module.unet.map0.bias"])


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(InputError, match="KIND:ACCELERATION"):
        shared.parse_mask("gaussian1d")
    with pytest.raises(InputError, match="--task must be one of"):
        cedm.make_settings("motion_blur")
    with pytest.raises(InputError, match="does not exist"):
        shared.read_checkpoint(tmp_path / "nothing.safetensors")
    with pytest.raises(InputError, match="holds no"):
        shared.read_checkpoint(tmp_path)
    blur = make_operator("gaussian_blur", (16, 16), sigma=2.0)
    y = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(InputError, match="multi-coil MRI"):
        varnet.Restorer(varnet.VarNet({"cascades": 1, "chans": 4, "pools": 2}), {}).restore(y, blur)
    with pytest.raises(InputError, match="trained for 'inpainting'"):
        cedm.Restorer(tiny_cedm("inpainting"), {}).restore(y, blur)
    with pytest.raises(InputError, match="a batch"):
        cedm.Restorer(tiny_cedm(), {}).restore(y[0], blur)
    with pytest.raises(InputError, match="trained for 'anisotropic_blur', not 'gaussian_blur'"):
        cedm.Restorer(tiny_cedm("anisotropic_blur"), {}).restore(y, blur)
    settings = {"kind": "varnet", "model": {"cascades": 1, "chans": 4, "pools": 2}}
    model = varnet.VarNet(settings["model"])
    opt = torch.optim.Adam(model.parameters())
    shared.save_checkpoint(tmp_path, 1, model, shared.make_ema(model, tiny_config(1)), opt, {"settings": settings})
    with pytest.raises(InputError, match="not a cEDM checkpoint"):
        cedm.load(tmp_path)
    assert varnet.load(tmp_path).parameters == shared.count_parameters(model)
    with pytest.raises(InputError, match="already holds checkpoints"):
        shared.train(model, settings, tiny_config(1), varnet.varnet_loss, tmp_path, resume=False, progress=False)


@pytest.mark.parametrize("module", [cedm, varnet, evaluate])
def test_help_teaches(module, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"bench/learned_baselines/{module.__name__.rsplit('.', 1)[-1]}.py" in text
    assert ("restore" in text) if module is not evaluate else ("held-out" in text)


def test_levels_map_the_batch_noise_levels(tmp_path):
    """``levels`` = EDM's own is the identity; other levels change the loss; a cEDM run can seed another."""
    from diffunfold.training.data import TrainingBatches

    batch = TrainingBatches(tiny_config(1))[0]
    model = tiny_cedm()
    with torch.no_grad():
        for p in model.unet.out_conv.parameters():
            p.normal_()
        base = cedm.cedm_loss(model, batch)
        model.settings["levels"] = [-1.2, 1.2]
        torch.testing.assert_close(cedm.cedm_loss(model, batch), base)
        model.settings["levels"] = [0.5, 1.8]
        assert abs(float(cedm.cedm_loss(model, batch)) - float(base)) > 1e-4
    settings = {"kind": "cedm", "model": model.settings}
    opt = torch.optim.Adam(model.parameters())
    shared.save_checkpoint(tmp_path, 1, model, shared.make_ema(model, tiny_config(1)), opt, {"settings": settings})
    other = tiny_cedm()
    cedm.init_from_package(other, tmp_path)
    ema = cedm.load(tmp_path).model.state_dict()
    for key, value in other.state_dict().items():
        torch.testing.assert_close(value, ema[key])


def test_batch_cache_serves_the_batch_it_made_whatever_the_workers(tmp_path):
    """A cached MRI scanner batch is the batch itself, and the cache folder does not depend on
    how many DataLoader workers made it (they do not change a batch), so cEDM and VarNet share it."""
    sets = ["train.batch_size=2", "data.size=32", 'data.source="phantom"', "data.scanner=true"]
    sets += ['data.mri_patterns=[["gaussian1d", 4.0]]']
    made = shared.CachedBatches(load_config("mri-small", sets + ["data.workers=0"]), tmp_path)
    first = made[0]
    again = shared.CachedBatches(load_config("mri-small", sets + ["data.workers=2"]), tmp_path)
    assert again.folder == made.folder and len(list(made.folder.iterdir())) == 1
    read = again[0]
    assert read["step"] == first["step"] == 0
    for key in ("x", "y", "sigma", "noise", "sigma_y"):
        np.testing.assert_array_equal(np.asarray(read[key]), np.asarray(first[key]), err_msg=key)
    # the maps are kept in single precision, which is what training computes in
    np.testing.assert_allclose(read["operator"].coil_maps, first["operator"].coil_maps, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(read["operator"].mask, first["operator"].mask)
    other = shared.CachedBatches(load_config("mri-small", sets + ["train.seed=1"]), tmp_path)
    assert other.folder != made.folder  # another seed, other batches


def test_samples_score_the_mean_of_draws_of_the_sampling_methods_only():
    seen = {"Diff-Unfolding (x)": [], "cEDM (1 steps)": [], "E2E-VarNet (1 steps)": []}

    def method(name):
        def fn(y, op, std, seed):
            seen[name].append(seed)
            return np.full((1, 1, 2, 2), float(seed))

        fn.calls = 3
        return fn

    methods = {name: [method(name), None, None] for name in seen}
    row = {}
    evaluate._score(methods, row, None, None, 0.0, 10, None, lambda est, truth: (float(est.mean()), 0.0), samples=3)
    assert seen["E2E-VarNet (1 steps)"] == [10] and row["E2E-VarNet (1 steps)"][0] == 10
    for name in ("Diff-Unfolding (x)", "cEDM (1 steps)"):
        assert seen[name] == [10, 10 + 7919, 10 + 2 * 7919]
        assert row[name][0] == pytest.approx(10 + 7919) and methods[name][2] == 3
    assert "the mean of 3 samples" in evaluate.markdown([{"k": 1, "noise": 0.0, **row}], methods, "k", "cmd", 3)

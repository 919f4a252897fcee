"""SSDiffRecon, the self-supervised MRI baseline of bench/learned_baselines: its data consistency,
modulated convolution, schedule and sampler, its self-supervised loss (no clean image read),
exact resume and refusals."""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the learned baselines are torch models")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from learned_baselines import shared, ssdiffrecon, varnet  # noqa: E402

from diffunfold.errors import InputError  # noqa: E402
from diffunfold.physics.mri import MultiCoilMRI, birdcage_maps, mri_mask  # noqa: E402
from diffunfold.training.config import load_config  # noqa: E402
from diffunfold.training.data import TrainingBatches  # noqa: E402

TINY_NET = {"channels": 8, "blocks": 2, "latents": 4, "latent_dim": 8, "mapper_layers": 1}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return ssdiffrecon.SSDiffRecon(TINY_NET)


def operator(size=16, ncoils=4):
    maps = birdcage_maps(ncoils, (size, size)).astype(np.complex64)
    maps /= np.sqrt((np.abs(maps) ** 2).sum(axis=1, keepdims=True))  # sum |S_c|^2 = 1
    return MultiCoilMRI(maps, mri_mask("gaussian2d", (size, size), 4.0, seed=3))


def complex_image(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def tensors(op, y):
    return varnet.physics(y, op)


def test_data_consistency_keeps_a_consistent_image_and_reads_y_only_where_measured():
    op = operator()
    x = complex_image((2, 1, 16, 16), 0)
    y, maps, mask = tensors(op, np.asarray(op.A(x)))
    image = ssdiffrecon.two_channels(torch.as_tensor(x))
    torch.testing.assert_close(ssdiffrecon.data_consistency(image, y, maps, mask), image, atol=2e-5, rtol=0)
    other = ssdiffrecon.two_channels(torch.as_tensor(complex_image((2, 1, 16, 16), 1)))
    out = ssdiffrecon.data_consistency(other, y, maps, mask)
    assert (out - other).abs().max() > 0.1  # the measured points moved it
    junk = y + torch.as_tensor(complex_image(tuple(y.shape), 2)) * (1 - mask)
    torch.testing.assert_close(ssdiffrecon.data_consistency(other, junk, maps, mask), out)


def test_unfused_modulation_equals_per_sample_weights():
    torch.manual_seed(0)
    conv = ssdiffrecon.ModulatedConv(5, 3, 3, dim=4)
    torch.nn.init.normal_(conv.affine.weight)
    x, w = torch.randn(2, 5, 7, 7), torch.randn(2, 4)
    s = conv.affine(w)
    want = []
    for i in range(2):
        weight = conv.weight * s[i][None, :, None, None]
        weight = weight / weight.pow(2).sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
        want.append(torch.nn.functional.conv2d(x[i : i + 1], weight, padding=1) + conv.bias[:, None, None])
    torch.testing.assert_close(conv(x, w), torch.cat(want), atol=1e-5, rtol=1e-5)


def test_schedule_marginals_and_the_last_step_returning_the_estimate():
    for steps in (5, 1000):
        s = ssdiffrecon.Schedule(steps)
        torch.testing.assert_close(s.signal**2 + s.noise**2, torch.ones(steps, dtype=torch.float64))
        assert float(s.coef_x0[0]) == pytest.approx(1.0) and float(s.coef_xt[0]) == pytest.approx(0.0, abs=1e-12)
        assert bool(torch.all(s.std > 0))
    op = operator()
    y, maps, mask = tensors(op, np.asarray(op.A(complex_image((1, 1, 16, 16), 4))))
    model = tiny_model().eval()
    x = ssdiffrecon.two_channels(varnet.combine(varnet.ifft2c(y), maps))
    with torch.no_grad():
        direct = model(x, torch.zeros(1, dtype=torch.long), y, maps, mask)
    once = ssdiffrecon.sample(model, y, maps, mask, seed=0, steps=1)
    torch.testing.assert_close(ssdiffrecon.two_channels(once), direct)


def test_restore_is_finite_seeded_and_counts_its_calls():
    op = operator()
    y = np.asarray(op.A(complex_image((2, 1, 16, 16), 5)))
    r = ssdiffrecon.Restorer(tiny_model(), {})
    a, b, c = r.restore(y, op, seed=0), r.restore(y, op, seed=0), r.restore(y, op, seed=1)
    assert a.shape == (2, 1, 16, 16) and np.iscomplexobj(a) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0
    assert r.nfe == ssdiffrecon.SAMPLE_T and r.parameters == shared.count_parameters(r.model)


TINY_DATA = [
    "data.size=16",
    "data.workers=0",
    'data.mri_patterns=[["gaussian2d", 4]]',
    "train.batch_size=2",
    "train.warmup_steps=0",
    "train.decay_steps=0",
]


def tiny_config(steps, *extra):
    sets = TINY_DATA + [f"train.steps={steps}"] + ssdiffrecon.self_supervised_overrides(0.3) + list(extra)
    return load_config("mri-small", sets)


def test_the_loss_reads_no_clean_image_and_refuses_supervised_batches():
    batch = TrainingBatches(tiny_config(1))[0]
    assert "x" not in batch and "loss_y" in batch
    model = tiny_model()
    loss = ssdiffrecon.ssdiffrecon_loss(model, batch)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    supervised = TrainingBatches(load_config("mri-small", TINY_DATA + ["train.steps=1"]))[0]
    with pytest.raises(InputError, match='supervision="ssdu"'):
        ssdiffrecon.ssdiffrecon_loss(model, supervised)


def test_train_then_resume_is_exact_and_load_reads_the_ema(tmp_path):
    settings = {"kind": "ssdiffrecon", "model": TINY_NET}

    def train(out, steps, resume=False):
        loss = ssdiffrecon.ssdiffrecon_loss
        shared.train(tiny_model(), settings, tiny_config(steps), loss, out, resume, progress=False)

    train(tmp_path / "straight", 2)
    train(tmp_path / "resumed", 1)
    train(tmp_path / "resumed", 2, resume=True)
    _, a = shared.read_checkpoint(tmp_path / "straight")
    meta, b = shared.read_checkpoint(tmp_path / "resumed")
    assert meta["step"] == 2 and a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    restorer = ssdiffrecon.load(tmp_path / "resumed")
    torch.testing.assert_close(restorer.model.state_dict()["stem.bias"], b["ema/module.stem.bias"])


def test_bad_inputs_are_refused(tmp_path, capsys):
    with pytest.raises(InputError, match="multiple of 4"):
        ssdiffrecon.SSDiffRecon({**TINY_NET, "latent_dim": 6})
    with pytest.raises(InputError, match="multi-coil MRI"):
        ssdiffrecon.Restorer(tiny_model(), {}).restore(np.zeros((1, 3, 16, 16), np.float32), object())
    settings = {"kind": "varnet", "model": {"cascades": 1, "chans": 4, "pools": 2}}
    model = varnet.VarNet(settings["model"])
    ema = shared.make_ema(model, tiny_config(1))
    shared.save_checkpoint(tmp_path, 1, model, ema, torch.optim.Adam(model.parameters()), {"settings": settings})
    with pytest.raises(InputError, match="not an SSDiffRecon checkpoint"):
        ssdiffrecon.load(tmp_path)
    assert ssdiffrecon.main(["train", "--out", str(tmp_path / "r"), "--channels", "0"]) == 2
    assert ">= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ssdiffrecon.main(["train", "--help"])
    assert "--loss-fraction" in capsys.readouterr().out

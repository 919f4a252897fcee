"""The unfolded denoiser, its loss, the weight generators, presets and the torch sampler."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training side needs torch (the train extra)")
pytestmark = pytest.mark.torch

from helpers import TINY_UNET, tiny_model  # noqa: E402

from diffunfold import edm  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402
from diffunfold.physics import make_operator  # noqa: E402
from diffunfold.training.config import load_config  # noqa: E402
from diffunfold.training.loss import unfolding_loss  # noqa: E402
from diffunfold.training.model import DiffUnfolding, ModelSettings  # noqa: E402
from diffunfold.training.sampler import restore, to_tensor  # noqa: E402


def hand_written_denoiser(model, x_t, s, y, op):
    """algorithm.md section 4 written out with no helper of the model's."""
    sd = 0.5
    feats = lambda mlp: torch.cat(
        [torch.cos(2 * math.pi * math.log(s) / 4 * mlp.freqs), torch.sin(2 * math.pi * math.log(s) / 4 * mlp.freqs)]
    )
    tau = torch.nn.functional.softplus(model.tau.linear(feats(model.tau)))
    gamma = torch.nn.functional.softplus(model.gamma.linear(feats(model.gamma)))
    x = x_t
    for k in range(model.stages):
        net = model.regularizers[0].unet if model.settings.shared else model.regularizers[k].unet
        c_noise = torch.full((x.shape[0],), math.log(s) / 4)
        f = net(x / math.sqrt(s**2 + sd**2), c_noise, k if model.settings.shared else None)
        r = sd**2 / (s**2 + sd**2) * x + s * sd / math.sqrt(s**2 + sd**2) * f
        if model.space.complex:
            xu = x[:, :1] + 1j * x[:, 1:]
            gu = op.AT(op.A(xu) - y)
            g = torch.cat([gu.real, gu.imag], dim=1)
        else:
            g = 0.5 * op.AT(op.A((x + 1) / 2) - y)  # chain rule of x_model = 2x - 1
        g = g / op.lipschitz  # the step is normalised by ||A||^2
        x = x - gamma[k] * (g + tau[k] * (x - r))
    return x


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("task", ["gaussian_blur", "sr", "inpainting"])
def test_denoiser_equals_hand_written_loop(shared, task):
    model = tiny_model(shared=shared)
    params = {"sr": {"factor": 4}, "gaussian_blur": {"sigma": 1.5}}.get(task, {})
    op = make_operator(task, (16, 16), **params)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    y = op.A(x) + 0.05 * torch.randn(op.A(x).shape, generator=g)
    x_t = model.space.to_model(x) + 0.7 * torch.randn(2, 3, 16, 16, generator=g)
    with torch.no_grad():
        got = model(x_t, 0.7, y, op)
        want = hand_written_denoiser(model, x_t, 0.7, y, op)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the physics matters: another measurement gives another result
    with torch.no_grad():
        assert not torch.allclose(model(x_t, 0.7, y + 0.3, op), got, atol=1e-4)


def test_denoiser_mri_equals_hand_written_loop():
    model = tiny_model(shared=False, data="mri", channels=1, stages=2)
    op = make_operator("mri", (16, 16), kind="gaussian1d", acceleration=4, ncoils=4)
    g = torch.Generator().manual_seed(1)
    x = torch.complex(torch.randn(1, 1, 16, 16, generator=g), torch.randn(1, 1, 16, 16, generator=g))
    y = op.A(x)
    x_t = model.space.to_model(x) + 0.3 * torch.randn(1, 2, 16, 16, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x_t, 0.3, y, op), hand_written_denoiser(model, x_t, 0.3, y, op), rtol=1e-5, atol=1e-5
        )


def test_fidelity_gradient_in_model_space_is_the_autograd_gradient():
    model = tiny_model()
    op = make_operator("sr", (16, 16), factor=2)  # ||A||^2 = 1/4: the normalisation shows
    xm = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    y = torch.rand(1, 3, 8, 8)
    g = 0.5 * ((op.A(model.space.to_user(xm)) - y) ** 2).sum() / op.lipschitz
    (auto,) = torch.autograd.grad(g, xm)
    torch.testing.assert_close(model.fidelity_grad(xm.detach(), y, op), auto, rtol=1e-5, atol=1e-6)


def test_regulariser_preconditioning_feeds_the_unet_as_edm():
    model = tiny_model()
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, c_noise, stage=None):
            seen.update(x=x, c_noise=c_noise, stage=stage)
            return torch.ones_like(x)

    reg = model.regularizers[0]
    reg.unet = Spy()
    x, s = torch.randn(2, 3, 8, 8), 2.0
    out = reg(x, torch.full((2,), s), 1)
    torch.testing.assert_close(seen["x"], x * edm.c_in(s))
    torch.testing.assert_close(seen["c_noise"], torch.full((2,), math.log(s) / 4))
    assert seen["stage"] == 1
    torch.testing.assert_close(out, edm.c_skip(s) * x + edm.c_out(s))


def test_weight_generators_start_at_their_init_and_stay_positive():
    model = DiffUnfolding(ModelSettings(stages=4, shared=True, unet=dict(TINY_UNET), tau_init=0.7, gamma_init=1.3))
    sig = torch.tensor([0.002, 0.5, 80.0])
    tau, gamma = model.weights(sig)
    torch.testing.assert_close(tau, torch.full((3, 4), 0.7))
    torch.testing.assert_close(gamma, torch.full((3, 4), 1.3))
    torch.testing.assert_close(model.uncertainty(sig), torch.zeros(3, 1))
    with torch.no_grad():
        model.tau.linear.weight.normal_(0, 10.0)
        model.tau.linear.bias.fill_(-30.0)
    assert (model.weights(sig)[0] > 0).all()


def test_loss_is_the_uncertainty_weighted_edm_loss():
    model = tiny_model()
    op = make_operator("inpainting", (16, 16), missing=0.3)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    y = op.A(model.space.to_user(x))
    sigma = torch.tensor([0.05, 0.8, 12.0])
    noise = torch.randn(3, 3, 16, 16, generator=g)
    with torch.no_grad():
        model.uncertainty.linear.weight.zero_()
        model.uncertainty.linear.bias.fill_(0.3)
        terms = unfolding_loss(model, x, sigma, noise, y, op)
        d = model(x + sigma[:, None, None, None] * noise, sigma, y, op)
    mse = ((d - x) ** 2).mean(dim=(1, 2, 3))
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    want = (math.exp(-0.3) * lam * mse + 0.3).mean()
    torch.testing.assert_close(terms.loss, want, rtol=1e-5, atol=1e-6)


def test_sigma_and_size_errors_are_clear():
    model = tiny_model()
    op = make_operator("gaussian_blur", (16, 16), sigma=1.0)
    x = torch.zeros(2, 3, 16, 16)
    with pytest.raises(InputError, match="one value per image"):
        model(x, torch.ones(3), op.A(x), op)
    with pytest.raises(InputError, match="multiple of 2"):
        model.check_image_size((15, 16))
    with pytest.raises(InputError, match="unknown setting"):
        ModelSettings.from_dict({"stages": 2, "channels_typo": 3})


def test_preset_parameter_counts():
    counts = {name: DiffUnfolding(load_config(name).model).parameter_counts() for name in ("tiny", "small", "paper")}
    assert counts["tiny"]["total"] < 1_000_000
    assert 1_000_000 <= counts["small"]["total"] <= 8_000_000
    # The paper: 46.94M parameters in all, K = 6 separate regularisers.
    assert abs(counts["paper"]["total"] - 46.94e6) / 46.94e6 < 0.10
    paper = load_config("paper").model
    assert paper.stages == 6 and not paper.shared


# -- the torch reference sampler -------------------------------------------------------------


def _measure(op, n, seed=0):
    x = np.random.default_rng(seed).uniform(size=(n, 3, 16, 16)).astype(np.float32)
    return x, to_tensor(op.measure(x, 0.05, list(range(n))), "cpu")


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_sampler_is_batch_invariant_and_deterministic(sampler):
    # float64, so that nothing but a real dependence on the batch could show above 1e-10
    # (in float32 the convolutions of different batch sizes round differently, ~1e-4 at x0 ~ 80).
    model = tiny_model().double()
    op = make_operator("gaussian_blur", (16, 16), sigma=1.5)
    _, y = _measure(op, 3)
    y = y.double()
    full = restore(model, y, op, steps=4, sampler=sampler, seed=[10, 11, 12])
    alone = restore(model, y[1:2], op, steps=4, sampler=sampler, seed=[11])
    again = restore(model, y, op, steps=4, sampler=sampler, seed=[10, 11, 12])
    torch.testing.assert_close(full.images[1:2], alone.images, rtol=0, atol=1e-10)
    assert torch.equal(full.images, again.images)
    other = restore(model, y, op, steps=4, sampler=sampler, seed=[20, 21, 22])
    assert not torch.allclose(other.images, full.images, atol=1e-4)
    assert full.nfe == edm.nfe_of(4, sampler)
    assert full.images.shape == (3, 3, 16, 16)
    assert full.images.min() >= 0 and full.images.max() <= 1
    assert torch.isfinite(full.images).all()


def test_sampler_counts_denoiser_calls():
    model = tiny_model()
    op = make_operator("sr", (16, 16), factor=4)
    _, y = _measure(op, 1)
    calls = []
    real = model.forward
    model.forward = lambda *a, **k: calls.append(1) or real(*a, **k)
    out = restore(model, y, op, steps=5, sampler="heun", seed=0)
    assert out.nfe == len(calls) == 9


def test_sampler_refuses_bad_measurements():
    model = tiny_model()
    op = make_operator("gaussian_blur", (16, 16), sigma=1.0)
    _, y = _measure(op, 2)
    bad = y.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        restore(model, bad, op, steps=2)
    with pytest.raises(InputError):
        restore(model, y[:, :, :8], op, steps=2)
    with pytest.raises(InputError, match="torch tensor"):
        restore(model, y.numpy(), op, steps=2)


def test_posterior_samples_give_mean_and_std():
    model = tiny_model()
    op = make_operator("inpainting", (16, 16), missing=0.5)
    _, y = _measure(op, 2)
    one = restore(model, y, op, steps=3, seed=[4, 5])
    many = restore(model, y, op, steps=3, seed=[4, 5], samples=3)
    first = restore(model, y[1:], op, steps=3, seed=[5], samples=3)
    assert many.samples == 3 and many.std.shape == many.images.shape
    assert (many.std > 0).any() and torch.isfinite(many.std).all()
    assert not torch.allclose(many.images, one.images)
    torch.testing.assert_close(first.images, many.images[1:], atol=1e-5, rtol=0)
    assert one.std is None
    with pytest.raises(InputError, match="samples"):
        restore(model, y, op, steps=3, samples=0)


def test_weight_generators_see_sigma_clamped_to_the_trained_range():
    """Above ln s ~ N(-1.2, 1.2^2) + 3 std the weight generators were never trained (EDM's
    sampler starts at s = 80): they are held at the range's ends (below: EDM's sigma_min), the
    networks are not."""
    model = tiny_model(stages=2)
    lo, hi = model.settings.weights_sigma_range
    assert lo == pytest.approx(0.002) and hi == pytest.approx(math.exp(-1.2 + 3.6))
    with torch.no_grad():
        tau, gamma = model.weights(torch.tensor([80.0, hi, 1e-4, lo, 1.0]))
        raw_tau = model.tau(torch.tensor([80.0, 1.0]))
    torch.testing.assert_close(tau[0], tau[1])
    torch.testing.assert_close(gamma[0], gamma[1])
    torch.testing.assert_close(tau[2], tau[3])
    torch.testing.assert_close(tau[4], raw_tau[1])  # inside the range: untouched
    assert not torch.allclose(tau[0], raw_tau[0])  # the unclamped value differs
    d = model.settings.to_dict()
    assert d["weights_sigma_range"] == [lo, hi]
    assert ModelSettings.from_dict(d).to_dict() == d
    with pytest.raises(InputError, match="weights_sigma_range"):
        ModelSettings(weights_sigma_range=(1.0, 0.5))

"""The regulariser U-Net F_theta: shapes, zero start, conditioning, batch independence,
attention placement, input errors, gradients, and ONNX export with dynamic batch/H/W."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (the train extra)")

from diffunfold.training.unet import SelfAttention, UNet, count_parameters, group_count  # noqa: E402

pytestmark = pytest.mark.torch

TINY = dict(channels=16, channel_mult=(1, 2), num_blocks=1, attention_levels=(1,), head_channels=16)


def tiny(num_stages: int = 0, **kw) -> UNet:
    torch.manual_seed(0)
    return UNet(3, 3, **{**TINY, **kw}, num_stages=num_stages).eval()


def randomize(net: UNet, std: float = 0.2) -> UNet:
    """Overwrite every parameter (the zero-initialised ones included) with noise."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, std)
    return net


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 3, 24, 40)])
def test_shape_and_zero_start(shape):
    net = tiny()
    x = torch.randn(shape)
    out = net(x, torch.full((shape[0],), 0.3))
    assert out.shape == (shape[0], 3, shape[2], shape[3])
    assert torch.count_nonzero(out) == 0  # every residual branch and the output start at zero


def test_other_channel_counts():
    net = UNet(4, 2, **TINY).eval()
    assert net(torch.randn(2, 4, 8, 8), torch.zeros(2)).shape == (2, 2, 8, 8)


def test_depends_on_noise_level_and_stage():
    net = randomize(tiny(num_stages=3))
    x = torch.randn(2, 3, 16, 16)
    c = torch.tensor([-1.0, 0.5])
    with torch.no_grad():
        out = net(x, c, stage=0)
        assert out.abs().max() > 1e-3 and torch.isfinite(out).all()
        assert (net(x, c + 0.1, stage=0) - out).abs().max() > 1e-4
        assert (net(x, c, stage=2) - out).abs().max() > 1e-4
        # an int stage and a per-image tensor of the same value agree
        torch.testing.assert_close(net(x, c, stage=torch.tensor([0, 0])), out)
        # mixed stages in one batch: each image gets its own
        mixed = net(x, c, stage=torch.tensor([0, 2]))
        torch.testing.assert_close(mixed[0], out[0])
        torch.testing.assert_close(mixed[1], net(x, c, stage=2)[1])
        # one c_noise value broadcasts over the batch
        torch.testing.assert_close(net(x, -1.0, stage=0)[0], out[0])


def test_fourier_frequencies_fixed_and_saved():
    a, b = tiny(), UNet(3, 3, **TINY)
    torch.testing.assert_close(a.freqs, b.freqs)
    assert "freqs" in a.state_dict()
    assert a.freqs.std() > 8  # scaled by fourier_scale=16


def test_batch_independence():
    net = randomize(tiny(num_stages=2))
    x = torch.randn(3, 3, 16, 16)
    c = torch.tensor([0.2, -1.5, 1.0])
    s = torch.tensor([1, 0, 1])
    with torch.no_grad():
        alone = net(x[:1], c[:1], stage=s[:1])
        together = net(x, c, stage=s)
    torch.testing.assert_close(together[:1], alone, rtol=0, atol=1e-5)


def test_attention_only_where_asked():
    net = UNet(3, 3, channels=16, channel_mult=(1, 2, 2), num_blocks=1, attention_levels=(1,), head_channels=8).eval()
    attn = [m for m in net.modules() if isinstance(m, SelfAttention)]
    # level 1: 1 encoder block + 2 decoder blocks, plus the middle block
    assert len(attn) == 4
    assert all(m.heads == 4 for m in attn)  # 32 channels / 8 per head
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(tuple(i[0].shape[-2:]))) for m in attn]
    net(torch.randn(1, 3, 32, 32), torch.zeros(1))
    for h in hooks:
        h.remove()
    assert sorted(sizes) == [(8, 8), (16, 16), (16, 16), (16, 16)]  # mid at 32/4, level 1 at 32/2

    plain = UNet(3, 3, channels=16, channel_mult=(1, 2, 2), num_blocks=1, attention_levels=(), mid_attention=False)
    assert not any(isinstance(m, SelfAttention) for m in plain.modules())
    assert count_parameters(plain) < count_parameters(net)


def test_head_count_divides_channels():
    assert SelfAttention(224, 64).heads == 2  # 3 heads would not divide 224
    assert SelfAttention(48, 64).heads == 1


def test_group_count():
    assert [group_count(c) for c in (16, 24, 48, 64, 96, 3)] == [16, 24, 24, 32, 32, 3]


def test_input_errors():
    net = tiny()  # 2 levels: H and W multiples of 2
    assert net.size_multiple == 2
    with pytest.raises(ValueError, match=r"15x16.*multiples of 2"):
        net(torch.randn(1, 3, 15, 16), torch.zeros(1))
    deep = UNet(3, 3, channels=16, channel_mult=(1, 2, 2, 2), num_blocks=1)
    with pytest.raises(ValueError, match=r"24x20.*multiples of 8"):
        deep(torch.randn(1, 3, 24, 20), torch.zeros(1))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.randn(1, 1, 16, 16), torch.zeros(1))
    with pytest.raises(ValueError, match="c_noise"):
        net(torch.randn(2, 3, 16, 16), torch.zeros(3))
    with pytest.raises(ValueError, match="without stage conditioning"):
        net(torch.randn(1, 3, 16, 16), torch.zeros(1), stage=0)
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(3, 3, channels=16, channel_mult=(1, 2), attention_levels=(2,))


def test_stage_errors():
    net = tiny(num_stages=3)
    x, c = torch.randn(2, 3, 16, 16), torch.zeros(2)
    with pytest.raises(ValueError, match=r"shared by 3 unfolding stages: pass stage="):
        net(x, c)
    with pytest.raises(ValueError, match=r"stage=3 out of range \[0, 3\)"):
        net(x, c, stage=3)
    with pytest.raises(ValueError, match="stage values must be in"):
        net(x, c, stage=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="stage must be an int or a"):
        net(x, c, stage=torch.tensor([0, 1, 2]))


def test_gradient_reaches_every_parameter():
    net = randomize(tiny(num_stages=2)).train()
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([0.1, -0.7]), stage=torch.tensor([0, 1]))
    out.square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())


def test_count_parameters_skips_frozen():
    net = tiny()
    total = count_parameters(net)
    net.input_conv.weight.requires_grad_(False)
    assert count_parameters(net) == total - net.input_conv.weight.numel()


# dynamo=False is the exporter the deployment path uses (deprecated upstream, hence the warning);
# the TracerWarning is torch's own GroupNorm "more than 1 value per channel" check, which only
# ever raises, so freezing it in the trace changes nothing.
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.filterwarnings("ignore:The feature will be removed")
@pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean")
@pytest.mark.parametrize("num_stages", [0, 3])
def test_onnx_export_dynamic(tmp_path, num_stages):
    pytest.importorskip("onnx", reason="onnx not installed (the export extra)")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    net = randomize(tiny(num_stages=num_stages), std=0.1)
    path = tmp_path / "unet.onnx"
    names = ["x", "c_noise", "stage"][: 3 if num_stages else 2]
    example = (torch.randn(2, 3, 16, 16), torch.tensor([0.0, 0.5]), torch.tensor([0, 1]))
    axes = {
        "x": {0: "batch", 2: "height", 3: "width"},
        "c_noise": {0: "batch"},
        "stage": {0: "batch"},
        "out": {0: "batch", 2: "height", 3: "width"},
    }
    torch.onnx.export(
        net,
        example[: len(names)],
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=names,
        output_names=["out"],
        dynamic_axes={k: v for k, v in axes.items() if k in names + ["out"]},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for b, h, w in [(1, 16, 16), (3, 24, 32)]:
        x = rng.standard_normal((b, 3, h, w)).astype(np.float32)
        c = rng.uniform(-2, 1.5, b).astype(np.float32)
        s = rng.integers(0, 3, b).astype(np.int64)
        feeds = dict(zip(names, [x, c, s]))
        (got,) = sess.run(None, feeds)
        with torch.no_grad():
            want = net(*(torch.from_numpy(v) for v in feeds.values()))
        assert got.shape == (b, 3, h, w)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)

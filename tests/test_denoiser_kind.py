"""A plain unconditional EDM denoiser (``model.kind = "denoiser"``): the zero-shot solvers'
prior, trained and exported with the same machinery as Diff-Unfolding."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs torch")
pytest.importorskip("onnx", reason="export needs onnx")
pytestmark = pytest.mark.torch

from helpers import operator_for, tiny_denoiser, tiny_model  # noqa: E402

from diffunfold.errors import InputError  # noqa: E402
from diffunfold.export import export_model  # noqa: E402
from diffunfold.package import ModelPackage  # noqa: E402
from diffunfold.package_schema import manifest_problems  # noqa: E402
from diffunfold.training.model import DiffUnfolding, ModelSettings  # noqa: E402
from diffunfold.training.package_weights import initialise_from  # noqa: E402

quiet = dict(log=lambda s: None)


def test_bad_kind_and_stages_are_refused():
    with pytest.raises(InputError, match="unfolding.*denoiser"):
        ModelSettings(kind="score")
    with pytest.raises(InputError, match="stages = 1"):
        ModelSettings(kind="denoiser", stages=4)


def test_denoiser_ignores_the_physics():
    model = tiny_denoiser()
    x = torch.randn(2, 3, 32, 32)
    op_blur = operator_for("gaussian_blur", {"sigma": 2.0})
    op_sr = operator_for("sr", {"factor": 2})
    y1 = op_blur.A(torch.rand(2, 3, 32, 32))
    y2 = op_sr.A(torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        a = model(x, 0.7, y1, op_blur)
        b = model(x, 0.7, y2, op_sr)
        r = model.regularizers[0](x, torch.full((2,), 0.7))
    assert torch.equal(a, b) and torch.equal(a, r)


def test_initialised_from_a_shared_unfolded_model_is_its_stage_0(tmp_path):
    source = tiny_model(shared=True, stages=3)
    with torch.no_grad():  # a stage embedding that matters
        source.regularizers[0].unet.stage_embed.weight.normal_(0, 0.5)
    pkg = export_model(source, tmp_path / "src", tasks=["sr"], **quiet)
    den = DiffUnfolding(
        ModelSettings(**{**source.settings.to_dict(), "kind": "denoiser", "stages": 1, "shared": False})
    )
    initialise_from(den, str(pkg.path))
    x, s = torch.randn(2, 3, 32, 32), torch.full((2,), 0.3)
    with torch.no_grad():
        want = source.regularize(x, s, 0)
        other = source.regularize(x, s, 1)
        got = den.regularizers[0](x, s)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, other, atol=1e-3)  # stage 0 really was the one folded in


def test_exported_denoiser_package(tmp_path):
    pkg = export_model(tiny_denoiser(), tmp_path / "den", tasks=[], **quiet)
    assert pkg.kind == "denoiser" and pkg.stages == 1 and pkg.tasks == []
    assert "fast" not in pkg.schedule  # the fast schedule belongs to the unfolded model
    m = json.loads((tmp_path / "den" / "manifest.json").read_text())
    m["model"]["kind"] = "oracle"
    assert any("model.kind" in p for p in manifest_problems(m))


def test_unfolding_packages_say_so(tmp_path):
    pkg = export_model(tiny_model(shared=True, stages=2), tmp_path / "u", tasks=["sr"], **quiet)
    assert ModelPackage.open(pkg.path).kind == "unfolding"
    assert np.isfinite(pkg.stages)

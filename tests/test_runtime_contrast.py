"""The contrast stretch in the runtime and the torch reference: the same result from both, the
plain solve exactly when no image is flat, the package's setting as the default, MRI refused."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch reference needs torch (the train extra)")
pytest.importorskip("onnx", reason="building test packages needs onnx (the export extra)")
pytestmark = pytest.mark.torch

from helpers import REL_TOL, clean_images, operator_for, proximal_model, quiet, rel_err  # noqa: E402

from diffunfold.contrast import Contrast  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402
from diffunfold.export import export_model  # noqa: E402
from diffunfold.package import ModelPackage  # noqa: E402
from diffunfold.runtime import Solver  # noqa: E402
from diffunfold.training.sampler import restore  # noqa: E402


def flat_and_busy():
    """Image 0 flattened to a tenth of its spread (a foggy photo), image 1 as it is."""
    x = clean_images()
    x[0] = 0.75 + 0.1 * (x[0] - x[0].mean())
    return x


@pytest.mark.parametrize(
    "task,params",
    [("sr", {"factor": 4}), ("inpainting", {"missing": 0.5}), ("gaussian_blur", {"sigma": 1.5})],
    ids=["sr", "inpainting", "blur"],
)
def test_stretch_matches_torch_reference_and_touches_only_the_flat_image(tiny_packages, task, params):
    model, pkg = tiny_packages["shared"]
    op = operator_for(task, params)
    y = op.measure(flat_and_busy(), 0.01, seed=[3, 4])
    solver = Solver.load(pkg, backend="onnxruntime")
    got = solver.solve(y, op, schedule="full", steps=6, seed=2, samples=2, contrast="stretch", noise_std=0.01)
    want = restore(model, torch.from_numpy(y), op, steps=6, seed=2, samples=2, contrast="stretch", noise_std=0.01)
    assert rel_err(got.images, want.images.numpy()) < REL_TOL
    gain = got.extra["contrast_gain"]
    assert gain[0] > 1.5 and gain[1] == 1.0
    plain = solver.solve(y, op, schedule="full", steps=6, seed=2, samples=2, contrast="none", noise_std=0.01)
    assert "contrast_gain" not in plain.extra
    np.testing.assert_array_equal(got.images[1], plain.images[1])  # the busy image: untouched
    assert rel_err(plain.images, want.images.numpy()) > 10 * REL_TOL  # so the match above is the stretch


def test_no_flat_image_gives_the_plain_solve_exactly(tiny_packages):
    _, pkg = tiny_packages["shared"]
    op = operator_for("sr", {"factor": 4})
    y = op.measure(clean_images(), 0.02, seed=[1, 2])
    solver = Solver.load(pkg)
    on = solver.solve(y, op, steps=4, seed=0, contrast="stretch")
    off = solver.solve(y, op, steps=4, seed=0)
    np.testing.assert_array_equal(on.images, off.images)
    assert on.extra["contrast_gain"] == [1.0, 1.0]


def test_package_contrast_is_the_default_and_mri_refuses_it(tiny_packages, tmp_path):
    model, plain = tiny_packages["shared"]
    stretched = export_model(model, tmp_path / "stretch", contrast="stretch", check=False, **quiet)
    assert ModelPackage.open(stretched.path).contrast == Contrast() and plain.contrast is None
    assert stretched.manifest["schedule"]["contrast"] == Contrast().as_dict()
    op = operator_for("inpainting", {"missing": 0.5})
    y = op.measure(flat_and_busy(), 0.0, seed=[1, 2])
    by_package = Solver.load(stretched).solve(y, op, steps=4, seed=1, noise_std=0.0)
    by_call = Solver.load(plain).solve(y, op, steps=4, seed=1, noise_std=0.0, contrast="stretch")
    np.testing.assert_array_equal(by_package.images, by_call.images)
    off = Solver.load(stretched).solve(y, op, steps=4, seed=1, noise_std=0.0, contrast="none")
    assert "contrast_gain" not in off.extra
    with pytest.raises(InputError, match="contrast"):
        Solver.load(plain).solve(y, op, steps=4, contrast="gamma")
    mri_model, mri_pkg = tiny_packages["mri"]
    with pytest.raises(InputError, match="contrast stretch is for image"):
        export_model(mri_model, tmp_path / "mri", contrast="stretch", check=False, **quiet)
    mri_op = operator_for("mri", {"kind": "gaussian1d", "acceleration": 4})
    mri_y = mri_op.measure(clean_images(mri=True), 0.0, seed=[1, 2])
    with pytest.raises(InputError, match="contrast stretch is for image"):
        Solver.load(mri_pkg).solve(mri_y, mri_op, steps=2, contrast="stretch")


@pytest.mark.parametrize("contrast", ["stretch", "colour"])
@pytest.mark.parametrize("noise_std", [0.03, None], ids=["given", "estimated"])
def test_noise_aware_model_weighs_the_stretched_noise_as_torch_does(tmp_path, noise_std, contrast):
    """A noise-aware model weighs the stretched y by the stretched noise (gain x sigma_y), in the
    runtime and the torch reference alike; the solution reports sigma_y of the y it was given."""
    model = proximal_model()
    pkg = export_model(model, tmp_path / "prox", check=False, **quiet)
    op = operator_for("sr", {"factor": 4})
    y = op.measure(flat_and_busy(), 0.03, seed=[5, 6])
    kw = dict(steps=8, seed=1, samples=2, noise_std=noise_std, contrast=contrast, ensemble="flips")
    got = Solver.load(pkg, backend="onnxruntime").solve(y, op, schedule="full", **kw)
    want = restore(model, torch.from_numpy(y), op, **kw)
    assert rel_err(got.images, want.images.numpy()) < REL_TOL
    assert got.extra["contrast_gain"][0] > 1.5 and got.extra["noise_std_estimated"] == (noise_std is None)
    if noise_std is not None:
        assert got.extra["noise_std"] == [0.03, 0.03]

"""`diffunfold restore` (image files) and `diffunfold mri` (fastMRI files), through the CLI.

Tiny packages (exported from untrained tiny models) at 32x32 with 4 sampler steps: these tests
check the plumbing (modes, outputs, refusals, reports, the torch-free path), not quality.
"""

import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="building test packages needs torch (the export extra)")
pytest.importorskip("onnx", reason="building test packages needs onnx (the export extra)")
pytestmark = pytest.mark.torch

from helpers import tiny_model  # noqa: E402
from PIL import Image  # noqa: E402

from diffunfold.cli import main  # noqa: E402
from diffunfold.cli_values import parse_slices  # noqa: E402
from diffunfold.data.images import bundled_image, save_image  # noqa: E402
from diffunfold.data.phantom import write_phantom_dataset  # noqa: E402
from diffunfold.errors import InputError  # noqa: E402
from diffunfold.export import export_model  # noqa: E402
from diffunfold.physics.tasks import parse_task_words  # noqa: E402
from diffunfold.runtime.backends import openvino_status  # noqa: E402

FAST = ["--steps", "4", "--quiet"]


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("packages")
    image = export_model(
        tiny_model(shared=True, stages=2),
        root / "image",
        tasks=["gaussian_blur", "sr", "inpainting"],
        log=lambda s: None,
    )
    mri = export_model(
        tiny_model(shared=True, data="mri", channels=1, stages=2, seed=2),
        root / "mri",
        tasks=["mri"],
        log=lambda s: None,
    )
    return {"image": str(image.path), "mri": str(mri.path)}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    (path,) = write_phantom_dataset(
        tmp_path_factory.mktemp("phantom"), num_files=1, slices_per_file=2, shape=(32, 32), ncoils=4, progress=False
    )
    return path


@pytest.fixture
def photos(tmp_path):
    """A folder with an RGB 32x32 image, a grey 32x40 one and an RGBA 32x32 one."""
    folder = tmp_path / "photos"
    save_image(folder / "astro.png", bundled_image("astronaut")[:, ::16, ::16])
    save_image(folder / "camera.png", bundled_image("camera", channels=1)[:, 200:232, 200:240])
    rgba = np.concatenate([np.asarray(Image.open(folder / "astro.png")), np.full((32, 32, 1), 128, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    return folder


# what backend auto picks on a CPU: OpenVINO where it is installed and the CPU has native bf16
AUTO_CPU = "backend: openvino" if openvino_status().startswith("ok") else "backend: onnxruntime"


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def png_size(path):
    with Image.open(path) as img:
        return img.size, img.mode


def test_simulate_writes_outputs_and_scores(packages, photos, tmp_path, capsys):
    before = digests(photos)
    out, report = tmp_path / "out", tmp_path / "report.json"
    assert (
        main(
            [
                "restore",
                packages["image"],
                str(photos),
                "--task",
                "gaussian_blur",
                "sigma=1.5",
                "--noise",
                "0.05",
                "--samples",
                "2",
                "--out",
                str(out),
                "--json",
                str(report),
                *FAST,
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "| image | size | PSNR | SSIM | Wiener PSNR |" in text and "| mean |" in text
    assert AUTO_CPU in text and "network" in text and "s per image" in text
    for name, size, mode in (("astro", (32, 32), "RGB"), ("camera", (40, 32), "L"), ("alpha", (32, 32), "RGBA")):
        for kind in ("restored", "baseline", "measured", "std"):
            assert (out / f"{name}_{kind}.png").is_file(), (name, kind)
        assert png_size(out / f"{name}_restored.png") == (size, mode)  # grey stays grey, alpha is put back
    data = json.loads(report.read_text())
    assert data["mode"] == "simulate" and data["task"] == "gaussian_blur" and data["params"] == {"sigma": 1.5}
    assert data["backend"].startswith(AUTO_CPU.split()[1]) and data["nfe"] == 4 and data["samples"] == 2
    assert len(data["rows"]) == 3
    for row in data["rows"]:
        for key in ("psnr", "ssim", "psnr_baseline", "ssim_baseline", "seconds", "std_max"):
            assert np.isfinite(row[key]), key
        assert row["psnr"] > 5
    assert [r["seed"] for r in data["rows"]] == [0, 1, 2]  # one seed per image
    assert digests(photos) == before


def test_contrast_stretch_reports_each_gain(packages, tmp_path, capsys):
    """--contrast stretch: a flat photo gets a gain above 1, an ordinary one 1; both are in the
    JSON with the setting, and the default (the tiny package asks for none) records none."""
    folder = tmp_path / "in"
    astro = bundled_image("astronaut")[:, ::16, ::16]
    save_image(folder / "astro.png", astro)
    save_image(folder / "fog.png", 0.8 + 0.08 * (astro - astro.mean()))
    for contrast, report in (("stretch", tmp_path / "on.json"), (None, tmp_path / "off.json")):
        args = [
            "restore",
            packages["image"],
            str(folder),
            "--task",
            "sr",
            "factor=2",
            "--noise",
            "0.01",
            "--out",
            str(tmp_path / f"out-{contrast}"),
            "--json",
            str(report),
            *FAST,
        ]
        assert main(args + (["--contrast", contrast] if contrast else [])) == 0
    on, off = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("on", "off"))
    assert (
        on["contrast"] == {"target_std": 0.15, "flat_std": 0.09, "max_gain": 4.0, "colour": False}
        and off["contrast"] is None
    )
    gains = {row["name"]: row["contrast_gain"] for row in on["rows"]}
    assert gains["astro"] == 1.0 and gains["fog"] > 1.5
    assert all("contrast_gain" not in row for row in off["rows"])
    capsys.readouterr()


def test_simulate_sr_size_and_crop_to_the_factor(packages, photos, tmp_path, capsys):
    out = tmp_path / "sr"
    # camera.png is 32x40: --size makes it 32x32 (centre square, resized)
    assert (
        main(
            [
                "restore",
                packages["image"],
                str(photos / "camera.png"),
                "--task",
                "sr",
                "factor=4",
                "--size",
                "32",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    assert png_size(out / "camera_measured.png")[0] == (8, 8)
    assert png_size(out / "camera_restored.png")[0] == (32, 32)
    assert "pinv PSNR" in capsys.readouterr().out
    # without --size, a side that is not a multiple of the factor is centre-cropped, with a note
    save_image(tmp_path / "odd" / "odd.png", bundled_image("coffee")[:, :34, :30])
    assert (
        main(
            [
                "restore",
                packages["image"],
                str(tmp_path / "odd" / "odd.png"),
                "--task",
                "sr",
                "factor=4",
                "--out",
                str(tmp_path / "odd_out"),
                *FAST,
            ]
        )
        == 0
    )
    assert "centre-cropped 34x30 -> 32x28" in capsys.readouterr().out
    assert png_size(tmp_path / "odd_out" / "odd_restored.png")[0] == (28, 32)


def test_measured_blur_and_sr(packages, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    save_image(inputs / "blurry.png", bundled_image("coffee")[:, ::12, ::12][:, :32, :32])
    save_image(inputs / "small.png", bundled_image("chelsea")[:, ::16, ::16][:, :16, :12])
    before = digests(inputs)
    out, report = tmp_path / "out", tmp_path / "r.json"
    assert (
        main(
            [
                "restore",
                packages["image"],
                str(inputs / "blurry.png"),
                "--mode",
                "measured",
                "--task",
                "gaussian_blur",
                "sigma=2",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    assert png_size(out / "blurry_restored.png")[0] == (32, 32)
    assert not (out / "blurry_measured.png").exists()
    assert (
        main(
            [
                "restore",
                packages["image"],
                str(inputs / "small.png"),
                "--mode",
                "measured",
                "--task",
                "sr",
                "factor=2",
                "--out",
                str(out),
                "--json",
                str(report),
                *FAST,
            ]
        )
        == 0
    )
    assert png_size(out / "small_restored.png")[0] == (24, 32)  # factor x the 12x16 input
    text = capsys.readouterr().out
    assert "PSNR" not in text and "| small.png | 32x24 |" in text
    row = json.loads(report.read_text())["rows"][0]
    assert "psnr" not in row and row["size"] == [32, 24]
    assert digests(inputs) == before


def test_measured_inpainting_takes_a_mask_file(packages, tmp_path, capsys):
    save_image(tmp_path / "in" / "holes.png", bundled_image("astronaut")[:, ::16, ::16])
    mask = np.ones((32, 32), np.float32)
    mask[8:16, 4:28] = 0
    save_image(tmp_path / "mask.png", mask)
    args = [
        "restore",
        packages["image"],
        str(tmp_path / "in" / "holes.png"),
        "--mode",
        "measured",
        "--out",
        str(tmp_path / "out"),
        *FAST,
    ]
    assert main(args + ["--task", "inpainting"]) == 2
    assert "mask=FILE.png" in capsys.readouterr().err
    assert main(args + ["--task", "inpainting", f"mask={tmp_path / 'nothing.png'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(args + ["--task", "inpainting", f"mask={tmp_path / 'mask.png'}"]) == 0
    assert png_size(tmp_path / "out" / "holes_restored.png")[0] == (32, 32)
    save_image(tmp_path / "small_mask.png", np.ones((16, 16)))
    assert main(args + ["--overwrite", "--task", "inpainting", f"mask={tmp_path / 'small_mask.png'}"]) == 2
    assert "must match pixel for pixel" in capsys.readouterr().err


def test_outputs_never_replace_inputs_or_existing_files(packages, photos, tmp_path, capsys):
    before = digests(photos)
    base = ["restore", packages["image"], str(photos / "astro.png"), "--task", "inpainting", *FAST]
    assert main(base + ["--out", str(photos)]) == 2
    assert "folder of the input" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(base + ["--out", str(out)]) == 0
    first = (out / "astro_restored.png").stat().st_mtime_ns
    assert main(base + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert (out / "astro_restored.png").stat().st_mtime_ns == first
    assert main(base + ["--out", str(out), "--overwrite"]) == 0
    assert main(base + ["--out", str(tmp_path / "other"), "--json", str(photos / "astro.png")]) == 2
    assert "input file" in capsys.readouterr().err
    assert digests(photos) == before


def test_existing_output_message(packages, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "astro_baseline.png").write_bytes(b"keep me")
    assert (
        main(["restore", packages["image"], str(photos / "astro.png"), "--task", "sr", "--out", str(out), *FAST]) == 2
    )
    err = capsys.readouterr().err
    assert "astro_baseline.png already exists" in err and "--overwrite" in err
    assert (out / "astro_baseline.png").read_bytes() == b"keep me"


def test_wrong_package_kind_is_refused(packages, photos, phantom, tmp_path, capsys):
    assert main(["restore", packages["mri"], str(photos), "--task", "sr", "--out", str(tmp_path / "a")]) == 2
    assert "MRI model package" in capsys.readouterr().err
    assert main(["mri", packages["image"], str(phantom), "--out", str(tmp_path / "b")]) == 2
    assert "image model package" in capsys.readouterr().err
    assert main(["restore", packages["image"], str(photos), "--task", "mri", "--out", str(tmp_path / "c")]) == 2
    assert "diffunfold mri" in capsys.readouterr().err
    assert main(["restore", str(tmp_path), str(photos), "--task", "sr"]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_unknown_task_and_parameters_are_refused(packages, photos, tmp_path, capsys):
    base = ["restore", packages["image"], str(photos), "--out", str(tmp_path / "o")]
    assert main(base + ["--task", "denoise"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'denoise'" in err and all(t in err for t in ("gaussian_blur", "sr", "inpainting"))
    assert main(base + ["--task", "sr", "scale=4"]) == 2
    assert "it takes ['factor', 'kernel']" in capsys.readouterr().err
    assert main(base + ["--task", "sr", "4"]) == 2
    assert "name=value" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written before the checks pass


def test_untrained_task_gets_a_note(packages, photos, tmp_path, capsys):
    assert (
        main(
            [
                "restore",
                packages["image"],
                str(photos / "astro.png"),
                "--task",
                "motion",
                "length=5",
                "--out",
                str(tmp_path / "o"),
                *FAST,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "not trained on motion_blur" in out and "physics is outside the network" in out


def test_bad_inputs_are_named(packages, tmp_path, capsys):
    pkg = packages["image"]
    assert main(["restore", pkg, str(tmp_path / "missing.png"), "--task", "sr"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["restore", pkg, str(tmp_path / "bad.png"), "--task", "sr", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot read image file" in err and "bad.png" in err
    (tmp_path / "empty").mkdir()
    assert main(["restore", pkg, str(tmp_path / "empty"), "--task", "sr"]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert main(["restore", pkg, str(tmp_path / "bad.png"), "--task", "sr", "--mode", "measured", "--size", "32"]) == 2
    assert "crop it beforehand" in capsys.readouterr().err


def test_mri_reconstructs_a_phantom(packages, phantom, tmp_path, capsys):
    out, report = tmp_path / "recon", tmp_path / "mri.json"
    assert (
        main(
            [
                "mri",
                packages["mri"],
                str(phantom),
                "--slices",
                "all",
                "--mask",
                "gaussian1d",
                "--acceleration",
                "4",
                "--samples",
                "2",
                "--out",
                str(out),
                "--json",
                str(report),
                *FAST,
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "| slice | PSNR | SSIM | zero-filled PSNR |" in text and "realised 4.00x" in text
    for s in (0, 1):
        for kind in ("recon", "zero_filled", "reference", "std"):
            assert png_size(out / f"phantom_0000_s{s:03d}_{kind}.png") == ((32, 32), "L")
        recon = np.load(out / f"phantom_0000_s{s:03d}_recon.npy")
        assert recon.dtype == np.complex64 and recon.shape == (32, 32) and np.isfinite(recon).all()
    mask = np.asarray(Image.open(out / "phantom_0000_mask.png"))
    assert mask.shape == (32, 32) and abs(mask.size / (mask > 127).sum() - 4) < 0.2
    data = json.loads(report.read_text())
    # as a scanner delivers it: the file's own coil k-space, ESPIRiT maps and noise from the data
    assert data["coil_maps"] == "espirit" and len(data["rows"]) == 2
    for row in data["rows"]:
        assert all(
            np.isfinite(row[k])
            for k in ("psnr", "ssim", "psnr_zero_filled", "ssim_zero_filled", "scale", "noise_estimated")
        )
        assert row["start"].startswith("SENSE estimate") and row["noise"].startswith("estimated")
    # the lab set-up: the reference through its own maps
    assert (
        main(
            [
                "mri",
                packages["mri"],
                str(phantom),
                "--coil-maps",
                "estimate",
                "--out",
                str(tmp_path / "lab"),
                "--json",
                str(tmp_path / "lab.json"),
                *FAST,
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "lab.json").read_text())["coil_maps"] == "estimate"
    # the paper's set-up: the file's RSS image on simulated coils; default slice: the middle one
    assert (
        main(
            [
                "mri",
                packages["mri"],
                str(phantom),
                "--coil-maps",
                "simulate",
                "--coils",
                "4",
                "--mask",
                "gaussian2d",
                "--acceleration",
                "8",
                "--out",
                str(tmp_path / "sim"),
                *FAST,
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "4 coils (simulated maps)" in text and "| 1 |" in text
    assert (tmp_path / "sim" / "phantom_0000_s001_recon.npy").is_file()
    # slices out of range, a missing file
    assert main(["mri", packages["mri"], str(phantom), "--slices", "2", "--out", str(tmp_path / "x")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["mri", packages["mri"], str(tmp_path / "none.h5")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_parse_helpers():
    assert parse_slices(None, 5) == [2]
    assert parse_slices("all", 3) == [0, 1, 2]
    assert parse_slices("0,3-4,3", 5) == [0, 3, 4]
    assert parse_slices("-1", 5) == [4]
    for bad in ("5", "3-1", "a", "1-x"):
        with pytest.raises(InputError):
            parse_slices(bad, 5)
    assert parse_task_words(["deblur", "sigma=2"]) == ("gaussian_blur", {"sigma": 2})
    assert parse_task_words(["anisotropic_blur", "sigma=[4, 1.5]", "angle=0.5"]) == (
        "anisotropic_blur",
        {"sigma": [4, 1.5], "angle": 0.5},
    )
    assert parse_task_words(["sr", "kernel=bicubic"]) == ("sr", {"kernel": "bicubic"})


def test_help_teaches(capsys):
    for command, words in (
        ("restore", ("examples:", "--mode measured", "mask=", "simulate", "--overwrite")),
        ("mri", ("examples:", "--slices", "zero-filled", "--coil-maps", "recon.npy")),
    ):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert all(w in out for w in words), command


def test_mri_refuses_the_raw_files_calibration_maps_for_a_fastmri_file(packages, phantom, tmp_path, capsys):
    args = ["mri", packages["mri"], str(phantom), "--coil-maps", "calibration", "--out", str(tmp_path / "o"), *FAST]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--coil-maps calibration is for raw MRD files" in err and "estimate or simulate" in err
    assert not (tmp_path / "o").exists()


def test_restore_and_mri_run_without_torch(packages, phantom, tmp_path, run_without_torch):
    """The CLI's restore and mri paths never import torch (architecture, boundary 2)."""
    save_image(tmp_path / "in" / "x.png", bundled_image("astronaut")[:, ::16, ::16])
    out = run_without_torch(f"""
        from diffunfold.cli import main
        rc = main(["restore", {packages["image"]!r}, {str(tmp_path / "in")!r}, "--task", "sr", "factor=2",
                   "--steps", "2", "--out", {str(tmp_path / "out")!r}, "--quiet"])
        assert rc == 0, rc
        rc = main(["mri", {packages["mri"]!r}, {str(phantom)!r}, "--steps", "2", "--out", {str(tmp_path / "mri")!r},
                   "--quiet"])
        assert rc == 0, rc
        assert "diffunfold.training" not in sys.modules
    """)
    assert AUTO_CPU in out
    assert (tmp_path / "out" / "x_restored.png").is_file()

"""Image files as they come (diffunfold.data.image_io): grey, 16-bit PNG and TIFF, float TIFF,
alpha and EXIF orientation, each on a small image built here."""

import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from diffunfold.data.image_io import decode_png, encode_png, read_image, write_image
from diffunfold.data.images import load_image
from diffunfold.errors import InputError

tifffile = pytest.importorskip("tifffile", reason="TIFF needs tifffile (a scikit-image dependency)")


def gradient(h=12, w=17, channels=3, top=65535, dtype=np.uint16):
    yy, xx = np.mgrid[:h, :w]
    planes = [(xx * 3851 + yy * 977 + 12345 * c) % (top + 1) for c in range(channels)]
    return np.stack(planes, -1).astype(dtype)


def filtered_png(pixels: np.ndarray, kinds) -> bytes:
    """A PNG of ``pixels`` whose rows use the given filter types (the test's own encoder, so the
    decoder meets Up and Average too, which Pillow's encoder rarely picks)."""
    h, w, c = pixels.shape
    depth = 16 if pixels.dtype == np.uint16 else 8
    raw = pixels.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8).astype(np.int32)
    bpp = c * depth // 8
    left = np.pad(raw, ((0, 0), (bpp, 0)))[:, :-bpp]
    up = np.pad(raw, ((1, 0), (0, 0)))[:-1]
    upleft = np.pad(up, ((0, 0), (bpp, 0)))[:, :-bpp]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    preds = [0 * raw, left, up, (left + up) // 2, paeth]
    rows = [np.concatenate([[k], (raw[r] - preds[k][r]) % 256]) for r, k in enumerate(kinds)]
    body = zlib.compress(np.asarray(rows, np.uint8).tobytes())
    png = encode_png(pixels)
    ihdr_end = 8 + 25
    chunk = len(body).to_bytes(4, "big") + b"IDAT" + body + zlib.crc32(b"IDAT" + body).to_bytes(4, "big")
    return png[:ihdr_end] + chunk + png[-12:]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_decoder_undoes_every_row_filter(dtype):
    pixels = gradient(9, 13, 3, 255 if dtype == np.uint8 else 65535, dtype)
    kinds = [r % 5 for r in range(9)]
    assert np.array_equal(decode_png(filtered_png(pixels, kinds)), pixels)


def test_png_decoder_matches_pillow_on_its_adaptive_filters():
    rng = np.random.default_rng(0)
    pixels = gradient(40, 33, 3, 255, np.uint8)
    pixels[10:20] = rng.integers(0, 256, (10, 33, 3))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    assert np.array_equal(decode_png(buf.getvalue()), pixels)


def test_16bit_colour_png_read_at_full_depth_and_written_back_at_16(tmp_path):
    pixels = gradient()
    src = tmp_path / "deep.png"
    src.write_bytes(encode_png(pixels))
    img = read_image(src)
    assert img.bits == 16 and not img.grey
    assert np.array_equal(np.round(np.moveaxis(img.array, 0, -1) * 65535).astype(np.uint16), pixels)
    # Pillow alone reads it as 8 bits: 256 levels at most per channel
    assert len(np.unique(np.asarray(Image.open(src)))) <= 256 < len(np.unique(pixels))
    out = write_image(tmp_path / "out.png", img.array, like=img)
    assert np.array_equal(decode_png(out.read_bytes()), pixels)


def test_grey_goes_through_a_colour_model_and_comes_back_grey(tmp_path):
    grey = gradient(10, 14, 1, 255, np.uint8)[..., 0]
    src = tmp_path / "grey.png"
    Image.fromarray(grey).save(src)
    img = read_image(src, channels=3)
    assert img.grey and img.array.shape == (3, 10, 14)
    assert np.array_equal(img.array[0], img.array[1]) and np.array_equal(img.array[1], img.array[2])
    restored = img.array + np.array([0.02, -0.01, 0.0], np.float32)[:, None, None]  # channels drift apart
    out = write_image(tmp_path / "out.png", restored, like=img)
    back = Image.open(out)
    assert back.mode == "L"
    want = np.round(np.clip(restored.mean(axis=0), 0, 1) * 255)
    assert np.abs(np.asarray(back).astype(int) - want).max() <= 1


def test_16bit_tiff_and_float_tiff(tmp_path):
    deep = gradient(8, 11, 3)
    tifffile.imwrite(tmp_path / "deep.tif", deep, photometric="rgb")
    img = read_image(tmp_path / "deep.tif")
    assert img.bits == 16 and np.allclose(np.moveaxis(img.array, 0, -1) * 65535, deep, atol=0.02)
    write_image(tmp_path / "deep_out.tif", img.array, like=img)
    assert np.array_equal(tifffile.imread(tmp_path / "deep_out.tif"), deep)

    values = np.linspace(-2.0, 6.0, 8 * 11, dtype=np.float32).reshape(8, 11)
    tifffile.imwrite(tmp_path / "float.tif", values)
    img = read_image(tmp_path / "float.tif", channels=3)
    assert img.bits == 32 and img.grey and img.value_range == (-2.0, 6.0)
    assert img.array.min() == 0.0 and img.array.max() == 1.0 and any("mapped" in n for n in img.notes)
    write_image(tmp_path / "float_out.tif", img.array, like=img)
    back = tifffile.imread(tmp_path / "float_out.tif")
    assert back.dtype == np.float32 and back.shape == (8, 11) and np.allclose(back, values, atol=1e-5)


def test_alpha_is_kept_aside_and_put_back(tmp_path):
    rgba = gradient(10, 12, 4, 255, np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.array.shape == (3, 10, 12) and img.alpha is not None and any("alpha" in n for n in img.notes)
    assert np.array_equal(np.round(img.alpha * 255).astype(np.uint8), rgba[..., 3])
    out = Image.open(write_image(tmp_path / "out.png", img.array, like=img))
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out), rgba)
    # a larger result (SR): the alpha is resized with it
    big = np.repeat(np.repeat(img.array, 2, axis=1), 2, axis=2)
    assert Image.open(write_image(tmp_path / "sr.png", big, like=img)).size == (24, 20)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_does(tmp_path, orientation):
    pixels = gradient(6, 9, 3, 255, np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif.tobytes())
    want = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    got = read_image(tmp_path / "o.png").array
    assert np.array_equal(np.round(np.moveaxis(got, 0, -1) * 255).astype(np.uint8), want)


def test_load_image_keeps_16_bits_and_unreadable_files_name_themselves(tmp_path):
    src = tmp_path / "deep.png"
    src.write_bytes(encode_png(gradient(5, 6, 3)))
    assert np.array_equal(np.round(np.moveaxis(load_image(src), 0, -1) * 65535), gradient(5, 6, 3))
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="bad.tif"):
        read_image(bad)
    with pytest.raises(InputError, match="NaN"):
        write_image(tmp_path / "x.png", np.full((3, 4, 4), np.nan))


def test_restore_writes_each_image_back_as_it_came(tmp_path, capsys):
    from pathlib import Path

    from diffunfold.cli import main

    package = Path(__file__).resolve().parents[1] / "samples" / "models" / "image-small"
    grey, deep, rgba = tmp_path / "grey.png", tmp_path / "deep.png", tmp_path / "rgba.png"
    Image.fromarray(gradient(32, 32, 1, 255, np.uint8)[..., 0]).save(grey)
    deep.write_bytes(encode_png(gradient(32, 32, 3)))
    Image.fromarray(gradient(32, 32, 4, 255, np.uint8), "RGBA").save(rgba)
    out = tmp_path / "out"
    code = main(
        [
            "restore",
            str(package),
            str(grey),
            str(deep),
            str(rgba),
            "--task",
            "gaussian_blur",
            "sigma=1",
            "--steps",
            "1",
            "--out",
            str(out),
            "--quiet",
            "--backend",
            "onnxruntime",
            "--tile",
            "16",
        ]
    )
    assert code == 0
    assert Image.open(out / "grey_restored.png").mode == "L"
    assert read_image(out / "deep_restored.png").bits == 16
    assert decode_png((out / "deep_restored.png").read_bytes()).dtype == np.uint16
    back = Image.open(out / "rgba_restored.png")
    assert back.mode == "RGBA" and np.array_equal(np.asarray(back)[..., 3], gradient(32, 32, 4, 255, np.uint8)[..., 3])
    assert "alpha channel is kept aside" in capsys.readouterr().out
    try:  # refused when the arguments are parsed, before any work
        code = main(
            [
                "restore",
                str(package),
                str(grey),
                "--task",
                "gaussian_blur",
                "--tile",
                "12",
                "--out",
                str(tmp_path / "none"),
            ]
        )
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "multiple of 8" in capsys.readouterr().err and not (tmp_path / "none").exists()

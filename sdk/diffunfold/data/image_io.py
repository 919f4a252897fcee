"""Image files as they come: grey or colour, 8 or 16 bits, float TIFF, alpha, EXIF orientation.

:func:`read_image` gives the float32 ``(channels, H, W)`` array in [0, 1] that a model sees and
remembers what the file was (:class:`ImageFile`): :func:`write_image` writes a result back the
same way, grey as grey, 16 bits as 16 bits, float TIFF as float TIFF in the file's own range,
with the alpha channel that was kept aside put back.

Pillow truncates 16-bit colour PNGs to 8 bits, so PNGs of 16 bits are decoded here (zlib and
the five PNG row filters in numpy); TIFF goes through tifffile (a scikit-image dependency).
"""

from __future__ import annotations

import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..safe_io import atomic_write, write_bytes

TIFF_SUFFIXES = (".tif", ".tiff")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_EXIF_ORIENTATION = 0x0112
# Images above Pillow's own bomb threshold (MAX_IMAGE_PIXELS, about 89 Mpx) are refused from
# their header, before decoding; below it, a command checks its memory budget from the header too
# (`diffunfold restore`: the solve's need, before reading the pixels).
MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)


@dataclass
class ImageFile:
    """What :func:`read_image` read: ``array`` for the model, and how to write results back."""

    array: np.ndarray  # float32 (channels, H, W) in [0, 1]
    grey: bool = False  # one channel in the file: results are written grey
    bits: int = 8  # per sample in the file: 8, 16, or 32 (float)
    alpha: np.ndarray | None = None  # (H, W) in [0, 1], kept aside and put back on output
    value_range: tuple[float, float] = (0.0, 1.0)  # float files: the values mapped to [0, 1]
    notes: list[str] = field(default_factory=list)


# -- reading ------------------------------------------------------------------------------------


def read_image(path, channels: int = 3, size: int | None = None) -> ImageFile:
    """Read an image file for a ``channels``-channel model (3: grey is repeated; 1: colour becomes
    luma, ITU-R 601). EXIF orientation is applied; alpha is kept aside. With ``size``, the
    centre square resized to ``size x size`` (antialiased bicubic, in float). Raises
    :class:`InputError` naming the file when it cannot be read."""
    path = Path(path)
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if not path.exists():
        raise InputError(f"image file {str(path)!r} does not exist")
    if path.is_dir():
        raise InputError(f"{str(path)!r} is a directory, not an image file")
    image_size(path)  # the header's size is checked first: a bomb is refused before decoding
    try:
        hwc, bits = _decode(path)
    except (OSError, ValueError, SyntaxError, zlib.error, struct.error, Image.DecompressionBombError) as exc:
        raise InputError(
            f"cannot read image file {str(path)!r} ({type(exc).__name__}: {exc}); the file is "
            "corrupt, truncated or not an image"
        ) from None
    hwc = _orient(hwc, _orientation(path))
    return _to_image_file(path, hwc, bits, channels, size)


def image_size(path) -> tuple[int, int]:
    """``(H, W)`` from the file's header (TIFF through tifffile, the rest through Pillow), as
    stored (before EXIF orientation); an :class:`InputError` naming a file that is no image, or
    one that declares more than :data:`MAX_PIXELS` (nothing is decoded)."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
                axes = tif.series[0].axes
            h, w = int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        else:
            with warnings.catch_warnings():  # Pillow's bomb warning is a refusal here
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    h, w = img.height, img.width
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"image file {str(path)!r} is refused before decoding: {exc} (at most "
            f"{MAX_PIXELS / 1e6:.0f} Mpx here; cut a larger image into parts)"
        ) from None
    except (OSError, ValueError, SyntaxError, IndexError, struct.error) as exc:
        raise InputError(
            f"cannot read image file {str(path)!r} ({type(exc).__name__}: {exc}); it is not an "
            "image (png, jpg, tif, bmp, webp, ...)"
        ) from None
    check_pixels(h, w, f"image file {str(path)!r}")
    return h, w


def check_pixels(h: int, w: int, what: str) -> None:
    """Refuse an image that declares more than :data:`MAX_PIXELS` (Pillow's own bomb limit)."""
    if h * w > MAX_PIXELS:
        raise InputError(
            f"{what} declares {w}x{h} pixels ({h * w / 1e6:.0f} Mpx), more than the "
            f"{MAX_PIXELS / 1e6:.0f} Mpx an image may have here (a decompression bomb, or an image "
            "to cut into parts first); it was not decoded"
        )


def _to_image_file(path: Path, hwc: np.ndarray, bits: int, channels: int, size: int | None) -> ImageFile:
    notes = []
    alpha = None
    if hwc.shape[-1] in (2, 4):
        alpha, hwc = hwc[..., -1], hwc[..., :-1]
        notes.append(
            f"{path.name}: the alpha channel is kept aside and put back on the outputs "
            "(the model restores the colour channels only)"
        )
    lo, hi = 0.0, 1.0
    if bits == 32:
        if not np.all(np.isfinite(hwc)):
            raise InputError(f"image file {str(path)!r} holds NaN or infinite values")
        if hwc.min() < 0 or hwc.max() > 1:
            lo, hi = float(hwc.min()), float(hwc.max())
            hwc = (hwc - lo) / max(hi - lo, np.finfo(np.float32).tiny)
            notes.append(
                f"{path.name}: float values in [{lo:g}, {hi:g}] mapped to [0, 1] for the model and back on output"
            )
    grey = hwc.shape[-1] == 1
    chw = np.moveaxis(hwc, -1, 0).astype(np.float32)
    if size is not None:
        chw = _centre_square(chw, size)
        alpha = None if alpha is None else _centre_square(alpha[None], size)[0]
    if channels == 3 and grey:
        chw = np.repeat(chw, 3, axis=0)
    elif channels == 1 and not grey:
        chw = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), chw, axes=1)[None]
    return ImageFile(
        np.ascontiguousarray(np.clip(chw, 0.0, 1.0), dtype=np.float32),
        grey,
        bits,
        None if alpha is None else np.clip(alpha, 0.0, 1.0).astype(np.float32),
        (lo, hi),
        notes,
    )


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """``(H, W, C)`` float32 in [0, 1] (float files: as stored) and the bits per sample."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _decode_tiff(path)
    with open(path, "rb") as f:
        head = f.read(33)
    if head[:8] == _PNG_MAGIC and head[24] == 16:  # IHDR bit depth: Pillow would truncate colour
        return _from_integers(decode_png(path.read_bytes()), 16)
    return _decode_pillow(path)


def _from_integers(arr: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    arr = arr[..., None] if arr.ndim == 2 else arr
    return arr.astype(np.float32) / np.float32(2**bits - 1), bits


def _decode_pillow(path: Path) -> tuple[np.ndarray, int]:
    with Image.open(path) as img:
        img.load()
        mode = img.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            return _from_integers(np.asarray(img, dtype=np.uint16 if mode != "I" else np.int64).clip(0, 65535), 16)
        if mode == "F":
            return np.asarray(img, dtype=np.float32)[..., None], 32
        alpha = "A" in mode or (mode == "P" and "transparency" in img.info)
        grey = mode in ("1", "L", "LA", "La", "PA") or (mode == "P" and _palette_is_grey(img))
        want = ("LA" if alpha else "L") if grey else ("RGBA" if alpha else "RGB")
        return _from_integers(np.asarray(img.convert(want)), 8)


def _palette_is_grey(img: Image.Image) -> bool:
    rgb = np.asarray(img.convert("RGB"))
    return bool(np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]))


def _decode_tiff(path: Path) -> tuple[np.ndarray, int]:
    import tifffile

    arr = np.asarray(tifffile.imread(path))
    if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"a TIFF of shape {arr.shape} is not one grey or colour image (a stack? save one image per file)"
        )
    if arr.dtype == np.uint8:
        return _from_integers(arr, 8)
    if arr.dtype == np.uint16:
        return _from_integers(arr, 16)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32), 32
    raise ValueError(f"TIFF samples of type {arr.dtype} are not supported (uint8, uint16 or float)")


# -- orientation and resizing -------------------------------------------------------------------


def _orientation(path: Path) -> int:
    """The EXIF orientation tag (1 = upright), or 1 where Pillow cannot read the file's tags."""
    try:
        with Image.open(path) as img:
            value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):
        return 1
    return value if value in range(1, 9) else 1


def _orient(hwc: np.ndarray, orientation: int) -> np.ndarray:
    """Turn ``(H, W, C)`` upright for an EXIF orientation, as Pillow's ``exif_transpose``."""
    t = np.swapaxes(hwc, 0, 1)
    return {
        1: hwc,
        2: hwc[:, ::-1],
        3: hwc[::-1, ::-1],
        4: hwc[::-1],
        5: t,
        6: t[:, ::-1],
        7: t[::-1, ::-1],
        8: t[::-1],
    }[orientation]


def _centre_square(chw: np.ndarray, size: int) -> np.ndarray:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"size must be a positive integer, got {size!r}")
    h, w = chw.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    box = (left, top, left + side, top + side)
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(c, dtype=np.float32)).resize(
                    (int(size), int(size)), Image.Resampling.BICUBIC, box=box
                )
            )
            for c in chw
        ]
    )


def resize_plane(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float ``(H, W)`` plane resized to ``shape`` (bilinear): alpha for an SR output."""
    if plane.shape == tuple(shape):
        return plane
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(img.resize((int(shape[1]), int(shape[0])), Image.Resampling.BILINEAR))


# -- writing ------------------------------------------------------------------------------------


def write_image(path, array, like: ImageFile | None = None) -> Path:
    """Write a float ``(C, H, W)`` result in [0, 1] as ``like`` was read: grey when it was grey
    (the channels averaged), at its depth (16-bit PNG or TIFF; float TIFF in its own value
    range), with its alpha put back (resized to the result, e.g. after SR). Without ``like``:
    an 8-bit image. The format follows the suffix; parent folders are created."""
    arr = np.asarray(array, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise InputError(f"write_image expects (C, H, W) with C = 1 or 3, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"cannot save {str(path)!r}: the image contains NaN or Inf values")
    like = like or ImageFile(np.zeros((0, 0, 0), np.float32))
    arr = np.clip(arr, 0.0, 1.0)
    if like.grey and arr.shape[0] == 3:
        arr = arr.mean(axis=0, keepdims=True)
    if like.alpha is not None:
        arr = np.concatenate([arr, resize_plane(like.alpha, arr.shape[-2:])[None]])
    hwc = np.moveaxis(arr, 0, -1)
    path, suffix = Path(path), Path(path).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return atomic_write(path, lambda tmp: _write_tiff(tmp, hwc, like))
    if like.bits > 8 and suffix == ".png":
        return write_bytes(path, encode_png(np.round(hwc * 65535.0).astype(np.uint16)))
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise InputError(f"cannot save {str(path)!r}: unknown image format {suffix!r}; use .png or .tif")
    data = np.round(hwc * 255.0).astype(np.uint8)
    image = Image.fromarray(data[..., 0] if data.shape[-1] == 1 else data)
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def _write_tiff(path: Path, hwc: np.ndarray, like: ImageFile) -> None:
    import tifffile

    if like.bits == 32:
        lo, hi = like.value_range
        colour = hwc[..., :-1] if like.alpha is not None else hwc
        data = colour * (hi - lo) + lo
        if like.alpha is not None:
            data = np.concatenate([data, hwc[..., -1:]], axis=-1)
        data = data.astype(np.float32)
    else:
        scale = 65535.0 if like.bits == 16 else 255.0
        data = np.round(hwc * scale).astype(np.uint16 if like.bits == 16 else np.uint8)
    colour_channels = data.shape[-1] - (like.alpha is not None)
    tifffile.imwrite(
        path,
        data[..., 0] if data.shape[-1] == 1 else data,
        photometric="rgb" if colour_channels == 3 else "minisblack",
        extrasamples=["unassalpha"] if like.alpha is not None else None,
    )


# -- PNG at any bit depth, in numpy -------------------------------------------------------------


def _chunks(data: bytes):
    if data[:8] != _PNG_MAGIC:
        raise ValueError("not a PNG file")
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        yield kind, data[pos + 8 : pos + 8 + length]
        pos += 12 + length


def decode_png(data: bytes) -> np.ndarray:
    """A non-interlaced, non-palette PNG of 8 or 16 bits as ``(H, W, C)`` uint8/uint16."""
    chunks = list(_chunks(data))
    if not chunks or chunks[0][0] != b"IHDR":
        raise ValueError("the PNG has no IHDR header")
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if ctype not in _PNG_CHANNELS or depth not in (8, 16):
        raise ValueError(f"PNG colour type {ctype} at {depth} bits is read by Pillow, not here")
    if interlace:
        raise ValueError("interlaced 16-bit PNGs are not supported; save it without interlacing")
    bpp = _PNG_CHANNELS[ctype] * depth // 8
    check_pixels(h, w, "the PNG")
    inflate = zlib.decompressobj()  # never more than the header declares: a bomb stops there
    raw = inflate.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"), h * (w * bpp + 1) + 1)
    if len(raw) != h * (w * bpp + 1):
        raise ValueError(f"the PNG's image data has {len(raw)} bytes, expected {h * (w * bpp + 1)}")
    rows = np.frombuffer(raw, np.uint8).reshape(h, w * bpp + 1)
    pixels = _unfilter(rows[:, 0], rows[:, 1:].reshape(h, w, bpp))
    if depth == 16:
        return pixels.reshape(h, w, -1).view(">u2").astype(np.uint16)
    return pixels.reshape(h, w, -1)


def _unfilter(kinds: np.ndarray, filtered: np.ndarray) -> np.ndarray:
    """Undo the PNG row filters (None, Sub, Up, Average, Paeth) of ``(H, W, bpp)`` bytes.

    Pixel (r, c) depends on (r, c-1), (r-1, c) and (r-1, c-1) only, so every anti-diagonal
    r + c = d is computed at once: H + W - 1 vectorised steps instead of H x W."""
    if kinds.size and kinds.max() > 4:
        raise ValueError(f"unknown PNG filter type {int(kinds.max())}")
    h, w, bpp = filtered.shape
    out = np.zeros((h + 1, w + 1, bpp), np.int16)  # a zero row above and column to the left
    f = filtered.astype(np.int16)
    for d in range(h + w - 1):
        r = np.arange(max(0, d - w + 1), min(h, d + 1))
        c = d - r
        a, b, ul = out[r + 1, c], out[r, c + 1], out[r, c]
        pa, pb, pc = np.abs(b - ul), np.abs(a - ul), np.abs(a + b - 2 * ul)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, ul))
        k = kinds[r][:, None]
        pred = np.select([k == 1, k == 2, k == 3, k == 4], [a, b, (a + b) // 2, paeth], 0)
        out[r + 1, c + 1] = (f[r, c] + pred) & 255
    return out[1:, 1:].astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """``(H, W, C)`` uint8 or uint16 pixels (C = 1 to 4: grey, grey + alpha, RGB, RGBA) as a PNG
    (no row filter; zlib does the compressing)."""
    h, w, c = pixels.shape
    depth = 16 if pixels.dtype == np.uint16 else 8
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    body = pixels.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), body], axis=1).tobytes()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)
    return _PNG_MAGIC + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")

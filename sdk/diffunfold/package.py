"""The model package: the contract between export and the runtime (architecture.md, boundary 4).

A package is a directory::

    manifest.json          format, model settings, K, data kind/range, trained tasks, default
                           schedule, the export self-check, the sha256 of every file below
    regularizer.onnx       shared network: inputs x (B,C,H,W), sigma (B,), stage (B,) int64
      or regularizer_k.onnx  one network per stage: inputs x, sigma
    weights.onnx           the weight generators: sigma (B,) -> tau (B,K), gamma (B,K)
    model.safetensors      (optional) the same weights for the torch reference backend
    engines/<target>/      (optional) TensorRT engines built on a GPU, each with its own record

Every ONNX regulariser has its preconditioning (EDM's, or the manifest's
``schedule.formulation``: :mod:`diffunfold.formulations`) inside the graph: it maps
``(x, sigma)`` to ``R(x; sigma) = c_skip x + c_out F(c_in x; c_noise)``. Torch-free: the runtime reads this.

The checksums catch damage, not forgery: the loader checks the manifest's structure and keeps
every file inside the folder (:mod:`.package_schema`; docs/packages-and-trust.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import edm
from .contrast import Contrast
from .ensemble import check_ensemble
from .errors import InputError
from .fast_schedule import FastSchedule
from .package_schema import manifest_problems, member_path
from .safe_io import write_json
from .spaces import DataSpace
from .unfolding import NOISE_FLOOR, PROX_ITERATIONS

FORMAT = "diffunfold-package/1"
MANIFEST = "manifest.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest without its own digest, canonical JSON: a changed setting is caught."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    write_json(path, data, indent=1)  # whole or not at all (safe_io)


def write_manifest(directory: str | Path, manifest: dict, files: list[str]) -> dict:
    """Add the checksums of ``files`` (relative to ``directory``) and the manifest's own digest,
    then write ``manifest.json`` last (a package without one is an interrupted export)."""
    directory = Path(directory)
    manifest = dict(manifest, format=FORMAT)
    manifest["files"] = {
        name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size} for name in files
    }
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


@dataclass(frozen=True)
class ModelPackage:
    """A verified package on disk. Build it with :meth:`open`."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> ModelPackage:
        """Read ``manifest.json`` and (``verify``) check every file against its sha256."""
        path = Path(path)
        if path.is_file() and path.name == MANIFEST:
            path = path.parent
        if not path.is_dir():
            raise InputError(
                f"model package {str(path)!r} is not a directory; give the folder `diffunfold export` wrote"
            )
        mpath = path / MANIFEST
        if not mpath.exists():
            raise InputError(
                f"{str(path)!r} has no {MANIFEST}: it is not a model package, or its export "
                "was interrupted; export it again with `diffunfold export CHECKPOINT --out DIR`"
            )
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{mpath} is not valid JSON ({exc}); the package is damaged: export it again") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise InputError(
                f"{mpath} has format {got!r}, expected {FORMAT!r}; export the checkpoint again "
                "with this version of diffunfold"
            )
        problems = manifest_problems(manifest)  # before any field is used: the manifest may be hostile
        if problems:
            raise InputError(
                f"{mpath} is not a valid package manifest ({len(problems)} problem(s); export the "
                "package again):\n" + "\n".join(problems)
            )
        pkg = cls(path, manifest)
        if verify:
            pkg.verify()
        return pkg

    def verify(self) -> None:
        """Refuse a changed manifest, a missing file or a file whose sha256 changed."""
        m = self.manifest
        if m.get("manifest_sha256") != _manifest_digest(m):
            raise InputError(
                f"{self.path / MANIFEST} was edited after export (its digest does not match); "
                "the settings in it cannot be trusted: export the package again"
            )
        for name, rec in m["files"].items():
            f = member_path(self.path, name)  # inside the package, links resolved
            if not f.is_file():
                raise InputError(
                    f"model package {str(self.path)!r} is missing {name}; copy the whole "
                    "package folder or export it again"
                )
            size = f.stat().st_size
            if size != rec["bytes"]:  # checked before reading it
                raise InputError(
                    f"{f} has {size:,} bytes, {MANIFEST} says {rec['bytes']:,}: the file was changed "
                    "or damaged; export it again"
                )
            digest = sha256_file(f)
            if digest != rec["sha256"]:
                raise InputError(
                    f"{f} does not match the checksum in {MANIFEST} ({digest[:12]} != "
                    f"{rec['sha256'][:12]}): the file was changed or damaged; export it again"
                )
        for name in self.regularizer_files + [self.weights_file]:
            if name not in m.get("files", {}):
                raise InputError(f"{MANIFEST} lists {name} but has no checksum for it; export the package again")

    # -- what the runtime reads ---------------------------------------------------------------
    @property
    def settings(self) -> dict:
        return self.manifest["model"]

    @property
    def data_step(self) -> str:
        """``gradient`` (the paper's; packages exported before the setting existed) or
        ``proximal`` (see :mod:`diffunfold.unfolding`)."""
        return str(self.settings.get("data_step", "gradient"))

    @property
    def noise_aware(self) -> bool:
        return bool(self.settings.get("noise_aware", False))

    @property
    def noise_floor(self) -> float:
        return float(self.settings.get("noise_floor", NOISE_FLOOR))

    @property
    def prox_iterations(self) -> int:
        return int(self.settings.get("prox_iterations", PROX_ITERATIONS))

    @property
    def kind(self) -> str:
        """``"unfolding"`` (Diff-Unfolding; packages without the key) or ``"denoiser"`` (a plain
        EDM denoiser, for the zero-shot solvers)."""
        return self.settings.get("kind", "unfolding")

    @property
    def stages(self) -> int:
        return int(self.manifest["stages"])

    @property
    def shared(self) -> bool:
        return bool(self.manifest["shared"])

    @property
    def space(self) -> DataSpace:
        d = self.manifest["data"]
        return DataSpace(d["kind"], int(d["channels"]))

    @property
    def size_multiple(self) -> int:
        return int(self.manifest["data"]["size_multiple"])

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest.get("tasks", []))

    @property
    def schedule(self) -> dict[str, Any]:
        # packages from before diffunfold.formulations are EDM
        s = dict(
            steps=18, sampler="euler", sigma_min=edm.SIGMA_MIN, sigma_max=edm.SIGMA_MAX, rho=edm.RHO, formulation="edm"
        )
        s.update(self.manifest.get("schedule", {}))
        return s

    @property
    def fast_schedule(self) -> FastSchedule | None:
        """The package's few-call schedule (``schedule.fast``: a
        :class:`diffunfold.fast_schedule.FastSchedule`), or None where it has none."""
        value = self.manifest.get("schedule", {}).get("fast")
        return None if value is None else FastSchedule.from_manifest(value, str(self.path))

    @property
    def churn(self) -> edm.Churn:
        """The package's stochastic-sampler setting (``schedule.churn``; absent: the ODE)."""
        try:
            return edm.Churn.of(self.manifest.get("schedule", {}).get("churn"))
        except InputError as e:
            raise InputError(
                f"{self.path}: the manifest's schedule.churn is invalid ({e}); export the package again"
            ) from None

    @property
    def ensemble(self) -> str:
        """The package's self-ensemble of posterior samples (``schedule.ensemble``; absent: none)."""
        try:
            return check_ensemble(self.manifest.get("schedule", {}).get("ensemble", "none"))
        except InputError as e:
            raise InputError(
                f"{self.path}: the manifest's schedule.ensemble is invalid ({e}); export the package again"
            ) from None

    @property
    def contrast(self) -> Contrast | None:
        """The package's contrast stretch of flat images (``schedule.contrast``; absent: none)."""
        try:
            contrast = Contrast.of(self.manifest.get("schedule", {}).get("contrast"))
        except InputError as e:
            raise InputError(
                f"{self.path}: the manifest's schedule.contrast is invalid ({e}); export the package again"
            ) from None
        if contrast is not None and self.space.complex:
            raise InputError(
                f"{self.path}: an MRI package cannot ask for the contrast stretch (images only); "
                "export the package again"
            )
        return contrast

    @property
    def regularizer_files(self) -> list[str]:
        return list(self.manifest["networks"]["regularizers"])

    @property
    def weights_file(self) -> str:
        return self.manifest["networks"]["weights"]

    @property
    def torch_weights_file(self) -> str | None:
        return self.manifest["networks"].get("torch_weights")

    def file(self, name: str) -> Path:
        return member_path(self.path, name)

    def engine_dir(self, target: str) -> Path:
        return self.path / "engines" / target

    def summary(self) -> str:
        m = self.manifest
        src = m.get("source", {})
        trained = f"; step {src.get('step', '?')} ({src.get('weights', '?')} weights)"
        if self.kind == "denoiser":
            return (
                f"{self.path.name}: {m['data']['kind']} unconditional EDM denoiser, for the zero-shot solvers{trained}"
            )
        return (
            f"{self.path.name}: {m['data']['kind']} model, K={self.stages} "
            f"({'shared' if self.shared else 'separate'} networks), {self.data_step} data step"
            f"{' (noise-aware)' if self.noise_aware else ''}, trained on {', '.join(self.tasks) or '?'}{trained}"
        )

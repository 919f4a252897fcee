"""Export: a checkpoint's EMA weights to a model package (ONNX + manifest). Needs the `export`
extra (torch, onnx); the package it writes is read by the torch-free runtime."""

from ..errors import require

require("torch", "export")
require("onnx", "export")

from .onnx_export import ExportCheck, export_checkpoint, export_model  # noqa: E402

__all__ = ["ExportCheck", "export_checkpoint", "export_model"]

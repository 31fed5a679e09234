"""Export a released model to ONNX or TorchScript files, and check an export against eager PyTorch.

What every export contains is :class:`~kd_depth_core.inference.deploy.DeployModule` (network →
depth, no normalisation: the encoder normalises), so

- input: ``image`` (mono) or ``left``, ``right`` (stereo): RGB float32 in [0, 1], shape
  (B, 3, H, W) with a dynamic batch axis and the fixed H×W of the export (the metadata's input
  size unless overridden); resize and scale images to [0, 1] yourself, nothing else;
- outputs: ``depth`` (B, 1, H, W) metres and, for models with uncertainty, ``uncertainty``
  (B, 1, H, W) standard deviation of depth in metres (exp of ``log_sigma``).
  No metric rescaling is applied (see ``inference/scale.py``; the predictor does it).

ONNX: opset :data:`ONNX_OPSET` = 17 (the TorchScript-based exporter of torch supports up to
20; 17 is the oldest opset with native LayerNormalization and runs on ONNX Runtime >= 1.12 and
TensorRT >= 8.6). The torch.export-based exporter would need ``onnxscript``, which kd-depth does
not install. The metadata JSON is stored in the ONNX ``metadata_props`` under ``kd_depth``
(with the input size and focal length of the export).

TorchScript: a trace, saved with the metadata JSON as the extra file ``kd_depth.json``; named
``*.torchscript`` (kd-depth refuses ``.pt`` files as pickles). Load only files you exported.
"""
from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kd_depth_core.inference.backends import Backend, open_export
from kd_depth_core.inference.deploy import (  # noqa: F401  (re-exported: the names callers import from here)
    ONNX_METADATA_KEY,
    ONNX_OPSET,
    TORCHSCRIPT_METADATA_FILE,
    TORCHSCRIPT_SUFFIX,
    DeployModule,
    example_inputs,
    input_names,
    metadata_at_size,
    onnx_bytes,
    output_names,
    quiet_torch_deprecations,
    trace_torchscript,
)
from kd_depth_core.models.io import ModelMetadata
from kd_depth_core.utils.atomic import write_bytes_atomic

EXPORT_FORMATS = ("onnx", "torchscript")


def export_onnx(model: nn.Module, metadata: ModelMetadata, path: str | os.PathLike, height: int | None = None,
                width: int | None = None, opset: int = ONNX_OPSET) -> Path:
    """Write an ONNX export (see module docstring) atomically; returns the path."""
    path = Path(path)
    write_bytes_atomic(path, onnx_bytes(model, metadata_at_size(metadata, height, width), opset))
    return path


def export_torchscript(model: nn.Module, metadata: ModelMetadata, path: str | os.PathLike,
                       height: int | None = None, width: int | None = None) -> Path:
    """Write a TorchScript trace with the metadata as extra file ``kd_depth.json``, atomically."""
    path = Path(path)
    if path.suffix != TORCHSCRIPT_SUFFIX:
        raise ValueError(f"{path}: name TorchScript exports '*{TORCHSCRIPT_SUFFIX}' (kd-depth refuses .pt/.pth "
                         "files, which are usually pickles)")
    metadata = metadata_at_size(metadata, height, width)
    traced = trace_torchscript(model, metadata)
    buffer = io.BytesIO()
    with quiet_torch_deprecations():
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_METADATA_FILE: metadata.to_json()})
    write_bytes_atomic(path, buffer.getvalue())
    return path


def export_model(model: nn.Module, metadata: ModelMetadata, path: str | os.PathLike, fmt: str,
                 height: int | None = None, width: int | None = None) -> Path:
    """``fmt`` 'onnx' or 'torchscript' -> :func:`export_onnx` / :func:`export_torchscript`."""
    if fmt == "onnx":
        return export_onnx(model, metadata, path, height, width)
    if fmt == "torchscript":
        return export_torchscript(model, metadata, path, height, width)
    raise ValueError(f"format: expected one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")


@dataclasses.dataclass(frozen=True)
class ExportCheck:
    """Largest differences between an export and eager PyTorch over every output (metres / relative)."""

    max_abs_error: float
    max_rel_error: float
    batch: int

    def passed(self, rel_tolerance: float) -> bool:
        return self.max_rel_error <= rel_tolerance


def check_backend(backend: Backend, model: nn.Module, metadata: ModelMetadata, batch: int = 2,
                  seed: int = 0, where: str = "the export") -> ExportCheck:
    """Run ``backend`` (an export's runtime) and eager ``DeployModule(model, metadata)`` on the same deterministic
    random batch at the metadata's input size; the largest differences over every output."""
    inputs = example_inputs(metadata, batch=batch, seed=seed)
    deploy = DeployModule(model, metadata).eval()
    with torch.no_grad():
        expected = [t.numpy() for t in deploy(*inputs)]
    depth, uncertainty = backend.run(*(x.numpy() for x in inputs))
    actual = [depth] + ([uncertainty] if uncertainty is not None else [])
    if len(actual) != len(expected):
        raise RuntimeError(f"{where}: {len(actual)} outputs where eager has {len(expected)}")
    max_abs = max_rel = 0.0
    for got, want in zip(actual, expected):
        if got.shape != want.shape:
            raise RuntimeError(f"{where}: output shape {got.shape} differs from eager {want.shape}")
        diff = np.abs(got.astype(np.float64) - want)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / np.maximum(np.abs(want), 1e-3)).max()))  # 1 mm floor
    return ExportCheck(max_abs, max_rel, batch)


def verify_export(path: str | os.PathLike, model: nn.Module, metadata: ModelMetadata, batch: int = 2,
                  seed: int = 0) -> ExportCheck:
    """Run the export (ONNX Runtime on CPU, or TorchScript) and eager ``DeployModule`` on the same random batch."""
    backend, export_meta = open_export(path, device="cpu")
    return check_backend(backend, model, export_meta, batch=batch, seed=seed, where=str(path))

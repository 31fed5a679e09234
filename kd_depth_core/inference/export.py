"""Export a released model to ONNX or TorchScript, and check an export against eager PyTorch.

What every export contains is :class:`DeployModule`: normalisation with the metadata's
mean/std, the network, and the conversion of its sigmoid disparity to depth, so

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

import contextlib
import dataclasses
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kd_depth_core.geometry import disp_to_depth
from kd_depth_core.models.io import ModelMetadata
from kd_depth_core.utils.atomic import write_bytes_atomic

ONNX_OPSET = 17
ONNX_METADATA_KEY = "kd_depth"
TORCHSCRIPT_METADATA_FILE = "kd_depth.json"
TORCHSCRIPT_SUFFIX = ".torchscript"
EXPORT_FORMATS = ("onnx", "torchscript")


class DeployModule(nn.Module):
    """Normalise → network → depth (+ uncertainty); the graph every backend runs and every export holds.

    ``forward(image)`` (mono) or ``forward(left, right)`` (stereo), RGB in [0, 1] (B,3,H,W)
    float32 -> tuple ``(depth,)`` or ``(depth, uncertainty)``, (B,1,H,W) float32 metres.
    The network runs in ``compute_dtype`` (cast the network to it beforehand); the depth
    conversion always runs in float32.
    """

    def __init__(self, model: nn.Module, metadata: ModelMetadata, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(metadata.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(metadata.std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.min_depth, self.max_depth = metadata.min_depth, metadata.max_depth
        self.with_uncertainty = metadata.has_uncertainty
        self.num_inputs = 2 if metadata.stereo else 1
        self.compute_dtype = compute_dtype

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        normalised = [((image - self.mean) * self.inv_std).to(self.compute_dtype) for image in images]
        outputs = self.model(*normalised)
        _, depth = disp_to_depth(outputs["disp"][0].float(), self.min_depth, self.max_depth)
        if not self.with_uncertainty:
            return (depth,)
        if "log_sigma" not in outputs:
            raise RuntimeError("the model metadata says has_uncertainty=true but the network returned no 'log_sigma'")
        return depth, torch.exp(outputs["log_sigma"].float())


def input_names(metadata: ModelMetadata) -> list[str]:
    return ["left", "right"] if metadata.stereo else ["image"]


def output_names(metadata: ModelMetadata) -> list[str]:
    return ["depth", "uncertainty"] if metadata.has_uncertainty else ["depth"]


def metadata_at_size(metadata: ModelMetadata, height: int | None, width: int | None) -> ModelMetadata:
    """Metadata for running the network at ``height``×``width``: input size set, training fx rescaled to it."""
    height = metadata.input_height if height is None else int(height)
    width = metadata.input_width if width is None else int(width)
    for name, value in (("height", height), ("width", width)):
        if value < metadata.size_multiple or value % metadata.size_multiple:
            raise ValueError(f"{name} {value}: expected a positive multiple of the model's size_multiple "
                             f"({metadata.size_multiple})")
    focal = metadata.focal_length_px
    if focal is not None:
        focal = focal * width / metadata.input_width
    return dataclasses.replace(metadata, input_height=height, input_width=width, focal_length_px=focal)


def example_inputs(metadata: ModelMetadata, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Deterministic random RGB inputs in [0, 1] at the metadata's input size."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, metadata.input_height, metadata.input_width)
    return tuple(torch.rand(shape, generator=generator) for _ in range(2 if metadata.stereo else 1))


@contextlib.contextmanager
def _quiet_torch_deprecations():
    """torch marks its TorchScript-based tools deprecated; they are what runs here (see module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1")  # reflection pad, harmless
        yield


def onnx_bytes(model: nn.Module, metadata: ModelMetadata, opset: int = ONNX_OPSET) -> bytes:
    """Serialised ONNX model of ``DeployModule(model, metadata)`` at the metadata's input size (batch dynamic)."""
    import onnx

    deploy = DeployModule(model, metadata).eval()
    inputs, outputs = input_names(metadata), output_names(metadata)
    buffer = io.BytesIO()
    with _quiet_torch_deprecations(), torch.no_grad():
        torch.onnx.export(deploy, example_inputs(metadata), buffer, input_names=inputs, output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, metadata.to_json()
    proto.doc_string = (f"kd-depth {metadata.describe()}: inputs {', '.join(inputs)} RGB float32 [0,1] (B,3,"
                        f"{metadata.input_height},{metadata.input_width}); outputs {', '.join(outputs)} "
                        "(B,1,H,W) metres")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(model: nn.Module, metadata: ModelMetadata, path: str | os.PathLike, height: int | None = None,
                width: int | None = None, opset: int = ONNX_OPSET) -> Path:
    """Write an ONNX export (see module docstring) atomically; returns the path."""
    path = Path(path)
    write_bytes_atomic(path, onnx_bytes(model, metadata_at_size(metadata, height, width), opset))
    return path


def trace_torchscript(model: nn.Module, metadata: ModelMetadata,
                      compute_dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                      ) -> torch.jit.ScriptModule:
    """Trace ``DeployModule`` at the metadata's input size (batch 1; other batch sizes run too)."""
    deploy = DeployModule(model, metadata, compute_dtype).eval().to(device)
    inputs = tuple(x.to(device) for x in example_inputs(metadata))
    with _quiet_torch_deprecations(), torch.no_grad():
        return torch.jit.trace(deploy, inputs, check_trace=False)


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
    with _quiet_torch_deprecations():
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


def verify_export(path: str | os.PathLike, model: nn.Module, metadata: ModelMetadata, batch: int = 2,
                  seed: int = 0) -> ExportCheck:
    """Run the export (ONNX Runtime on CPU, or TorchScript) and eager ``DeployModule`` on the same random batch."""
    from kd_depth_core.inference.backends import open_export

    backend, export_meta = open_export(path, device="cpu")
    inputs = example_inputs(export_meta, batch=batch, seed=seed)
    deploy = DeployModule(model, export_meta).eval()
    with torch.no_grad():
        expected = [t.numpy() for t in deploy(*inputs)]
    depth, uncertainty = backend.run(*(x.numpy() for x in inputs))
    actual = [depth] + ([uncertainty] if uncertainty is not None else [])
    if len(actual) != len(expected):
        raise RuntimeError(f"{path}: the export has {len(actual)} outputs, eager has {len(expected)}")
    max_abs = max_rel = 0.0
    for got, want in zip(actual, expected):
        if got.shape != want.shape:
            raise RuntimeError(f"{path}: output shape {got.shape} differs from eager {want.shape}")
        diff = np.abs(got.astype(np.float64) - want)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / np.maximum(np.abs(want), 1e-3)).max()))  # 1 mm floor
    return ExportCheck(max_abs, max_rel, batch)

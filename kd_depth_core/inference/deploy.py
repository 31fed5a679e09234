"""The deployed graph: what every backend runs and every export holds (``DeployModule``).

``DeployModule``: the network, and the conversion of its sigmoid disparity to depth (and of
``log_sigma`` to a standard deviation). It does not normalise: kd-depth networks take RGB in
[0, 1] and normalise inside their encoder (``models.encoders``, the one normalisation site), so
the metadata mean/std must be the identity (``models.frozen.check_identity_normalisation``).

- input: ``image`` (mono) or ``left``, ``right`` (stereo): RGB float32 in [0, 1], (B,3,H,W);
- outputs: ``depth`` (B,1,H,W) metres and, for models with uncertainty, ``uncertainty``
  (B,1,H,W) standard deviation of depth in metres (exp of ``log_sigma``).

Also here: the serialised forms both ``inference.export`` (files) and ``inference.backends``
(sessions) build from it, :func:`onnx_bytes` and :func:`trace_torchscript`; the names they store the
metadata under live in the torch-free :mod:`kd_depth_core.inference.formats` (re-exported here).
Import direction: export -> backends -> deploy -> formats (no circle).
"""
from __future__ import annotations

import contextlib
import io
import warnings

import torch
from torch import nn

from kd_depth_core.geometry import disp_to_depth
from kd_depth_core.inference.formats import (  # noqa: F401  (re-exported: the names callers import from here)
    ONNX_METADATA_KEY,
    ONNX_OPSET,
    TORCHSCRIPT_METADATA_FILE,
    TORCHSCRIPT_SUFFIX,
    input_names,
    metadata_at_size,
    output_names,
)
from kd_depth_core.models.frozen import check_identity_normalisation
from kd_depth_core.models.io import ModelMetadata


class DeployModule(nn.Module):
    """Network → depth (+ uncertainty); the graph every backend runs and every export holds.

    ``forward(image)`` (mono) or ``forward(left, right)`` (stereo), RGB in [0, 1] (B,3,H,W)
    float32 -> tuple ``(depth,)`` or ``(depth, uncertainty)``, (B,1,H,W) float32 metres.
    The network runs in ``compute_dtype`` (cast the network to it beforehand); the depth
    conversion always runs in float32.
    """

    def __init__(self, model: nn.Module, metadata: ModelMetadata, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        check_identity_normalisation(metadata, f"model {metadata.model_name}")
        self.model = model
        self.min_depth, self.max_depth = metadata.min_depth, metadata.max_depth
        self.with_uncertainty = metadata.has_uncertainty
        self.num_inputs = 2 if metadata.stereo else 1
        self.compute_dtype = compute_dtype

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(*(image.to(self.compute_dtype) for image in images))
        _, depth = disp_to_depth(outputs["disp"][0].float(), self.min_depth, self.max_depth)
        if not self.with_uncertainty:
            return (depth,)
        if "log_sigma" not in outputs:
            raise RuntimeError("the model metadata says has_uncertainty=true but the network returned no 'log_sigma'")
        return depth, torch.exp(outputs["log_sigma"].float())


def example_inputs(metadata: ModelMetadata, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Deterministic random RGB inputs in [0, 1] at the metadata's input size."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, metadata.input_height, metadata.input_width)
    return tuple(torch.rand(shape, generator=generator) for _ in range(2 if metadata.stereo else 1))


@contextlib.contextmanager
def quiet_torch_deprecations():
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
    with quiet_torch_deprecations(), torch.no_grad():
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


def trace_torchscript(model: nn.Module, metadata: ModelMetadata,
                      compute_dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                      ) -> torch.jit.ScriptModule:
    """Trace ``DeployModule`` at the metadata's input size (batch 1; other batch sizes run too)."""
    deploy = DeployModule(model, metadata, compute_dtype).eval().to(device)
    inputs = tuple(x.to(device) for x in example_inputs(metadata))
    with quiet_torch_deprecations(), torch.no_grad():
        return torch.jit.trace(deploy, inputs, check_trace=False)

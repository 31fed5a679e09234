"""Runtime backends: torch eager, TorchScript, ONNX Runtime — one ``run`` contract for all.

``backend.run(*inputs)`` takes RGB float32 numpy batches in [0, 1], (B,3,H,W) at
``backend.input_size`` (one array for mono networks, left and right for stereo) and returns
``(depth, uncertainty or None)``, float32 numpy (B,1,H,W) in metres. Each backend runs
:class:`~kd_depth_core.inference.deploy.DeployModule` (network → depth), eagerly,
traced, or exported to ONNX. Backends hold no per-call state; callers serialise ``run`` if
the runtime needs it (the predictor holds a lock).

torch is imported inside the torch and TorchScript paths only (and ``deploy`` with it): ONNX Runtime
serves an ``.onnx`` export without loading torch (``test/test_lean_runtime.py``).
"""
from __future__ import annotations

import copy
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kd_depth_core.inference.formats import ONNX_METADATA_KEY, TORCHSCRIPT_METADATA_FILE, TORCHSCRIPT_SUFFIX
from kd_depth_core.model_metadata import ModelFileError, ModelMetadata

if TYPE_CHECKING:
    import torch
    from torch import nn

BACKENDS = ("torch", "torchscript", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without CUDA is an error."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device (use device='cpu' or 'auto')")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {device}")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; on the CPU use 'fp32' or 'bf16'")
    return getattr(torch, _DTYPES[precision])


class Backend(ABC):
    """Runs the deployed graph: RGB [0, 1] (B,3,H,W) float32 numpy -> (depth, uncertainty | None) numpy metres."""

    name: str
    device: str
    precision: str
    input_size: tuple[int, int]  # (height, width)

    @abstractmethod
    def run(self, *inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.precision})"


class TorchBackend(Backend):
    """Eager (``DeployModule``) or TorchScript module on a torch device."""

    def __init__(self, module: nn.Module, device: torch.device, precision: str, input_size: tuple[int, int],
                 name: str = "torch") -> None:
        self.module, self.torch_device = module, device
        self.name, self.device, self.precision = name, str(device), precision
        self.input_size = input_size

    def run(self, *inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.torch_device,
                                                                                      non_blocking=True)
                       for x in inputs]
            outputs = self.module(*tensors)
        depth = outputs[0].float().cpu().numpy()
        uncertainty = outputs[1].float().cpu().numpy() if len(outputs) > 1 else None
        return depth, uncertainty


def usable_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``: taskset, cpusets), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def onnx_threads(cpu_threads: int = 0) -> int:
    """Intra-op threads for an ONNX Runtime session: ``cpu_threads`` when > 0; 0 = ONNX Runtime's default (one per
    physical core of the machine), except in a process restricted to fewer CPUs (taskset, cpuset), which gets one
    thread per CPU it may use. ONNX Runtime counts the machine's cores, not the process's: two spinning threads on
    one allowed core ran the student 2.3x slower (32 vs 14 ms, docs/benchmarks.md, issue 19 item 8); torch already follows
    the affinity."""
    if cpu_threads > 0:
        return int(cpu_threads)
    usable = usable_cpus()
    return usable if usable < (os.cpu_count() or usable) else 0


def onnx_session(source: bytes | str, device: str = "auto", cpu_threads: int = 0):
    """An ONNX Runtime session on ``device`` ('auto': CUDA when this onnxruntime has it, 'cpu', 'cuda[:N]'),
    ``cpu_threads`` intra-op threads (0: see :func:`onnx_threads`). The one place execution providers (and CPU
    threads) are chosen."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if str(device) == "auto":
        use_cuda = "CUDAExecutionProvider" in available
    elif str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError("device 'cuda' requested but this onnxruntime has no CUDAExecutionProvider "
                               f"(available: {', '.join(available)}); install onnxruntime-gpu or use 'cpu'")
        use_cuda = True
    elif str(device) == "cpu":
        use_cuda = False
    else:
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = onnx_threads(int(cpu_threads))
    providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
    return ort.InferenceSession(source, sess_options=options, providers=providers)


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime session (CUDA execution provider when requested and present, else CPU)."""

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, model: bytes | str | os.PathLike, device: str = "auto", cpu_threads: int = 0) -> None:
        """``cpu_threads``: ONNX Runtime intra-op threads (0 = its default, see :func:`onnx_threads`)."""
        self.session = onnx_session(model if isinstance(model, bytes) else str(model), device, cpu_threads)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.input_names = [item.name for item in self.session.get_inputs()]
        self.output_names = [item.name for item in self.session.get_outputs()]
        shape = self.session.get_inputs()[0].shape
        if not (isinstance(shape[2], int) and isinstance(shape[3], int)):
            raise ModelFileError(f"ONNX input {self.input_names[0]!r} has shape {shape}; kd-depth exports have a "
                                 "fixed height and width")
        self.input_size = (int(shape[2]), int(shape[3]))

    def run(self, *inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        feeds = {name: np.ascontiguousarray(x, dtype=np.float32) for name, x in zip(self.input_names, inputs)}
        outputs = self.session.run(self.output_names, feeds)
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)


def _freeze(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """``torch.jit.freeze``: weights become constants, conv+batch-norm fold (faster inference)."""
    import torch

    from kd_depth_core.inference.deploy import quiet_torch_deprecations

    with quiet_torch_deprecations():
        return torch.jit.freeze(module.eval())


def create_backend(kind: str, model: nn.Module, metadata: ModelMetadata, device: str | torch.device = "auto",
                   precision: str = "fp32", cpu_threads: int = 0) -> Backend:
    """A backend for ``model`` at the metadata's input size. The model is copied, never changed in place.

    ``cpu_threads`` sets ONNX Runtime's intra-op threads (0 = default); torch backends use
    ``torch.set_num_threads`` (process-wide, so it is left to the caller).
    """
    from kd_depth_core.inference.deploy import DeployModule, onnx_bytes, trace_torchscript

    if kind not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {kind!r}")
    size = (metadata.input_height, metadata.input_width)
    if kind == "onnxruntime":
        if precision != "fp32":
            raise ValueError(f"backend 'onnxruntime' runs the fp32 ONNX graph; precision {precision!r} is only "
                             "available with the torch and torchscript backends")
        return OnnxRuntimeBackend(onnx_bytes(copy.deepcopy(model).float().cpu().eval(), metadata),
                                  device=str(device), cpu_threads=cpu_threads)
    torch_device = resolve_device(device)
    dtype = resolve_precision(precision, torch_device)
    network = copy.deepcopy(model).eval().to(device=torch_device, dtype=dtype)
    if kind == "torchscript":
        module = _freeze(trace_torchscript(network, metadata, dtype, torch_device))
        return TorchBackend(module, torch_device, precision, size, name="torchscript")
    module = DeployModule(network, metadata, dtype).eval().to(torch_device)
    return TorchBackend(module, torch_device, precision, size, name="torch")


def open_export(path: str | os.PathLike, device: str = "auto") -> tuple[Backend, ModelMetadata]:
    """Open an exported file (``.onnx`` or ``.torchscript``) as a backend, with its kd-depth metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"export not found: {path}")
    if path.suffix == ".onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # protobuf and onnx raise several kinds
            raise ModelFileError(f"{path}: not a readable ONNX model ({error})") from error
        props = {entry.key: entry.value for entry in proto.metadata_props}
        if ONNX_METADATA_KEY not in props:
            raise ModelFileError(f"{path}: ONNX model without kd-depth metadata ('{ONNX_METADATA_KEY}' in "
                                 "metadata_props); export it with `kd-depth export`")
        metadata = ModelMetadata.from_json(props[ONNX_METADATA_KEY], where=str(path))
        backend = OnnxRuntimeBackend(proto.SerializeToString(), device=device)
        return backend, metadata
    if path.suffix == TORCHSCRIPT_SUFFIX:
        import torch

        from kd_depth_core.inference.deploy import quiet_torch_deprecations

        torch_device = resolve_device(device)
        extra = {TORCHSCRIPT_METADATA_FILE: ""}
        try:
            with quiet_torch_deprecations():
                module = torch.jit.load(str(path), map_location=torch_device, _extra_files=extra)
        except RuntimeError as error:
            raise ModelFileError(f"{path}: not a readable TorchScript archive ({error})") from error
        if not extra[TORCHSCRIPT_METADATA_FILE]:
            raise ModelFileError(f"{path}: TorchScript file without kd-depth metadata ({TORCHSCRIPT_METADATA_FILE}); "
                                 "export it with `kd-depth export`")
        metadata = ModelMetadata.from_json(extra[TORCHSCRIPT_METADATA_FILE].decode("utf-8"), where=str(path))
        module = _freeze(module.eval())
        return TorchBackend(module, torch_device, "fp32", (metadata.input_height, metadata.input_width),
                            name="torchscript"), metadata
    raise ModelFileError(f"{path}: unknown export type; expected '.onnx' or '{TORCHSCRIPT_SUFFIX}'")

"""Released-model file format: safetensors weights + kd-depth metadata in the safetensors header.

A released model is ONE ``.safetensors`` file. Its header's ``__metadata__`` (a str -> str map)
holds two entries:

- ``"kd_depth"``: the JSON of :class:`ModelMetadata` (how to rebuild the network, the input
  size and normalisation, the depth range, metric or relative scale, training camera focal
  length, ...);
- ``"kd_depth_sha256"``: SHA-256 of the tensor data that follows the header, checked on load so
  a truncated or bit-rotten file is refused instead of silently giving wrong depth. (It detects
  corruption and careless edits; it is not a signature against a deliberate forger.)

Nothing is unpickled: the header is JSON, the tensors are raw bytes, and ``.pt``/``.pth``
pickles are refused with advice on converting them.

    save_model("model.safetensors", model, ModelMetadata.from_model(model, input_height=192, ...))
    model, meta = load_model("model.safetensors", device="cpu")   # rebuilt with create_model
    meta = read_metadata("model.safetensors")                     # header only, no weights
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_depth_core.model_metadata import (  # noqa: F401  (re-exported: the names callers import from here)
    FORMAT_VERSION,
    OPTIONAL_FIELDS,
    ModelFileError,
    ModelMetadata,
    ScaleKind,
)
from kd_depth_core.utils.atomic import write_bytes_atomic

METADATA_KEY = "kd_depth"
CHECKSUM_KEY = "kd_depth_sha256"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors reference implementation's limit
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


@dataclass
class _SafetensorsHeader:
    tensors: dict[str, Any]
    metadata: dict[str, str]
    data_start: int
    file_size: int


# --------------------------------------------------------------------------- reading helpers
_CONVERT_ADVICE = ("To convert weights you trust: rebuild the network with create_model, "
                   "load_state_dict(torch.load(path, weights_only=True)), then call "
                   "kd_depth_core.models.io.save_model(...).")


def _refuse_pickle_suffix(path: Path) -> None:
    if path.suffix.lower() == ".onnx":
        raise ModelFileError(f"{path}: an ONNX export, not a released model; run it with "
                             "DepthPredictor(path, backend='onnxruntime')")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFileError(
            f"{path}: refusing to load a '{path.suffix}' file. Such files are Python pickles, which can run "
            "arbitrary code when loaded, and kd-depth never unpickles. Released models are '.safetensors' "
            "files written by kd_depth_core.models.io.save_model (`kd-depth train` writes "
            f"<run>/model.safetensors). {_CONVERT_ADVICE}")


def _sniff_kind(head: bytes) -> str | None:
    """Name a known non-safetensors format from the first bytes, or None."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (the torch.save format, which holds a pickle)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle"
    return None


def _read_header(path: Path, handle) -> _SafetensorsHeader:
    file_size = os.fstat(handle.fileno()).st_size
    head = handle.read(8)
    kind = _sniff_kind(head + handle.read(56))
    if kind is not None:
        raise ModelFileError(f"{path}: not a safetensors released model: the file is {kind}, and kd-depth "
                             f"never unpickles. {_CONVERT_ADVICE}")
    if len(head) < 8:
        raise ModelFileError(f"{path}: truncated or empty ({file_size} bytes): a safetensors file starts with "
                             "an 8-byte header length")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > MAX_HEADER_BYTES or header_len < 2:
        raise ModelFileError(f"{path}: not a safetensors file (header length {header_len} is implausible)")
    if 8 + header_len > file_size:
        raise ModelFileError(f"{path}: truncated: the header claims {header_len} bytes but the file has only "
                             f"{file_size - 8} after the length field")
    handle.seek(8)
    raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: corrupt safetensors header ({error})") from error
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: corrupt safetensors header (__metadata__ is not an object)")
    return _SafetensorsHeader(tensors=header, metadata=metadata, data_start=8 + header_len, file_size=file_size)


def _metadata_from_header(path: Path, header: _SafetensorsHeader) -> ModelMetadata:
    text = header.metadata.get(METADATA_KEY)
    if text is None:
        raise ModelFileError(f"{path}: safetensors file without kd-depth metadata (no '{METADATA_KEY}' entry "
                             "in __metadata__): it holds weights only. Rebuild the network and write it with "
                             "kd_depth_core.models.io.save_model to get a released model.")
    return ModelMetadata.from_json(text, where=str(path))


def read_metadata(path: str | os.PathLike) -> ModelMetadata:
    """Metadata of a released model, reading only the header (no weights, no checksum)."""
    path = Path(path)
    _refuse_pickle_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with open(path, "rb") as handle:
        header = _read_header(path, handle)
    return _metadata_from_header(path, header)


def read_checked(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelMetadata]:
    """Read and verify a released model: (state dict of CPU tensors, metadata).

    Refuses pickles, truncated files, files whose data no longer match the recorded checksum,
    and headers whose tensor table does not cover the data exactly.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors_bytes

    path = Path(path)
    _refuse_pickle_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with open(path, "rb") as handle:
        header = _read_header(path, handle)
        metadata = _metadata_from_header(path, header)
        handle.seek(0)
        blob = handle.read()
    expected = header.metadata.get(CHECKSUM_KEY)
    if expected is None:
        raise ModelFileError(f"{path}: no '{CHECKSUM_KEY}' checksum in the header; released models written by "
                             "save_model always carry one (re-save the model)")
    actual = hashlib.sha256(memoryview(blob)[header.data_start:]).hexdigest()
    if actual != expected:
        raise ModelFileError(f"{path}: the weights do not match the checksum recorded when the file was written "
                             "(file truncated, corrupted or modified); re-download or re-export it")
    try:
        tensors = load_safetensors_bytes(blob)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: invalid safetensors tensor table ({error})") from error
    return tensors, metadata


# --------------------------------------------------------------------------- public API
def save_model(path: str | os.PathLike, model: nn.Module, metadata: ModelMetadata) -> Path:
    """Write ``model``'s weights and ``metadata`` as one released ``.safetensors`` file, atomically.

    ``metadata.model_name``/``model_kwargs`` must rebuild ``model`` with ``create_model``; the
    state dict is saved from CPU copies (shared tensors are written once per key).
    """
    from safetensors.torch import save as save_safetensors_bytes

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: released models are written as '.safetensors' files")
    if not isinstance(metadata, ModelMetadata):
        raise TypeError(f"metadata: expected a ModelMetadata (see ModelMetadata.from_model), got "
                        f"{type(metadata).__name__}")
    metadata = ModelMetadata.from_dict(metadata.to_dict(), where=f"{path} (metadata to save)")
    state = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in model.state_dict().items()}
    blob = save_safetensors_bytes(state, metadata={METADATA_KEY: metadata.to_json()})
    (header_len,) = struct.unpack("<Q", blob[:8])
    checksum = hashlib.sha256(memoryview(blob)[8 + header_len:]).hexdigest()
    # Re-serialising with the checksum changes only the header; the tensor bytes are identical.
    blob = save_safetensors_bytes(state, metadata={METADATA_KEY: metadata.to_json(), CHECKSUM_KEY: checksum})
    write_bytes_atomic(path, blob)
    return path


def build_model(metadata: ModelMetadata) -> nn.Module:
    """A randomly initialised network for ``metadata`` via ``create_model`` (model specs hold no weight paths)."""
    from kd_depth_core.models import create_model

    return create_model(metadata.model_name, **metadata.model_kwargs)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMetadata]:
    """Rebuild a released model with ``create_model`` and load its verified weights: (model in eval mode, metadata)."""
    path = Path(path)
    tensors, metadata = read_checked(path)
    try:
        model = build_model(metadata)
    except (KeyError, ValueError, TypeError) as error:
        raise ModelFileError(f"{path}: cannot rebuild model {metadata.model_name!r} with {metadata.model_kwargs} "
                             f"in this kd-depth: {error}") from error
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ModelFileError(f"{path}: weights do not fit {metadata.model_name!r} built with "
                             f"{metadata.model_kwargs}: {error}") from error
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing {len(result.missing_keys)} (e.g. {', '.join(result.missing_keys[:3])})")
        if result.unexpected_keys:
            parts.append(f"unexpected {len(result.unexpected_keys)} (e.g. {', '.join(result.unexpected_keys[:3])})")
        raise ModelFileError(f"{path}: weights do not fit {metadata.model_name!r} built with "
                             f"{metadata.model_kwargs}: {'; '.join(parts)}")
    return model.to(device).eval(), metadata

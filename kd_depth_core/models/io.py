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

import dataclasses
import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from kd_depth_core.utils.atomic import write_bytes_atomic

FORMAT_VERSION = 1
"""Current released-model format version; files with a higher version are refused."""

METADATA_KEY = "kd_depth"
CHECKSUM_KEY = "kd_depth_sha256"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors reference implementation's limit
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")

ScaleKind = Literal["metric", "relative"]
OPTIONAL_FIELDS = ("baseline_m", "format_version")
"""Metadata fields a file may lack (added after format 1 was released; they then take their default)."""


class ModelFileError(ValueError):
    """A released model file is missing, malformed, tampered with or of the wrong kind (message names it)."""


@dataclass
class ModelMetadata:
    """Everything needed to run a released network correctly; travels inside the weights file.

    Sizes in pixels, depths in metres. ``mean``/``std`` must be (0,0,0)/(1,1,1): networks take RGB in
    [0, 1] and normalise inside their encoder (the one normalisation site); teachers and exports
    refuse other values rather than ignore them.
    ``focal_length_px`` is the training camera's fx at ``input_width`` (None when unknown); a
    metric model is rescaled by runtime fx / training fx (see ``inference/scale.py``).
    ``baseline_m`` is the training stereo baseline in metres (None when unknown or monocular; files
    written before it existed load with None); a metric stereo model is rescaled by
    (fx · B) / (fx_train · B_train) when both baselines are known.
    """

    model_name: str
    model_kwargs: dict[str, Any]
    input_height: int
    input_width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size_multiple: int
    min_depth: float
    max_depth: float
    scale_kind: ScaleKind
    focal_length_px: float | None
    stereo: bool
    has_uncertainty: bool
    training_config: dict[str, Any]
    created_by: str
    baseline_m: float | None = None
    format_version: int = FORMAT_VERSION

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_model(cls, model: nn.Module, **fields: Any) -> ModelMetadata:
        """Metadata for a model built by ``create_model``: name/kwargs come from ``model.model_spec``.

        Defaults: mean (0,0,0), std (1,1,1) (kd-depth networks take [0, 1] RGB and normalise
        inside), ``size_multiple`` from ``model.size_multiple`` (else 32), ``stereo`` from
        ``model.input_names`` (two inputs = stereo), ``has_uncertainty`` from
        ``model.has_uncertainty`` (else False), empty ``training_config``, ``created_by`` =
        "kd-depth <version>". The input size, depth range, scale kind and focal length are required.
        """
        spec = getattr(model, "model_spec", None)
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"{type(model).__name__} has no model_spec {{'name', 'kwargs'}}: build it with "
                             "kd_depth_core.models.create_model so it can be rebuilt from metadata")
        from kd_depth_core import __version__

        values: dict[str, Any] = {
            "model_name": spec["name"], "model_kwargs": dict(spec.get("kwargs") or {}),
            "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
            "size_multiple": int(getattr(model, "size_multiple", 32)),
            "stereo": len(getattr(model, "input_names", ("image",))) == 2,
            "has_uncertainty": bool(getattr(model, "has_uncertainty", False)),
            "training_config": {}, "created_by": f"kd-depth {__version__}",
        }
        values.update(fields)
        return cls.from_dict(values, where="ModelMetadata.from_model")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "metadata") -> ModelMetadata:
        """Validate a plain mapping (e.g. parsed JSON); missing or unknown fields are named."""
        if not isinstance(data, Mapping):
            raise ModelFileError(f"{where}: expected a JSON object of model metadata, got {type(data).__name__}")
        names = cls.field_names()
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ModelFileError(f"{where}: unknown metadata field(s) {', '.join(unknown)}; "
                                 f"valid fields: {', '.join(names)}")
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
            raise ModelFileError(f"{where}: format_version {version!r} is not supported by this kd-depth "
                                 f"(supports 1..{FORMAT_VERSION}); upgrade kd-depth to read it")
        missing = [n for n in names if n not in data and n not in OPTIONAL_FIELDS]
        if missing:
            raise ModelFileError(f"{where}: metadata field(s) missing: {', '.join(missing)}")
        meta = cls(**{**data, "format_version": version})
        meta._normalise(where)
        return meta

    def _normalise(self, where: str) -> None:
        """Coerce JSON types (lists -> tuples) and check every value; errors name the field."""
        def fail(name: str, expected: str) -> None:
            raise ModelFileError(f"{where}: field {name!r}: expected {expected}, got {getattr(self, name)!r}")

        if not isinstance(self.model_name, str) or not self.model_name:
            fail("model_name", "a registered model name")
        if not isinstance(self.model_kwargs, Mapping):
            fail("model_kwargs", "a mapping of create_model keyword arguments")
        self.model_kwargs = _json_plain(self.model_kwargs, where, "model_kwargs")
        for name in ("input_height", "input_width", "size_multiple"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, "a positive integer (pixels)")
        for name in ("input_height", "input_width"):
            if getattr(self, name) % self.size_multiple:
                fail(name, f"a multiple of size_multiple={self.size_multiple}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            try:
                value = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                fail(name, "3 numbers (R, G, B)")
            if len(value) != 3:
                fail(name, "3 numbers (R, G, B)")
            setattr(self, name, value)
        if min(self.std) <= 0:
            fail("std", "3 positive numbers")
        for name in ("min_depth", "max_depth"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int | float):
                fail(name, "a number of metres")
            setattr(self, name, float(getattr(self, name)))
        if not 0 < self.min_depth < self.max_depth:
            fail("max_depth", f"0 < min_depth ({self.min_depth}) < max_depth")
        if self.scale_kind not in ("metric", "relative"):
            fail("scale_kind", "'metric' or 'relative'")
        if self.focal_length_px is not None:
            if isinstance(self.focal_length_px, bool) or not isinstance(self.focal_length_px, int | float) \
                    or self.focal_length_px <= 0:
                fail("focal_length_px", "a positive number of pixels or null")
            self.focal_length_px = float(self.focal_length_px)
        if self.baseline_m is not None:
            if isinstance(self.baseline_m, bool) or not isinstance(self.baseline_m, int | float) \
                    or not math.isfinite(self.baseline_m) or self.baseline_m <= 0:
                fail("baseline_m", "a positive number of metres or null")
            self.baseline_m = float(self.baseline_m)
        for name in ("stereo", "has_uncertainty"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")
        if not isinstance(self.training_config, Mapping):
            fail("training_config", "a mapping")
        self.training_config = _json_plain(self.training_config, where, "training_config")
        if not isinstance(self.created_by, str):
            fail("created_by", "a string")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        try:
            return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"model metadata is not JSON-serialisable ({error}); model_kwargs and "
                             "training_config must hold plain numbers, strings, lists and dicts") from error

    @classmethod
    def from_json(cls, text: str, where: str = "metadata") -> ModelMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelFileError(f"{where}: kd-depth metadata is not valid JSON ({error})") from error
        return cls.from_dict(data, where)

    def describe(self) -> str:
        """One line for logs: name, input size, depth range and scale kind."""
        return (f"{self.model_name} {self.input_width}x{self.input_height} "
                f"({'stereo' if self.stereo else 'mono'}, {self.scale_kind}, "
                f"{self.min_depth:g}-{self.max_depth:g} m{', uncertainty' if self.has_uncertainty else ''})")


def _json_plain(value: Mapping[str, Any], where: str, name: str) -> dict[str, Any]:
    """``value`` as it reads back from JSON (tuples become lists), so saved == loaded."""
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: field {name!r} must hold plain JSON data (numbers, strings, lists, dicts): "
                         f"{error}") from error


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

"""The released model's metadata (:class:`ModelMetadata`) and :class:`ModelFileError`, without torch.

:mod:`kd_depth_core.models.io` stores this metadata in a ``.safetensors`` header and re-exports both
names (import them from there in training code); ONNX and TorchScript exports carry the same JSON
(``inference/formats.py``). This module imports neither torch nor the model zoo, so a process that
serves an ONNX export (``DepthPredictor("model.onnx")``, the ROS nodes) reads its metadata without
loading torch.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

FORMAT_VERSION = 1
"""Current released-model format version; files with a higher version are refused."""


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

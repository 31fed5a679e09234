"""Foreign ONNX depth models (Depth Anything, MiDaS, ...): a model card and an ONNX Runtime backend.

A foreign ``.onnx`` carries no kd-depth metadata, so a small YAML **model card** says what the file
cannot: how to prepare the image and what the output means. Names and shapes that a
single-input/single-output file makes unambiguous are read from the file; the card states them
only to choose among several outputs or to double-check (a mismatch is an error naming the field).

    kind: relative_disparity        # relative_disparity | relative_depth | metric_depth (required)
    input:
      name: pixel_values            # optional: read from the file; checked when given
      layout: NCHW                  # NCHW | NHWC; optional when the file's shape tells
      size: [518, 518]              # fixed (H, W); read from the file when the file fixes it
      size_multiple: 14             # dynamic sizes must be multiples of this
      default_size: [518, 518]      # dynamic models: the size to run at unless the caller chooses
      channel_order: RGB            # RGB | BGR (required)
      value_range: [0.0, 1.0]       # the image is scaled to this range before mean/std (required)
      mean: [0.485, 0.456, 0.406]   # in value_range units (required)
      std: [0.229, 0.224, 0.225]    # (required)
    output:
      name: predicted_depth         # optional with one output
      valid_range: [0.0, null]      # optional: values outside are invalid
      focal_length_px: null         # metric models: fx the model assumes, pixels at the input width
    licence: Apache-2.0             # free text, shown in describe()
    provenance: where the file came from

Unknown keys and impossible values raise :class:`ModelCardError` naming the card file and the field.

:class:`ForeignOnnxBackend` runs the file: RGB float32 [0, 1] (B,3,H,W) at ``input_size`` in ->
channel order, value range, mean/std and layout per the card -> ONNX Runtime (CUDA execution
provider when available, CPU threads configurable, batched in chunks) -> the raw output
(B,1,h,w) float32 at the network's output size. :func:`raw_to_depth` turns it into depth:
relative disparity is *inverted* (depth ∝ 1/disparity; the unknown shift of an affine-invariant
disparity is taken as 0, so the result is depth up to scale only where that shift is small),
relative depth is kept, metric depth is metres.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kd_depth_core.inference.backends import Backend, onnx_session

OUTPUT_KINDS = ("relative_disparity", "relative_depth", "metric_depth")
LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")
CARD_SUFFIXES = (".card.yaml", ".yaml")
_TOP_KEYS = ("kind", "input", "output", "licence", "provenance")
_INPUT_KEYS = ("name", "layout", "size", "size_multiple", "default_size", "channel_order", "value_range", "mean",
               "std")
_OUTPUT_KEYS = ("name", "valid_range", "focal_length_px")
_REQUIRED = ("kind", "input.channel_order", "input.value_range", "input.mean", "input.std")
DISPARITY_FLOOR = 1e-3
"""Relative disparity below this fraction of the image's median (or <= 0) is treated as that floor: depth
at most 1000 x the median depth (sky and invalid pixels stay finite)."""


class ModelCardError(ValueError):
    """A model card is missing, malformed or contradicts its ONNX file (the message names file and field)."""


@dataclass(frozen=True)
class ModelCard:
    """What a foreign ONNX file cannot say about itself (see the module docstring). Sizes (H, W) pixels."""

    kind: str
    channel_order: str
    value_range: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_name: str | None = None
    layout: str | None = None
    size: tuple[int, int] | None = None
    size_multiple: int | None = None
    default_size: tuple[int, int] | None = None
    output_name: str | None = None
    valid_range: tuple[float | None, float | None] | None = None
    focal_length_px: float | None = None
    licence: str = ""
    provenance: str = ""
    source: str = field(default="<card>", compare=False)

    @property
    def relative(self) -> bool:
        return self.kind != "metric_depth"

    def to_dict(self) -> dict[str, Any]:
        """The card as nested YAML-able data (``source`` left out)."""
        flat = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        return {"kind": flat["kind"],
                "input": {k: flat[{"name": "input_name"}.get(k, k)] for k in _INPUT_KEYS},
                "output": {"name": flat["output_name"], "valid_range": flat["valid_range"],
                           "focal_length_px": flat["focal_length_px"]},
                "licence": flat["licence"], "provenance": flat["provenance"]}

    def describe(self) -> str:
        note = f", licence {self.licence}" if self.licence else ""
        return f"model card {self.source} ({self.kind}{note})"


# --------------------------------------------------------------------------- parsing
def _fail(source: str, name: str, expected: str, value: Any) -> ModelCardError:
    return ModelCardError(f"{source}: field {name!r}: expected {expected}, got {value!r}")


def _numbers(source: str, name: str, value: Any, count: int, *, positive: bool = False,
             allow_none: bool = False) -> tuple:
    expected = f"{count} {'positive ' if positive else ''}numbers" + (" (or null)" if allow_none else "")
    if not isinstance(value, list | tuple) or len(value) != count:
        raise _fail(source, name, expected, value)
    out = []
    for item in value:
        if item is None and allow_none:
            out.append(None)
            continue
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item) \
                or (positive and item <= 0):
            raise _fail(source, name, expected, value)
        out.append(float(item))
    return tuple(out)


def _size(source: str, name: str, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise _fail(source, name, "[height, width] positive integers (pixels)", value)
    return int(value[0]), int(value[1])


def card_from_dict(data: Any, source: str = "<card>") -> ModelCard:
    """Validate a parsed card mapping; unknown keys, missing required fields and bad values name the field."""
    if not isinstance(data, dict):
        raise ModelCardError(f"{source}: expected a YAML mapping with {', '.join(_TOP_KEYS)}, got "
                             f"{type(data).__name__}")
    sections = {"": (data, _TOP_KEYS)}
    for section, keys in (("input", _INPUT_KEYS), ("output", _OUTPUT_KEYS)):
        value = data.get(section, {}) if data.get(section) is not None else {}
        if not isinstance(value, dict):
            raise _fail(source, section, "a mapping", value)
        sections[section] = (value, keys)
    for section, (mapping, keys) in sections.items():
        unknown = sorted(str(k) for k in mapping if k not in keys)
        if unknown:
            where = f"{section}." if section else ""
            raise ModelCardError(f"{source}: unknown field(s) {', '.join(where + k for k in unknown)}; valid "
                                 f"{'fields of ' + section if section else 'top-level fields'}: {', '.join(keys)}")
    inp, out = sections["input"][0], sections["output"][0]
    for dotted in _REQUIRED:
        section, _, key = dotted.rpartition(".")
        if sections[section][0].get(key) is None:
            raise ModelCardError(f"{source}: field {dotted!r} is missing (required: {', '.join(_REQUIRED)})")
    kind = data["kind"]
    if kind not in OUTPUT_KINDS:
        raise _fail(source, "kind", f"one of {', '.join(OUTPUT_KINDS)}", kind)
    for key, options in (("layout", LAYOUTS), ("channel_order", CHANNEL_ORDERS)):
        if inp.get(key) is not None and inp[key] not in options:
            raise _fail(source, f"input.{key}", f"one of {', '.join(options)}", inp[key])
    for key in ("name",):
        for section, mapping in (("input", inp), ("output", out)):
            if mapping.get(key) is not None and (not isinstance(mapping[key], str) or not mapping[key]):
                raise _fail(source, f"{section}.{key}", "a tensor name (string)", mapping[key])
    value_range = _numbers(source, "input.value_range", inp["value_range"], 2)
    if not value_range[1] > value_range[0]:
        raise _fail(source, "input.value_range", "[low, high] with high > low", inp["value_range"])
    mean = _numbers(source, "input.mean", inp["mean"], 3)
    std = _numbers(source, "input.std", inp["std"], 3, positive=True)
    size, default_size = _size(source, "input.size", inp.get("size")), _size(source, "input.default_size",
                                                                           inp.get("default_size"))
    multiple = inp.get("size_multiple")
    if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
        raise _fail(source, "input.size_multiple", "a positive integer (pixels)", multiple)
    for name, value in (("input.size", size), ("input.default_size", default_size)):
        if value is not None and multiple and (value[0] % multiple or value[1] % multiple):
            raise _fail(source, name, f"a multiple of input.size_multiple={multiple}", list(value))
    valid = out.get("valid_range")
    if valid is not None:
        valid = _numbers(source, "output.valid_range", valid, 2, allow_none=True)
        if valid[0] is not None and valid[1] is not None and not valid[1] > valid[0]:
            raise _fail(source, "output.valid_range", "[low, high] with high > low (null = open)", out["valid_range"])
    focal = out.get("focal_length_px")
    if focal is not None and (isinstance(focal, bool) or not isinstance(focal, int | float) or not focal > 0):
        raise _fail(source, "output.focal_length_px", "a positive number of pixels or null", focal)
    for key in ("licence", "provenance"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise _fail(source, key, "a string", data[key])
    return ModelCard(kind=kind, channel_order=inp["channel_order"], value_range=value_range, mean=mean, std=std,
                     input_name=inp.get("name"), layout=inp.get("layout"), size=size, size_multiple=multiple,
                     default_size=default_size, output_name=out.get("name"), valid_range=valid,
                     focal_length_px=None if focal is None else float(focal), licence=data.get("licence") or "",
                     provenance=data.get("provenance") or "", source=source)


def find_card(onnx_path: str | os.PathLike) -> Path | None:
    """The card beside ``<dir>/<stem>.onnx``: ``<stem>.card.yaml``, else ``<stem>.yaml``; None when neither exists."""
    path = Path(onnx_path)
    for suffix in CARD_SUFFIXES:
        candidate = path.with_name(path.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def load_card(card_path: str | os.PathLike | None, onnx_path: str | os.PathLike) -> ModelCard:
    """Read and validate the card for ``onnx_path`` (None: the card beside the file, see :func:`find_card`)."""
    if card_path is None:
        card_path = find_card(onnx_path)
        if card_path is None:
            stem = Path(onnx_path).with_suffix("")
            raise ModelCardError(f"{onnx_path}: a foreign ONNX depth model needs a model card: pass one (model_card= "
                                 f"/ --model-card) or put {stem}.card.yaml or {stem}.yaml beside the file "
                                 "(example: config/models/depth_anything_v2_small.yaml)")
    card_path = Path(card_path)
    if not card_path.is_file():
        raise ModelCardError(f"model card not found: {card_path}")
    try:
        data = yaml.safe_load(card_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ModelCardError(f"{card_path}: not valid YAML ({error})") from error
    return card_from_dict(data, source=str(card_path))


# --------------------------------------------------------------------------- conversions
def raw_to_depth(raw: np.ndarray, card: ModelCard) -> np.ndarray:
    """Raw network output (B,1,h,w) -> depth (B,1,h,w) float32: metres (metric_depth) or up to scale.

    relative_disparity: depth = 1 / max(d, DISPARITY_FLOOR · median(d)) per image (invalid or outside
    ``valid_range`` -> the floor: the farthest depth); relative_depth: as is, invalid -> the image's
    largest valid depth; metric_depth: clipped to ``valid_range`` when given.
    """
    raw = np.asarray(raw, dtype=np.float32)
    low, high = card.valid_range or (None, None)
    valid = np.isfinite(raw)
    if low is not None:
        valid &= raw >= low
    if high is not None:
        valid &= raw <= high
    out = np.empty_like(raw)
    for i in range(raw.shape[0]):
        values, ok = raw[i], valid[i]
        if card.kind == "relative_disparity":
            ok = ok & (values > 0)
            floor = np.float32(DISPARITY_FLOOR * (float(np.median(values[ok])) if ok.any() else 1.0))
            out[i] = 1.0 / np.maximum(np.where(ok, values, floor), floor)
        elif card.kind == "relative_depth":
            ok = ok & (values > 0)
            far = np.float32(values[ok].max()) if ok.any() else np.float32(1.0)
            out[i] = np.where(ok, values, far)
        else:
            lo = 1e-3 if low is None else max(float(low), 1e-3)
            out[i] = np.clip(np.nan_to_num(values, nan=lo, posinf=high or lo, neginf=lo), lo, high or np.inf)
    return out


def raw_to_disparity(raw: np.ndarray, card: ModelCard) -> np.ndarray:
    """Raw output (B,1,h,w) -> disparity-like map (B,1,h,w) float32, 0 = invalid.

    relative_disparity: the output itself (valid values > 0); relative/metric depth: 1 / depth.
    Resize these maps (bilinear) rather than depth, so edges between near and far are not smeared.
    """
    raw = np.asarray(raw, dtype=np.float32)
    low, high = card.valid_range or (None, None)
    valid = np.isfinite(raw) & (raw > 0)
    if low is not None:
        valid &= raw >= low
    if high is not None:
        valid &= raw <= high
    if card.kind == "relative_disparity":
        return np.where(valid, raw, 0).astype(np.float32)
    return np.where(valid, 1.0 / np.where(valid, raw, 1), 0).astype(np.float32)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- backend
def _dim(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and value > 0 else None


class ForeignOnnxBackend(Backend):
    """ONNX Runtime on a foreign depth model prepared per its card (see the module docstring).

    Args:
        path: the ``.onnx`` file. card: its :class:`ModelCard`.
        device: 'auto' (CUDA execution provider when this onnxruntime has it), 'cpu' or 'cuda[:N]'.
        cpu_threads: ONNX Runtime intra-op threads (0 = its default).
        input_size: (H, W) to run a dynamic-size model at (rounded to the nearest ``size_multiple``);
            default the card's ``default_size``. A fixed-size file runs at its size (passing another is an error).
        max_batch: most images per session call (0 = all at once; a file with batch fixed to 1 runs one by one).

    ``run(x)`` takes RGB float32 (B,3,H,W) in [0, 1] at ``input_size`` and returns ``(raw, None)`` with
    ``raw`` (B,1,h,w) float32, the network's output as is (``raw_to_depth`` gives depth). ``calls`` counts
    session runs.
    """

    name = "onnxruntime-foreign"
    precision = "fp32"

    def __init__(self, path: str | os.PathLike, card: ModelCard, device: str = "auto", cpu_threads: int = 0,
                 input_size: tuple[int, int] | None = None, max_batch: int = 0) -> None:
        self.path, self.card, self.calls = Path(path), card, 0
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        try:
            self.session = onnx_session(str(self.path), device, cpu_threads)
        except Exception as error:  # onnxruntime raises its own exception types
            if str(error).startswith("device"):  # no CUDA provider / bad device: already one clear line
                raise
            raise ModelCardError(f"{self.path}: ONNX Runtime cannot load this file ({error})") from error
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self._bind_io()
        self.input_size = self._choose_size(input_size)
        self.max_batch = 1 if self._batch_fixed == 1 else int(max_batch)
        c = card
        lo, hi = c.value_range
        # x = (lo + rgb * (hi - lo) - mean) / std  ==  rgb * gain + bias, per channel
        self._gain = (np.float32(hi - lo) / np.asarray(c.std, np.float32)).reshape(1, 3, 1, 1)
        self._bias = ((np.float32(lo) - np.asarray(c.mean, np.float32)) / np.asarray(c.std, np.float32)
                      ).reshape(1, 3, 1, 1)

    def _bind_io(self) -> None:
        card, where = self.card, self.card.source
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelCardError(f"{self.path}: expected one image input, the file has {len(inputs)} "
                                 f"({', '.join(i.name for i in inputs)}); foreign models with extra inputs are not "
                                 "supported")
        self.input_name = inputs[0].name
        if card.input_name is not None and card.input_name != self.input_name:
            raise ModelCardError(f"{where}: field 'input.name': the card says {card.input_name!r} but "
                                 f"{self.path.name} has input {self.input_name!r}")
        names = [o.name for o in outputs]
        if card.output_name is not None:
            if card.output_name not in names:
                raise ModelCardError(f"{where}: field 'output.name': {card.output_name!r} is not an output of "
                                     f"{self.path.name} (outputs: {', '.join(names)})")
            self.output_name = card.output_name
        elif len(names) == 1:
            self.output_name = names[0]
        else:
            raise ModelCardError(f"{where}: field 'output.name' is missing: {self.path.name} has {len(names)} "
                                 f"outputs ({', '.join(names)}); name the depth output")
        shape = list(inputs[0].shape)
        if len(shape) != 4:
            raise ModelCardError(f"{self.path}: input {self.input_name!r} has shape {shape}; expected 4 dimensions")
        layout = card.layout
        if layout is None:
            if _dim(shape[1]) == 3 and _dim(shape[3]) != 3:
                layout = "NCHW"
            elif _dim(shape[3]) == 3 and _dim(shape[1]) != 3:
                layout = "NHWC"
            else:
                raise ModelCardError(f"{where}: field 'input.layout' is missing and {self.path.name}'s input shape "
                                     f"{shape} does not tell NCHW from NHWC")
        channel_axis = 1 if layout == "NCHW" else 3
        if _dim(shape[channel_axis]) not in (None, 3):
            raise ModelCardError(f"{where}: field 'input.layout': {layout} puts channels on axis {channel_axis} but "
                                 f"{self.path.name}'s input shape is {shape}")
        self.layout = layout
        spatial = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
        self._file_size = (_dim(spatial[0]), _dim(spatial[1]))
        self._batch_fixed = _dim(shape[0])

    def _choose_size(self, requested: tuple[int, int] | None) -> tuple[int, int]:
        card, where = self.card, self.card.source
        fixed_h, fixed_w = self._file_size
        if fixed_h is not None and fixed_w is not None:
            fixed = (fixed_h, fixed_w)
            if card.size is not None and card.size != fixed:
                raise ModelCardError(f"{where}: field 'input.size': the card says {list(card.size)} but "
                                     f"{self.path.name} fixes its input to {list(fixed)}")
            if card.size_multiple and (fixed_h % card.size_multiple or fixed_w % card.size_multiple):
                raise ModelCardError(f"{where}: field 'input.size_multiple': {self.path.name}'s fixed size "
                                     f"{list(fixed)} is not a multiple of {card.size_multiple}")
            if requested is not None and tuple(int(v) for v in requested) != fixed:
                raise ValueError(f"input_size: {self.path.name} has a fixed input size {list(fixed)}; got "
                                 f"{list(requested)}")
            return fixed
        if card.size is not None:
            if requested is not None and tuple(int(v) for v in requested) != card.size:
                raise ValueError(f"input_size: the card {where} fixes the size to {list(card.size)}; got "
                                 f"{list(requested)}")
            return card.size
        if not card.size_multiple:
            raise ModelCardError(f"{where}: field 'input.size_multiple' is missing: {self.path.name} has dynamic "
                                 "height/width; give input.size_multiple (and input.default_size) or input.size")
        size = requested if requested is not None else card.default_size
        if size is None:
            raise ValueError(f"input_size: {self.path.name} takes dynamic sizes (multiples of {card.size_multiple}); "
                             "pass input_size=(H, W) or give input.default_size in the card")
        m = card.size_multiple
        return tuple(max(m, int(round(int(v) / m)) * m) for v in size)  # type: ignore[return-value]

    def describe(self) -> str:
        return (f"{self.name} on {self.device} ({self.precision}; {self.path.name}, input {self.input_name!r} "
                f"{self.layout} {self.input_size[0]}x{self.input_size[1]}, output {self.output_name!r}; "
                f"{self.card.describe()})")

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """RGB [0, 1] (B,3,H,W) -> the array the network takes (channel order, range, mean/std, layout)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != tuple(self.input_size):
            raise ValueError(f"input: expected (B,3,{self.input_size[0]},{self.input_size[1]}) RGB in [0, 1], got "
                             f"{x.shape}")
        if self.card.channel_order == "BGR":
            x = x[:, ::-1]
        x = x * self._gain + self._bias
        if self.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, *inputs: np.ndarray) -> tuple[np.ndarray, None]:
        if len(inputs) != 1:
            raise ValueError(f"{self.path.name}: a monocular foreign model takes one image batch, got {len(inputs)}")
        x = self.prepare(inputs[0])
        step = self.max_batch if self.max_batch > 0 else len(x)
        chunks = []
        for start in range(0, len(x), step):
            self.calls += 1
            (out,) = self.session.run([self.output_name], {self.input_name: x[start:start + step]})
            chunks.append(self._as_maps(np.asarray(out, dtype=np.float32), len(x[start:start + step])))
        return np.concatenate(chunks), None

    def _as_maps(self, out: np.ndarray, batch: int) -> np.ndarray:
        """(B,H,W), (B,1,H,W) or (B,H,W,1) -> (B,1,H,W)."""
        if out.ndim == 3 and out.shape[0] == batch:
            return out[:, None]
        if out.ndim == 4 and out.shape[0] == batch and out.shape[1] == 1:
            return out
        if out.ndim == 4 and out.shape[0] == batch and out.shape[3] == 1:
            return out.transpose(0, 3, 1, 2)
        raise ModelCardError(f"{self.path.name}: output {self.output_name!r} has shape {out.shape}; expected one map "
                             f"per image: ({batch},H,W), ({batch},1,H,W) or ({batch},H,W,1)")


# --------------------------------------------------------------------------- metadata
def is_foreign_onnx(path: str | os.PathLike) -> bool:
    """True for a readable ``.onnx`` without kd-depth metadata (``kd-depth export`` files carry it)."""
    import onnx

    from kd_depth_core.inference.formats import ONNX_METADATA_KEY

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable files are reported by the export reader
        return False
    return not any(entry.key == ONNX_METADATA_KEY for entry in proto.metadata_props)


def foreign_metadata(path: str | os.PathLike, card: ModelCard, input_size: tuple[int, int]):
    """A synthetic :class:`~kd_depth_core.models.io.ModelMetadata` for a foreign model run at ``input_size``.

    ``model_name`` 'foreign_onnx', ``has_uncertainty`` False, ``scale_kind`` metric only for metric_depth
    cards, depth range the card's metric ``valid_range`` (else a nominal 1e-3..1e3), the card's focal
    length; mean 0 / std 1 (the inputs the predictor hands over are RGB in [0, 1]: the backend applies the
    card's normalisation); the card itself is kept in ``training_config``.
    """
    from kd_depth_core.model_metadata import ModelMetadata

    height, width = input_size
    multiple = card.size_multiple if card.size_multiple and not (height % card.size_multiple
                                                                 or width % card.size_multiple) else 1
    low, high = card.valid_range or (None, None)
    metric = card.kind == "metric_depth"
    min_depth = max(float(low), 1e-3) if metric and low is not None else 1e-3
    max_depth = float(high) if metric and high is not None else 1e3
    return ModelMetadata.from_dict({
        "model_name": "foreign_onnx", "model_kwargs": {"path": str(path)}, "input_height": int(height),
        "input_width": int(width), "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "size_multiple": int(multiple),
        "min_depth": min_depth, "max_depth": max_depth, "scale_kind": "metric" if metric else "relative",
        "focal_length_px": card.focal_length_px, "stereo": False, "has_uncertainty": False,
        "training_config": {"model_card": card.to_dict(), "model_card_path": card.source},
        "created_by": f"foreign ONNX ({Path(path).name}, {card.kind})"}, where=f"{path} (foreign model metadata)")

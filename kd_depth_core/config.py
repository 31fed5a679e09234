"""Typed training configuration: YAML -> nested dataclasses, unknown keys rejected, `key=value` overrides.

A config file is a YAML mapping whose sections mirror :class:`TrainConfig`. Every key is checked:
an unknown key names the file and the dotted key path and lists the valid keys; a value of the
wrong type names what was expected. `to_dict()` gives the resolved config as plain YAML-able data
(it is saved inside every checkpoint and next to every run).

    cfg = load_train_config("config/train/teacher_stereo.yaml", overrides=["optim.lr=2e-4"])

`parse_section(cls, data, where)` validates any other mapping (e.g. a task's `task.kwargs`) against
a dataclass with the same rules.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem; the message names the file (or the command-line override), the key path and
    what was expected."""


def _error_key_path(rest: str) -> list[str]:
    """'optim.lr: expected ...' -> ['optim', 'lr']; list indices and '(key ...)' notes are dropped."""
    key = rest.split(": ", 1)[0].split(" (", 1)[0]
    return re.sub(r"\[\d+\]", "", key).split(".")


def _has_key(data: Any, path: list[str]) -> bool:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def name_the_override(message: str, source: str, data: dict[str, Any], overrides: list[str]) -> str:
    """``message`` ("<source>: key.path: ...") with its source replaced by the command-line override that set
    that key, if one did (``override 'optim.lr=fast' (command line): optim.lr: ...``): the user would not find
    the key in the file. ``data`` is the mapping as read from the file, before the overrides."""
    if not overrides or not message.startswith(f"{source}: "):
        return message
    rest = message[len(source) + 2:]
    path = _error_key_path(rest)
    for text in reversed(overrides):  # the last override of a key wins, so it is the one to name
        key = parse_override(text)[0]
        common = min(len(path), len(key))
        # the key is at or below the override's, or the override created the (unknown) key
        if path[:common] == key[:common] and (len(key) <= len(path) or not _has_key(data, path)):
            return f"override {text!r} (command line): {rest}"
    return message


# --------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    """Training data: a folder of training sequences (docs/dataset_format.md)."""

    root: str = ""  # folder holding the sequences
    split: str = "train"
    val_split: str = "val"  # "" = no validation
    size: tuple[int, int] = (192, 640)  # (height, width) pixels at training resolution
    offsets: tuple[int, ...] = (-1, 1)  # temporal source frames relative to the target
    stereo: bool = False  # also load the right image (`image_right`)
    augment: bool = True
    flip: float = 0.0  # probability of training on the mirrored right view (needs stereo; SequenceDataset)
    batch_size: int = 8  # per process
    num_workers: int = 4


@dataclass
class ModelConfig:
    """The trained network: `models.create_model(name, **kwargs)`."""

    name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskConfig:
    """The training task (`train.tasks.create_task`); `kwargs` are validated by the task's own Options."""

    name: str = "self_supervised"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """One optimizer per task phase; `phase_lr` overrides `lr` for named phases."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-4
    phase_lr: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.0  # sgd only
    scheduler: Literal["none", "step", "cosine"] = "step"
    step_size: int = 15000  # step scheduler: multiply lr by `gamma` every `step_size` steps
    gamma: float = 0.1
    min_lr_ratio: float = 0.0  # cosine scheduler: final lr = lr * min_lr_ratio
    warmup_steps: int = 0  # linear warm-up from 0


@dataclass
class TrainLoopConfig:
    """The loop: length, logging, checkpoints, precision, reproducibility."""

    max_steps: int = 20000
    log_every: int = 50
    image_every: int = 1000  # TensorBoard image panels (task.visuals); 0 = never
    val_every: int = 2000  # 0 = never
    val_batches: int = 50  # batches per validation (0 = the whole split)
    ckpt_every: int = 2000  # 0 = only at the end
    keep_checkpoints: int = 2  # newest N step checkpoints kept
    grad_clip: float = 0.0  # max global grad norm per phase; 0 = no clipping
    amp: Literal["none", "bf16", "fp16"] = "none"  # autocast: CUDA; bf16 also on CPUs with native bf16
    channels_last: bool = True  # NHWC conv weights/activations: 1.07-1.34x per forward+backward on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms
    out_dir: str = "runs/train"
    resume: str = ""  # "" = fresh run, "auto" = newest checkpoint in out_dir, or a checkpoint path
    init_from: str = ""  # fine-tuning: a released model file (.safetensors) or another run's checkpoint (.pt, also
    #                      its pose network) whose weights start the deployed network; "" = none
    progress: bool = True  # tqdm bar on rank 0


@dataclass
class TrainConfig:
    """Everything `kd-depth train` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    source: str = field(default="<defaults>", metadata={"internal": True})  # where it was loaded from

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (lists, dicts, scalars); `source` is left out."""
        return to_dict(self)


# --------------------------------------------------------------------------- generic parsing
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list, dict):
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        if origin is tuple:
            return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
        if origin is list:
            return f"a list of {_type_name(args[0])}" if args else "a list"
        return "a mapping"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value against a type hint; raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)

    def fail() -> ConfigError:
        return ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return parse_section(tp, value, where)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise fail()
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, where)
            except ConfigError:
                continue
        raise fail()
    if tp is type(None):
        if value is None:
            return None
        raise fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise fail()
        args = typing.get_args(tp)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise fail()
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        out = {}
        for k, v in value.items():
            key = _convert(k, key_tp, f"{where} (key {k!r})")
            out[key] = _convert(v, value_tp, _join(where, k))
        return out
    raise TypeError(f"{where}: unsupported config type {tp!r}")  # a programming error, not a user one


def _public_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _join(where: str, key: Any) -> str:
    """'file: ' + 'optim' -> 'file: optim'; 'file: optim' + 'lr' -> 'file: optim.lr'."""
    return f"{where}{key}" if not where or where.endswith(": ") else f"{where}.{key}"


def parse_section(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrongly typed values.

    `where` prefixes every error (e.g. "config/train/x.yaml: optim"). Missing keys keep their defaults.
    """
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {data!r} ({type(data).__name__})")
    fields = {f.name: f for f in _public_fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key; valid keys: {', '.join(fields)}")
    values = {name: _convert(value, hints[name], _join(where, name)) for name, value in data.items()}
    return cls(**values)


def to_dict(obj: Any) -> Any:
    """Dataclasses/tuples -> plain dicts/lists (YAML- and weights_only-safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in _public_fields(type(obj))}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- overrides and loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """`"optim.lr=2e-4"` -> (["optim", "lr"], 0.0002). The value is parsed as YAML (so lists/`null` work)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected dotted.key=value (e.g. optim.lr=2e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` overrides to a raw config mapping (in place; returns it).

    Intermediate mappings are created when missing; typing and unknown keys are checked later by
    `parse_section`, so a misspelled override fails with the same message as a misspelled file key.
    """
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:i + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def load_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML file with `yaml.safe_load`; an empty file is {}; anything but a mapping is an error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>",
                     overrides: list[str] | None = None) -> T:
    """Validate a raw mapping (plus overrides) into config dataclass `cls`; errors start with `source`, or with
    the override when it set the key in question (`name_the_override`)."""
    overrides = list(overrides or [])
    original = copy.deepcopy(dict(data))
    merged = apply_overrides(copy.deepcopy(original), overrides)
    try:
        cfg = parse_section(cls, merged, f"{source}: ")
    except ConfigError as error:
        raise ConfigError(name_the_override(str(error), source, original, overrides)) from None
    if any(f.name == "source" for f in dataclasses.fields(cls)):
        cfg.source = source  # type: ignore[attr-defined]
    return cfg


def load_config(cls: type[T], path: str | os.PathLike, overrides: list[str] | None = None) -> T:
    """Load YAML file `path` into `cls`, then apply `key=value` overrides."""
    return config_from_dict(cls, load_yaml_mapping(path), str(path), overrides)


def load_train_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Load a `TrainConfig` from YAML (see config/train/*.yaml) with `key=value` overrides."""
    return load_config(TrainConfig, path, overrides)


def dump_yaml(cfg: Any) -> str:
    """A config dataclass as YAML text (keys in declaration order)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)

"""Model registry and factory (timm-like): `@register_model`, `create_model`, `list_models`, `model_info`.

A builder is a function taking keyword arguments only and returning an `nn.Module`. `create_model`
checks the keyword arguments against the builder's signature (unknown ones are errors naming the
valid ones) and records `model.model_spec = {'name', 'kwargs'}` so the model can be rebuilt from
metadata (docs/architecture.md). The recorded kwargs are the resolved call (defaults filled in),
without initialisation-only arguments (`weights_path`): the trained weights travel with the model.
"""
from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

INIT_ONLY_KWARGS: frozenset[str] = frozenset({"weights_path", "stem_weights_path"})
"""Builder arguments that only affect initialisation and are left out of `model_spec`."""


class ModelConfigError(ValueError):
    """A model name or keyword argument that cannot build a model (unknown model, unknown or invalid argument,
    unknown timm backbone); the message names the model and the argument and says what is valid."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its builder and the words `kd-depth models` shows."""

    name: str
    family: str
    description: str
    builder: Callable[..., nn.Module]


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, *, family: str, description: str) -> Callable[[Callable[..., nn.Module]],
                                                                              Callable[..., nn.Module]]:
    """Decorator: make `builder(**kwargs) -> nn.Module` available as `create_model(name, **kwargs)`."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        existing = _MODELS.get(name)
        if existing is not None and existing.builder.__qualname__ != builder.__qualname__:
            raise ValueError(f"model {name!r} is already registered by "
                             f"{existing.builder.__module__}.{existing.builder.__qualname__}")
        for param in inspect.signature(builder).parameters.values():
            if param.kind in (param.POSITIONAL_ONLY, param.VAR_POSITIONAL):
                raise TypeError(f"register_model({name!r}): builder parameters must be keyword arguments, "
                                f"got {param.name!r}")
        _MODELS[name] = ModelEntry(name=name, family=family, description=description, builder=builder)
        return builder

    return decorator


def _entry(name: str) -> ModelEntry:
    try:
        return _MODELS[name]
    except KeyError:
        raise ModelConfigError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))} "
                               "(`kd-depth models` describes them)") from None


def _resolved_kwargs(entry: ModelEntry, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Bind `kwargs` to the builder's signature with defaults filled in; clear error on unknown names."""
    signature = inspect.signature(entry.builder)
    try:
        bound = signature.bind(**kwargs)
    except TypeError as error:
        valid = [p.name for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
        raise ModelConfigError(f"model {entry.name!r}: {error}; valid parameters: {', '.join(valid)}") from None
    bound.apply_defaults()
    resolved: dict[str, Any] = {}
    for key, value in bound.arguments.items():
        if signature.parameters[key].kind == inspect.Parameter.VAR_KEYWORD:
            resolved.update(value)
        else:
            resolved[key] = value
    return {key: value for key, value in resolved.items() if key not in INIT_ONLY_KWARGS}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model `name` with `kwargs`; sets `model.model_spec = {'name', 'kwargs'}`."""
    entry = _entry(name)
    spec_kwargs = _resolved_kwargs(entry, kwargs)
    try:
        model = entry.builder(**kwargs)
    except ModelConfigError:
        raise
    except ValueError as error:  # the builders' argument checks: a value the caller chose
        raise ModelConfigError(f"model {name!r}: {error}") from error
    except TypeError as error:  # an argument passed on (e.g. to timm) that the receiver does not take
        unexpected = re.search(r"unexpected keyword argument '([^']+)'", str(error))
        if unexpected is None or unexpected.group(1) not in kwargs:
            raise
        valid = [p.name for p in inspect.signature(entry.builder).parameters.values() if p.kind != p.VAR_KEYWORD]
        raise ModelConfigError(f"model {name!r}: unknown argument {unexpected.group(1)!r} ({error}); valid "
                               f"parameters: {', '.join(valid)} and those of its timm backbone") from error
    model.model_spec = {"name": name, "kwargs": copy.deepcopy(spec_kwargs)}
    return model


def list_models(family: str | None = None) -> list[str]:
    """Sorted registered model names, optionally only those of `family`."""
    if family is not None and family not in list_families():
        raise ValueError(f"unknown model family {family!r}; families: {', '.join(list_families())}")
    return sorted(name for name, entry in _MODELS.items() if family is None or entry.family == family)


def list_families() -> list[str]:
    """Sorted names of the families that have registered models."""
    return sorted({entry.family for entry in _MODELS.values()})


def model_info(name: str) -> dict[str, Any]:
    """`{'name', 'family', 'description', 'defaults': {parameter: default}}` of a registered model."""
    entry = _entry(name)
    defaults = {p.name: (None if p.default is p.empty else p.default)
                for p in inspect.signature(entry.builder).parameters.values() if p.kind != p.VAR_KEYWORD}
    return {"name": entry.name, "family": entry.family, "description": entry.description, "defaults": defaults}

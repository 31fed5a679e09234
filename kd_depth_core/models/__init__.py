"""Model zoo: registry + factory, timm encoders, decoders, teachers, students, pose net (docs/architecture.md).

`create_model(name, **kwargs)` builds any registered model; `list_models()` names them. Importing
this package registers every model below.
"""
from __future__ import annotations

from . import baseline, discriminator, ms_dpt, pose, segmentation, stereo, students  # noqa: F401  (registration)
from .flops import count_flops, count_parameters
from .mc_dropout import MCDropout, enable_mc_dropout, mc_dropout_mode, mc_dropout_predict
from .registry import create_model, list_families, list_models, model_info, register_model
from .students import DEFAULT_STUDENT

__all__ = [
    "DEFAULT_STUDENT", "MCDropout", "count_flops", "count_parameters", "create_model", "enable_mc_dropout",
    "list_families", "list_models", "mc_dropout_mode", "mc_dropout_predict", "model_info", "register_model",
]

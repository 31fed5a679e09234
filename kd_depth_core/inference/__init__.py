"""Inference runtime: ``DepthPredictor`` (numpy in, metres out), backends, export, deployment scale.

See ``predictor.py`` for the API, ``export.py`` for what an ONNX/TorchScript export contains and
``scale.py`` for how depth is put in metres on a camera other than the training one.
``from kd_depth_core.inference import DepthPredictor`` imports lazily, so light modules such as
``inference.scale`` load without torch/timm.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DepthPredictor": "kd_depth_core.inference.predictor",
    "Prediction": "kd_depth_core.inference.predictor",
    "ScaleInfo": "kd_depth_core.inference.scale",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kd_depth_core.inference' has no attribute {name!r}")

"""What an export file holds besides its graph, without torch: opset, metadata keys, input/output names, sizes.

:mod:`kd_depth_core.inference.deploy` builds the graphs (torch) and re-exports these names; the ONNX Runtime
backend (:mod:`kd_depth_core.inference.backends`) and the foreign-model reader need only this module, so a
process serving an ``.onnx`` export never imports torch.
"""
from __future__ import annotations

import dataclasses

from kd_depth_core.model_metadata import ModelMetadata

ONNX_OPSET = 17
ONNX_METADATA_KEY = "kd_depth"
TORCHSCRIPT_METADATA_FILE = "kd_depth.json"
TORCHSCRIPT_SUFFIX = ".torchscript"


def input_names(metadata: ModelMetadata) -> list[str]:
    return ["left", "right"] if metadata.stereo else ["image"]


def output_names(metadata: ModelMetadata) -> list[str]:
    return ["depth", "uncertainty"] if metadata.has_uncertainty else ["depth"]


def metadata_at_size(metadata: ModelMetadata, height: int | None, width: int | None) -> ModelMetadata:
    """Metadata for running the network at ``height``×``width``: input size set, training fx rescaled to it."""
    height = metadata.input_height if height is None else int(height)
    width = metadata.input_width if width is None else int(width)
    for name, value in (("height", height), ("width", width)):
        if value < metadata.size_multiple or value % metadata.size_multiple:
            raise ValueError(f"{name} {value}: expected a positive multiple of the model's size_multiple "
                             f"({metadata.size_multiple})")
    focal = metadata.focal_length_px
    if focal is not None:
        focal = focal * width / metadata.input_width
    return dataclasses.replace(metadata, input_height=height, input_width=width, focal_length_px=focal)

"""Small foreign ONNX depth models built inside the tests, with the contract a model card states.

The contract (the Depth Anything V2 one): input ``pixel_values`` (B,3,H,W), RGB in [0, 1] normalised with the
ImageNet mean/std, dynamic H and W (multiples of 14 by the card); output ``predicted_depth`` (B,H,W) relative
disparity. The graphs are written here with torch.onnx directly (not with kd-depth's exporters), so the
product's card handling is checked against an independent build.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _export(module: nn.Module, path: Path, size: tuple[int, int], input_name: str, output_name: str) -> Path:
    example = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), buffer, input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "b", 2: "h", 3: "w"}, output_name: {0: "b", 1: "h", 2: "w"}},
                          opset_version=17, dynamo=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


class PixelDisparity(nn.Module):
    """Disparity = ``gain`` × the red channel of the de-normalised image: hand-computable from the pixels."""

    def __init__(self, gain: float = 10.0) -> None:
        super().__init__()
        self.gain = gain
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.std + self.mean)[:, 0] * self.gain


class StudentDisparity(nn.Module):
    """One of our networks (student_lcnet, random weights) as a foreign model: de-normalise, run at 64×96,
    inverse depth under an affine change ``scale · (1/depth) + shift``, resized back to the input size."""

    def __init__(self, scale: float = 3.0, shift: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        from kd_depth_core.models import create_model

        torch.manual_seed(seed)
        self.net = create_model("student_lcnet", backbone="lcnet_050")
        self.scale, self.shift = scale, shift
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = F.interpolate(x * self.std + self.mean, size=(64, 96), mode="bilinear", align_corners=False)
        sigmoid = self.net(rgb)["disp"][0]
        inverse_depth = 1 / 80.0 + (1 / 0.5 - 1 / 80.0) * sigmoid  # the 0.5-80 m range, 1/m
        out = F.interpolate(self.scale * inverse_depth + self.shift, size=x.shape[-2:], mode="bilinear",
                            align_corners=False)
        return out[:, 0]

    @torch.no_grad()
    def reference(self, rgb: np.ndarray) -> np.ndarray:
        """RGB [0, 1] (B,3,H,W) -> the raw output (B,1,H,W), computed in torch with the card's normalisation."""
        x = (torch.from_numpy(rgb).float() - self.mean) / self.std
        return self.eval()(x)[:, None].numpy()


def pixel_disparity_onnx(path: Path, gain: float = 10.0, input_name: str = "image",
                         output_name: str = "depth") -> Path:
    return _export(PixelDisparity(gain), path, (28, 42), input_name, output_name)


def student_disparity_onnx(path: Path, seed: int = 0) -> tuple[Path, StudentDisparity]:
    module = StudentDisparity(seed=seed)
    return _export(module, path, (70, 98), "pixel_values", "predicted_depth"), module


def card_data(**changes) -> dict:
    """A Depth-Anything-like card (names read from the file); ``changes``: 'input.mean'=..., 'kind'=..., ..."""
    card = {"kind": "relative_disparity",
            "input": {"layout": "NCHW", "size_multiple": 14, "default_size": [70, 98], "channel_order": "RGB",
                      "value_range": [0.0, 1.0], "mean": list(MEAN), "std": list(STD)},
            "output": {"valid_range": [0.0, None]},
            "licence": "test", "provenance": "built inside the test"}
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition(".")
        target = card[section] if section else card
        if value is ...:
            target.pop(key, None)
        else:
            target[key] = value
    return card


def write_card(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump(card_data(**changes)), encoding="utf-8")
    return path

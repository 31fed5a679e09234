"""Semantic segmentation teacher for cross-task distillation (X-Distill): timm encoder + light FPN decoder.

`model(image) -> {'logits': (B,C,H,W)}` for an image (B,3,H,W) RGB in [0, 1] (H, W multiples of
`size_multiple`); C = len(class_names). The class names are a model argument, so a released
segmentation model (`models.io.save_model`) names its classes and a class grouping
(`distill.grouping`) can be checked against it.

Weights: train it with the 'segmentation' task (`config/train/segmentation_teacher.yaml`), or pass
`weights_path`, a local state dict (`.safetensors`, or a `torch.save` file read with
`weights_only=True`) holding either the whole network (keys `encoder.*` and `decoder.*`, e.g.
trained elsewhere) or only the timm backbone (ImageNet classification weights). Nothing is downloaded.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd_depth_core.data.synthetic.world import SEMANTIC_CLASSES

from .encoders import TimmEncoder, check_image, load_weights_file
from .registry import register_model

DEFAULT_SEGMENTATION_CLASSES: tuple[str, ...] = SEMANTIC_CLASSES
"""The default class list: the synthetic world's classes."""

_FULL_MODEL_PREFIXES = ("encoder.", "decoder.")


class _ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class FPNSegmentationDecoder(nn.Module):
    """Encoder features (strides >= 4) -> class logits at stride 4 (B, num_classes, H/4, W/4).

    Light FPN: a 1x1 lateral conv per level to `channels`, top-down sum with nearest upsampling,
    every level refined by a 3x3 conv and upsampled to stride 4, summed, a 3x3 conv, a 1x1 classifier.
    """

    def __init__(self, feature_info: Sequence[dict[str, int]], num_classes: int, channels: int = 64,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.levels = [i for i, info in enumerate(feature_info) if int(info["reduction"]) >= 4]
        if not self.levels or int(feature_info[self.levels[0]]["reduction"]) != 4:
            raise ValueError(f"segmentation decoder needs an encoder feature at stride 4, got reductions "
                             f"{[info['reduction'] for info in feature_info]}")
        self.lateral = nn.ModuleList(nn.Conv2d(int(feature_info[i]["num_chs"]), channels, 1) for i in self.levels)
        self.refine = nn.ModuleList(_ConvBNReLU(channels, channels) for _ in self.levels)
        self.fuse = _ConvBNReLU(channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        maps = [self.lateral[k](features[i]) for k, i in enumerate(self.levels)]
        for k in range(len(maps) - 2, -1, -1):  # top-down
            maps[k] = maps[k] + F.interpolate(maps[k + 1], size=maps[k].shape[-2:], mode="nearest")
        size = maps[0].shape[-2:]
        fused = sum(F.interpolate(self.refine[k](m), size=size, mode="bilinear", align_corners=False)
                    if k else self.refine[k](m) for k, m in enumerate(maps))
        return self.classifier(self.dropout(self.fuse(fused)))


class SegmentationNet(nn.Module):
    """`model(image) -> {'logits': (B,C,H,W)}`, image (B,3,H,W) in [0, 1]; classes in `class_names` order."""

    input_names: tuple[str, ...] = ("image",)

    def __init__(self, encoder: TimmEncoder, class_names: Sequence[str], decoder_channels: int = 64) -> None:
        super().__init__()
        self.class_names = tuple(str(c) for c in class_names)
        self.num_classes = len(self.class_names)
        self.encoder = encoder
        self.feature_info = encoder.feature_info
        self.decoder = FPNSegmentationDecoder(encoder.feature_info, self.num_classes, decoder_channels)
        self.size_multiple = max(int(info["reduction"]) for info in self.feature_info)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        check_image(image, "image", 3, self.size_multiple)
        logits = self.decoder(self.encoder(image))
        return {"logits": F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)}


def _load_full_weights(model: SegmentationNet, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Load a whole-network state dict strictly; errors name the file and what does not fit."""
    classifier = state.get("decoder.classifier.weight")
    if classifier is not None and classifier.shape[0] != model.num_classes:
        raise ValueError(f"weights_path {str(path)!r}: the classifier predicts {classifier.shape[0]} classes but "
                         f"class_names lists {model.num_classes} ({', '.join(model.class_names)}); pass the "
                         "class names the weights were trained with")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ValueError(f"weights_path {str(path)!r} does not fit this segmentation network (check backbone and "
                         f"decoder_channels): {error}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"weights_path {str(path)!r} does not fit this segmentation network (check backbone and "
                         f"decoder_channels): missing keys {result.missing_keys[:5]}, unexpected keys "
                         f"{result.unexpected_keys[:5]}")


@register_model("segmentation_teacher", family="segmentation",
                description="timm encoder + light FPN decoder -> class logits (X-Distill teacher)")
def segmentation_teacher(*, backbone: str = "resnet18",
                         class_names: Sequence[str] = DEFAULT_SEGMENTATION_CLASSES,
                         decoder_channels: int = 64,
                         weights_path: str | os.PathLike | None = None) -> SegmentationNet:
    """`backbone`: any timm CNN with a stride-4 feature; `class_names`: the classes in id order.

    `weights_path`: whole-network or backbone-only local state dict (see the module docstring).
    """
    if isinstance(class_names, str) or not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names: expected a list of distinct class names in id order, got {class_names!r}")
    full_state = None
    if weights_path is not None:
        state = load_weights_file(weights_path)
        if any(key.startswith(_FULL_MODEL_PREFIXES) for key in state):
            full_state = state
    encoder = TimmEncoder(backbone, weights_path=weights_path if weights_path is not None and full_state is None
                          else None)
    model = SegmentationNet(encoder, class_names, decoder_channels)
    if full_state is not None:
        _load_full_weights(model, full_state, weights_path)
    return model

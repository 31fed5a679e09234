"""Encoder-decoder depth networks (timm CNN encoder + `MultiScaleDispDecoder`) and the Monodepth2 baseline.

`EncoderDecoderDepthNet` is the one monocular CNN depth net: `resnet18_md2` (the comparison
baseline, Monodepth2's ResNet18 design) and the students (students.py) are configurations of it.
Output dict per docs/architecture.md.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn

from .decoders import MONODEPTH2_CHANNELS, MultiScaleDispDecoder
from .encoders import TimmEncoder, check_image
from .registry import register_model


class EncoderDecoderDepthNet(nn.Module):
    """`model(image, return_features=False)` with image (B,3,H,W) in [0, 1], H and W multiples of `size_multiple`.

    Returns {'disp': 4 scales (B,1,H/2^s,W/2^s) sigmoid, 'log_sigma'?: (B,1,H,W), 'features'?: encoder maps}.
    """

    input_names: tuple[str, ...] = ("image",)

    def __init__(self, encoder: TimmEncoder, decoder_channels: Sequence[int] = MONODEPTH2_CHANNELS, *,
                 separable: bool = False, uncertainty: bool = False, full_resolution_stage: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_info = encoder.feature_info
        self.decoder = MultiScaleDispDecoder(encoder.feature_info, decoder_channels, separable=separable,
                                             uncertainty=uncertainty, full_resolution_stage=full_resolution_stage)
        self.size_multiple = max(info["reduction"] for info in self.feature_info)
        self.has_uncertainty = uncertainty

    def forward(self, image: torch.Tensor, return_features: bool = False) -> dict:
        check_image(image, "image", 3, self.size_multiple)
        features = self.encoder(image)
        out = self.decoder(features)
        if return_features:
            out["features"] = features
        return out


@register_model("resnet18_md2", family="baseline",
                description="Monodepth2-style ResNet18 encoder + upconv/skip decoder, 4 sigmoid disp scales")
def resnet18_md2(*, uncertainty: bool = False, weights_path: str | os.PathLike | None = None) -> EncoderDecoderDepthNet:
    """The comparison baseline. `weights_path`: optional local timm resnet18 (ImageNet) state dict."""
    encoder = TimmEncoder("resnet18", weights_path=weights_path)
    return EncoderDecoderDepthNet(encoder, MONODEPTH2_CHANNELS, uncertainty=uncertainty)

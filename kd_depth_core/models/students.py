"""Light student depth networks: a small timm encoder + the compact (depthwise-separable) shared decoder.

All students are `EncoderDecoderDepthNet`s (baseline.py) with `separable=True`, few decoder
channels and no full-resolution stage (full-resolution outputs are bilinear
upsamplings of the stride-2 head logits); `uncertainty=True` adds the `log_sigma` head. `DEFAULT_STUDENT` is the one the
distillation recipes use unless told otherwise.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from .baseline import EncoderDecoderDepthNet
from .encoders import TimmEncoder
from .registry import register_model

DEFAULT_STUDENT = "student_mobilenetv4"
"""1.4 M parameters (9 % of resnet18_md2), about 4-5x faster than it on one CPU thread at 640x192."""

STUDENT_DECODER_CHANNELS: tuple[int, ...] = (24, 32, 48, 64)
"""Compact decoder widths for the stages at strides 2, 4, 8, 16 (Monodepth2: 16 at stride 1, then 32 .. 256)."""


def build_student(backbone: str, *, decoder_channels: Sequence[int] = STUDENT_DECODER_CHANNELS,
                  uncertainty: bool = False, weights_path: str | os.PathLike | None = None) -> EncoderDecoderDepthNet:
    """A student from any timm CNN backbone with features at strides 2..32."""
    encoder = TimmEncoder(backbone, weights_path=weights_path)
    return EncoderDecoderDepthNet(encoder, decoder_channels, separable=True, uncertainty=uncertainty,
                                  full_resolution_stage=False)


@register_model("student_mobilenetv3", family="student",
                description="MobileNetV3-Large encoder + compact separable decoder (most capacity, 3.1 M)")
def student_mobilenetv3(*, backbone: str = "mobilenetv3_large_100",
                        decoder_channels: Sequence[int] = STUDENT_DECODER_CHANNELS, uncertainty: bool = False,
                        weights_path: str | os.PathLike | None = None) -> EncoderDecoderDepthNet:
    """`backbone`: a timm MobileNetV3 (mobilenetv3_large_100, mobilenetv3_small_100, ...)."""
    return build_student(backbone, decoder_channels=decoder_channels, uncertainty=uncertainty,
                         weights_path=weights_path)


@register_model("student_lcnet", family="student",
                description="PP-LCNet encoder + compact separable decoder (smallest)")
def student_lcnet(*, backbone: str = "lcnet_100", decoder_channels: Sequence[int] = STUDENT_DECODER_CHANNELS,
                  uncertainty: bool = False, weights_path: str | os.PathLike | None = None) -> EncoderDecoderDepthNet:
    """`backbone`: a timm LCNet (lcnet_050, lcnet_075, lcnet_100, ...)."""
    return build_student(backbone, decoder_channels=decoder_channels, uncertainty=uncertainty,
                         weights_path=weights_path)


@register_model("student_efficientnet_lite", family="student",
                description="EfficientNet-Lite0 encoder + compact separable decoder")
def student_efficientnet_lite(*, backbone: str = "efficientnet_lite0",
                              decoder_channels: Sequence[int] = STUDENT_DECODER_CHANNELS, uncertainty: bool = False,
                              weights_path: str | os.PathLike | None = None) -> EncoderDecoderDepthNet:
    """`backbone`: a timm EfficientNet-Lite (efficientnet_lite0, tf_efficientnet_lite0, ...)."""
    return build_student(backbone, decoder_channels=decoder_channels, uncertainty=uncertainty,
                         weights_path=weights_path)


@register_model("student_mobilenetv4", family="student",
                description="MobileNetV4-Conv-Small encoder + compact separable decoder (the default student)")
def student_mobilenetv4(*, backbone: str = "mobilenetv4_conv_small",
                        decoder_channels: Sequence[int] = STUDENT_DECODER_CHANNELS, uncertainty: bool = False,
                        weights_path: str | os.PathLike | None = None) -> EncoderDecoderDepthNet:
    """`backbone`: a timm MobileNetV4 (mobilenetv4_conv_small, mobilenetv4_conv_medium, ...)."""
    return build_student(backbone, decoder_channels=decoder_channels, uncertainty=uncertainty,
                         weights_path=weights_path)

"""Stereo teacher: a shared timm CNN on both images, correlation volumes, the shared disparity decoder.

`StereoEncoder` runs one backbone on left and right (batched together), and at the strides in
`cost_volume_reductions` appends a correlation volume over disparity to the left features. The
decoder (`MultiScaleDispDecoder`) is built from the encoder's `feature_info` (left channels +
disparity candidates) and predicts left sigmoid disparity at 4 scales and `log_sigma`. The fused
(3D-aware) features are what `return_features=True` returns, for feature distillation.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoders import MONODEPTH2_CHANNELS, MultiScaleDispDecoder
from .encoders import TimmEncoder, check_image
from .registry import register_model


def correlation_volume(left: torch.Tensor, right: torch.Tensor, num_disparities: int) -> torch.Tensor:
    """(B,C,H,W) left and right features -> (B,D,H,W) with D = num_disparities.

    volume[:, d, v, u] = mean_c left[:, c, v, u] * right[:, c, v, u - d] (0 where u - d < 0):
    a left pixel u sees the right pixel u - d (docs/architecture.md).
    """
    if left.shape != right.shape:
        raise ValueError(f"left and right features differ in shape: {tuple(left.shape)} vs {tuple(right.shape)}")
    width = left.shape[-1]
    slices = []
    for d in range(num_disparities):
        shifted = F.pad(right, (d, 0))[..., :width] if d else right
        slices.append((left * shifted).mean(dim=1))
    return torch.stack(slices, dim=1)


class StereoEncoder(nn.Module):
    """(left, right) in [0, 1] -> left feature maps, with correlation volumes appended at chosen strides.

    `max_disparity`: largest disparity searched, in full-resolution pixels; at stride r the volume
    has max(1, max_disparity // r) candidates over features projected to `match_channels`.
    """

    def __init__(self, backbone: str, *, cost_volume_reductions: Sequence[int] = (4, 8, 16),
                 max_disparity: int = 192, match_channels: int = 32,
                 weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.backbone = TimmEncoder(backbone, weights_path=weights_path)
        reductions = [info["reduction"] for info in self.backbone.feature_info]
        missing = [r for r in cost_volume_reductions if r not in reductions]
        if missing:
            raise ValueError(f"cost_volume_reductions {list(missing)} not among backbone {backbone!r} "
                             f"feature strides {reductions}")
        self.volume_levels: dict[int, int] = {}  # feature index -> disparity candidates
        self.match_proj = nn.ModuleDict()
        self.feature_info: list[dict[str, int]] = []
        for index, info in enumerate(self.backbone.feature_info):
            channels, reduction = info["num_chs"], info["reduction"]
            if reduction in cost_volume_reductions and index == reductions.index(reduction):
                candidates = max(1, int(max_disparity) // reduction)
                self.volume_levels[index] = candidates
                self.match_proj[str(index)] = nn.Conv2d(channels, int(match_channels), 1)
                channels += candidates
            self.feature_info.append({"num_chs": channels, "reduction": reduction})

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> list[torch.Tensor]:
        batch = left.shape[0]
        fused = []
        for index, features in enumerate(self.backbone(torch.cat([left, right], dim=0))):
            left_features, right_features = features[:batch], features[batch:]
            if index in self.volume_levels:
                proj = self.match_proj[str(index)]
                volume = correlation_volume(proj(left_features), proj(right_features), self.volume_levels[index])
                left_features = torch.cat([left_features, volume], dim=1)
            fused.append(left_features)
        return fused


class StereoDepthNet(nn.Module):
    """`model(left, right, return_features=False)`, each (B,3,H,W) in [0, 1] (rectified pair, right at +x).

    Returns {'disp': 4 scales of LEFT sigmoid disparity, 'log_sigma': (B,1,H,W) if uncertainty,
    'features'?: fused left features per `feature_info`}.
    """

    input_names: tuple[str, ...] = ("left", "right")

    def __init__(self, encoder: StereoEncoder, decoder_channels: Sequence[int] = MONODEPTH2_CHANNELS, *,
                 uncertainty: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_info = encoder.feature_info
        self.decoder = MultiScaleDispDecoder(encoder.feature_info, decoder_channels, uncertainty=uncertainty)
        self.size_multiple = max(info["reduction"] for info in self.feature_info)
        self.has_uncertainty = uncertainty

    def forward(self, left: torch.Tensor, right: torch.Tensor, return_features: bool = False) -> dict:
        check_image(left, "left", 3, self.size_multiple)
        check_image(right, "right", 3, self.size_multiple)
        if left.shape != right.shape:
            raise ValueError(f"left {tuple(left.shape)} and right {tuple(right.shape)} must have the same shape")
        features = self.encoder(left, right)
        out = self.decoder(features)
        if return_features:
            out["features"] = features
        return out


@register_model("stereo_teacher", family="stereo_teacher",
                description="stereo teacher: shared timm CNN on left/right, correlation volumes, disp + log_sigma")
def stereo_teacher(*, backbone: str = "resnet34", cost_volume_reductions: Sequence[int] = (4, 8, 16),
                   max_disparity: int = 192, match_channels: int = 32,
                   decoder_channels: Sequence[int] = MONODEPTH2_CHANNELS, uncertainty: bool = True,
                   weights_path: str | os.PathLike | None = None) -> StereoDepthNet:
    """`max_disparity`: full-resolution pixels searched (192 covers ~1 m at KITTI's 640-wide rig)."""
    encoder = StereoEncoder(backbone, cost_volume_reductions=cost_volume_reductions, max_disparity=max_disparity,
                            match_channels=match_channels, weights_path=weights_path)
    return StereoDepthNet(encoder, decoder_channels, uncertainty=uncertainty)

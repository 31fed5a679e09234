"""Pose network (Monodepth2 design): two frames stacked (6 channels) -> timm encoder -> (B,6) pose vector.

`pose_net(img_a, img_b)` returns (axis-angle (3), translation (3) in metres) with
`geometry.pose_vec_to_mat(v) = T_b_a` (see geometry.py for which order to call it in).
Outputs are scaled by `output_scale` (0.01) so the initial poses are near identity.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from .encoders import TimmEncoder, check_image
from .registry import register_model


class PoseDecoder(nn.Module):
    """Deepest feature map (B,C,h,w) -> (B,6): 1x1 squeeze, two 3x3 convs, 1x1 to 6, spatial mean, scale."""

    def __init__(self, in_channels: int, hidden: int = 256, output_scale: float = 0.01) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 6, 1))
        self.output_scale = float(output_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.output_scale * self.net(features).mean(dim=(2, 3))


class PoseNet(nn.Module):
    """`pose_net(img_a, img_b) -> (B,6)`; images (B,3,H,W) in [0, 1], H and W multiples of `size_multiple`."""

    input_names: tuple[str, ...] = ("image_a", "image_b")

    def __init__(self, encoder: TimmEncoder, output_scale: float = 0.01) -> None:
        super().__init__()
        if encoder.in_chans != 6:
            raise ValueError(f"pose encoder must take 6 channels (two RGB frames), got in_chans={encoder.in_chans}")
        self.encoder = encoder
        self.feature_info = encoder.feature_info
        self.decoder = PoseDecoder(encoder.feature_info[-1]["num_chs"], output_scale=output_scale)
        self.size_multiple = max(info["reduction"] for info in self.feature_info)

    def forward(self, img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
        check_image(img_a, "img_a", 3, self.size_multiple)
        check_image(img_b, "img_b", 3, self.size_multiple)
        return self.decoder(self.encoder(torch.cat([img_a, img_b], dim=1))[-1])


@register_model("pose_resnet18", family="pose",
                description="Monodepth2 pose net: ResNet18 on two stacked frames -> axis-angle + translation")
def pose_resnet18(*, backbone: str = "resnet18", output_scale: float = 0.01,
                  weights_path: str | os.PathLike | None = None) -> PoseNet:
    """`weights_path`: optional local 3-channel timm state dict; timm adapts the first conv to 6 channels."""
    encoder = TimmEncoder(backbone, in_chans=6, weights_path=weights_path)
    return PoseNet(encoder, output_scale=output_scale)

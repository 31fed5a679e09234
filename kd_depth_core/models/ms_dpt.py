"""MS-DPT: the multi-scale dense prediction transformer teacher (Song & Lee, Sci. Rep. 2023).

A timm ViT (`dynamic_img_size=True`) hooked at four blocks; reassemble blocks turn the token maps
(stride p, the patch size) into maps at strides p/4, p/2, p, 2p (4, 8, 16, 32 for p = 16); fusion
blocks (residual conv units + upsampling) merge them from coarse to fine; disparity heads on the
fusion outputs give the 4 output scales. Monte Carlo dropout sites (`MCDropout`) sit after every
fusion block and inside every head; `mc_dropout.mc_dropout_predict` keeps them active.

Size multiple: lcm(p, 8) — 16 for patch-16 ViTs, so 640x192 is valid; 56 for patch 14.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoders import NUM_SCALES
from .encoders import ViTEncoder, check_image
from .mc_dropout import MCDropout
from .registry import register_model


class Reassemble(nn.Module):
    """Token map (B, E, H/p, W/p) -> (B, features, H/p * 4/2^i, ...) for hook i = 0..3 (strides p/4 .. 2p)."""

    def __init__(self, embed_dim: int, channels: int, features: int, index: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(embed_dim, channels, 1)
        if index == 0:
            self.resample: nn.Module = nn.ConvTranspose2d(channels, channels, 4, stride=4)
        elif index == 1:
            self.resample = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        elif index == 2:
            self.resample = nn.Identity()
        else:
            self.resample = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.to_features = nn.Conv2d(channels, features, 3, padding=1, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.to_features(self.resample(self.project(tokens)))


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))) (DPT)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """(x, skip?) -> 1x1 conv(upsample(MCDropout(RCU(x + RCU(skip))), size)); the deepest block has no skip."""

    def __init__(self, features: int, dropout: float, has_skip: bool = True) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(features) if has_skip else None
        self.out_unit = ResidualConvUnit(features)
        self.dropout = MCDropout(dropout)
        self.project = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: Sequence[int]) -> torch.Tensor:
        if self.skip_unit is not None:
            x = x + self.skip_unit(skip)
        x = self.dropout(self.out_unit(x))
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.project(x)


class DispHead(nn.Module):
    """Fusion output -> sigmoid disparity at `size`: conv, (resize), conv, ReLU, MCDropout, 1x1 conv."""

    def __init__(self, features: int, dropout: float, hidden: int = 32) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(features, features // 2, 3, padding=1)
        self.hidden = nn.Conv2d(features // 2, hidden, 3, padding=1)
        self.dropout = MCDropout(dropout)
        self.out = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = self.reduce(x)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        x = self.dropout(F.relu(self.hidden(x)))
        return torch.sigmoid(self.out(x))


class MSDPTDecoder(nn.Module):
    """Four ViT token maps (stride p) -> {'disp': 4 scales (B,1,H/2^s,W/2^s)}."""

    def __init__(self, feature_info: Sequence[dict[str, int]], *, features: int = 64,
                 reassemble_channels: Sequence[int] | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        if len(feature_info) != 4:
            raise ValueError(f"MS-DPT decoder needs 4 hooked blocks, got {len(feature_info)}")
        embed_dim = int(feature_info[0]["num_chs"])
        if reassemble_channels is None:
            reassemble_channels = (embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim)
        if len(reassemble_channels) != 4:
            raise ValueError(f"reassemble_channels: expected 4 widths, got {list(reassemble_channels)}")
        self.reassemble = nn.ModuleList(Reassemble(embed_dim, int(c), features, i)
                                        for i, c in enumerate(reassemble_channels))
        self.fusion = nn.ModuleList(FusionBlock(features, dropout, has_skip=i < 3) for i in range(4))
        self.heads = nn.ModuleList(DispHead(features, dropout) for _ in range(NUM_SCALES))

    def forward(self, tokens: Sequence[torch.Tensor], image_size: Sequence[int]) -> dict[str, list[torch.Tensor]]:
        height, width = int(image_size[0]), int(image_size[1])
        layer1, layer2, layer3, layer4 = (block(t) for block, t in zip(self.reassemble, tokens))
        path4 = self.fusion[3](layer4, None, layer3.shape[-2:])
        path3 = self.fusion[2](path4, layer3, layer2.shape[-2:])  # stride 8 (p = 16)
        path2 = self.fusion[1](path3, layer2, layer1.shape[-2:])  # stride 4
        path1 = self.fusion[0](path2, layer1, (height // 2, width // 2))  # stride 2
        sizes = [(height >> s, width >> s) for s in range(NUM_SCALES)]
        disp = [self.heads[0](path1, sizes[0]), self.heads[1](path1, sizes[1]),
                self.heads[2](path2, sizes[2]), self.heads[3](path3, sizes[3])]
        return {"disp": disp}


class MSDPT(nn.Module):
    """`model(image, return_features=False)`, image (B,3,H,W) in [0, 1], H and W multiples of `size_multiple`.

    Returns {'disp': 4 scales, 'features'?: the 4 hooked token maps (B, embed_dim, H/p, W/p)}.
    """

    input_names: tuple[str, ...] = ("image",)
    has_uncertainty = False

    def __init__(self, encoder: ViTEncoder, *, features: int = 64, reassemble_channels: Sequence[int] | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_info = encoder.feature_info
        self.decoder = MSDPTDecoder(encoder.feature_info, features=features,
                                    reassemble_channels=reassemble_channels, dropout=dropout)
        self.size_multiple = math.lcm(encoder.patch_size, 2 ** (NUM_SCALES - 1))

    def forward(self, image: torch.Tensor, return_features: bool = False) -> dict:
        check_image(image, "image", 3, self.size_multiple)
        tokens = self.encoder(image)
        out: dict[str, Any] = self.decoder(tokens, image.shape[-2:])
        if return_features:
            out["features"] = tokens
        return out


@register_model("ms_dpt_teacher", family="teacher",
                description="MS-DPT: timm ViT + reassemble/fusion decoder, multi-scale heads, MC-dropout sites")
def ms_dpt_teacher(*, backbone: str = "vit_small_patch16_224", hooks: Sequence[int] | None = None,
                   img_size: Sequence[int] = (192, 640), features: int = 64,
                   reassemble_channels: Sequence[int] | None = None, dropout: float = 0.1,
                   weights_path: str | os.PathLike | None = None, **vit_overrides: Any) -> MSDPT:
    """`backbone`: a timm ViT; `hooks`: hooked block indices (default: 4 evenly spaced, (2,5,8,11) for 12 blocks);
    `img_size` (H, W): native position-embedding grid; `dropout`: p at every MC site; `vit_overrides`
    (e.g. depth=4, embed_dim=96, num_heads=3) go to timm for small test models.
    """
    encoder = ViTEncoder(backbone, hooks=hooks, img_size=img_size, weights_path=weights_path, **vit_overrides)
    return MSDPT(encoder, features=features, reassemble_channels=reassemble_channels, dropout=dropout)

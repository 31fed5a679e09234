"""MS-DPT: the multi-scale dense prediction transformer teacher (Song & Lee, Sci. Rep. 2023).

A timm ViT (`dynamic_img_size=True`) hooked at four blocks; reassemble blocks turn the token maps
(stride p, the patch size) into maps at strides p/4, p/2, p, 2p (4, 8, 16, 32 for p = 16); fusion
blocks (residual conv units + upsampling) merge them from coarse to fine; disparity heads on the
fusion outputs give the 4 output scales. With `stem` (DPT-Hybrid), a timm CNN's stride-4 and stride-8
stages take the place of the two shallow hooks and the ViT (patch 1) runs on its stride-16 map: at small
inputs (96x320 is a 6x20 grid of 16-px patches) the convolutional detail path is what lets the teacher
resolve thin structures and train from scratch in CPU minutes (docs/benchmarks.md). Monte Carlo dropout
sites (`MCDropout`) sit after every fusion block and inside every head; `mc_dropout.mc_dropout_predict`
keeps them active.

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
from .encoders import HybridViTEncoder, ViTEncoder, check_image
from .mc_dropout import MCDropout
from .registry import ModelConfigError, register_model


class Reassemble(nn.Module):
    """Encoder map (B, C, H/r, W/r) -> (B, features, H/t, W/t): 1x1 projection, resampling by r/t, 3x3 conv.

    For hook i = 0..3 the target stride t is s/4, s/2, s, 2s with s the token stride (16): a ViT's token
    maps (r = s) are upsampled 4x and 2x, kept, and downsampled 2x; a hybrid's stem maps (r = 4, 8) are kept.
    """

    def __init__(self, in_channels: int, channels: int, features: int, factor: float) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, channels, 1)
        if factor in (4, 2):
            self.resample: nn.Module = nn.ConvTranspose2d(channels, channels, int(factor), stride=int(factor))
        elif factor == 1:
            self.resample = nn.Identity()
        elif factor == 0.5:
            self.resample = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        else:
            raise ValueError(f"MS-DPT reassemble: cannot resample a map by {factor} (expected 4, 2, 1 or 0.5)")
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
        return torch.sigmoid(self.out(x).float())  # fp32 under autocast: bf16 keeps 8 bits of disparity


class MSDPTDecoder(nn.Module):
    """Four encoder maps (ViT token maps at stride s, or a hybrid's stem maps at s/4, s/2 and token maps)
    -> {'disp': 4 scales (B,1,H/2^k,W/2^k)}. Built from the encoder's `feature_info`."""

    def __init__(self, feature_info: Sequence[dict[str, int]], *, features: int = 64,
                 reassemble_channels: Sequence[int] | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        if len(feature_info) != 4:
            raise ValueError(f"MS-DPT decoder needs 4 hooked blocks, got {len(feature_info)}")
        embed_dim = int(feature_info[-1]["num_chs"])
        token_stride = int(feature_info[-1]["reduction"])
        if reassemble_channels is None:
            reassemble_channels = (embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim)
        if len(reassemble_channels) != 4:
            raise ValueError(f"reassemble_channels: expected 4 widths, got {list(reassemble_channels)}")
        targets = (token_stride / 4, token_stride / 2, token_stride, token_stride * 2)
        self.reassemble = nn.ModuleList(
            Reassemble(int(info["num_chs"]), int(c), features, int(info["reduction"]) / target)
            for info, c, target in zip(feature_info, reassemble_channels, targets))
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

    Returns {'disp': 4 scales, 'features'?: the 4 encoder maps, as described by `feature_info`}.
    """

    input_names: tuple[str, ...] = ("image",)
    has_uncertainty = False

    def __init__(self, encoder: ViTEncoder | HybridViTEncoder, *, features: int = 64,
                 reassemble_channels: Sequence[int] | None = None, dropout: float = 0.1) -> None:
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
                description="MS-DPT: timm ViT (or DPT-Hybrid: CNN stem + ViT) + reassemble/fusion decoder, "
                            "multi-scale heads, MC-dropout sites")
def ms_dpt_teacher(*, backbone: str = "vit_small_patch16_224", hooks: Sequence[int] | None = None,
                   img_size: Sequence[int] = (192, 640), features: int = 64,
                   reassemble_channels: Sequence[int] | None = None, dropout: float = 0.1,
                   stem: str | None = None, stem_indices: Sequence[int] = (1, 2, 3),
                   weights_path: str | os.PathLike | None = None,
                   stem_weights_path: str | os.PathLike | None = None, **vit_overrides: Any) -> MSDPT:
    """`backbone`: a timm ViT; `hooks`: hooked block indices (default: 4 evenly spaced, (2,5,8,11) for 12 blocks);
    `img_size` (H, W): native position-embedding grid; `dropout`: p at every MC site; `vit_overrides`
    (e.g. depth=4, embed_dim=96, num_heads=3) go to timm for small test models.

    `stem` (a timm CNN, e.g. 'resnet18'): the DPT-Hybrid encoder (`HybridViTEncoder`): the stem's stride-4 and
    stride-8 stages feed the decoder, the ViT runs with patch 1 on its stride-16 map and 2 blocks are hooked
    (default: the last of each half). `stem_weights_path`: local ImageNet weights for the stem; `weights_path`
    (the ViT's) is for the plain ViT only.
    """
    if stem is None:
        encoder: ViTEncoder | HybridViTEncoder = ViTEncoder(backbone, hooks=hooks, img_size=img_size,
                                                            weights_path=weights_path, **vit_overrides)
    else:
        if weights_path is not None:
            raise ModelConfigError("ms_dpt_teacher: weights_path (ViT weights for 16-px patches) does not fit the "
                                   "hybrid encoder's patch-1 ViT; pass stem_weights_path for the CNN stem instead")
        encoder = HybridViTEncoder(backbone, stem=stem, stem_indices=stem_indices, hooks=hooks, img_size=img_size,
                                   stem_weights_path=stem_weights_path, **vit_overrides)
    return MSDPT(encoder, features=features, reassemble_channels=reassemble_channels, dropout=dropout)

"""The multi-scale disparity decoder shared by the baseline, the students and the stereo teacher.

Monodepth2-style: from the deepest feature map (stride 2^K) down to stride 1, each stage is
conv -> 2x nearest upsampling -> concatenation with the encoder feature of that stride (if any)
-> conv. Sigmoid disparity heads on the stages at strides 1, 2, 4, 8 give the 4 output scales.
`separable=True` makes every 3x3 conv depthwise-separable and the heads 1x1 (the students' compact decoder).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

MONODEPTH2_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 256)
"""Monodepth2's decoder widths for the stages at strides 1, 2, 4, 8, 16."""

NUM_SCALES = 4


class Conv3x3(nn.Module):
    """Reflection-padded 3x3 conv (Monodepth2); `separable=True`: zero-padded depthwise 3x3 then pointwise 1x1.

    The separable form pads inside the depthwise conv: a separate padding op at full resolution
    costs about as much as the conv itself on a CPU.
    """

    def __init__(self, in_channels: int, out_channels: int, *, separable: bool = False) -> None:
        super().__init__()
        if separable:
            self.conv = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
                nn.Conv2d(in_channels, out_channels, 1))
        else:
            self.conv = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _head(in_channels: int, separable: bool) -> nn.Module:
    """One-channel output head: 3x3 (Monodepth2) or, in the compact decoder, 1x1 (the stage before has 3x3)."""
    return nn.Conv2d(in_channels, 1, 1) if separable else Conv3x3(in_channels, 1)


class ConvBlock(nn.Module):
    """Conv3x3 followed by ELU (Monodepth2's block)."""

    def __init__(self, in_channels: int, out_channels: int, *, separable: bool = False) -> None:
        super().__init__()
        self.conv = Conv3x3(in_channels, out_channels, separable=separable)
        self.act = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def _log2_stride(reduction: int) -> int:
    level = int(round(math.log2(reduction)))
    if reduction < 1 or 2 ** level != reduction:
        raise ValueError(f"feature reduction {reduction} is not a power of two")
    return level


class MultiScaleDispDecoder(nn.Module):
    """Encoder features -> {'disp': 4 maps (B,1,H/2^s,W/2^s) in [0, 1], 'log_sigma'?: (B,1,H,W)}.

    `feature_info`: the encoder's list of `{'num_chs', 'reduction'}` (powers of two, deepest last).
    `channels`: stage widths from the finest stage up: strides 1, 2, .. 2^(K-1) for a deepest
    reduction 2^K (Monodepth2: 16, 32, 64, 128, 256), or strides 2 .. 2^(K-1) without the
    full-resolution stage.
    `full_resolution_stage=False` (compact decoder): the finest stage runs at stride 2 and the
    full-resolution outputs are its head logits upsampled bilinearly — a stage at full resolution
    costs more on a CPU than the whole rest of a light decoder.
    `uncertainty=True` adds a `log_sigma` head (natural log of the depth std in metres), full resolution.
    """

    def __init__(self, feature_info: Sequence[dict[str, int]], channels: Sequence[int] = MONODEPTH2_CHANNELS, *,
                 separable: bool = False, uncertainty: bool = False, full_resolution_stage: bool = True) -> None:
        super().__init__()
        levels = [_log2_stride(int(info["reduction"])) for info in feature_info]
        deepest = max(levels)
        if levels[-1] != deepest:
            raise ValueError(f"the deepest encoder feature must come last, got reductions "
                             f"{[info['reduction'] for info in feature_info]}")
        if deepest < NUM_SCALES:
            raise ValueError(f"decoder needs an encoder reaching stride >= {2 ** NUM_SCALES}, got {2 ** deepest}")
        self.finest = 0 if full_resolution_stage else 1
        if len(channels) != deepest - self.finest:
            raise ValueError(f"channels: expected {deepest - self.finest} widths (strides {2 ** self.finest} .. "
                             f"{2 ** (deepest - 1)}), got {len(channels)}: {list(channels)}")
        self.stage_levels = tuple(range(deepest - 1, self.finest - 1, -1))  # coarse to fine
        width = {level: int(c) for level, c in zip(range(self.finest, deepest), channels)}
        # encoder feature used as skip at each stride level (the last one of that stride)
        self.skip_index: dict[int, int] = {level: i for i, level in enumerate(levels) if level < deepest}
        self.upconv_in = nn.ModuleList()
        self.upconv_out = nn.ModuleList()
        in_channels = int(feature_info[-1]["num_chs"])
        for level in self.stage_levels:
            skip = int(feature_info[self.skip_index[level]]["num_chs"]) if level in self.skip_index else 0
            self.upconv_in.append(ConvBlock(in_channels, width[level], separable=separable))
            self.upconv_out.append(ConvBlock(width[level] + skip, width[level], separable=separable))
            in_channels = width[level]
        self.disp_heads = nn.ModuleList(_head(width[max(s, self.finest)], separable) for s in range(NUM_SCALES))
        self.log_sigma_head = _head(width[self.finest], separable) if uncertainty else None

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        x = features[-1]
        disp: list[torch.Tensor] = []
        for stage, level in enumerate(self.stage_levels):
            x = self.upconv_in[stage](x)
            skip = features[self.skip_index[level]] if level in self.skip_index else None
            size = skip.shape[-2:] if skip is not None else (2 * x.shape[-2], 2 * x.shape[-1])
            x = F.interpolate(x, size=size, mode="nearest")
            if skip is not None:
                x = torch.cat([x, skip], dim=1)
            x = self.upconv_out[stage](x)
            if level < NUM_SCALES:
                disp.insert(0, torch.sigmoid(self.disp_heads[level](x).float()))  # fp32 under autocast
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {"disp": disp}
        log_sigma = self.log_sigma_head(x) if self.log_sigma_head is not None else None
        if self.finest == 1:  # full-resolution outputs from the stride-2 stage
            disp.insert(0, torch.sigmoid(_upsample2x(self.disp_heads[0](x)).float()))
            log_sigma = _upsample2x(log_sigma) if log_sigma is not None else None
        if log_sigma is not None:
            out["log_sigma"] = log_sigma
        return out


def _upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

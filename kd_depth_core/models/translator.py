"""Depth -> segmentation translator for cross-task distillation (X-Distill); training only, never exported.

`translator(disps) -> logits (B,G,H,W)` from the depth network's multi-scale sigmoid disparities
(`disps[s]` is (B,1,H/2^s,W/2^s), the model output dict's 'disp'), G = number of class groups.
It sees depth only (no image), so the cross-entropy against the segmentation teacher's grouped
labels can only be lowered by depth maps that show the groups: its gradient reaches the depth
network through `disps`.

Each disparity is divided by its per-image mean (the translator is invariant to the depth scale,
which monocular training cannot fix), embedded by a 3x3 conv, and the scales are fused coarse to
fine (upsample, add, 3x3 conv) — a small FPN whose coarsest level sees a wide context.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


class DepthToSegTranslator(nn.Module):
    """Small trainable network: `num_scales` disparity maps -> `num_groups` logits at the finest scale."""

    def __init__(self, num_groups: int, channels: int = 32, num_scales: int = 4) -> None:
        super().__init__()
        if num_groups < 2:
            raise ValueError(f"num_groups: expected at least 2 groups, got {num_groups}")
        if num_scales < 1:
            raise ValueError(f"num_scales: expected >= 1, got {num_scales}")
        self.num_groups, self.num_scales = int(num_groups), int(num_scales)
        self.embed = nn.ModuleList(_conv(1, channels) for _ in range(num_scales))
        self.context = nn.Sequential(_conv(channels, channels), _conv(channels, channels))  # coarsest scale
        self.refine = nn.ModuleList(_conv(channels, channels) for _ in range(num_scales - 1))
        self.head = nn.Conv2d(channels, num_groups, 1)

    def forward(self, disps: Sequence[torch.Tensor]) -> torch.Tensor:
        """disps: list of (B,1,H/2^s,W/2^s), s = 0..num_scales-1 -> logits (B,num_groups,H,W)."""
        if len(disps) != self.num_scales:
            raise ValueError(f"disps: expected {self.num_scales} disparity scales, got {len(disps)}")
        for s, disp in enumerate(disps):
            if disp.ndim != 4 or disp.shape[1] != 1:
                raise ValueError(f"disps[{s}]: expected shape (B,1,h,w), got {tuple(disp.shape)}")
        normalised = [d / (d.mean(dim=(2, 3), keepdim=True) + 1e-7) for d in disps]
        x = self.context(self.embed[-1](normalised[-1]))
        for s in range(self.num_scales - 2, -1, -1):
            feature = self.embed[s](normalised[s])
            x = self.refine[s](feature + F.interpolate(x, size=feature.shape[-2:], mode="bilinear",
                                                       align_corners=False))
        return self.head(x)

"""Transformer discriminator for holistic (adversarial) distillation: a depth map -> one real/fake score.

`disc(depth, image=None) -> (B,)` raw scores (no sigmoid; the GAN losses in `losses.adversarial`
take them as they are). The input (a depth representation (B,1,H,W), optionally concatenated with
its RGB image (B,3,H,W) in [0, 1], mapped to [-1, 1]) is resized to the fixed `input_size`, cut
into `patch_size` x `patch_size` patches by a strided convolution (patch tokens), given learned
position embeddings, passed through a small `torch.nn.TransformerEncoder` (pre-norm, GELU), and the
CLS token (`pooling='cls'`) or the mean patch token (`'mean'`) is mapped to the score. The fixed
input size keeps the token count (and the cost) independent of the training resolution.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class TransformerDiscriminator(nn.Module):
    """Patch tokens -> transformer encoder -> CLS/mean token -> score (B,). See the module docstring."""

    input_names: tuple[str, ...] = ("depth", "image")
    input_channels: tuple[int, ...] = (1, 3)

    def __init__(self, *, use_image: bool = True, input_size: Sequence[int] = (96, 128), patch_size: int = 8,
                 embed_dim: int = 96, depth: int = 3, num_heads: int = 4, mlp_ratio: float = 2.0,
                 dropout: float = 0.0, pooling: Literal["cls", "mean"] = "cls") -> None:
        super().__init__()
        if len(input_size) != 2 or any(int(s) < 1 for s in input_size):
            raise ValueError(f"input_size: expected (height, width) in pixels, got {list(input_size)}")
        height, width = int(input_size[0]), int(input_size[1])
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise ValueError(f"patch_size: expected a positive divisor of input_size {height}x{width}, got {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim: expected a multiple of num_heads ({num_heads}), got {embed_dim}")
        if depth < 1:
            raise ValueError(f"depth: expected at least 1 transformer layer, got {depth}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling: expected 'cls' or 'mean', got {pooling!r}")
        self.use_image = bool(use_image)
        self.input_names = ("depth", "image") if self.use_image else ("depth",)  # what forward takes
        self.input_channels = (1, 3) if self.use_image else (1,)  # per input, as models.flops.example_inputs reads
        self.input_size = (height, width)
        self.pooling = pooling
        self.in_channels = 1 + (3 if self.use_image else 0)
        self.patch_embed = nn.Conv2d(self.in_channels, embed_dim, patch_size, stride=patch_size)
        num_tokens = (height // patch_size) * (width // patch_size) + (1 if pooling == "cls" else 0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if pooling == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, int(embed_dim * mlp_ratio), dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(embed_dim), enable_nested_tensor=False)
        self.head = nn.Linear(embed_dim, 1)

    def forward(self, depth: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        if depth.ndim != 4 or depth.shape[1] != 1:
            raise ValueError(f"depth: expected a (B,1,H,W) depth map, got {tuple(depth.shape)}")
        x = depth
        if self.use_image:
            if image is None:
                raise ValueError("image: this discriminator was built with use_image=True; pass the (B,3,H,W) "
                                 "RGB image in [0, 1] with the depth")
            if image.ndim != 4 or image.shape[1] != 3 or image.shape[0] != depth.shape[0]:
                raise ValueError(f"image: expected ({depth.shape[0]},3,H,W) RGB in [0, 1], got {tuple(image.shape)}")
            if image.shape[-2:] != depth.shape[-2:]:
                image = F.interpolate(image, size=depth.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([depth, image.to(depth.dtype) * 2 - 1], dim=1)
        if tuple(x.shape[-2:]) != self.input_size:
            shrink = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=shrink)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, E)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.encoder(tokens + self.pos_embed)
        pooled = tokens[:, 0] if self.cls_token is not None else tokens.mean(dim=1)
        return self.head(pooled).squeeze(-1)


@register_model("transformer_discriminator", family="discriminator",
                description="Patch tokens of a depth map (+ image) -> small transformer encoder -> real/fake score")
def transformer_discriminator(*, use_image: bool = True, input_size: Sequence[int] = (96, 128), patch_size: int = 8,
                              embed_dim: int = 96, depth: int = 3, num_heads: int = 4, mlp_ratio: float = 2.0,
                              dropout: float = 0.0, pooling: Literal["cls", "mean"] = "cls"
                              ) -> TransformerDiscriminator:
    """`input_size` (H, W): what the input is resized to (a multiple of `patch_size`); `depth`: encoder layers."""
    return TransformerDiscriminator(use_image=use_image, input_size=input_size, patch_size=patch_size,
                                    embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                    dropout=dropout, pooling=pooling)

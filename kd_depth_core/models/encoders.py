"""Encoders built from timm backbones, and the input checks every depth model shares.

Encoders take images (B, C, H, W) float in [0, 1] and normalise them inside with the backbone's
mean/std (so pretrained weights see what they were trained on). This is kd-depth's only
normalisation site: teachers (`models.frozen`) and the deploy graph (`inference.deploy`) pass
[0, 1] RGB through, and released-model metadata keeps mean 0 / std 1. They return a list of feature
maps described by `feature_info` (list of `{'num_chs', 'reduction'}`), the contract decoders and
distillation adapters are built from (docs/architecture.md).

Weights are never downloaded: backbones are created with `pretrained=False`, or from a local
`weights_path` (a timm/ImageNet state dict as `.safetensors` or a `torch.save` file loaded with
`weights_only=True`); timm adapts it (classifier dropped, first conv adapted to `in_chans`,
position embeddings resampled to `img_size`).
"""
from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from .registry import ModelConfigError


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from `path` (`.safetensors`, else `torch.load(weights_only=True)`).

    A checkpoint dict holding the state dict under 'state_dict' or 'model' is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights_path {str(path)!r} does not exist (pretrained weights are never "
                                "downloaded; pass a local .safetensors or .pth state dict, or leave it unset)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights_path {str(path)!r}: expected a state dict (name -> tensor)")
    return state


class _TimmLoadReport(logging.Handler):
    """Collects the missing/unexpected keys timm reports (it loads feature backbones non-strictly)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.missing: list[str] = []
        self.unexpected: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for pattern, found in ((r"Missing keys \((.*?)\) discovered", self.missing),
                               (r"Unexpected keys \((.*?)\) found", self.unexpected)):
            match = re.search(pattern, message)
            if match:
                found.extend(key.strip() for key in match.group(1).split(","))


def create_timm_backbone(backbone: str, *, weights_path: str | os.PathLike | None = None,
                         **timm_kwargs: Any) -> nn.Module:
    """`timm.create_model(backbone, pretrained=False, **timm_kwargs)`, or initialised from `weights_path`.

    With `weights_path`, every backbone tensor must come from the file (only the classifier may be
    missing; extra head tensors in the file are ignored); otherwise a ValueError names the file and
    the first missing keys.
    """
    if not timm.is_model(backbone):
        close = difflib.get_close_matches(str(backbone), timm.list_models(), n=3, cutoff=0.6)
        family = re.match(r"[A-Za-z]*", str(backbone)).group(0)  # 'lcnet_05' -> 'lcnet'; always matches
        raise ModelConfigError(f"backbone {backbone!r} is not a timm model name"
                               + (f" (did you mean {', '.join(close)}?)" if close else "")
                               + f"; list them with `python -c \"import timm; print(timm.list_models('{family}*'))\"`")
    if weights_path is None:
        return timm.create_model(backbone, pretrained=False, **timm_kwargs)
    state = load_weights_file(weights_path)
    report = _TimmLoadReport()
    logger = logging.getLogger("timm.models._builder")
    previous_level = logger.level
    logger.addHandler(report)
    logger.setLevel(logging.INFO)
    try:
        # A state dict in the overlay is timm's highest-priority source: nothing is downloaded.
        body = timm.create_model(backbone, pretrained=True, **timm_kwargs,
                                 pretrained_cfg_overlay={"state_dict": state, "source": ""})
    except (RuntimeError, KeyError, ValueError) as error:
        raise ValueError(f"weights_path {str(weights_path)!r} does not fit backbone {backbone!r}: {error}") from None
    finally:
        logger.removeHandler(report)
        logger.setLevel(previous_level)
    classifier = getattr(timm.models.get_pretrained_cfg(backbone), "classifier", None) or "head"
    classifier_prefixes = tuple(f"{name}." for name in ((classifier,) if isinstance(classifier, str) else classifier))
    missing = [key for key in report.missing if not key.startswith(classifier_prefixes)]
    if missing:  # unexpected keys are fine: feature backbones drop a classifier's head layers
        raise ValueError(f"weights_path {str(weights_path)!r} does not fit backbone {backbone!r}: "
                         f"{len(missing)} backbone tensors missing from the file ({', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}); unexpected keys in the file: "
                         f"{', '.join(report.unexpected[:5])}{' ...' if len(report.unexpected) > 5 else ''}")
    return body


def check_image(image: torch.Tensor, name: str, channels: int, size_multiple: int) -> None:
    """Raise a clear error unless `image` is (B, channels, H, W) with H, W multiples of `size_multiple`.

    Skipped while tracing/exporting (shapes are symbolic there).
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    if image.ndim != 4 or image.shape[1] != channels:
        raise ValueError(f"{name}: expected shape (B,{channels},H,W), got {tuple(image.shape)}")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if height % size_multiple or width % size_multiple:
        raise ValueError(f"{name}: height and width must be multiples of {size_multiple} (model.size_multiple), "
                         f"got {height}x{width} (HxW)")


def _normalisation(body: nn.Module, in_chans: int) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = getattr(body, "pretrained_cfg", None) or {}
    mean = list(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = list(cfg.get("std", (0.229, 0.224, 0.225)))
    repeats = -(-in_chans // len(mean))
    mean, std = (mean * repeats)[:in_chans], (std * repeats)[:in_chans]
    return torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)


class _NormalisedEncoder(nn.Module):
    """Holds the backbone's input mean/std (non-persistent buffers: they follow .to() but are not saved)."""

    def _set_normalisation(self, body: nn.Module, in_chans: int) -> None:
        mean, std = _normalisation(body, in_chans)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std


class TimmEncoder(_NormalisedEncoder):
    """A timm CNN backbone with `features_only=True`: image in [0, 1] -> list of feature maps.

    `out_indices`: which backbone stages to return (timm's default: all, typically strides 2..32).
    Extra `timm_kwargs` go to `timm.create_model` (e.g. `output_stride`).
    """

    def __init__(self, backbone: str, *, in_chans: int = 3, out_indices: Sequence[int] | None = None,
                 weights_path: str | os.PathLike | None = None, **timm_kwargs: Any) -> None:
        super().__init__()
        if out_indices is not None:
            timm_kwargs["out_indices"] = tuple(out_indices)
        self.backbone_name = backbone
        self.in_chans = in_chans
        self.body = create_timm_backbone(backbone, weights_path=weights_path, features_only=True,
                                         in_chans=in_chans, **timm_kwargs)
        self.feature_info: list[dict[str, int]] = [
            {"num_chs": int(c), "reduction": int(r)}
            for c, r in zip(self.body.feature_info.channels(), self.body.feature_info.reduction())]
        self._set_normalisation(self.body, in_chans)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_chans, H, W) in [0, 1] -> feature maps, level i is (B, num_chs_i, H/reduction_i, W/reduction_i)."""
        return list(self.body(self.normalise(image)))


def evenly_spaced_hooks(depth: int, count: int = 4) -> tuple[int, ...]:
    """Block indices hooked by DPT-style decoders: the last block of each of `count` equal groups.

    depth 12 -> (2, 5, 8, 11); depth 4 -> (0, 1, 2, 3).
    """
    if depth < count:
        raise ValueError(f"a ViT with {depth} blocks cannot provide {count} hooked blocks")
    return tuple(round(depth * (i + 1) / count) - 1 for i in range(count))


def hook_vit_blocks(body: nn.Module, backbone: str, hooks: Sequence[int] | None, count: int) -> tuple[int, ...]:
    """Check `body` is a timm ViT, choose `count` hooked blocks (default: the last `count` of
    `evenly_spaced_hooks(depth)`), prune the blocks after the last hook, the final norm and the head."""
    if not hasattr(body, "forward_intermediates") or not hasattr(body, "blocks"):
        raise ValueError(f"backbone {backbone!r} is not a timm ViT with forward_intermediates")
    depth = len(body.blocks)
    chosen = tuple(int(h) for h in hooks) if hooks is not None else evenly_spaced_hooks(depth)[4 - count:]
    if len(chosen) != count or any(not 0 <= h < depth for h in chosen):
        raise ValueError(f"hooks {chosen}: expected {count} block indices of the {depth} blocks of {backbone!r}")
    body.prune_intermediate_layers(list(chosen), prune_norm=True, prune_head=True)
    return chosen


class ViTEncoder(_NormalisedEncoder):
    """A timm Vision Transformer: image in [0, 1] -> token maps of `hooks` blocks, each (B, embed_dim, H/p, W/p).

    Uses timm's `forward_intermediates` (prefix tokens dropped), `dynamic_img_size=True` so any
    H, W divisible by the patch size p works; `img_size` sets the native position-embedding grid.
    Blocks after the last hook, the final norm and the head are pruned. `vit_overrides` go to timm
    (e.g. `depth=4, embed_dim=96, num_heads=3` for a tiny test model).
    """

    def __init__(self, backbone: str, *, hooks: Sequence[int] | None = None, img_size: Sequence[int] = (192, 640),
                 weights_path: str | os.PathLike | None = None, **vit_overrides: Any) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.body = create_timm_backbone(backbone, weights_path=weights_path, num_classes=0, dynamic_img_size=True,
                                         img_size=tuple(int(s) for s in img_size), **vit_overrides)
        self.hooks = hook_vit_blocks(self.body, backbone, hooks, 4)
        patch = self.body.patch_embed.patch_size
        if patch[0] != patch[1]:
            raise ValueError(f"backbone {backbone!r}: non-square patches {patch} are not supported")
        self.patch_size = int(patch[0])
        self.embed_dim = int(self.body.embed_dim)
        self.feature_info = [{"num_chs": self.embed_dim, "reduction": self.patch_size} for _ in self.hooks]
        self._set_normalisation(self.body, 3)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> list of len(hooks) maps (B, embed_dim, H/p, W/p)."""
        return list(self.body.forward_intermediates(self.normalise(image), indices=list(self.hooks),
                                                    intermediates_only=True, output_fmt="NCHW"))


class HybridViTEncoder(_NormalisedEncoder):
    """DPT-Hybrid (Ranftl et al., ICCV 2021): a timm CNN `stem` whose stride-4 and stride-8 stages go straight
    to the decoder, and a timm ViT (`backbone`, patch 1) over the stem's stride-16 map.

    image (B, 3, H, W) in [0, 1] -> [stem map at stride 4, stem map at stride 8, token maps of the ViT's two
    `hooks` blocks (B, embed_dim, H/16, W/16)]. The convolutional stages keep the detail a 16-px patch
    embedding throws away, and train from scratch far faster than a patch-16 ViT. `stem_indices`: the stem
    stages returned at strides 4, 8 and 16 (timm `out_indices`; (1, 2, 3) for ResNets). The ViT's position
    embeddings cover `img_size` / 16; `vit_overrides` go to timm (e.g. depth=4 for a tiny test model).
    """

    def __init__(self, backbone: str, *, stem: str, stem_indices: Sequence[int] = (1, 2, 3),
                 hooks: Sequence[int] | None = None, img_size: Sequence[int] = (192, 640),
                 stem_weights_path: str | os.PathLike | None = None, **vit_overrides: Any) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.stem = create_timm_backbone(stem, weights_path=stem_weights_path, features_only=True,
                                         out_indices=tuple(int(i) for i in stem_indices))
        reductions = [int(r) for r in self.stem.feature_info.reduction()]
        channels = [int(c) for c in self.stem.feature_info.channels()]
        if reductions != [4, 8, 16]:
            raise ModelConfigError(f"stem {stem!r} with stem_indices {list(stem_indices)}: expected stages at "
                                   f"strides [4, 8, 16], got {reductions} (choose stem_indices accordingly)")
        token_grid = tuple(int(s) // 16 for s in img_size)
        self.body = create_timm_backbone(backbone, num_classes=0, dynamic_img_size=True, img_size=token_grid,
                                         patch_size=1, in_chans=channels[2], **vit_overrides)
        self.hooks = hook_vit_blocks(self.body, backbone, hooks, 2)
        self.embed_dim = int(self.body.embed_dim)
        self.patch_size = 16  # stride of the token maps
        self.feature_info = [{"num_chs": channels[0], "reduction": 4}, {"num_chs": channels[1], "reduction": 8},
                             {"num_chs": self.embed_dim, "reduction": 16}, {"num_chs": self.embed_dim, "reduction": 16}]
        self._set_normalisation(self.stem, 3)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> [(B, C4, H/4, W/4), (B, C8, H/8, W/8), 2 x (B, embed_dim, H/16, W/16)]."""
        stride4, stride8, stride16 = self.stem(self.normalise(image))
        tokens = self.body.forward_intermediates(stride16, indices=list(self.hooks), intermediates_only=True,
                                                 output_fmt="NCHW")
        return [stride4, stride8, *tokens]

"""A frozen network (a distillation teacher): load, freeze, stay in eval mode, resize its input.

Every teacher (`distill.teacher.TeacherWrapper`, `distill.adu_depth.StereoTeacher`,
`distill.xdistill.SegmentationTeacher`) is a :class:`FrozenNetwork`:

- loaded from a released model file (`models.io.load_model`, checksum-verified) or given as an
  already loaded ``(model, metadata)`` pair (:func:`load_frozen`);
- frozen: ``requires_grad=False`` everywhere, and the network stays in eval mode when its owner
  is put in train mode (frozen BatchNorm; MC-dropout sites are switched on per call);
- :meth:`FrozenNetwork.preprocess` checks an RGB batch and resizes it to the network's input
  size. It does **not** normalise: kd-depth networks take RGB in [0, 1] and their encoder
  normalises with the backbone's mean/std (`models.encoders`, the one normalisation site).
  Metadata ``mean``/``std`` must therefore be the identity (:func:`check_identity_normalisation`),
  which is what `ModelMetadata.from_model` writes.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kd_depth_core.models.io import ModelMetadata, load_model

FrozenSource = str | os.PathLike | tuple[nn.Module, ModelMetadata]


def check_identity_normalisation(metadata: ModelMetadata, where: str) -> None:
    """Raise ValueError unless the metadata's mean is (0,0,0) and std (1,1,1).

    kd-depth normalises inside the network's encoder only; a file asking for another mean/std
    would be normalised twice (or by a graph that no longer applies it), so it is refused.
    """
    if tuple(metadata.mean) != (0.0, 0.0, 0.0) or tuple(metadata.std) != (1.0, 1.0, 1.0):
        raise ValueError(f"{where}: metadata mean {tuple(metadata.mean)} / std {tuple(metadata.std)}: expected "
                         "mean (0, 0, 0) and std (1, 1, 1); kd-depth networks take RGB in [0, 1] and normalise "
                         "inside their encoder (docs/architecture.md)")


def load_frozen(source: FrozenSource, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMetadata, str]:
    """(network on `device`, metadata, a printable source name) from a released file or a loaded pair."""
    if isinstance(source, tuple):
        if len(source) != 2 or not isinstance(source[0], nn.Module) or not isinstance(source[1], ModelMetadata):
            raise TypeError("teacher: expected a released model path or a (nn.Module, ModelMetadata) pair")
        model, metadata = source
        return model.to(device), metadata, f"<in-memory {metadata.model_name}>"
    path = Path(source)
    model, metadata = load_model(path, device=device)  # verifies the file's checksum
    return model, metadata, str(path)


class FrozenNetwork(nn.Module):
    """A frozen network in eval mode with an input resize (see the module docstring).

    Args:
        model: the network (its parameters are frozen in place).
        metadata: its released-model metadata, or None for a plain state-dict network.
        input_size: (H, W) the network runs at; None = any size (no resize).
        source: printable origin (a path or ``<in-memory ...>``) used in error messages.
    """

    def __init__(self, model: nn.Module, metadata: ModelMetadata | None, input_size: tuple[int, int] | None,
                 source: str) -> None:
        super().__init__()
        if metadata is not None:
            check_identity_normalisation(metadata, f"teacher {source}")
        self.model = model
        self.metadata = metadata
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.source = source
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # follows .to(): the teacher's device
        self.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> FrozenNetwork:
        """Keeps the network in eval mode whatever the owner asks (frozen BatchNorm, no dropout)."""
        super().train(mode)
        self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def min_depth(self) -> float:
        return float(self.metadata.min_depth)

    @property
    def max_depth(self) -> float:
        return float(self.metadata.max_depth)

    @property
    def scale_kind(self) -> str:
        return self.metadata.scale_kind

    def preprocess(self, image: torch.Tensor, name: str = "image") -> torch.Tensor:
        """(B,3,H,W) RGB in [0, 1] -> float32 on the teacher's device at its input size (bilinear,
        antialiased when shrinking). Values stay in [0, 1]: the encoder normalises."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"{name}: expected shape (B,3,H,W) RGB in [0, 1], got {tuple(image.shape)}")
        x = image.float().to(self.device)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            antialias = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=antialias)
        return x

    def extra_repr(self) -> str:
        described = self.metadata.describe() if self.metadata is not None else type(self.model).__name__
        return f"source={self.source!r}, {described}"

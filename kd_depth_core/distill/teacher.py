"""A frozen teacher for distillation: a released model file -> ensemble depth and uncertainty.

    teacher = TeacherWrapper("runs/teacher/model.safetensors", num_samples=8, device="cuda")
    out = teacher.predict(batch["image"], K=batch["K"])   # {'depth': (B,1,H,W) m, 'uncertainty': (B,1,H,W) m}

The teacher is loaded with `models.io.load_model` (checksum-verified safetensors + metadata) and
frozen (`models.frozen.FrozenNetwork`: `requires_grad=False`, the network stays in eval mode even
when the owning task is put in train mode). `predict` resizes the image to the teacher's
`input_height x input_width` (the network normalises inside its encoder), runs `num_samples`
Monte Carlo dropout passes as one batched forward (`models.mc_dropout.mc_dropout_predict`: only
the `MCDropout` sites are stochastic) and returns the per-pixel mean (the pseudo-label) and
standard deviation (its uncertainty), resized to the student's resolution. With `num_samples=1`
a teacher runs one deterministic eval pass (std 0), so teachers without dropout sites work too.

A metric teacher on a camera whose focal length differs from its training camera is rescaled by
fx / fx_train (`inference.scale.focal_scale_factor`) when `K` is given and the metadata records
`focal_length_px`.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kd_depth_core import geometry
from kd_depth_core.models.frozen import FrozenNetwork, FrozenSource, load_frozen
from kd_depth_core.models.mc_dropout import dropout_sites, mc_dropout_predict

TeacherSource = FrozenSource


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes and bytes, in key order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


class TeacherWrapper(FrozenNetwork):
    """Frozen monocular teacher giving MC-dropout ensemble depth (see the module docstring).

    Args:
        teacher: path of a released model file (`models.io.save_model`), or an already loaded
            `(model, metadata)` pair.
        num_samples: Monte Carlo passes per image (>= 1; 1 = one deterministic pass).
        device: where the teacher runs.
        max_batch: most images per teacher forward (memory cap); None = all B x num_samples at once.
        focal_correction: rescale a metric teacher by fx / fx_train when `K` is passed.
    """

    def __init__(self, teacher: TeacherSource, num_samples: int = 8, device: str | torch.device = "cpu",
                 max_batch: int | None = None, focal_correction: bool = True) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples: expected an integer >= 1, got {num_samples!r}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch: expected an integer >= 1 or None, got {max_batch!r}")
        model, metadata, source = load_frozen(teacher, device)
        weights_digest = file_sha256(Path(teacher)) if not isinstance(teacher, tuple) else state_dict_sha256(model)
        super().__init__(model, metadata, (metadata.input_height, metadata.input_width), source)
        if metadata.stereo:
            raise ValueError(f"teacher {self.source}: {metadata.model_name} is a stereo network; TeacherWrapper "
                             "runs monocular teachers (image -> depth)")
        if num_samples > 1 and not any(site.p > 0 for site in dropout_sites(model)):
            raise ValueError(f"teacher {self.source}: num_samples={num_samples} needs Monte Carlo dropout sites, but "
                             f"{metadata.model_name} has none with p > 0; use num_samples=1 or an MC-dropout "
                             "teacher (e.g. ms_dpt_teacher)")
        self.num_samples = int(num_samples)
        self.max_batch = max_batch
        self.focal_correction = bool(focal_correction)
        self.fingerprint = hashlib.sha256(
            f"{weights_digest}|samples={self.num_samples}|size={self.input_size[0]}x{self.input_size[1]}".encode()
        ).hexdigest()
        """Identifies what the teacher predicts: weights file bytes + num_samples + input size (cache key)."""

    # ----------------------------------------------------------------------- prediction
    def focal_factors(self, K: torch.Tensor, image_width: int) -> torch.Tensor | None:
        """Per-sample factor fx / fx_train (B,) for a metric teacher, or None when no correction applies."""
        fx_train = self.metadata.focal_length_px
        if not self.focal_correction or K is None or fx_train is None or self.metadata.scale_kind != "metric":
            return None
        from kd_depth_core.inference.scale import focal_scale_factor

        if K.ndim != 3 or K.shape[1:] != (3, 3):
            raise ValueError(f"K: expected shape (B,3,3), got {tuple(K.shape)}")
        to_teacher_width = self.input_size[1] / float(image_width)
        factors = [focal_scale_factor(float(fx) * to_teacher_width, fx_train) for fx in K[:, 0, 0].tolist()]
        return torch.tensor(factors, dtype=torch.float32)

    @torch.no_grad()
    def predict(self, image: torch.Tensor, K: torch.Tensor | None = None,
                output_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """{'depth': ensemble mean, 'uncertainty': ensemble std}, each (B,1,h,w) float32 metres.

        image (B,3,H,W) RGB in [0, 1]; K (B,3,3) intrinsics at (H,W) (focal correction only);
        output_size (h, w): default the image's (H,W) — the student's resolution.
        """
        height, width = int(image.shape[-2]), int(image.shape[-1])
        x = self.preprocess(image)
        if self.num_samples == 1:
            disp = self.model(x)["disp"][0].float()
            mean = geometry.disp_to_depth(disp, self.min_depth, self.max_depth)[1]
            std = torch.zeros_like(mean)
        else:
            mean, std = mc_dropout_predict(self.model, x, self.num_samples, self.min_depth, self.max_depth,
                                           max_batch=self.max_batch)
            mean, std = mean.float(), std.float()
        size = (height, width) if output_size is None else (int(output_size[0]), int(output_size[1]))
        if tuple(mean.shape[-2:]) != size:
            mean = F.interpolate(mean, size=size, mode="bilinear", align_corners=False)
            std = F.interpolate(std, size=size, mode="bilinear", align_corners=False)
        factors = self.focal_factors(K, width)
        if factors is not None:
            factors = factors.to(mean.device).view(-1, 1, 1, 1)
            mean, std = mean * factors, std * factors
        return {"depth": mean, "uncertainty": std}

    def forward(self, image: torch.Tensor, K: torch.Tensor | None = None,
                output_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        return self.predict(image, K, output_size)

    def extra_repr(self) -> str:
        return f"source={self.source!r}, {self.metadata.describe()}, num_samples={self.num_samples}"

    def describe(self) -> dict[str, Any]:
        """Plain facts for logs and reports."""
        return {"source": self.source, "model": self.metadata.describe(), "num_samples": self.num_samples,
                "fingerprint": self.fingerprint}

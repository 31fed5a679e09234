"""Task 'segmentation': train a semantic segmentation network (the X-Distill teacher) on labelled sequences.

Trains `cfg.model` (a segmentation model, e.g. `segmentation_teacher`) with pixel-wise
cross-entropy (`losses.masked_cross_entropy`, label 255 = ignore) on the batch's `semantic`
labels — the synthetic world has them for every frame — with the same trainer, checkpoints and
export as every other task. The model's `class_names` must equal the training sequences'
`semantic_classes` (checked when the task is built; errors name the sequence and the class).

The exported `model.safetensors` is the segmentation network with its class names in the
metadata's model kwargs; `task.kwargs.teacher_path` of the 'xdistill' task takes it as is.
Validation: the trainer's validation scores depth, which this task does not predict (skipped).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_depth_core.config import ConfigError, TrainConfig
from kd_depth_core.losses.cross_task import masked_cross_entropy, pixel_accuracy
from kd_depth_core.models import segmentation as _segmentation  # noqa: F401  (registers segmentation_teacher)
from kd_depth_core.train.tasks import Task, register_task, to_panel


def colorize_labels(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(H,W) integer label map -> (3,H,W) float panel in [0, 1]; ignored pixels black."""
    from kd_depth_core.utils.colorize import apply_colormap

    values = labels.detach().cpu().numpy()
    rgb = apply_colormap(values.astype("float32"), 0.0, float(max(num_classes - 1, 1)), "hsv",
                         valid=(values != ignore_index) & (values >= 0))
    return to_panel(rgb)


def check_dataset_classes(cfg: TrainConfig, class_names: tuple[str, ...]) -> None:
    """ConfigError unless every sequence of `data.split` (and `data.val_split`) has labels with `class_names`.

    Skipped when `data.root` is unset or missing (the dataset reports that itself).
    """
    from kd_depth_core.data.sequence import Sequence, SequenceError, read_split

    root = Path(cfg.data.root) if cfg.data.root else None
    if root is None or not root.is_dir():
        return
    for split in filter(None, (cfg.data.split, cfg.data.val_split)):
        try:
            names = read_split(root, split)
        except SequenceError:
            continue  # a missing split is reported by the dataset
        for name in names:
            sequence = Sequence(root / name)
            where = f"{sequence.path / 'meta.yaml'}: semantic_classes"
            if not sequence.has_semantic:
                raise ConfigError(f"{sequence.path / 'meta.yaml'}: has_semantic is false: the segmentation task "
                                  "needs semantic labels for every training sequence")
            labels = tuple(sequence.semantic_classes)
            if labels != class_names:
                diff = next((i for i, (a, b) in enumerate(zip(labels, class_names)) if a != b),
                            min(len(labels), len(class_names)))
                theirs = labels[diff] if diff < len(labels) else "(none)"
                ours = class_names[diff] if diff < len(class_names) else "(none)"
                raise ConfigError(f"{where}: class id {diff} is {theirs!r} but the model's class_names has "
                                  f"{ours!r} ({len(labels)} vs {len(class_names)} classes); set "
                                  f"model.kwargs.class_names to the sequences' classes")


@register_task("segmentation")
class SegmentationTask(Task):
    """Cross-entropy training of a segmentation model on `batch['semantic']` (see the module docstring)."""

    @dataclass
    class Options:
        ignore_index: int = 255  # label id left out of the loss
        check_classes: bool = True  # compare model.class_names with the sequences' semantic_classes

    def __init__(self, cfg: TrainConfig, options: Options | None = None) -> None:
        super().__init__(cfg, options)
        from kd_depth_core.models import create_model

        if not cfg.model.name:
            raise ConfigError(f"{cfg.source}: model.name: expected a segmentation model, e.g. segmentation_teacher")
        self.model = create_model(cfg.model.name, **cfg.model.kwargs)
        class_names = getattr(self.model, "class_names", None)
        if not class_names:
            raise ConfigError(f"{cfg.source}: model.name: {cfg.model.name!r} is not a segmentation model (it has no "
                              "class_names); use e.g. segmentation_teacher")
        self.class_names = tuple(class_names)
        if self.options.check_classes:
            check_dataset_classes(cfg, self.class_names)

    def dataset_options(self) -> dict[str, Any]:
        """Single frames (no temporal sources) with their semantic labels."""
        return {"offsets": (), "load_semantic": True}

    def deploy_model(self) -> nn.Module:
        return self.model

    def forward(self, batch: dict[str, Any], phase: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        if "semantic" not in batch:
            raise KeyError("batch['semantic']: the segmentation task needs labels; build the dataset with "
                           "load_semantic=True (task.dataset_options() asks for it)")
        logits = self.model(batch["image"])["logits"]
        labels = batch["semantic"]
        ignore = self.options.ignore_index
        out_of_range = (labels >= len(self.class_names)) & (labels != ignore)
        if bool(out_of_range.any()):
            raise ValueError(f"batch['semantic'] has class id {int(labels[out_of_range].max())} but the model has "
                             f"{len(self.class_names)} classes (frames {list(batch.get('frame_key', []))[:3]})")
        with torch.autocast(device_type=batch["image"].device.type, enabled=False):
            loss = masked_cross_entropy(logits.float(), labels, ignore)
        return {"loss": loss, "cross_entropy": loss.detach(), "pixel_accuracy": pixel_accuracy(logits, labels, ignore)}

    @torch.no_grad()
    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """First sample: image, predicted classes, ground-truth classes."""
        logits = self.model(batch["image"][:1])["logits"]
        panels = {"image": batch["image"][0].float().cpu(),
                  "prediction": colorize_labels(logits[0].argmax(0), len(self.class_names))}
        if "semantic" in batch:
            panels["labels"] = colorize_labels(batch["semantic"][0], len(self.class_names), self.options.ignore_index)
        return panels

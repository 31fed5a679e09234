"""Task 'xdistill': cross-task distillation from a semantic segmentation teacher (X-Distill, BMVC 2021).

A frozen segmentation teacher labels every training image; its class probabilities are summed
into depth-meaningful groups (`distill.grouping`, e.g. `resources/groupings/cityscapes.yaml`) and
the most probable group is the pseudo-label (pixels whose group probability is below
`min_teacher_confidence` are ignored). A small trainable translator (`models.translator`) turns
the depth network's multi-scale disparities into group logits; its cross-entropy against the
pseudo-labels back-propagates through the disparities into the depth network, so semantic
structure shapes the depth maps. Loss = the 'self_supervised' task's losses (`SelfSupervisedTask.losses`
on the same depth forward: this task is that task plus the cross-task term) + `cross_task_weight` x
cross-entropy.
For the first `translator_warmup_steps` the translator learns on detached disparities: until it
has learnt a mapping, its gradient would only add noise to the depth network.
With `cross_task_guard` the cross-entropy's gradient reaches a disparity pixel only where it pushes the
same way as the self-supervised loss's gradient there (or either is zero): semantics may break the
photometric loss's ties but never pull against it, which is how an unguarded term drifts.

The teacher (`task.kwargs.teacher_path`) is either a released segmentation model (the
'segmentation' task's `model.safetensors`, class names in its metadata) or a plain local state
dict of `teacher_model` built with `teacher_kwargs` (e.g. a `segmentation_teacher` trained on
Cityscapes elsewhere, `class_names` in `teacher_kwargs`). Its class names must equal the grouping's.
It is frozen (requires_grad False, always in eval mode) and left out of checkpoints.

Training only: `deploy_model()` is the depth network alone, with exactly the parameters of the
plain self-supervised student; the teacher and the translator are never exported.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kd_depth_core.config import ConfigError, TrainConfig
from kd_depth_core.distill.grouping import ClassGrouping, GroupingError, load_grouping
from kd_depth_core.losses.cross_task import agreeing_gradient, masked_cross_entropy, pixel_accuracy
from kd_depth_core.models import segmentation as _segmentation  # noqa: F401  (registers segmentation_teacher)
from kd_depth_core.models.frozen import FrozenNetwork
from kd_depth_core.models.translator import DepthToSegTranslator
from kd_depth_core.train.self_supervised import SelfSupervisedTask
from kd_depth_core.train.tasks import register_task

log = logging.getLogger("kd_depth_core.distill")


# --------------------------------------------------------------------------- the frozen teacher
def _is_released_model(path: Path) -> bool:
    """True for a `.safetensors` file carrying kd-depth metadata (a released model)."""
    if path.suffix.lower() != ".safetensors":
        return False
    from safetensors import safe_open

    from kd_depth_core.models.io import METADATA_KEY

    try:
        with safe_open(str(path), framework="pt") as handle:
            return METADATA_KEY in (handle.metadata() or {})
    except Exception:  # an unreadable file: the released-model loader reports what is wrong with it
        return True


def load_segmentation_model(path: str | Path, model_name: str = "segmentation_teacher",
                            model_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, tuple[int, int] | None]:
    """(segmentation network, its training input size (H, W) or None) from a released file or a state dict.

    A released model (kd-depth metadata) is rebuilt from its metadata (`model_kwargs` must then be
    empty); any other file is a whole-network state dict for `create_model(model_name, **model_kwargs)`.
    """
    from kd_depth_core.models import create_model
    from kd_depth_core.models.encoders import load_weights_file
    from kd_depth_core.models.io import load_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmentation teacher {path} not found (train one with `kd-depth train --config "
                                "config/train/segmentation_teacher.yaml`, or pass a local weights file)")
    if _is_released_model(path):
        if model_kwargs:
            raise ValueError(f"{path} is a released model that records its own architecture; leave teacher_kwargs "
                             f"empty (got {sorted(model_kwargs)})")
        model, metadata = load_model(path)
        size: tuple[int, int] | None = (int(metadata.input_height), int(metadata.input_width))
    else:
        state = load_weights_file(path)
        if not any(key.startswith("decoder.") for key in state):
            raise ValueError(f"{path}: holds no decoder weights (keys 'decoder.*'): a teacher needs the whole "
                             "segmentation network, not only backbone weights")
        model = create_model(model_name, **dict(model_kwargs or {}), weights_path=str(path))
        size = None
    if not getattr(model, "class_names", None):
        raise ValueError(f"{path}: {type(model).__name__} is not a segmentation model (no class_names)")
    return model, size


class SegmentationTeacher(FrozenNetwork):
    """Frozen segmentation network + class grouping -> grouped pseudo-labels.

    `predict(image)` runs the network on image (B,3,H,W) in [0, 1] (resized to `input_size` when
    given, the size it was trained at), sums the softmax over each group's classes and returns the
    argmax group (B,H,W) int64 (`grouping.ignore_index` where the top group probability is below
    `min_confidence`) and that probability (B,H,W).
    """

    def __init__(self, model: nn.Module, grouping: ClassGrouping, input_size: tuple[int, int] | None = None,
                 min_confidence: float = 0.0, source: str = "<in-memory>") -> None:
        grouping.check_class_names(getattr(model, "class_names", ()), f"segmentation teacher {source}")
        if not 0.0 <= min_confidence < 1.0:
            raise ValueError(f"min_confidence: expected a group probability in [0, 1), got {min_confidence}")
        super().__init__(model, None, input_size, source)
        self.grouping = grouping
        self.min_confidence = float(min_confidence)

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(group labels (B,H,W) int64, top group probability (B,H,W)) at the image's resolution."""
        size = tuple(image.shape[-2:])
        probs = self.grouping.group_probabilities(self.model(self.preprocess(image))["logits"])
        if tuple(probs.shape[-2:]) != size:
            probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
        confidence, labels = probs.max(1)
        if self.min_confidence > 0:
            labels = labels.masked_fill(confidence < self.min_confidence, self.grouping.ignore_index)
        return labels, confidence


# --------------------------------------------------------------------------- the task
@register_task("xdistill")
class XDistillTask(SelfSupervisedTask):
    """Self-supervised depth + cross-task distillation from a segmentation teacher (see the module docstring)."""

    @dataclass
    class Options(SelfSupervisedTask.Options):
        teacher_path: str = ""  # released segmentation model (.safetensors) or a whole-network state dict
        teacher_model: str = "segmentation_teacher"  # plain state dict only: the registered model to build
        teacher_kwargs: dict[str, Any] = field(default_factory=dict)  # plain state dict only (e.g. class_names)
        grouping: str = "synthetic"  # shipped grouping name (synthetic, cityscapes) or a YAML path
        cross_task_weight: float = 0.02  # lambda: CE (~0.5-1.5 nats) then adds ~10-20 % to the photometric loss
        min_teacher_confidence: float = 0.0  # pixels whose top group probability is lower are ignored
        translator_channels: int = 16
        translator_scales: int = 4  # finest disparity scales the translator sees (1 = full resolution only)
        translator_warmup_steps: int = 0  # steps the translator learns on detached depth before its CE reaches it
        cross_task_guard: bool = False  # per pixel, CE's gradient reaches a disparity only where it agrees in sign
        # with the self-supervised loss's gradient there (`losses.cross_task.agreeing_gradient`): no drift against it

    checkpoint_exclude = ("teacher.",)

    def __init__(self, cfg: TrainConfig, options: Options | None = None) -> None:
        super().__init__(cfg, options)  # depth network, pose network, photometric options
        opt, where = self.options, f"{cfg.source}: task.kwargs"
        if opt.cross_task_weight < 0:
            raise ConfigError(f"{where}.cross_task_weight: expected a number >= 0, got {opt.cross_task_weight}")
        if not 0.0 <= opt.min_teacher_confidence < 1.0:
            raise ConfigError(f"{where}.min_teacher_confidence: expected a probability in [0, 1), got "
                              f"{opt.min_teacher_confidence}")
        if opt.translator_channels < 1:
            raise ConfigError(f"{where}.translator_channels: expected a positive integer, got {opt.translator_channels}")
        if opt.translator_warmup_steps < 0:
            raise ConfigError(f"{where}.translator_warmup_steps: expected an integer >= 0, got "
                              f"{opt.translator_warmup_steps}")
        if not 1 <= opt.translator_scales <= 4:
            raise ConfigError(f"{where}.translator_scales: expected 1 to 4 (the depth network's output scales), got "
                              f"{opt.translator_scales}")
        if not opt.teacher_path:
            raise ConfigError(f"{where}.teacher_path: expected the segmentation teacher: a released model "
                              "(.safetensors from `kd-depth train --config config/train/segmentation_teacher.yaml`) "
                              "or a local whole-network state dict")
        try:
            grouping = load_grouping(opt.grouping)
        except GroupingError as error:
            raise ConfigError(f"{where}.grouping: {error}") from error
        try:
            model, input_size = load_segmentation_model(opt.teacher_path, opt.teacher_model, opt.teacher_kwargs)
            self.teacher = SegmentationTeacher(model, grouping, input_size, opt.min_teacher_confidence,
                                               source=opt.teacher_path)
        except GroupingError as error:
            raise ConfigError(f"{where}.grouping: {error}") from error
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(f"{where}.teacher_path: {error}") from error
        self.grouping = grouping
        self.translator = DepthToSegTranslator(grouping.num_groups, opt.translator_channels, opt.translator_scales)
        log.info("xdistill: teacher %s, grouping %s (%d classes -> %d groups: %s), lambda %g", opt.teacher_path,
                 grouping.name, grouping.num_classes, grouping.num_groups, ", ".join(grouping.group_names),
                 opt.cross_task_weight)

    def cross_task_loss(self, batch: dict[str, Any], disps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """{'cross_task': CE (with gradient to `disps`), 'translator_accuracy', 'teacher_confidence', 'teacher_ignored'}."""
        labels, confidence = self.teacher.predict(batch["image"])
        with torch.autocast(device_type=batch["image"].device.type, enabled=False):
            logits = self.translator([d.float() for d in disps[:self.translator.num_scales]])
            if tuple(logits.shape[-2:]) != tuple(labels.shape[-2:]):
                logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            ignore = self.grouping.ignore_index
            ce = masked_cross_entropy(logits, labels, ignore)
        return {"cross_task": ce, "translator_accuracy": pixel_accuracy(logits, labels, ignore),
                "teacher_confidence": confidence.mean(), "teacher_ignored": (labels == ignore).float().mean()}

    def forward(self, batch: dict[str, Any], phase: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        # One depth forward: the self-supervised losses and the cross-task term both use it.
        out = self.depth_outputs(batch)
        result = self.losses(batch, out)
        disps = out["disp"]
        if step < self.options.translator_warmup_steps:  # a random translator's gradient would only add noise
            disps = [d.detach() for d in disps]
        elif self.options.cross_task_guard and torch.is_grad_enabled():
            used = disps[:self.translator.num_scales]
            reference = torch.autograd.grad(result["loss"], used, retain_graph=True, allow_unused=True)
            disps = [d if g is None else agreeing_gradient(d, g) for d, g in zip(used, reference, strict=True)]
        parts = self.cross_task_loss(batch, disps)
        ce = parts.pop("cross_task")
        result["loss"] = result["loss"] + self.options.cross_task_weight * ce
        result["cross_task"] = ce.detach()
        result.update(parts)
        return result

    @torch.no_grad()
    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Self-supervised panels + the teacher's groups and the translator's groups (first sample)."""
        from kd_depth_core.train.segmentation_task import colorize_labels

        panels = super().visuals(batch)
        first = {key: value[:1] if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        labels, _ = self.teacher.predict(first["image"])
        logits = self.translator([d.float() for d in self.depth_outputs(first)["disp"][:self.translator.num_scales]])
        count, ignore = self.grouping.num_groups, self.grouping.ignore_index
        panels["teacher_groups"] = colorize_labels(labels[0], count, ignore)
        panels["translator_groups"] = colorize_labels(logits[0].argmax(0), count, ignore)
        return panels

"""Task 'supervised_depth': train any registered monocular depth network on ground-truth depth.

The stand-in for a foundation teacher (issue 20): Depth Anything V2's teacher was trained on synthetic
data with exact depth only; here a big network is trained on the synthetic world's exact depth
(`depth/` of the sequences, `data.dataset.SequenceDataset(load_depth=True)`), then exported as a
relative-disparity ONNX with a card (`inference/export_foreign.py`) and distilled with
'distill_foundation'.

Loss, over pixels with ground truth in [min_depth, max_depth] (0 = invalid):
- SILog per image on every output scale upsampled to full resolution (`losses.multiscale_distillation_loss`
  with the ground truth as target: mean(e²) − variance_focus·mean(e)², e = log pred − log gt, no square
  root; per-scale weights `scale_weights`);
- `gradient_weight` × multi-scale gradient matching of the full-resolution log-depth error
  (`losses.ssi.gradient_matching`, MiDaS), which sharpens depth edges.
The network is metric (trained on metres); validation needs no median scaling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kd_depth_core import geometry
from kd_depth_core.config import ConfigError, TrainConfig
from kd_depth_core.losses import DEFAULT_SCALE_WEIGHTS, multiscale_distillation_loss
from kd_depth_core.losses.ssi import gradient_matching
from kd_depth_core.train.tasks import Task, register_task


@register_task("supervised_depth")
class SupervisedDepthTask(Task):
    """Ground-truth depth supervision of `cfg.model` (see the module docstring). Options from `task.kwargs`."""

    @dataclass
    class Options:
        min_depth: float = 0.1  # metres: the network's output range
        max_depth: float = 100.0
        variance_focus: float = 0.85  # SILog: 1 = fully scale-invariant, 0 = mean squared log error
        scale_weights: tuple[float, ...] = DEFAULT_SCALE_WEIGHTS  # output scales 0..3
        gradient_weight: float = 0.5  # 0 = off
        gradient_scales: int = 4

    def __init__(self, cfg: TrainConfig, options: Options | None = None) -> None:
        super().__init__(cfg, options)
        from kd_depth_core.models import create_model

        opt, where = self.options, f"{cfg.source}: task.kwargs"
        if not 0 < opt.min_depth < opt.max_depth:
            raise ConfigError(f"{where}: expected 0 < min_depth < max_depth, got {opt.min_depth}, {opt.max_depth}")
        if not 0 <= opt.variance_focus <= 1:
            raise ConfigError(f"{where}.variance_focus: expected a number in [0, 1], got {opt.variance_focus}")
        if opt.gradient_weight < 0 or opt.gradient_scales < 1:
            raise ConfigError(f"{where}: gradient_weight must be >= 0 and gradient_scales >= 1, got "
                              f"{opt.gradient_weight}, {opt.gradient_scales}")
        if len(opt.scale_weights) != len(DEFAULT_SCALE_WEIGHTS) or any(w < 0 for w in opt.scale_weights) \
                or sum(opt.scale_weights) <= 0:
            raise ConfigError(f"{where}.scale_weights: expected {len(DEFAULT_SCALE_WEIGHTS)} numbers >= 0 with a "
                              f"positive sum, got {list(opt.scale_weights)}")
        if not cfg.model.name:
            raise ConfigError(f"{cfg.source}: model.name: expected a registered depth model (kd-depth models)")
        self.depth_net = create_model(cfg.model.name, **cfg.model.kwargs)
        if len(getattr(self.depth_net, "input_names", ("image",))) != 1:
            raise ConfigError(f"{cfg.source}: model.name: {cfg.model.name!r} takes a stereo pair; supervised_depth "
                              "trains monocular networks")
        if getattr(self.depth_net, "has_uncertainty", False):
            raise ConfigError(f"{cfg.source}: model.kwargs.uncertainty: supervised_depth trains no uncertainty head; "
                              "build the model with uncertainty: false")
        self.min_depth, self.max_depth = float(opt.min_depth), float(opt.max_depth)
        self.scale_kind = "metric"

    def dataset_options(self) -> dict[str, Any]:
        return {"offsets": (), "load_depth": True}

    def deploy_model(self) -> nn.Module:
        return self.depth_net

    def forward(self, batch: dict[str, Any], phase: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        if "depth_gt" not in batch:
            raise KeyError("batch['depth_gt']: supervised_depth needs sequences with depth (dataset_options() "
                           "asks for load_depth=True)")
        opt = self.options
        out = self.depth_net(batch["image"])
        with torch.autocast(device_type=batch["image"].device.type, enabled=False):
            gt = batch["depth_gt"].float()
            valid = (gt >= self.min_depth) & (gt <= self.max_depth)
            disps = [d.float() for d in out["disp"]]
            silog = multiscale_distillation_loss(disps, gt.clamp_min(self.min_depth), valid.float(),
                                                 opt.scale_weights, self.min_depth, self.max_depth, "silog",
                                                 opt.variance_focus)
            loss = silog.loss
            parts = {"silog": silog.loss.detach(), "valid_fraction": valid.float().mean()}
            if opt.gradient_weight > 0:
                disp0 = disps[0]
                if disp0.shape[-2:] != gt.shape[-2:]:
                    disp0 = torch.nn.functional.interpolate(disp0, size=gt.shape[-2:], mode="bilinear",
                                                            align_corners=False)
                depth = geometry.disp_to_depth(disp0, self.min_depth, self.max_depth)[1]
                error = torch.where(valid, torch.log(depth) - torch.log(gt.clamp_min(self.min_depth)),
                                    torch.zeros_like(depth))
                gradient = gradient_matching(error, valid, opt.gradient_scales).mean()
                loss = loss + opt.gradient_weight * gradient
                parts["gradient"] = gradient.detach()
        return {"loss": loss, **parts}

    @torch.no_grad()
    def predict_depth(self, batch: dict[str, Any]) -> torch.Tensor:
        """Full-resolution depth (B,1,H,W) in metres."""
        disp = self.depth_net(batch["image"])["disp"][0].float()
        return geometry.disp_to_depth(disp, self.min_depth, self.max_depth)[1]

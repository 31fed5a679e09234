"""Task 'self_supervised': the Monodepth2 recipe for mono, stereo and mono+stereo training.

The depth network predicts sigmoid disparity at 4 scales; each is upsampled to full resolution,
turned into depth in [min_depth, max_depth] (`geometry.disp_to_depth`) and used to warp every
source image into the target: temporal neighbours (`data.offsets`) with poses from a pose
network (modes `mono`, `mono_stereo`), and the right image with the known rig baseline (modes
`stereo`, `mono_stereo`, which makes depth metric). Loss = mean over scales of the per-pixel
minimum photometric error (0.85 SSIM + 0.15 L1) over sources with auto-masking, plus edge-aware
smoothness (1e-3 / 2^s) of the mean-normalised disparity (`losses.photometric`, `losses.smoothness`).

Stereo networks (`model.input_names == ("left", "right")`, e.g. `stereo_teacher`) see the pair
and are trained the same way (the right image is a photometric source, temporal sources too in
`mono_stereo`). A network with a `log_sigma` head trains it with `photometric_uncertainty_nll`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from kd_depth_core import geometry
from kd_depth_core.config import ConfigError, TrainConfig
from kd_depth_core.losses import best_reprojection_error, multiscale_reprojection_loss, multiscale_smoothness
from kd_depth_core.train.proxy_supervision import ProxySupervision, full_resolution
from kd_depth_core.train.tasks import Task, register_task, to_panel

log = logging.getLogger("kd_depth_core.train")

RESIDUAL_FLOOR = 1e-3
"""Added to the photometric residual in the uncertainty NLL so its minimiser (sigma/depth = residual) stays > 0."""


def photometric_uncertainty_nll(residual: torch.Tensor, log_sigma: torch.Tensor, depth: torch.Tensor,
                                mask: torch.Tensor | None = None, kind: str = "laplacian") -> torch.Tensor:
    """NLL that trains `log_sigma` (log depth std, metres) from the photometric residual. Scalar.

    residual (B,1,H,W): per-pixel photometric error of the best source (>= 0, dimensionless);
    log_sigma (B,1,H,W); depth (B,1,H,W) metres; mask (B,1,H,W) bool of pixels to use (None = all).
    The residual stands in for the *relative* depth error, so the scale of the distribution is
    b = sigma / depth and the NLL is minimised at sigma = depth * (residual + RESIDUAL_FLOOR):
    Laplacian r/b + log b, Gaussian r^2/(2 b^2) + log b. Pass residual and depth detached to
    train only the uncertainty head (the depth is trained by the photometric loss alone).
    """
    if not residual.shape == log_sigma.shape == depth.shape:
        raise ValueError(f"residual, log_sigma, depth: expected equal (B,1,H,W) shapes, got "
                         f"{tuple(residual.shape)}, {tuple(log_sigma.shape)}, {tuple(depth.shape)}")
    log_b = log_sigma - torch.log(depth)
    r = residual + RESIDUAL_FLOOR
    if kind == "laplacian":
        nll = r * torch.exp(-log_b) + log_b
    elif kind == "gaussian":
        nll = 0.5 * (r * torch.exp(-log_b)) ** 2 + log_b
    else:
        raise ValueError(f"kind: expected 'laplacian' or 'gaussian', got {kind!r}")
    if mask is None:
        return nll.mean()
    weight = mask.to(nll.dtype)
    return (nll * weight).sum() / weight.sum().clamp(min=1.0)


@dataclass
class PhotometricTerms:
    """One photometric evaluation: `loss` = reprojection + smoothness (scalar), and its pieces."""

    loss: torch.Tensor
    reprojection: Any  # losses.photometric.MultiScaleReprojection (loss, automask, warped)
    smoothness: torch.Tensor

    def parts(self) -> dict[str, torch.Tensor]:
        """The logged parts (detached)."""
        return {"photometric": self.reprojection.loss.detach(), "smoothness": self.smoothness.detach(),
                "automask_fraction": self.reprojection.automask.float().mean()}


class PhotometricSupervision:
    """Monodepth2 photometric self-supervision as a part a task holds (`task.photometric`).

    Which sources a mode uses (temporal neighbours `data.offsets` with a pose network in `mono` /
    `mono_stereo`, the right image with the rig baseline in `stereo` / `mono_stereo`), their poses
    (`source_poses`) and the loss (`terms`: multi-scale reprojection with auto-masking + edge-aware
    smoothness). It owns no network: the pose network it builds (`build_pose_net`) is registered on
    the task, so checkpoints keep the key `pose_net.*`, and is passed back in with the depth network.
    Used by 'self_supervised', 'xdistill' and, for the student's own terms, every distillation task.
    """

    def __init__(self, cfg: TrainConfig, mode: str, min_depth: float, max_depth: float, ssim_weight: float = 0.85,
                 smoothness_weight: float = 1e-3, automask: bool = True, stereo_input: bool = False) -> None:
        where = f"{cfg.source}: task.kwargs"
        if mode not in ("mono", "stereo", "mono_stereo"):
            raise ConfigError(f"{where}.mode: expected 'mono', 'stereo' or 'mono_stereo', got {mode!r}")
        self.mode = mode
        self.use_temporal = mode in ("mono", "mono_stereo")
        self.use_stereo = mode in ("stereo", "mono_stereo")
        if stereo_input and not self.use_stereo:
            raise ConfigError(f"{where}.mode: model {cfg.model.name!r} takes a stereo pair; use mode 'stereo' or "
                              f"'mono_stereo', got {mode!r}")
        if (self.use_stereo or stereo_input) and not cfg.data.stereo:
            raise ConfigError(f"{cfg.source}: data.stereo: mode {mode!r} needs the right images; set "
                              f"data.stereo: true")
        if self.use_temporal and not cfg.data.offsets:  # in 'stereo' mode data.offsets is ignored
            raise ConfigError(f"{cfg.source}: data.offsets: mode {mode!r} needs temporal source frames, "
                              f"e.g. [-1, 1]")
        if self.use_temporal and 0 in cfg.data.offsets:
            raise ConfigError(f"{cfg.source}: data.offsets: 0 is the target itself; use e.g. [-1, 1]")
        self.offsets = tuple(cfg.data.offsets) if self.use_temporal else ()
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.ssim_weight, self.smoothness_weight, self.automask = ssim_weight, smoothness_weight, automask
        self._rig_checked = False

    def build_pose_net(self, pose_model: str, pose_kwargs: dict[str, Any]) -> nn.Module | None:
        """The pose network the temporal sources need (None in 'stereo' mode)."""
        from kd_depth_core.models import create_model

        return create_model(pose_model, **pose_kwargs) if self.use_temporal else None

    def dataset_options(self) -> dict[str, Any]:
        """Stereo-only training loads no temporal sources."""
        return {} if self.use_temporal else {"offsets": ()}

    def source_poses(self, batch: dict[str, Any], pose_net: nn.Module | None,
                     depth_net: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All photometric sources (B,S,3,H,W) and their T_source_target (B,S,4,4): temporal, then right.

        `depth_net` learns the rig (`set_rig`) or is checked against it at the first stereo batch.
        """
        target = batch["image"]
        images, poses = [], []
        if self.offsets:
            sources = batch["sources"]
            if sources.shape[1] != len(self.offsets):
                raise ValueError(f"batch['sources'] has {sources.shape[1]} frames but data.offsets has "
                                 f"{len(self.offsets)}")
            # Monodepth2 order: the pose net always sees the earlier frame first (one batched call).
            firsts = [sources[:, i] if o < 0 else target for i, o in enumerate(self.offsets)]
            seconds = [target if o < 0 else sources[:, i] for i, o in enumerate(self.offsets)]
            vectors = pose_net(torch.cat(firsts), torch.cat(seconds)).float().chunk(len(self.offsets))
            for i, (offset, vec) in enumerate(zip(self.offsets, vectors)):
                images.append(sources[:, i])
                poses.append(geometry.pose_vec_to_mat(vec, invert=offset < 0))
        if self.use_stereo:
            baseline = batch["baseline"].float()
            if bool((baseline <= 0).any()):
                keys = batch.get("frame_key", [])
                raise ValueError(f"stereo training needs the rig baseline, but the batch has baseline <= 0 "
                                 f"(unknown) for frames {list(keys)[:3]}: set it in the sequence metadata")
            if not self._rig_checked:
                self._set_rig(depth_net, float(batch["K"][0, 0, 0]), float(baseline[0]), target.shape[-1])
            images.append(batch["image_right"])
            poses.append(geometry.stereo_pose(baseline))
        return torch.stack(images, 1).float(), torch.stack(poses, 1)

    def terms(self, batch: dict[str, Any], disps: list[torch.Tensor], pose_net: nn.Module | None,
              depth_net: nn.Module | None = None) -> PhotometricTerms:
        """Reprojection + smoothness of the sigmoid disparities `disps` (float32, 4 scales). Call under
        autocast disabled; the pose network runs inside."""
        sources, poses = self.source_poses(batch, pose_net, depth_net)
        target = batch["image"].float()
        reprojection = multiscale_reprojection_loss(
            disps, target, sources, batch["K"].float(), poses.float(), min_depth=self.min_depth,
            max_depth=self.max_depth, alpha=self.ssim_weight, automask=self.automask)
        smoothness = multiscale_smoothness(disps, target, self.smoothness_weight)
        return PhotometricTerms(reprojection.loss + smoothness, reprojection, smoothness)

    def _set_rig(self, depth_net: nn.Module | None, fx: float, baseline: float, width: int) -> None:
        """At the first stereo batch: a matching network learns the rig; a sigmoid one is checked."""
        self._rig_checked = True
        if depth_net is not None and hasattr(depth_net, "set_rig"):
            depth_net.set_rig(fx, baseline, width, self.min_depth, self.max_depth)
            reach = fx * baseline / self.min_depth
            if reach > getattr(depth_net, "max_disparity", reach):
                log.warning("stereo rig fx=%.1f px, baseline=%.3f m: min_depth=%g m is %.0f px of disparity, more "
                            "than model.kwargs.max_disparity=%d searched", fx, baseline, self.min_depth,
                            reach, depth_net.max_disparity)
            return
        self._check_initial_disparity(fx, baseline, width)

    def _check_initial_disparity(self, fx: float, baseline: float, width: int) -> None:
        """Warn once when the depth range makes the untrained network's stereo disparity implausibly large.

        An untrained sigmoid outputs ~0.5, i.e. inverse depth mid-way between 1/max_depth and
        1/min_depth: disparity fx * B * (1/min + 1/max) / 2 pixels. Far above ~10 % of the width,
        every pixel warps to the wrong place and metric stereo training stalls (the problem that
        Monodepth2's "baseline 0.1, scale 5.4" sidesteps). Raising min_depth fixes it.
        """
        disparity = fx * baseline * 0.5 * (1.0 / self.min_depth + 1.0 / self.max_depth)
        if disparity > 0.1 * width:
            suggested = fx * baseline / (0.1 * width)
            log.warning("stereo rig fx=%.1f px, baseline=%.3f m: with min_depth=%g m the untrained network starts "
                        "at a disparity of %.0f px on a %d px wide image, which photometric training may never "
                        "recover from; consider task.kwargs.min_depth=%.2g (start at ~%.0f px)",
                        fx, baseline, self.min_depth, disparity, width, suggested,
                        fx * baseline * 0.5 * (1.0 / suggested + 1.0 / self.max_depth))


@register_task("self_supervised")
class SelfSupervisedTask(Task):
    """Photometric self-supervision of `cfg.model` (see the module docstring). Options from `task.kwargs`."""

    @dataclass
    class Options:
        mode: Literal["mono", "stereo", "mono_stereo"] = "mono"
        min_depth: float = 0.1  # metres
        max_depth: float = 100.0  # metres
        ssim_weight: float = 0.85  # alpha in alpha * (1 - SSIM) / 2 + (1 - alpha) * L1
        smoothness_weight: float = 1e-3
        automask: bool = True
        pose_model: str = "pose_resnet18"
        pose_kwargs: dict[str, Any] = field(default_factory=dict)
        uncertainty_loss: Literal["laplacian", "gaussian", "none"] = "laplacian"
        uncertainty_weight: float = 1.0
        proxy_weight: float = 0.0  # SGBM proxy supervision (losses/proxy.py); needs the right image; 0 = off
        proxy_sgbm: dict[str, Any] = field(default_factory=dict)  # classical.sgbm.SGBMSettings fields
        proxy_cache_dir: str = ""  # per-frame SGBM cache; "" = <train.out_dir>/proxy_cache

    def __init__(self, cfg: TrainConfig, options: Options | None = None) -> None:
        super().__init__(cfg, options)
        from kd_depth_core.models import create_model

        opt, where = self.options, f"{cfg.source}: task.kwargs"
        if not 0 < opt.min_depth < opt.max_depth:
            raise ConfigError(f"{where}: expected 0 < min_depth < max_depth, got {opt.min_depth}, {opt.max_depth}")
        if not cfg.model.name:
            raise ConfigError(f"{cfg.source}: model.name: expected a registered model name")
        self.depth_net = create_model(cfg.model.name, **cfg.model.kwargs)
        self.stereo_input = len(getattr(self.depth_net, "input_names", ("image",))) == 2
        self.photometric = PhotometricSupervision(cfg, opt.mode, opt.min_depth, opt.max_depth, opt.ssim_weight,
                                                  opt.smoothness_weight, opt.automask, self.stereo_input)
        self.has_uncertainty = bool(getattr(self.depth_net, "has_uncertainty", False))
        if self.has_uncertainty and opt.uncertainty_loss == "none":
            raise ConfigError(f"{where}.uncertainty_loss: model {cfg.model.name!r} has an uncertainty head; "
                              f"train it with 'laplacian' or 'gaussian' (or build the model with uncertainty: false)")
        self.pose_net = self.photometric.build_pose_net(opt.pose_model, opt.pose_kwargs)
        self.min_depth, self.max_depth = opt.min_depth, opt.max_depth
        self.scale_kind = "metric" if self.photometric.use_stereo else "relative"
        self.deploy_stereo = self.stereo_input
        self.deploy_has_uncertainty = self.has_uncertainty
        self.proxy = ProxySupervision(cfg, opt.proxy_sgbm, opt.proxy_cache_dir, opt.min_depth, opt.max_depth,
                                      opt.ssim_weight, where) if opt.proxy_weight > 0 else None

    # ----------------------------------------------------------------------- pieces
    def dataset_options(self) -> dict[str, Any]:
        """Stereo-only training loads no temporal sources; proxy supervision asks for the SGBM proxy."""
        options = self.photometric.dataset_options()
        if self.proxy is not None:
            options.update(self.proxy.dataset_options())
        return options

    def deploy_model(self) -> nn.Module:
        return self.depth_net

    def depth_outputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The depth network's output dict for the batch's target (and right) image."""
        if self.stereo_input:
            return self.depth_net(batch["image"], batch["image_right"], **self._cached_hints(batch))
        return self.depth_net(batch["image"])

    def _cached_hints(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A stereo network guided by SGBM (`classical_prior`) reuses the batch's cached proxy as its hints
        when the proxy is the same SGBM; otherwise it runs SGBM itself."""
        net = self.depth_net
        if not getattr(net, "classical_prior", False) or self.proxy is None or "proxy_disparity" not in batch:
            return {}
        if self.proxy.settings != net.prior_settings():
            return {}
        from kd_depth_core.models.stereo import hints_from_disparity

        return {"hints": hints_from_disparity(batch["proxy_disparity"])}

    def source_poses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """All photometric sources (B,S,3,H,W) and their T_source_target (B,S,4,4) (`PhotometricSupervision`)."""
        return self.photometric.source_poses(batch, self.pose_net, self.depth_net)

    def _set_rig(self, fx: float, baseline: float, width: int) -> None:
        """Give the depth network the rig now (normally done at the first stereo batch)."""
        self.photometric._set_rig(self.depth_net, fx, baseline, width)

    # ----------------------------------------------------------------------- the task contract
    def forward(self, batch: dict[str, Any], phase: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        return self.losses(batch, self.depth_outputs(batch))

    def losses(self, batch: dict[str, Any], out: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{'loss', parts} of the depth network's output dict `out` on `batch` (photometric, smoothness,
        uncertainty NLL, SGBM proxy). Subclasses adding terms call it with the output they already have."""
        opt = self.options
        with torch.autocast(device_type=batch["image"].device.type, enabled=False):  # float32 losses under AMP
            target = batch["image"].float()
            disps = [d.float() for d in out["disp"]]
            photometric = self.photometric.terms(batch, disps, self.pose_net, self.depth_net)
            reprojection = photometric.reprojection
            loss = photometric.loss
            parts = photometric.parts()
            if self.has_uncertainty:
                nll = self._uncertainty_loss(out["log_sigma"].float(), disps[0], reprojection.warped, target,
                                             reprojection.automask)
                loss = loss + opt.uncertainty_weight * nll
                parts["uncertainty_nll"] = nll.detach()
            if self.proxy is not None:
                proxy = self.proxy.terms(batch, disps, best_reprojection_error(reprojection.warped, target,
                                                                               opt.ssim_weight))
                loss = loss + opt.proxy_weight * proxy.loss
                parts["proxy"], parts["proxy_fraction"] = proxy.loss.detach(), proxy.fraction
        return {"loss": loss, **parts}

    def _uncertainty_loss(self, log_sigma: torch.Tensor, disp0: torch.Tensor, warped: torch.Tensor,
                          target: torch.Tensor, automask: torch.Tensor) -> torch.Tensor:
        """NLL of the full-resolution residual (best warped source) under sigma = exp(log_sigma)."""
        with torch.no_grad():
            residual = best_reprojection_error(warped, target, self.options.ssim_weight)
            _, depth = geometry.disp_to_depth(full_resolution(disp0, target.shape[-2:]), self.min_depth,
                                              self.max_depth)
        return photometric_uncertainty_nll(residual, log_sigma, depth, automask, self.options.uncertainty_loss)

    @torch.no_grad()
    def predict_depth(self, batch: dict[str, Any]) -> torch.Tensor:
        """Full-resolution depth (B,1,H,W) in metres (relative scale in `mono` mode)."""
        disp = self.depth_outputs(batch)["disp"][0].float()
        return geometry.disp_to_depth(disp, self.min_depth, self.max_depth)[1]

    @torch.no_grad()
    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """First sample: input image, predicted depth (inverse-depth colours), uncertainty when predicted."""
        from kd_depth_core.utils.colorize import colorize_depth, colorize_uncertainty

        out = self.depth_outputs(batch)
        depth = geometry.disp_to_depth(out["disp"][0][0, 0].float(), self.min_depth, self.max_depth)[1]
        panels = {"image": batch["image"][0].float().cpu(),
                  "depth": to_panel(colorize_depth(depth.cpu().numpy()))}
        if "log_sigma" in out:
            std = torch.exp(out["log_sigma"][0, 0].float()).cpu().numpy()
            panels["uncertainty"] = to_panel(colorize_uncertainty(std))
        return panels


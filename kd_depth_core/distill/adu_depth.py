"""Task 'adu_depth': a frozen stereo teacher distilled into a monocular student (ADU-Depth, arXiv 2309.14744).

The teacher sees the rectified left/right pair (3D-aware: correlation volumes), the student only
the left image. Loss terms (all computed in float32):

- Attention-adapted feature distillation (`feature_weight`): trainable adapters
  (`distill.adapters.FeatureAdapters`: 1x1 conv + resize) map the student's encoder maps onto the
  teacher's fused features at stride pairings `feature_pairs` (default: every stride >= 4 both
  have). Per pairing: squared difference to the teacher map (standardised per channel when
  `standardize_teacher_features`), weighted per position by the teacher's spatial attention
  (`losses.adu.spatial_attention`, softmax over positions of channel-mean |f| / `attention_temperature`)
  and by the uncertainty weights pooled to that resolution; the mean over pairings.
- Focal-depth-adapted response distillation (`response_weight`): every student output scale,
  upsampled to full resolution, against the teacher depth with `losses.adu.focal_depth_loss`
  ((floor + (1 - exp(-e/tau))^gamma) * e of the log-depth error e: hard pixels count most; `focal_floor`
  1 keeps the easy pixels' gradient, which the pure focal factor lets vanish), per-scale
  weights `scale_weights` (method 1's 1, 1/2, 1/4, 1/8).
- Uncertainty modelling: the teacher's sigma (its `log_sigma` head) gives inverse-variance weights
  1 / ((sigma_t/depth_t)^2 + `uncertainty_eps`), mean 1, that scale both terms
  (`teacher_uncertainty_weighting`); a student with a `log_sigma` head learns it with method 1's
  NLL (`uncertainty_loss`, `uncertainty_weight`) of r = sqrt(sigma_t^2 + (depth_t - depth_s)^2),
  so it is uncertain where the teacher is, or where it still disagrees with the teacher.
- Photometric self-supervision (`photometric_weight`, 0 = off): the 'self_supervised' task's
  machinery as method 1 uses it (pose network, `mode`, ssim/smoothness/automask options), and the
  SGBM proxy term (`proxy_weight`; with a teacher guided by SGBM and no `proxy_sgbm`, the teacher's
  SGBM settings, so one cached proxy per frame serves both the teacher's hints and the student).

The teacher is a released stereo model file (`teacher_path`, e.g. `stereo_teacher` trained with
config/train/teacher_stereo.yaml), frozen (no gradients, always eval mode), run every step (its
features cannot be cached cheaply); it is left out of checkpoints. The student inherits its depth
range and scale kind (a metric stereo teacher gives a metric student). `deploy_model()` is the
student alone: no adapter, pose network or teacher weights are exported.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from kd_depth_core import geometry
from kd_depth_core.classical.proxy_cache import ProxySource
from kd_depth_core.classical.sgbm import SGBMSettings
from kd_depth_core.config import ConfigError, TrainConfig
from kd_depth_core.distill.adapters import FeatureAdapters
from kd_depth_core.distill.common import (
    StudentDistillation,
    StudentOptions,
    build_student,
    check_scale_weights,
    set_depth_range,
)
from kd_depth_core.losses import (
    DEFAULT_SCALE_WEIGHTS,
)
from kd_depth_core.losses.adu import (
    attention_feature_loss,
    focal_depth_loss,
    inverse_variance_weights,
    spatial_attention,
    standardize_features,
)
from kd_depth_core.models.frozen import FrozenNetwork, FrozenSource, load_frozen
from kd_depth_core.models.io import ModelFileError
from kd_depth_core.models.stereo import hints_from_disparity
from kd_depth_core.train.tasks import register_task

log = logging.getLogger("kd_depth_core.distill")

StereoTeacherSource = FrozenSource


# --------------------------------------------------------------------------- the frozen stereo teacher
class StereoTeacher(FrozenNetwork):
    """Frozen stereo network -> left depth, its uncertainty and its fused features (the stereo
    counterpart of `distill.teacher.TeacherWrapper`, which runs monocular teachers).

    `teacher`: a released stereo model file (`models.io.save_model`) or a loaded `(model, metadata)`
    pair; the network must return `features` with `return_features=True` and have `feature_info`.
    """

    def __init__(self, teacher: FrozenSource, device: str | torch.device = "cpu") -> None:
        model, metadata, source = load_frozen(teacher, device)
        super().__init__(model, metadata, (metadata.input_height, metadata.input_width), source)
        if not metadata.stereo:
            raise ValueError(f"teacher {self.source}: {metadata.model_name} is a monocular network; adu_depth needs a "
                             "stereo teacher (e.g. stereo_teacher, config/train/teacher_stereo.yaml); monocular "
                             "teachers are distilled with kd_ms_dpt")
        if not getattr(model, "feature_info", None):
            raise ValueError(f"teacher {self.source}: {metadata.model_name} has no feature_info; feature distillation "
                             "needs a network that returns its features (model(left, right, return_features=True))")
        self.feature_info: list[dict[str, int]] = [dict(info) for info in model.feature_info]

    @property
    def classical_prior_settings(self) -> SGBMSettings | None:
        """The SGBM settings of a teacher guided by SGBM (`stereo_teacher(classical_prior=True)`), else None."""
        return self.model.prior_settings() if getattr(self.model, "classical_prior", False) else None

    @torch.no_grad()
    def predict(self, left: torch.Tensor, right: torch.Tensor, output_size: Sequence[int] | None = None,
                proxy_disparity: torch.Tensor | None = None) -> dict[str, Any]:
        """{'depth', 'uncertainty': (B,1,h,w) metres at output_size (default the left image's),
        'features': the fused left feature maps at the teacher's input size (per `feature_info`)}.

        `proxy_disparity` (B,1,H,W) px, 0 = not confident: the pair's cached SGBM proxy with the teacher's
        `classical_prior_settings`, at the teacher's input size; given, a guided teacher uses it instead of
        running SGBM itself (the same numbers, once per frame instead of once per step).
        Without a `log_sigma` head the uncertainty is 0. Nothing returned carries gradients.
        """
        if left.shape != right.shape:
            raise ValueError(f"left {tuple(left.shape)} and right {tuple(right.shape)} images differ in shape")
        extra: dict[str, Any] = {}
        if proxy_disparity is not None and self.classical_prior_settings is not None:
            size = self.input_size or tuple(left.shape[-2:])
            if tuple(proxy_disparity.shape[-2:]) != tuple(size):
                raise ValueError(f"proxy_disparity {tuple(proxy_disparity.shape[-2:])} is not at the teacher's input "
                                 f"size {tuple(size)}")
            extra["hints"] = hints_from_disparity(proxy_disparity)
        out = self.model(self.preprocess(left, "left"), self.preprocess(right, "right"), return_features=True,
                         **extra)
        depth = geometry.disp_to_depth(out["disp"][0].float(), self.min_depth, self.max_depth)[1]
        sigma = torch.exp(out["log_sigma"].float()) if "log_sigma" in out else torch.zeros_like(depth)
        size = tuple(left.shape[-2:]) if output_size is None else (int(output_size[0]), int(output_size[1]))
        if tuple(depth.shape[-2:]) != size:
            depth = F.interpolate(depth, size=size, mode="bilinear", align_corners=False)
        if tuple(sigma.shape[-2:]) != size:
            sigma = F.interpolate(sigma, size=size, mode="bilinear", align_corners=False)
        return {"depth": depth, "uncertainty": sigma, "features": [f.float() for f in out["features"]]}



# --------------------------------------------------------------------------- the task
@register_task("adu_depth")
class ADUDepthTask(StudentDistillation):
    """Stereo teacher -> monocular student: attention-adapted features, focal response, uncertainty."""

    @dataclass
    class Options(StudentOptions):
        teacher_path: str = ""  # released stereo teacher (.safetensors), required
        feature_weight: float = 1.0  # attention-adapted feature distillation; 0 = off (no adapters)
        feature_pairs: tuple[tuple[int, int], ...] = ()  # (student stride, teacher stride); () = shared >= 4
        attention: bool = True  # weight positions by the teacher's spatial attention
        attention_temperature: float = 1.0  # softmax temperature (smaller = more concentrated)
        standardize_teacher_features: bool = True  # per-channel mean 0 / std 1 targets
        response_weight: float = 1.0  # focal-depth response distillation
        scale_weights: tuple[float, ...] = DEFAULT_SCALE_WEIGHTS  # student output scales 0..3
        focal_tau: float = 0.1  # log-depth error scale of the focal factor
        focal_gamma: float = 2.0  # 0 = plain L1 of log depth
        focal_floor: float = 0.0  # added to the focal factor: 1 keeps easy pixels at the L1 weight (no vanishing)
        teacher_uncertainty_weighting: bool = True  # weights 1 / ((sigma_t/d_t)^2 + eps) on both terms
        uncertainty_eps: float = 0.01  # relative variance at which a pixel's weight halves
        target_min_depth: float = 0.0  # metres; pixels with teacher depth <= this are left out
        mode: Literal["mono", "stereo", "mono_stereo"] = "mono_stereo"  # photometric sources
        # a teacher guided by SGBM gets the dataset's cached SGBM proxy as its hints (SGBM once per frame,
        # not once per step); "" = <train.out_dir>/proxy_cache (the teacher run's proxy_cache is reused as is)
        teacher_hints_cache_dir: str = ""

    def __init__(self, cfg: TrainConfig, options: Options | None = None) -> None:
        super().__init__(cfg, options)
        opt, where = self.options, f"{cfg.source}: task.kwargs"
        self._check_options(cfg, where)
        self.teacher = self._load_teacher(where)
        set_depth_range(self, self.teacher, opt, where)
        prior = self.teacher.classical_prior_settings
        if opt.proxy_weight > 0 and prior is not None and not opt.proxy_sgbm:  # one SGBM proxy per frame
            opt = dataclasses.replace(opt, proxy_sgbm=dataclasses.asdict(prior))
        build_student(self, cfg, opt, where, "adu_depth")
        self.adapters: FeatureAdapters | None = None
        if opt.feature_weight > 0:
            student_info = getattr(self.student, "feature_info", None)
            if not student_info:
                raise ConfigError(f"{cfg.source}: model.name: {cfg.model.name!r} has no feature_info; feature "
                                  "distillation needs one (or set task.kwargs.feature_weight: 0)")
            try:
                self.adapters = FeatureAdapters(student_info, self.teacher.feature_info,
                                                [list(p) for p in opt.feature_pairs])
            except ValueError as error:
                raise ConfigError(f"{where}.feature_pairs: {error}") from error
        self.teacher_proxy = self._teacher_proxy(cfg)
        student_proxy = self.student_terms.proxy
        if student_proxy is not None and self.teacher_proxy is not None:
            if student_proxy.settings != self.teacher_proxy.settings:
                raise ConfigError(f"{where}.proxy_sgbm: the student's SGBM proxy {student_proxy.settings} differs from "
                                  f"the guided teacher's hints {self.teacher_proxy.settings}; the dataset attaches one "
                                  "proxy per frame: leave proxy_sgbm empty to use the teacher's")
            student_proxy.source = self.teacher_proxy  # one cache, one SGBM run per frame for both
        log.info("adu_depth: stereo teacher %s, student %s, %s scale, depth %.3g-%.3g m, feature pairs %s%s",
                 self.teacher.source, cfg.model.name, self.scale_kind, self.min_depth, self.max_depth,
                 self.adapters.pairs if self.adapters is not None else "off",
                 f", SGBM hints cached in {self.teacher_proxy.cache_dir}" if self.teacher_proxy else "")

    def _check_options(self, cfg: TrainConfig, where: str) -> None:
        opt = self.options
        if not opt.teacher_path:
            raise ConfigError(f"{where}.teacher_path: expected the released stereo teacher model file "
                              "(.safetensors), e.g. runs/teacher_stereo/model.safetensors")
        if not cfg.data.stereo:
            raise ConfigError(f"{cfg.source}: data.stereo: the stereo teacher needs the right images; set "
                              "data.stereo: true")
        if not cfg.model.name:
            raise ConfigError(f"{cfg.source}: model.name: expected a registered student model (e.g. student_lcnet)")
        for name in ("feature_weight", "response_weight", "photometric_weight", "uncertainty_weight",
                     "target_min_depth", "focal_gamma", "focal_floor"):
            if getattr(opt, name) < 0:
                raise ConfigError(f"{where}.{name}: expected a number >= 0, got {getattr(opt, name)}")
        if opt.feature_weight == 0 and opt.response_weight == 0 and opt.photometric_weight == 0:
            raise ConfigError(f"{where}: feature_weight, response_weight and photometric_weight are all 0: "
                              "nothing to train")
        for name in ("attention_temperature", "focal_tau", "uncertainty_eps"):
            if not getattr(opt, name) > 0:
                raise ConfigError(f"{where}.{name}: expected a positive number, got {getattr(opt, name)}")
        check_scale_weights(opt.scale_weights, where)

    def _load_teacher(self, where: str) -> StereoTeacher:
        path = Path(self.options.teacher_path)
        if not path.is_file():
            raise ConfigError(f"{where}.teacher_path: stereo teacher model {path} not found (train one with "
                              "`kd-depth train --config config/train/teacher_stereo.yaml` or point to a released file)")
        try:
            return StereoTeacher(path)
        except (ModelFileError, ValueError) as error:
            raise ConfigError(f"{where}.teacher_path: {error}") from error

    def _teacher_proxy(self, cfg: TrainConfig) -> ProxySource | None:
        """The cached SGBM proxy a guided teacher takes as its hints; None for an unguided teacher, or when
        the teacher runs at another size than the training images (it then runs SGBM itself, every step)."""
        settings = self.teacher.classical_prior_settings
        if settings is None:
            return None
        size = tuple(cfg.data.size) if cfg.data.size else None
        if self.teacher.input_size is not None and size != self.teacher.input_size:
            log.warning("adu_depth: the teacher runs at %s, the data at %s: it computes its SGBM hints every step "
                        "(set data.size to %s to cache them once per frame)", self.teacher.input_size, size,
                        list(self.teacher.input_size))
            return None
        return ProxySource(settings, self.options.teacher_hints_cache_dir
                           or str(Path(cfg.train.out_dir) / "proxy_cache"))

    # ----------------------------------------------------------------------- the task contract
    def dataset_options(self) -> dict[str, Any]:
        """The student's photometric needs, and the teacher's SGBM proxy when it is guided by SGBM."""
        options = self.student_terms.dataset_options()
        if self.teacher_proxy is not None:
            options["proxy"] = self.teacher_proxy
        return options

    def _teacher_outputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "image_right" not in batch:
            raise KeyError("batch['image_right']: the stereo teacher needs the right images (data.stereo: true)")
        image = batch["image"]
        hints = batch.get("proxy_disparity") if self.teacher_proxy is not None else None
        return self.teacher.predict(image, batch["image_right"], output_size=image.shape[-2:], proxy_disparity=hints)

    def feature_loss(self, student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor],
                     weight: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mean over pairings of the attention- (and uncertainty-) weighted adapted-feature loss; per pairing too.

        weight (B,1,H,W) full-resolution per-pixel weights (None = 1), area-pooled to each teacher map.
        """
        opt = self.options
        targets = [teacher_features[j] for j in self.adapters.teacher_indices]
        adapted = self.adapters([f.float() for f in student_features], [t.shape[-2:] for t in targets])
        per_pair = []
        for student_map, target in zip(adapted, targets):
            pair_weight = spatial_attention(target, opt.attention_temperature) if opt.attention else None
            if weight is not None:
                pooled = F.adaptive_avg_pool2d(weight, target.shape[-2:])
                pair_weight = pooled if pair_weight is None else pair_weight * pooled
            if opt.standardize_teacher_features:
                target = standardize_features(target)
            per_pair.append(attention_feature_loss(student_map, target, pair_weight))
        return torch.stack(per_pair).mean(), per_pair

    def response_loss(self, disps: Sequence[torch.Tensor], teacher_depth: torch.Tensor,
                      weight: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Scale-weighted focal-depth loss of every student scale (upsampled) against the teacher depth."""
        opt = self.options
        per_scale = []
        for disp in disps:
            if disp.shape[-2:] != teacher_depth.shape[-2:]:
                disp = F.interpolate(disp, size=teacher_depth.shape[-2:], mode="bilinear", align_corners=False)
            depth = geometry.disp_to_depth(disp, self.min_depth, self.max_depth)[1]
            per_scale.append(focal_depth_loss(depth, teacher_depth, weight, opt.focal_tau, opt.focal_gamma,
                                              opt.focal_floor))
        weights = torch.tensor(opt.scale_weights, dtype=per_scale[0].dtype, device=per_scale[0].device)
        return (torch.stack(per_scale) * weights).sum() / weights.sum(), per_scale

    def forward(self, batch: dict[str, Any], phase: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        opt = self.options
        out = self.student(batch["image"], return_features=self.adapters is not None)
        teacher = self._teacher_outputs(batch)
        device_type = batch["image"].device.type
        with torch.autocast(device_type=device_type, enabled=False):  # losses in float32 under AMP
            disps = [d.float() for d in out["disp"]]
            teacher_depth, teacher_sigma = teacher["depth"], teacher["uncertainty"]
            valid = teacher_depth > opt.target_min_depth
            if opt.teacher_uncertainty_weighting:
                weight = inverse_variance_weights(teacher_sigma, teacher_depth, opt.uncertainty_eps, mask=valid)
            else:
                weight = valid.float()
            loss = torch.zeros((), device=teacher_depth.device)
            parts: dict[str, torch.Tensor] = {
                "teacher_rel_sigma": (teacher_sigma / teacher_depth.clamp_min(1e-6)).mean(),
                "uncertainty_weight_min": weight[valid].min() if bool(valid.any()) else weight.new_zeros(())}
            if opt.response_weight > 0:
                response, per_scale = self.response_loss(disps, teacher_depth, weight)
                loss = loss + opt.response_weight * response
                parts.update(response=response.detach(),
                             **{f"response_s{s}": value.detach() for s, value in enumerate(per_scale)})
            if self.adapters is not None:
                feature, per_pair = self.feature_loss(out["features"], teacher["features"], weight)
                loss = loss + opt.feature_weight * feature
                parts.update(feature=feature.detach(), **{f"feature_r{s}": value.detach() for (s, _), value
                                                          in zip(self.adapters.pairs, per_pair)})
            own, own_parts = self.student_terms(batch, disps, out.get("log_sigma"), teacher_depth, teacher_sigma,
                                                valid, self.pose_net, self.student)
            loss = loss + own
            parts.update(own_parts)
        return {"loss": loss, **parts}

    def teacher_depth_for_visuals(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        teacher = self._teacher_outputs(batch)
        return teacher["depth"], teacher["uncertainty"]

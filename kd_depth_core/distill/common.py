"""Parts every distillation task shares: the student, its own terms, and the monocular-teacher base.

- :class:`StudentOptions`: the options of the student's own terms and depth range (task
  ``Options`` inherit them).
- :func:`build_student`: the student network, the pose network (when the student trains a
  photometric term) and :class:`StudentTerms`, set openly on the task as ``task.student``,
  ``task.pose_net`` and ``task.student_terms`` (checkpoint keys ``student.*``, ``pose_net.*``).
- :class:`StudentTerms`: the student's own terms as a part: the photometric self-supervision of
  the 'self_supervised' task (`train.self_supervised.PhotometricSupervision`, the same code) and
  the uncertainty NLL against the teacher's depth and spread.
- :class:`MonoTeacherDistillation`: a frozen monocular teacher (`distill.teacher.TeacherWrapper`),
  its cached pseudo-labels and the pixel-wise multi-scale log-depth loss; methods 1 ('kd_ms_dpt')
  and 2 ('lumde') are this base plus their own terms.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from kd_depth_core import geometry
from kd_depth_core.config import ConfigError, TrainConfig
from kd_depth_core.distill.cache import PseudoLabelCache
from kd_depth_core.distill.teacher import TeacherWrapper
from kd_depth_core.losses import (
    DEFAULT_SCALE_WEIGHTS,
    best_reprojection_error,
    confidence_weights,
    ensemble_residual,
    gaussian_nll,
    laplacian_nll,
    multiscale_distillation_loss,
)
from kd_depth_core.models.io import ModelFileError
from kd_depth_core.train.distributed import barrier, current_env
from kd_depth_core.train.proxy_supervision import ProxySupervision
from kd_depth_core.train.self_supervised import PhotometricSupervision
from kd_depth_core.train.tasks import Task, to_panel

log = logging.getLogger("kd_depth_core.distill")


@dataclass
class StudentOptions:
    """Options every distillation task shares: the student's photometric term, its uncertainty loss and
    the depth range (read by :func:`build_student`). Task ``Options`` inherit these fields."""

    photometric_weight: float = 1.0  # 0 = distillation only (no pose network)
    mode: Literal["mono", "stereo", "mono_stereo"] = "mono"  # photometric sources (self_supervised)
    ssim_weight: float = 0.85
    smoothness_weight: float = 1e-3
    automask: bool = True
    pose_model: str = "pose_resnet18"
    pose_kwargs: dict[str, Any] = field(default_factory=dict)
    uncertainty_loss: Literal["laplacian", "gaussian", "none"] = "laplacian"
    uncertainty_weight: float = 0.1
    min_depth: float | None = None  # metres; None = the teacher's
    max_depth: float | None = None  # metres; None = the teacher's
    proxy_weight: float = 0.0  # SGBM proxy supervision of the student (needs data.stereo); 0 = off
    proxy_sgbm: dict[str, Any] = field(default_factory=dict)  # classical.sgbm.SGBMSettings fields
    proxy_cache_dir: str = ""  # per-frame SGBM cache; "" = <train.out_dir>/proxy_cache


def mirror_where(value: Any, flip: torch.Tensor) -> Any:
    """`value` with every (B,C,H,W) tensor in it (also inside lists and dicts) mirrored left-right where flip (B,) bool."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 4:
            return value
        return torch.where(flip.view(-1, 1, 1, 1), value.flip(-1), value)
    if isinstance(value, dict):
        return {key: mirror_where(item, flip) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mirror_where(item, flip) for item in value)
    return value


def check_scale_weights(weights: Sequence[float], where: str) -> None:
    """ConfigError unless `weights` are 4 numbers >= 0 (output scales 0..3) with a positive sum."""
    if len(weights) != len(DEFAULT_SCALE_WEIGHTS) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"{where}.scale_weights: expected {len(DEFAULT_SCALE_WEIGHTS)} numbers >= 0 (scales "
                          f"0..3) with a positive sum, got {list(weights)}")


def set_depth_range(task: Task, teacher: Any, opt: StudentOptions, where: str) -> None:
    """`task.min_depth`, `max_depth` (metres; the teacher's unless overridden) and `scale_kind` (the teacher's)."""
    task.min_depth = teacher.min_depth if opt.min_depth is None else float(opt.min_depth)
    task.max_depth = teacher.max_depth if opt.max_depth is None else float(opt.max_depth)
    if not 0 < task.min_depth < task.max_depth:
        raise ConfigError(f"{where}: expected 0 < min_depth < max_depth, got {task.min_depth}, {task.max_depth}")
    task.scale_kind = teacher.scale_kind


class StudentTerms:
    """The student's own terms every distillation task adds to its distillation loss (a part, no weights).

    - photometric (when `photometric` is given): ``photometric_weight`` x (Monodepth2 reprojection +
      smoothness) of the student's sigmoid disparities, by `train.self_supervised.PhotometricSupervision`;
    - SGBM proxy (when `proxy` is given): ``proxy_weight`` x the Depth-Hints-style term of the teachers
      (`train.proxy_supervision.ProxySupervision`, the same code), so a stereo-trained student learns metric
      depth from the classical matcher wherever it beats the student's own reprojection;
    - uncertainty (when the student has a ``log_sigma`` head): ``uncertainty_weight`` x NLL of its error
      against the teacher depth, widened by the teacher's spread (``losses.ensemble_residual``).
    """

    def __init__(self, opt: StudentOptions, photometric: PhotometricSupervision | None, has_uncertainty: bool,
                 min_depth: float, max_depth: float, proxy: ProxySupervision | None = None) -> None:
        self.opt = opt
        self.photometric = photometric
        self.proxy = proxy
        self.has_uncertainty = has_uncertainty
        self.min_depth, self.max_depth = min_depth, max_depth

    def dataset_options(self) -> dict[str, Any]:
        """The photometric term's needs (distillation alone needs no source frames) and the SGBM proxy."""
        options = self.photometric.dataset_options() if self.photometric is not None else {"offsets": ()}
        if self.proxy is not None:
            options.update(self.proxy.dataset_options())
        return options

    def __call__(self, batch: dict[str, Any], disps: list[torch.Tensor], log_sigma: torch.Tensor | None,
                 teacher_depth: torch.Tensor, teacher_std: torch.Tensor, weight: torch.Tensor,
                 pose_net: nn.Module | None, student: nn.Module | None = None
                 ) -> tuple[torch.Tensor | float, dict[str, torch.Tensor]]:
        """(weighted loss, logged parts). disps: the student's float32 sigmoid disparities (4 scales);
        teacher_depth / teacher_std (B,1,H,W) metres; weight (B,1,H,W) per-pixel NLL weights."""
        opt = self.opt
        loss: torch.Tensor | float = 0.0
        parts: dict[str, torch.Tensor] = {}
        best_error = None
        if self.photometric is not None:
            photometric = self.photometric.terms(batch, disps, pose_net, student)
            loss = loss + opt.photometric_weight * photometric.loss
            parts.update(photometric=photometric.reprojection.loss.detach(),
                         smoothness=photometric.smoothness.detach())
            if self.proxy is not None:
                best_error = best_reprojection_error(photometric.reprojection.warped, batch["image"].float(),
                                                     opt.ssim_weight)
        if self.proxy is not None:
            proxy = self.proxy.terms(batch, disps, best_error)
            loss = loss + opt.proxy_weight * proxy.loss
            parts.update(proxy=proxy.loss.detach(), proxy_fraction=proxy.fraction)
        if self.has_uncertainty:
            student_depth = geometry.disp_to_depth(disps[0].detach(), self.min_depth, self.max_depth)[1]
            residual = ensemble_residual(student_depth, teacher_depth, teacher_std)
            nll_fn = laplacian_nll if opt.uncertainty_loss == "laplacian" else gaussian_nll
            nll = nll_fn(residual, log_sigma.float(), weight=weight)
            loss = loss + opt.uncertainty_weight * nll
            parts["uncertainty_nll"] = nll.detach()
        return loss, parts


def build_student(task: Task, cfg: TrainConfig, opt: StudentOptions, where: str, method: str) -> None:
    """Set ``task.student``, ``task.pose_net`` (None without a photometric term) and ``task.student_terms``.

    ``task.min_depth``, ``task.max_depth`` and ``task.scale_kind`` must be set (from the teacher) first.
    """
    from kd_depth_core.models import create_model

    if not cfg.model.name:
        raise ConfigError(f"{cfg.source}: model.name: expected a registered student model (e.g. student_lcnet)")
    photometric = None
    if opt.photometric_weight > 0:
        if task.scale_kind == "relative" and opt.mode != "mono":
            raise ConfigError(f"{where}.mode: the teacher is relative (up to scale) but mode {opt.mode!r} makes "
                              "the photometric loss metric; use mode 'mono' or a metric teacher")
        photometric = PhotometricSupervision(cfg, opt.mode, task.min_depth, task.max_depth, opt.ssim_weight,
                                             opt.smoothness_weight, opt.automask)
    task.student = create_model(cfg.model.name, **cfg.model.kwargs)
    task.pose_net = photometric.build_pose_net(opt.pose_model, dict(opt.pose_kwargs)) if photometric else None
    if len(getattr(task.student, "input_names", ("image",))) != 1:
        raise ConfigError(f"{cfg.source}: model.name: {cfg.model.name!r} takes a stereo pair; {method} "
                          "distils into a monocular student")
    task.has_uncertainty = bool(getattr(task.student, "has_uncertainty", False))
    if task.has_uncertainty and opt.uncertainty_loss == "none":
        raise ConfigError(f"{where}.uncertainty_loss: model {cfg.model.name!r} has an uncertainty head; train "
                          "it with 'laplacian' or 'gaussian' (or build the model with uncertainty: false)")
    task.deploy_has_uncertainty = task.has_uncertainty
    if opt.proxy_weight < 0:
        raise ConfigError(f"{where}.proxy_weight: expected a number >= 0, got {opt.proxy_weight}")
    proxy = None
    if opt.proxy_weight > 0:
        if task.scale_kind == "relative":
            raise ConfigError(f"{where}.proxy_weight: the SGBM proxy is metric but the teacher is relative (up to "
                              "scale); use a metric teacher or proxy_weight: 0")
        proxy = ProxySupervision(cfg, opt.proxy_sgbm, opt.proxy_cache_dir, task.min_depth, task.max_depth,
                                 opt.ssim_weight, where)
    task.student_terms = StudentTerms(opt, photometric, task.has_uncertainty, task.min_depth, task.max_depth, proxy)


def student_own_terms(task: Task, opt: StudentOptions, batch: dict[str, Any], disps: list[torch.Tensor],
                      log_sigma: torch.Tensor | None, teacher_depth: torch.Tensor, teacher_std: torch.Tensor,
                      uncertainty_weight: torch.Tensor) -> tuple[torch.Tensor | float, dict[str, torch.Tensor]]:
    """``task.student_terms(...)`` for a task set up by :func:`build_student` (function form)."""
    return task.student_terms(batch, disps, log_sigma, teacher_depth, teacher_std, uncertainty_weight,
                              task.pose_net, task.student)


@torch.no_grad()
def depth_panels(image: torch.Tensor, student_depth: torch.Tensor, teacher_depth: torch.Tensor,
                 teacher_std: torch.Tensor, student_log_sigma: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """TensorBoard panels of one sample: image (3,H,W), student and teacher depth (H,W) metres in one colour
    range, the teacher's spread and the student's sigma (H,W) metres when it predicts one."""
    from kd_depth_core.utils.colorize import colorize_depth, colorize_uncertainty

    low = float(min(student_depth.min(), teacher_depth.min()))
    high = max(float(max(student_depth.max(), teacher_depth.max())), low * 1.01)
    panels = {"image": image.float().cpu(),
              "depth": to_panel(colorize_depth(student_depth.cpu().numpy(), low, high)),
              "teacher_depth": to_panel(colorize_depth(teacher_depth.cpu().numpy(), low, high)),
              "teacher_uncertainty": to_panel(colorize_uncertainty(teacher_std.cpu().numpy()))}
    if student_log_sigma is not None:
        panels["uncertainty"] = to_panel(colorize_uncertainty(torch.exp(student_log_sigma.float()).cpu().numpy()))
    return panels


# --------------------------------------------------------------------------- task bases
class StudentDistillation(Task):
    """What every task distilling into a monocular `task.student` shares: the student is deployed, predicts
    validation depth and shows its panels next to the teacher's (`teacher_depth_for_visuals`)."""

    checkpoint_exclude = ("teacher.",)

    def deploy_model(self) -> nn.Module:
        return self.student

    @torch.no_grad()
    def predict_depth(self, batch: dict[str, Any]) -> torch.Tensor:
        """The student's full-resolution depth (B,1,H,W) in metres (the teacher's scale kind)."""
        disp = self.student(batch["image"])["disp"][0].float()
        return geometry.disp_to_depth(disp, self.min_depth, self.max_depth)[1]

    def teacher_depth_for_visuals(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher depth, its uncertainty), (B,1,H,W) metres, for the panels."""
        raise NotImplementedError

    @torch.no_grad()
    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """First sample: image, student depth, teacher depth and spread (same colour range), student sigma."""
        first = {key: value[:1] for key, value in batch.items()}
        out = self.student(first["image"])
        student = geometry.disp_to_depth(out["disp"][0][0, 0].float(), self.min_depth, self.max_depth)[1]
        teacher_depth, teacher_std = self.teacher_depth_for_visuals(first)
        log_sigma = out["log_sigma"][0, 0] if "log_sigma" in out else None
        return depth_panels(first["image"][0], student, teacher_depth[0, 0], teacher_std[0, 0], log_sigma)


class MonoTeacherDistillation(StudentDistillation):
    """A frozen monocular teacher, its (cached) pseudo-labels and the pixel-wise loss into a student.

    Subclasses write `forward` from :meth:`distillation_terms` (and their own terms).
    """

    @dataclass
    class Options(StudentOptions):
        teacher_path: str = ""  # released teacher model (.safetensors), required
        num_samples: int = 8  # MC-dropout passes per image (1 = one deterministic pass)
        teacher_max_batch: int = 0  # most images per teacher forward; 0 = all B x num_samples at once
        focal_correction: bool = True  # metric teacher on another camera: depth x fx / fx_train
        cache_dir: str = ""  # pseudo-label cache folder; "" = run the teacher every step
        cache_dtype: Literal["float16", "float32"] = "float16"
        distill_weight: float = 1.0
        scale_weights: tuple[float, ...] = DEFAULT_SCALE_WEIGHTS  # scales 0..3, real numbers
        distill_loss: Literal["silog", "l1_log"] = "silog"
        variance_focus: float = 0.85  # silog: 1 = scale-invariant, 0 = mean squared log error
        target_min_depth: float = 0.0  # metres; pixels with pseudo-depth <= this are left out
        confidence: Literal["inverse", "exp", "none"] = "inverse"
        confidence_tau: float = 0.1  # relative spread std/mean at which `inverse` gives weight 0.5
        mirror: float = 0.0  # probability that the student sees an image mirrored left-right (`student_outputs`)

    method = "distillation"

    def __init__(self, cfg: TrainConfig, options: Options | None = None) -> None:
        super().__init__(cfg, options)
        opt, where = self.options, f"{cfg.source}: task.kwargs"
        self._check_options(where)
        self.teacher = self._load_teacher(where)
        set_depth_range(self, self.teacher, opt, where)
        build_student(self, cfg, opt, where, self.method)
        self.cache: PseudoLabelCache | None = None
        self._cache_shape: tuple[int, int] | None = None
        log.info("%s: teacher %s (%d MC samples), student %s, %s scale, depth %.3g-%.3g m", self.method,
                 self.teacher.source, self.teacher.num_samples, cfg.model.name, self.scale_kind, self.min_depth,
                 self.max_depth)

    def _check_options(self, where: str) -> None:
        opt = self.options
        if not opt.teacher_path:
            raise ConfigError(f"{where}.teacher_path: expected the released teacher model file (.safetensors), "
                              "e.g. runs/teacher/model.safetensors")
        if opt.num_samples < 1:
            raise ConfigError(f"{where}.num_samples: expected an integer >= 1, got {opt.num_samples}")
        if opt.teacher_max_batch < 0:
            raise ConfigError(f"{where}.teacher_max_batch: expected >= 0 (0 = no cap), got {opt.teacher_max_batch}")
        check_scale_weights(opt.scale_weights, where)
        for name in ("distill_weight", "photometric_weight", "uncertainty_weight", "target_min_depth"):
            if getattr(opt, name) < 0:
                raise ConfigError(f"{where}.{name}: expected a number >= 0, got {getattr(opt, name)}")
        if opt.distill_weight == 0 and opt.photometric_weight == 0:
            raise ConfigError(f"{where}: distill_weight and photometric_weight are both 0: nothing to train")
        if not 0 <= opt.variance_focus <= 1:
            raise ConfigError(f"{where}.variance_focus: expected a number in [0, 1], got {opt.variance_focus}")
        if not opt.confidence_tau > 0:
            raise ConfigError(f"{where}.confidence_tau: expected a positive number, got {opt.confidence_tau}")
        if not 0 <= opt.mirror <= 1:
            raise ConfigError(f"{where}.mirror: expected a probability in [0, 1], got {opt.mirror}")

    def _load_teacher(self, where: str) -> TeacherWrapper:
        opt = self.options
        path = Path(opt.teacher_path)
        if not path.is_file():
            raise ConfigError(f"{where}.teacher_path: teacher model {path} not found (train one with "
                              "`kd-depth train --config config/train/teacher_ms_dpt.yaml` or point to a released file)")
        try:
            return TeacherWrapper(path, num_samples=opt.num_samples, max_batch=opt.teacher_max_batch or None,
                                  focal_correction=opt.focal_correction)
        except (ModelFileError, ValueError) as error:
            raise ConfigError(f"{where}.teacher_path: {error}") from error

    # ----------------------------------------------------------------------- pseudo-labels
    def cache_fingerprint(self, shape: tuple[int, int]) -> str:
        """Teacher fingerprint + what else changes a stored label: data root, label size, focal correction."""
        root = str(Path(self.cfg.data.root).resolve()) if self.cfg is not None and self.cfg.data.root else ""
        text = f"{self.teacher.fingerprint}|root={root}|size={shape[0]}x{shape[1]}|focal={self.options.focal_correction}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _open_cache(self, shape: tuple[int, int]) -> PseudoLabelCache:
        """Open (lazily, at the first step) the cache for labels of `shape`; rank 0 first, then the others."""
        if self.cache is not None and self._cache_shape == shape:
            return self.cache
        if self.cache is not None:
            self.cache.close()
        env = current_env()
        kwargs = dict(shape=shape, channels=2, dtype=self.options.cache_dtype, writer=env.rank)
        fingerprint = self.cache_fingerprint(shape)
        if env.is_main:
            self.cache = PseudoLabelCache(self.options.cache_dir, fingerprint, **kwargs)
        barrier(env)
        if not env.is_main:
            self.cache = PseudoLabelCache(self.options.cache_dir, fingerprint, **kwargs)
        self._cache_shape = shape
        log.info("pseudo-label cache %s", self.cache.describe())
        return self.cache

    @torch.no_grad()
    def pseudo_labels(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(teacher mean depth, teacher std) (B,1,H,W) metres at the batch resolution, and the cache hit rate."""
        image, K = batch["image"], batch.get("K")
        if not self.options.cache_dir:
            out = self.teacher.predict(image, K)
            return out["depth"], out["uncertainty"], 0.0
        keys = batch.get("frame_key")
        if keys is None or len(keys) != image.shape[0]:
            raise KeyError("batch['frame_key']: the pseudo-label cache needs one frame key per image "
                           "(data.dataset.SequenceDataset provides it); or set task.kwargs.cache_dir: ''")
        cache = self._open_cache((int(image.shape[-2]), int(image.shape[-1])))
        records = cache.get_many(list(keys))
        missing = [i for i, record in enumerate(records) if record is None]
        if missing:
            index = torch.tensor(missing, device=image.device)
            out = self.teacher.predict(image[index], None if K is None else K[index])
            computed = torch.cat([out["depth"], out["uncertainty"]], 1).float().cpu().numpy()
            cache.put_many([keys[i] for i in missing], computed)
            computed = computed.astype(cache.dtype).astype(np.float32)  # the rounding a later hit will see
            for j, i in enumerate(missing):
                records[i] = computed[j]
        labels = torch.from_numpy(np.stack(records)).to(image.device)
        return labels[:, :1], labels[:, 1:], 1.0 - len(missing) / len(records)

    def student_outputs(self, image: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        """The student's output dict for image (B,3,H,W) (`kwargs` go to its forward). While training, each
        image is mirrored left-right with probability `mirror` and its outputs mirrored back, so every loss
        compares them with the unmirrored frame's pseudo-labels (cached once per frame) and geometry."""
        if not (self.training and self.options.mirror > 0):
            return self.student(image, **kwargs)
        flip = torch.rand(image.shape[0], device=image.device) < self.options.mirror
        return mirror_where(self.student(mirror_where(image, flip), **kwargs), flip)

    # ----------------------------------------------------------------------- losses
    def distillation_terms(self, batch: dict[str, Any], out: dict[str, Any]
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Method 1's loss on the student output dict `out`: pixel-wise distillation + the student's own
        terms -> (loss, logged parts, teacher depth, teacher std) (B,1,H,W) metres. Float32 inside."""
        opt = self.options
        teacher_depth, teacher_std, hit_rate = self.pseudo_labels(batch)
        with torch.autocast(device_type=batch["image"].device.type, enabled=False):  # float32 losses under AMP
            disps = [d.float() for d in out["disp"]]
            valid = teacher_depth > opt.target_min_depth
            weight = confidence_weights(teacher_depth, teacher_std, opt.confidence, opt.confidence_tau) * valid.float()
            distill = multiscale_distillation_loss(disps, teacher_depth, weight, opt.scale_weights, self.min_depth,
                                                   self.max_depth, opt.distill_loss, opt.variance_focus)
            loss = opt.distill_weight * distill.loss
            parts = {"distill": distill.loss.detach(),
                     **{f"distill_s{s}": value.detach() for s, value in enumerate(distill.per_scale)},
                     "confidence_mean": weight.mean(),
                     "teacher_rel_std": (teacher_std / teacher_depth.clamp_min(1e-6)).mean(),
                     "cache_hit_rate": torch.tensor(hit_rate)}
            own, own_parts = self.student_terms(batch, disps, out.get("log_sigma"), teacher_depth, teacher_std,
                                                valid, self.pose_net, self.student)
            loss = loss + own
            parts.update(own_parts)
        return loss, parts, teacher_depth, teacher_std

    # ----------------------------------------------------------------------- the task contract
    def dataset_options(self) -> dict[str, Any]:
        return self.student_terms.dataset_options()

    def teacher_depth_for_visuals(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pseudo_labels(batch)[:2]

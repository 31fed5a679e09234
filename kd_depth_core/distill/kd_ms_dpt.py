"""Task 'kd_ms_dpt': distil a multi-scale DPT teacher's MC-dropout ensemble into a light student.

Method 1 of docs (Song & Lee, Sci. Rep. 2023), with the intended multi-scale weights and the
ensemble the paper describes:

- Teacher: a released model file (`task.kwargs.teacher_path`, normally `ms_dpt_teacher`), frozen,
  N Monte Carlo dropout passes per image (`distill.teacher.TeacherWrapper`). Its ensemble mean is
  the pseudo-depth, its relative spread c = std / mean the confidence: w = 1 / (1 + c / tau)
  (`confidence: inverse`) or exp(-c / tau) (`exp`) — uncertain pixels count less.
- Pseudo-labels are cached on disk per frame (`cache_dir`, `distill.cache.PseudoLabelCache`) so
  the teacher runs once per frame over all epochs and runs; "" = run the teacher every step.
  With colour augmentation the cached label is the teacher's output on the first view it saw.
- Distillation: every student scale s is upsampled to full resolution and compared with the
  pseudo-depth in log-depth space (`losses.multiscale_distillation_loss`: SILog without the
  square root, variance_focus 0.85, or L1 of log depth), masked to pseudo-depth > `target_min_depth`
  (the public code used 1 m), weighted per pixel by the confidence and per scale by real weights
  (default 1, 1/2, 1/4, 1/8).
- Photometric self-supervision (weight `photometric_weight`, 0 = off) is the 'self_supervised'
  task's machinery reused as is: its pose network and source poses, `losses.multiscale_reprojection_loss`
  and `losses.multiscale_smoothness`, with the same option names (mode, ssim_weight, ...).
- A student with an uncertainty head (`model.kwargs.uncertainty: true`) learns log sigma from the
  ensemble: Laplacian or Gaussian NLL of r = sqrt(std^2 + (mean - student depth)^2), the RMS
  deviation of the teacher's samples from the student (`losses.ensemble_residual`).
- The student predicts depth in the teacher's range (min/max depth from the teacher metadata) and
  inherits its scale kind: a metric teacher gives a metric student.

`deploy_model()` is the student alone; the teacher is left out of checkpoints (`checkpoint_exclude`).
"""
from __future__ import annotations

import hashlib
import logging
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
    confidence_weights,
    ensemble_residual,
    gaussian_nll,
    laplacian_nll,
    multiscale_distillation_loss,
    multiscale_reprojection_loss,
    multiscale_smoothness,
)
from kd_depth_core.models.io import ModelFileError
from kd_depth_core.train.self_supervised import SelfSupervisedTask
from kd_depth_core.train.tasks import Task, register_task

log = logging.getLogger("kd_depth_core.distill")


def _panel(rgb: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> (3,H,W) float in [0, 1] (a TensorBoard image)."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float() / 255.0


def _rank() -> tuple[int, bool]:
    """(rank, distributed?) of this process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size() > 1
    return 0, False


def _barrier() -> None:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


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


def build_student(task: Task, cfg: TrainConfig, opt: StudentOptions, where: str, method: str) -> None:
    """Set ``task.student``, ``task.pose_net`` and the photometric machinery shared by distillation tasks.

    With ``opt.photometric_weight > 0`` the self-supervised task builds the student and the pose network
    and owns the source poses (one photometric implementation); otherwise only the student is built.
    ``task.min_depth``,
    ``task.max_depth`` and ``task.scale_kind`` must be set (from the teacher) before the call.
    """
    task._photometric = ()  # a tuple: not a registered submodule
    if opt.photometric_weight > 0:
        if task.scale_kind == "relative" and opt.mode != "mono":
            raise ConfigError(f"{where}.mode: the teacher is relative (up to scale) but mode {opt.mode!r} makes "
                              "the photometric loss metric; use mode 'mono' or a metric teacher")
        photometric = SelfSupervisedTask(cfg, SelfSupervisedTask.Options(
            mode=opt.mode, min_depth=task.min_depth, max_depth=task.max_depth, ssim_weight=opt.ssim_weight,
            smoothness_weight=opt.smoothness_weight, automask=opt.automask, pose_model=opt.pose_model,
            pose_kwargs=dict(opt.pose_kwargs), uncertainty_loss="laplacian"))
        task.student = photometric.depth_net
        task.pose_net = photometric.pose_net
        task._photometric = (photometric,)
    else:
        from kd_depth_core.models import create_model

        task.student = create_model(cfg.model.name, **cfg.model.kwargs)
        task.pose_net = None
    if len(getattr(task.student, "input_names", ("image",))) != 1:
        raise ConfigError(f"{cfg.source}: model.name: {cfg.model.name!r} takes a stereo pair; {method} "
                          "distils into a monocular student")
    task.has_uncertainty = bool(getattr(task.student, "has_uncertainty", False))
    if task.has_uncertainty and opt.uncertainty_loss == "none":
        raise ConfigError(f"{where}.uncertainty_loss: model {cfg.model.name!r} has an uncertainty head; train "
                          "it with 'laplacian' or 'gaussian' (or build the model with uncertainty: false)")
    task.deploy_has_uncertainty = task.has_uncertainty


def student_own_terms(task: Task, opt: StudentOptions, batch: dict[str, Any], disps: list[torch.Tensor],
                      log_sigma: torch.Tensor | None, teacher_depth: torch.Tensor, teacher_std: torch.Tensor,
                      uncertainty_weight: torch.Tensor) -> tuple[torch.Tensor | float, dict[str, torch.Tensor]]:
    """The student's terms every distillation task adds to its own: (weighted loss, logged parts).

    - photometric (when :func:`build_student` made a pose net): ``photometric_weight`` x (Monodepth2
      reprojection + smoothness) of the student's sigmoid disparities ``disps``;
    - uncertainty (when the student has a ``log_sigma`` head): ``uncertainty_weight`` x NLL of its error
      against the teacher depth, widened by the teacher's spread ``teacher_std`` (``ensemble_residual``),
      over pixels weighted by ``uncertainty_weight`` (B,1,H,W).
    """
    loss: torch.Tensor | float = 0.0
    parts: dict[str, torch.Tensor] = {}
    if task._photometric:
        sources, poses = task._photometric[0].source_poses(batch)
        image = batch["image"].float()
        reprojection = multiscale_reprojection_loss(
            disps, image, sources, batch["K"].float(), poses.float(),
            min_depth=task.min_depth, max_depth=task.max_depth, alpha=opt.ssim_weight, automask=opt.automask)
        smoothness = multiscale_smoothness(disps, image, opt.smoothness_weight)
        loss = loss + opt.photometric_weight * (reprojection.loss + smoothness)
        parts.update(photometric=reprojection.loss.detach(), smoothness=smoothness.detach())
    if task.has_uncertainty:
        student_depth = geometry.disp_to_depth(disps[0].detach(), task.min_depth, task.max_depth)[1]
        residual = ensemble_residual(student_depth, teacher_depth, teacher_std)
        nll_fn = laplacian_nll if opt.uncertainty_loss == "laplacian" else gaussian_nll
        nll = nll_fn(residual, log_sigma.float(), weight=uncertainty_weight)
        loss = loss + opt.uncertainty_weight * nll
        parts["uncertainty_nll"] = nll.detach()
    return loss, parts


@register_task("kd_ms_dpt")
class KDMSDPTTask(Task):
    """Student distilled from an MC-dropout MS-DPT teacher (see the module docstring)."""

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

    checkpoint_exclude = ("teacher.",)

    def __init__(self, cfg: TrainConfig, options: Options | None = None) -> None:
        super().__init__(cfg, options)
        opt, where = self.options, f"{cfg.source}: task.kwargs"
        self._check_options(where)
        self.teacher = self._load_teacher(where)
        self.min_depth = self.teacher.min_depth if opt.min_depth is None else float(opt.min_depth)
        self.max_depth = self.teacher.max_depth if opt.max_depth is None else float(opt.max_depth)
        if not 0 < self.min_depth < self.max_depth:
            raise ConfigError(f"{where}: expected 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        self.scale_kind = self.teacher.scale_kind
        if not cfg.model.name:
            raise ConfigError(f"{cfg.source}: model.name: expected a registered student model (e.g. student_lcnet)")
        build_student(self, cfg, opt, where, "kd_ms_dpt")
        self.cache: PseudoLabelCache | None = None
        self._cache_shape: tuple[int, int] | None = None
        log.info("kd_ms_dpt: teacher %s (%d MC samples), student %s, %s scale, depth %.3g-%.3g m",
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
        if len(opt.scale_weights) != len(DEFAULT_SCALE_WEIGHTS) or any(w < 0 for w in opt.scale_weights) \
                or sum(opt.scale_weights) <= 0:
            raise ConfigError(f"{where}.scale_weights: expected {len(DEFAULT_SCALE_WEIGHTS)} numbers >= 0 (scales "
                              f"0..3) with a positive sum, got {list(opt.scale_weights)}")
        for name in ("distill_weight", "photometric_weight", "uncertainty_weight", "target_min_depth"):
            if getattr(opt, name) < 0:
                raise ConfigError(f"{where}.{name}: expected a number >= 0, got {getattr(opt, name)}")
        if opt.distill_weight == 0 and opt.photometric_weight == 0:
            raise ConfigError(f"{where}: distill_weight and photometric_weight are both 0: nothing to train")
        if not 0 <= opt.variance_focus <= 1:
            raise ConfigError(f"{where}.variance_focus: expected a number in [0, 1], got {opt.variance_focus}")
        if not opt.confidence_tau > 0:
            raise ConfigError(f"{where}.confidence_tau: expected a positive number, got {opt.confidence_tau}")

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
        rank, distributed = _rank()
        kwargs = dict(shape=shape, channels=2, dtype=self.options.cache_dtype, writer=rank)
        fingerprint = self.cache_fingerprint(shape)
        if rank == 0:
            self.cache = PseudoLabelCache(self.options.cache_dir, fingerprint, **kwargs)
        if distributed:
            _barrier()
        if rank != 0:
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

    # ----------------------------------------------------------------------- the task contract
    def dataset_options(self) -> dict[str, Any]:
        """The photometric term's needs; distillation alone needs no source frames."""
        return self._photometric[0].dataset_options() if self._photometric else {"offsets": ()}

    def deploy_model(self) -> nn.Module:
        return self.student

    def forward(self, batch: dict[str, Any], phase: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        opt = self.options
        out = self.student(batch["image"])
        teacher_depth, teacher_std, hit_rate = self.pseudo_labels(batch)
        device_type = batch["image"].device.type
        with torch.autocast(device_type=device_type, enabled=False):  # losses in float32 under AMP
            disps = [d.float() for d in out["disp"]]
            weight = confidence_weights(teacher_depth, teacher_std, opt.confidence, opt.confidence_tau)
            weight = weight * (teacher_depth > opt.target_min_depth).float()
            distill = multiscale_distillation_loss(disps, teacher_depth, weight, opt.scale_weights, self.min_depth,
                                                   self.max_depth, opt.distill_loss, opt.variance_focus)
            loss = opt.distill_weight * distill.loss
            parts = {"distill": distill.loss.detach(),
                     **{f"distill_s{s}": value.detach() for s, value in enumerate(distill.per_scale)},
                     "confidence_mean": weight.mean(),
                     "teacher_rel_std": (teacher_std / teacher_depth.clamp_min(1e-6)).mean(),
                     "cache_hit_rate": torch.tensor(hit_rate)}
            own, own_parts = student_own_terms(self, opt, batch, disps, out.get("log_sigma"), teacher_depth,
                                               teacher_std, uncertainty_weight=(teacher_depth > opt.target_min_depth))
            loss = loss + own
            parts.update(own_parts)
        return {"loss": loss, **parts}

    @torch.no_grad()
    def predict_depth(self, batch: dict[str, Any]) -> torch.Tensor:
        """The student's full-resolution depth (B,1,H,W) in metres (the teacher's scale kind)."""
        disp = self.student(batch["image"])["disp"][0].float()
        return geometry.disp_to_depth(disp, self.min_depth, self.max_depth)[1]

    @torch.no_grad()
    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """First sample: image, student depth, teacher depth and spread (same colour range), student sigma."""
        from kd_depth_core.utils.colorize import colorize_depth, colorize_uncertainty

        first = {key: value[:1] for key, value in batch.items()}
        out = self.student(first["image"])
        student = geometry.disp_to_depth(out["disp"][0][0, 0].float(), self.min_depth, self.max_depth)[1]
        teacher_depth, teacher_std, _ = self.pseudo_labels(first)
        low = float(min(student.min(), teacher_depth.min()))
        high = max(float(max(student.max(), teacher_depth.max())), low * 1.01)
        panels = {"image": first["image"][0].float().cpu(),
                  "depth": _panel(colorize_depth(student.cpu().numpy(), low, high)),
                  "teacher_depth": _panel(colorize_depth(teacher_depth[0, 0].cpu().numpy(), low, high)),
                  "teacher_uncertainty": _panel(colorize_uncertainty(teacher_std[0, 0].cpu().numpy()))}
        if "log_sigma" in out:
            panels["uncertainty"] = _panel(colorize_uncertainty(torch.exp(out["log_sigma"][0, 0].float()).cpu().numpy()))
        return panels

"""Task 'distill_foundation': distil a foreign ONNX foundation depth model (Depth Anything, ...) into a fast student.

NimbleD's recipe (arXiv 2408.14177) on our own recordings:

- Teacher: ``task.kwargs.teacher_path``, an ``.onnx`` with its model card (``teacher_card``; default the card
  beside the file, ``inference/foreign.py``), run through ONNX Runtime (CUDA execution provider when
  available, ``teacher_batch`` images per call, ``teacher_threads`` CPU threads). Never trained, never
  in a checkpoint.
- Pseudo-labels: before the first step the teacher runs **once** over every frame of the training split
  (unaugmented, at its own input size, tqdm bar; under DDP each rank labels its share) into the
  memory-mapped ``PseudoLabelCache``
  (``cache_dir``, default ``<train.out_dir>/teacher_cache``); each label is resized to the student's
  size *in disparity space* (bilinear on disparity with the invalid pixels left out), relative labels
  divided by their median (the loss is scale-invariant; this keeps float16 exact enough). Later
  epochs and later runs read the cache: no ONNX session call (``teacher_calls`` is logged). A frame
  missing from the cache (``prefill: false``) is labelled from the batch image on first sight.
- Loss, relative teacher (``relative_disparity`` / ``relative_depth`` cards): ``ssi_weight`` × the
  scale-and-shift-invariant loss in disparity space (``losses/ssi.py``: per-image least-squares
  alignment, ``trim`` fraction of largest residuals dropped, ``gradient_weight`` × multi-scale gradient
  matching) on every student scale (``scale_weights``), plus the student's own photometric loss,
  which supplies the scale: ``mode: auto`` is mono+stereo when ``data.stereo`` (metric student,
  metadata ``scale: metric``) and mono otherwise (``relative``).
- Loss, relative teacher with stereo data and ``align_to_proxy`` (the shipped config): each label is
  made metric per image before the loss: the trimmed least-squares scale and shift
  (`losses.ssi.ssi_alignment`, ``trim``) that map the teacher's relative disparity onto the frame's
  SGBM proxy (1/depth = d_sgbm / (fx·B), on the proxy's confident pixels; the dataset attaches it,
  computed once per frame, `classical.proxy_cache`). The teacher gives the dense shape, the
  classical matcher the metres, and the student learns both with the metric KD loss below
  (``distill_weight``, ``distill_loss``, ``variance_focus``); an image whose proxy has too few
  confident pixels (``align_min_fraction``) falls back to the SSI term.
- Loss, metric teacher (``metric_depth`` card): the existing metric KD loss
  (``losses.multiscale_distillation_loss``, SILog in log depth) against the teacher's depth, plus the
  photometric term; the student is metric.

`deploy_model()` is the student alone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kd_depth_core import geometry
from kd_depth_core.config import ConfigError, TrainConfig
from kd_depth_core.distill.cache import PseudoLabelCache
from kd_depth_core.distill.common import StudentOptions, build_student, student_own_terms
from kd_depth_core.inference.foreign import (
    ForeignOnnxBackend,
    ModelCardError,
    file_digest,
    load_card,
    raw_to_disparity,
)
from kd_depth_core.inference.preprocess import Preprocessor
from kd_depth_core.losses import DEFAULT_SCALE_WEIGHTS, multiscale_distillation_loss
from kd_depth_core.losses.ssi import ssi_alignment, ssi_loss
from kd_depth_core.train.distributed import barrier, current_env
from kd_depth_core.train.proxy_supervision import ProxySupervision
from kd_depth_core.train.tasks import Task, register_task, to_panel

log = logging.getLogger("kd_depth_core.distill")


def resize_disparity(disparity: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a disparity map (h, w) float32 with 0 = invalid to (height, width), bilinear over the valid pixels.

    Valid weights are resized with the values, so an invalid pixel never drags its neighbours to 0; an
    output pixel is valid (> 0) where more than half of its interpolation weight was valid.
    """
    if disparity.shape == (height, width):
        return disparity.astype(np.float32, copy=False)
    valid = (disparity > 0).astype(np.float32)
    interp = cv2.INTER_AREA if disparity.shape[0] * disparity.shape[1] > height * width else cv2.INTER_LINEAR
    total = cv2.resize(np.ascontiguousarray(disparity * valid, dtype=np.float32), (width, height), interpolation=interp)
    weight = cv2.resize(valid, (width, height), interpolation=interp)
    return np.where(weight > 0.5, total / np.maximum(weight, 1e-6), 0).astype(np.float32)


@register_task("distill_foundation")
class FoundationDistillTask(Task):
    """A student distilled from a foreign ONNX depth model (see the module docstring)."""

    @dataclass
    class Options(StudentOptions):
        teacher_path: str = ""  # the foreign .onnx (required)
        teacher_card: str = ""  # its model card; "" = <stem>.card.yaml / <stem>.yaml beside the file
        mode: Literal["auto", "mono", "stereo", "mono_stereo"] = "auto"  # auto: mono_stereo with data.stereo
        teacher_size: tuple[int, ...] = ()  # (H, W) for dynamic-size teachers; () = data.size rounded to the
        #                                     card's size multiple (the training images' aspect)
        teacher_batch: int = 8  # images per ONNX Runtime call
        teacher_device: str = "auto"  # auto | cpu | cuda (the ONNX Runtime execution provider)
        teacher_threads: int = 0  # ONNX Runtime intra-op CPU threads (0 = its default)
        prefill: bool = True  # label every training frame before the first step
        cache_dir: str = ""  # "" = <train.out_dir>/teacher_cache
        cache_dtype: Literal["float16", "float32"] = "float16"
        ssi_weight: float = 1.0  # relative teachers
        trim: float = 0.2  # fraction of the largest residuals dropped per image
        gradient_weight: float = 0.5  # multi-scale gradient matching (MiDaS); 0 = off
        gradient_scales: int = 4
        scale_weights: tuple[float, ...] = DEFAULT_SCALE_WEIGHTS  # per student scale 0..3
        distill_weight: float = 1.0  # metric teachers (and aligned labels): SILog KD weight
        distill_loss: Literal["silog", "l1_log"] = "silog"
        variance_focus: float = 0.85
        align_to_proxy: bool = False  # relative teacher + stereo: labels made metric on the frame's SGBM proxy
        align_min_fraction: float = 0.05  # least share of confident proxy pixels for an image's alignment

    def __init__(self, cfg: TrainConfig, options: Options | None = None) -> None:
        super().__init__(cfg, options)
        opt, where = self.options, f"{cfg.source}: task.kwargs"
        self._check_options(where)
        self.card, self.teacher = self._load_teacher(where)
        self.metric_teacher = not self.card.relative
        mode = opt.mode if opt.mode != "auto" else ("mono_stereo" if cfg.data.stereo else "mono")
        self.mode = mode
        # the rig's baseline gives metres: through the stereo photometric term or the SGBM proxy
        stereo_scale = (opt.photometric_weight > 0 and mode in ("stereo", "mono_stereo")) or opt.proxy_weight > 0 \
            or opt.align_to_proxy
        self.scale_kind = "metric" if self.metric_teacher or stereo_scale else "relative"
        low, high = self.card.valid_range or (None, None)
        default_min = float(low) if self.metric_teacher and low else 0.1
        default_max = float(high) if self.metric_teacher and high else 100.0
        self.min_depth = default_min if opt.min_depth is None else float(opt.min_depth)
        self.max_depth = default_max if opt.max_depth is None else float(opt.max_depth)
        if not 0 < self.min_depth < self.max_depth:
            raise ConfigError(f"{where}: expected 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        build_student(self, cfg, dataclasses.replace(opt, mode=mode), where, "distill_foundation")
        if self.has_uncertainty and not self.metric_teacher:
            raise ConfigError(f"{cfg.source}: model.kwargs.uncertainty: a relative teacher gives no metric error to "
                              "learn an uncertainty from; build the student with uncertainty: false")
        self.student_size = (int(cfg.data.size[0]), int(cfg.data.size[1]))
        self.alignment = self._alignment_proxy(cfg, where) if opt.align_to_proxy else None
        self.cache: PseudoLabelCache | None = None
        self.prefilled = 0
        log.info("distill_foundation: teacher %s (%s), student %s, %s student, photometric mode %s",
                 self.teacher.path, self.card.kind, cfg.model.name, self.scale_kind, mode)

    # ----------------------------------------------------------------------- setup
    def _check_options(self, where: str) -> None:
        opt = self.options
        for name in ("ssi_weight", "distill_weight", "photometric_weight", "gradient_weight", "uncertainty_weight"):
            if getattr(opt, name) < 0:
                raise ConfigError(f"{where}.{name}: expected a number >= 0, got {getattr(opt, name)}")
        if not 0 <= opt.trim < 1:
            raise ConfigError(f"{where}.trim: expected a fraction in [0, 1), got {opt.trim}")
        if opt.teacher_batch < 1 or opt.gradient_scales < 1:
            raise ConfigError(f"{where}.teacher_batch / gradient_scales: expected integers >= 1, got "
                              f"{opt.teacher_batch}, {opt.gradient_scales}")
        if opt.teacher_size and (len(opt.teacher_size) != 2 or min(opt.teacher_size) < 1):
            raise ConfigError(f"{where}.teacher_size: expected [height, width] pixels or [], got "
                              f"{list(opt.teacher_size)}")
        if len(opt.scale_weights) != len(DEFAULT_SCALE_WEIGHTS) or any(w < 0 for w in opt.scale_weights) \
                or sum(opt.scale_weights) <= 0:
            raise ConfigError(f"{where}.scale_weights: expected {len(DEFAULT_SCALE_WEIGHTS)} numbers >= 0 (scales "
                              f"0..3) with a positive sum, got {list(opt.scale_weights)}")
        if not 0 <= opt.variance_focus <= 1:
            raise ConfigError(f"{where}.variance_focus: expected a number in [0, 1], got {opt.variance_focus}")
        if not 0 < opt.align_min_fraction <= 1:
            raise ConfigError(f"{where}.align_min_fraction: expected a fraction in (0, 1], got "
                              f"{opt.align_min_fraction}")

    def _alignment_proxy(self, cfg: TrainConfig, where: str) -> ProxySupervision:
        """The SGBM proxy the labels are aligned to: the student's proxy term's when it has one (one per frame)."""
        if self.metric_teacher:
            raise ConfigError(f"{where}.align_to_proxy: the teacher card is metric_depth already; set "
                              "align_to_proxy: false")
        if not cfg.data.stereo:
            raise ConfigError(f"{where}.align_to_proxy: aligning the teacher to the SGBM proxy needs the right "
                              "images; set data.stereo: true, or align_to_proxy: false (a relative student)")
        if self.student_terms.proxy is not None:
            return self.student_terms.proxy
        opt = self.options
        return ProxySupervision(cfg, opt.proxy_sgbm, opt.proxy_cache_dir, self.min_depth, self.max_depth,
                                opt.ssim_weight, where)

    def _load_teacher(self, where: str) -> tuple[Any, ForeignOnnxBackend]:
        opt = self.options
        path = Path(opt.teacher_path) if opt.teacher_path else None
        if path is None or path.suffix != ".onnx":
            raise ConfigError(f"{where}.teacher_path: expected a foreign ONNX depth model (.onnx) with its model "
                              f"card, got {opt.teacher_path!r} (released .safetensors teachers: task kd_ms_dpt)")
        if not path.is_file():
            raise ConfigError(f"{where}.teacher_path: {path} not found (kd-depth downloads nothing: export the "
                              "model yourself, see config/models/depth_anything_v2_small.yaml)")
        try:
            card = load_card(opt.teacher_card or None, path)
        except ModelCardError as error:
            raise ConfigError(f"{where}.teacher_card: {error}") from error
        size = tuple(int(v) for v in opt.teacher_size) or None
        if size is None and card.size is None and card.size_multiple:  # keep the training images' aspect
            m = card.size_multiple
            size = tuple(max(m, int(round(v / m)) * m) for v in self.cfg.data.size)
        try:
            teacher = ForeignOnnxBackend(path, card, device=opt.teacher_device, cpu_threads=opt.teacher_threads,
                                         input_size=size, max_batch=opt.teacher_batch)
        except (ModelCardError, ValueError, RuntimeError) as error:
            raise ConfigError(f"{where}.teacher_path: {error}") from error
        return card, teacher

    # ----------------------------------------------------------------------- pseudo-labels
    def cache_fingerprint(self) -> str:
        """ONNX file digest + card + teacher and student sizes + data root: anything that changes a label."""
        root = str(Path(self.cfg.data.root).resolve()) if self.cfg.data.root else ""
        text = json.dumps({"onnx": file_digest(self.teacher.path), "card": self.card.to_dict(),
                           "teacher_size": list(self.teacher.input_size), "size": list(self.student_size),
                           "root": root, "version": 1}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @torch.no_grad()
    def teacher_labels(self, images: list[np.ndarray]) -> np.ndarray:
        """Images (H,W,3 RGB uint8, or float in [0, 1]) -> labels (N,1,h,w) float32 at the student size, 0 = invalid.

        Relative cards: disparity divided by its per-image median; metric cards: 1 / depth in 1/m.
        """
        height, width = self.teacher.input_size
        raw, _ = self.teacher.run(Preprocessor(height, width).batch(images))
        disparity = raw_to_disparity(raw, self.card)
        out = np.zeros((len(images), 1, *self.student_size), dtype=np.float32)
        for i in range(len(images)):
            label = resize_disparity(disparity[i, 0], *self.student_size)
            if not self.metric_teacher:
                valid = label > 0
                label = label / np.float32(np.median(label[valid])) if valid.any() else label
            out[i, 0] = label
        return out

    def _open_cache(self) -> PseudoLabelCache:
        if self.cache is not None:
            return self.cache
        directory = self.options.cache_dir or str(Path(self.cfg.train.out_dir) / "teacher_cache")
        env = current_env()
        rank, distributed, world = env.rank, env.distributed, env.world_size
        kwargs = dict(shape=self.student_size, channels=1, dtype=self.options.cache_dtype, writer=rank)
        fingerprint = self.cache_fingerprint()
        if rank == 0:  # writer 0 owns (creates or invalidates) the folder
            self.cache = PseudoLabelCache(directory, fingerprint, **kwargs)
        if distributed:
            barrier(env)
        if rank != 0:
            self.cache = PseudoLabelCache(directory, fingerprint, **kwargs)
        if self.options.prefill:
            self.prefill(self.cache, rank, world)  # each rank labels its share of the frames
            if distributed:
                barrier(env)
                self.cache.close()  # reopen: index the labels the other ranks wrote
                self.cache = PseudoLabelCache(directory, fingerprint, **kwargs)
        log.info("teacher pseudo-label cache %s", self.cache.describe())
        return self.cache

    def prefill(self, cache: PseudoLabelCache, shard: int = 0, shards: int = 1) -> int:
        """Label the frames of the training split missing from ``cache`` (unaugmented); returns how many.

        With ``shards`` > 1 (DDP ranks) only every ``shards``-th frame from ``shard`` on is labelled here.
        """
        from tqdm import tqdm

        from kd_depth_core.data.dataset import SequenceDataset

        data = self.cfg.data
        frames = SequenceDataset(data.root, split=data.split, offsets=(), size=None)
        todo = [(seq, i, f"{seq.name}/{i:06d}") for seq in frames.sequences for i in range(len(seq))]
        todo = [item for item in todo[shard::shards] if item[2] not in cache]
        step = self.options.teacher_batch
        with tqdm(total=len(todo), desc="teacher pseudo-labels", unit="frame", disable=not todo) as bar:
            for start in range(0, len(todo), step):
                chunk = todo[start:start + step]
                labels = self.teacher_labels([seq.load_left(i) for seq, i, _ in chunk])
                cache.put_many([key for _, _, key in chunk], labels)
                bar.update(len(chunk))
        self.prefilled += len(todo)
        return len(todo)

    @torch.no_grad()
    def pseudo_labels(self, batch: dict[str, Any]) -> tuple[torch.Tensor, float]:
        """Teacher labels (B,1,H,W) at the batch resolution (see ``teacher_labels``) and the cache hit rate."""
        image = batch["image"]
        keys = batch.get("frame_key")
        if keys is None or len(keys) != image.shape[0]:
            raise KeyError("batch['frame_key']: the teacher cache needs one frame key per image "
                           "(data.dataset.SequenceDataset provides it)")
        if tuple(image.shape[-2:]) != self.student_size:
            raise ValueError(f"batch images are {tuple(image.shape[-2:])}, the teacher cache holds labels at "
                             f"data.size {self.student_size}")
        cache = self._open_cache()
        records = cache.get_many(list(keys))
        missing = [i for i, record in enumerate(records) if record is None]
        if missing:
            views = [image[i].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() for i in missing]
            computed = self.teacher_labels(views)
            cache.put_many([keys[i] for i in missing], computed)
            computed = computed.astype(cache.dtype).astype(np.float32)  # what a later hit returns
            for j, i in enumerate(missing):
                records[i] = computed[j]
        labels = torch.from_numpy(np.stack(records)).to(image.device)
        return labels, 1.0 - len(missing) / len(records)

    # ----------------------------------------------------------------------- the task contract
    def dataset_options(self) -> dict[str, Any]:
        options = self.student_terms.dataset_options()
        if self.alignment is not None:
            options.update(self.alignment.dataset_options())
        return options

    def deploy_model(self) -> nn.Module:
        return self.student

    def _full(self, disp: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return disp if disp.shape[-2:] == size else F.interpolate(disp, size=size, mode="bilinear",
                                                                  align_corners=False)

    def forward(self, batch: dict[str, Any], phase: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        opt = self.options
        out = self.student(batch["image"])
        labels, hit_rate = self.pseudo_labels(batch)
        valid = labels > 0
        size = tuple(labels.shape[-2:])
        device_type = batch["image"].device.type
        with torch.autocast(device_type=device_type, enabled=False):  # losses in float32 under AMP
            disps = [d.float() for d in out["disp"]]
            parts: dict[str, torch.Tensor] = {"cache_hit_rate": torch.tensor(hit_rate),
                                              "teacher_calls": torch.tensor(float(self.teacher.calls)),
                                              "teacher_valid": valid.float().mean()}
            teacher_depth = torch.where(valid, 1.0 / labels.clamp_min(1e-6), torch.zeros_like(labels))
            if self.metric_teacher:
                distill = multiscale_distillation_loss(disps, teacher_depth, valid.float(), opt.scale_weights,
                                                       self.min_depth, self.max_depth, opt.distill_loss,
                                                       opt.variance_focus)
                loss = opt.distill_weight * distill.loss
                parts["distill"] = distill.loss.detach()
            else:
                aligned = self.metric_labels(labels, valid, batch) if self.alignment is not None else None
                loss = torch.zeros((), device=labels.device)
                if aligned is not None:
                    metric, aligned_images = aligned
                    teacher_depth = torch.where(metric > 0, 1.0 / metric.clamp_min(1e-6), torch.zeros_like(metric))
                    weight = (metric > 0).float()
                    distill = multiscale_distillation_loss(disps, teacher_depth, weight, opt.scale_weights,
                                                           self.min_depth, self.max_depth, opt.distill_loss,
                                                           opt.variance_focus)
                    loss = loss + opt.distill_weight * distill.loss
                    parts.update(distill=distill.loss.detach(), aligned_fraction=aligned_images.float().mean())
                    valid = valid & ~aligned_images.view(-1, 1, 1, 1)  # the rest falls back to the SSI term
                if aligned is None or bool(valid.any()):
                    ssi = self.ssi_terms(disps, labels, valid, size)
                    loss = loss + opt.ssi_weight * ssi.pop("ssi_loss")
                    parts.update(ssi)
            own, own_parts = student_own_terms(self, opt, batch, disps, out.get("log_sigma"), teacher_depth,
                                               torch.zeros_like(teacher_depth), valid)
            loss = loss + own
            parts.update(own_parts)
        return {"loss": loss, **parts}

    def ssi_terms(self, disps: list[torch.Tensor], labels: torch.Tensor, valid: torch.Tensor,
                  size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Scale-weighted SSI loss of every student scale against the relative labels: {'ssi_loss', logged parts}."""
        opt = self.options
        weights = [float(w) for w in opt.scale_weights]
        terms, data, gradient = [], [], []
        for disp in disps:
            inverse_depth = geometry.disp_to_depth(self._full(disp, size), self.min_depth, self.max_depth)[0]
            term = ssi_loss(inverse_depth, labels, valid, opt.trim, opt.gradient_weight, opt.gradient_scales)
            terms.append(term.loss)
            data.append(term.data.detach())
            gradient.append(term.gradient.detach())
        ssi = sum(w * t for w, t in zip(weights, terms)) / sum(weights)
        return {"ssi_loss": ssi, "ssi": ssi.detach(), "ssi_data": data[0], "ssi_gradient": gradient[0]}

    @torch.no_grad()
    def metric_labels(self, labels: torch.Tensor, valid: torch.Tensor, batch: dict[str, Any]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Relative labels (B,1,H,W) made metric on the batch's SGBM proxy: (inverse depth (B,1,H,W) 1/m, 0 =
        invalid, and (B,) bool: images aligned). Per image, the trimmed least-squares (s, t) with
        s·label + t ≈ d_sgbm / (fx·B) over the pixels where both are valid; s must be > 0."""
        if "proxy_disparity" not in batch:
            raise ValueError("batch has no 'proxy_disparity': build the dataset with task.dataset_options()")
        fx_baseline = (batch["K"][:, 0, 0].float() * batch["baseline"].float()).view(-1, 1, 1, 1)
        proxy = batch["proxy_disparity"].float().to(labels.device)
        both = valid & (proxy > 0)
        target = torch.where(both, proxy / fx_baseline.to(labels.device), torch.zeros_like(proxy))
        scale, shift, _ = ssi_alignment(labels, target, both, self.options.trim)
        metric = scale.view(-1, 1, 1, 1) * labels + shift.view(-1, 1, 1, 1)
        metric = torch.where(valid & (metric >= 1.0 / self.max_depth), metric.clamp(max=1.0 / self.min_depth),
                             torch.zeros_like(metric))
        enough = both.flatten(1).float().mean(1) >= self.options.align_min_fraction
        ok = enough & (scale > 0)
        return torch.where(ok.view(-1, 1, 1, 1), metric, torch.zeros_like(metric)), ok

    @torch.no_grad()
    def predict_depth(self, batch: dict[str, Any]) -> torch.Tensor:
        """The student's full-resolution depth (B,1,H,W): metres when metric, up to scale when relative."""
        disp = self.student(batch["image"])["disp"][0].float()
        return geometry.disp_to_depth(disp, self.min_depth, self.max_depth)[1]

    @torch.no_grad()
    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """First sample: image, student depth, teacher label (inverse-depth colours)."""
        from kd_depth_core.utils.colorize import colorize_depth

        first = {key: value[:1] for key, value in batch.items()}
        depth = self.predict_depth(first)[0, 0].cpu().numpy()
        labels, _ = self.pseudo_labels(first)
        label = labels[0, 0].cpu().numpy()
        teacher = np.where(label > 0, 1.0 / np.maximum(label, 1e-6), 0).astype(np.float32)

        return {"image": first["image"][0].float().cpu(), "depth": to_panel(colorize_depth(depth)),
                "teacher_depth": to_panel(colorize_depth(teacher))}

"""Task 'lumde': pixel-wise, pair-wise and holistic (adversarial) distillation into a light student.

Method 2 of docs (LUMDE, Applied Sciences 2022): a heavy frozen teacher, a light student trained
self-supervised, three distillation terms, and a Transformer discriminator trained adversarially.
Built on the monocular-teacher base method 1 uses (`distill.common.MonoTeacherDistillation`):

- Teacher, pseudo-label cache, photometric term and pose network come from method 1 unchanged:
  a released teacher file (`teacher_path`; one deterministic pass by default, `num_samples: 1`),
  labels cached per frame (`cache_dir`), and the student module = depth student + pose network
  whose photometric loss (Monodepth2, the 'self_supervised' machinery) trains alongside
  distillation (`photometric_weight`). `deploy_model()` is the depth student alone.
- Pixel-wise: method 1's multi-scale log-depth loss against the teacher depth (`distill_weight`,
  `distill_loss`, `scale_weights`, ... as in kd_ms_dpt) with the photometric and uncertainty terms:
  `MonoTeacherDistillation.distillation_terms` on the student's output dict, which the pair-wise and
  adversarial terms reuse, so the student runs once per generator step.
- Pair-wise: the cosine-affinity matrix of the student on a pooled G x G grid against the
  teacher's (`losses.structure`; memory set by the grid, not the image): of log depth
  (`pairwise_source: depth`, centred per image when `pairwise_scale_invariant`) or of encoder
  features (`features`: student feature `pairwise_student_feature` vs the teacher's hooked map
  `pairwise_teacher_feature`, the teacher run once more per step, deterministically).
- Holistic: a discriminator (`discriminator_model`, default `transformer_discriminator`) sees the
  teacher's depth as real and the student's as fake (mean-centred log depth when
  `discriminator_scale_invariant`, with the RGB image when the discriminator uses it).

Phases (one optimizer each, stepped in this order every step by the trainer):
- `generator`: student + pose net. Loss = method 1's loss + pairwise_weight x pair-wise +
  w_adv(step) x generator GAN loss, with w_adv a linear warm-up from 0
  (`losses.adversarial_weight`: 0 before `adversarial_start_step`, `adversarial_weight` after
  `adversarial_warmup_steps` more). The discriminator's parameters are not in this phase.
- `discriminator`: the discriminator only, on the teacher depth vs the student depth of this
  step's generator phase, detached (recomputed without gradients when that phase did not run).
GAN objective `gan_loss`: least-squares ('lsgan') or 'hinge' (`losses.adversarial`).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from kd_depth_core import geometry
from kd_depth_core.config import ConfigError, TrainConfig
from kd_depth_core.distill.common import MonoTeacherDistillation
from kd_depth_core.losses.adversarial import adversarial_weight, discriminator_loss, generator_loss
from kd_depth_core.losses.structure import depth_structure_loss, log_depth_structure, pairwise_affinity_loss
from kd_depth_core.models import discriminator as _discriminator  # noqa: F401  (registers transformer_discriminator)
from kd_depth_core.train.tasks import register_task

BatchKey = tuple[Any, ...]


@register_task("lumde")
class LUMDETask(MonoTeacherDistillation):
    """Pixel-wise + pair-wise + adversarial distillation with a pose net in the student (module docstring)."""

    @dataclass
    class Options(MonoTeacherDistillation.Options):
        num_samples: int = 1  # teacher passes per image (1 = one deterministic pass; >1 needs MC dropout)
        pairwise_weight: float = 1.0  # 0 = no pair-wise term
        pairwise_source: Literal["depth", "features"] = "depth"
        pairwise_grid: int = 16  # G: affinity of G*G cells, a (G^2 x G^2) matrix per image
        pairwise_patch: int = 4  # depth source: each cell's vector is its patch x patch log-depth block
        pairwise_scale_invariant: bool = True  # depth source: centre log depth per image
        pairwise_student_feature: int = -1  # features source: index into the student's encoder features
        pairwise_teacher_feature: int = -1  # features source: index into the teacher's features
        gan_loss: Literal["lsgan", "hinge"] = "lsgan"
        adversarial_weight: float = 0.05  # final weight of the generator's GAN loss; 0 = no adversarial term
        adversarial_start_step: int = 0  # w_adv = 0 before this step
        adversarial_warmup_steps: int = 1000  # then a linear ramp to adversarial_weight over this many steps
        discriminator_model: str = "transformer_discriminator"
        discriminator_kwargs: dict[str, Any] = field(default_factory=dict)
        discriminator_scale_invariant: bool = True  # show the discriminator mean-centred log depth

    phases: ClassVar[list[str]] = ["generator", "discriminator"]
    method = "lumde"

    def __init__(self, cfg: TrainConfig, options: Options | None = None) -> None:
        super().__init__(cfg, options)
        from kd_depth_core.models import create_model

        opt, where = self.options, f"{cfg.source}: task.kwargs"
        self._check_lumde_options(where)
        try:
            self.discriminator = create_model(opt.discriminator_model, **opt.discriminator_kwargs)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}.discriminator_model / discriminator_kwargs: {error}") from error
        if not isinstance(self.discriminator, nn.Module) or not any(p.requires_grad for p in
                                                                    self.discriminator.parameters()):
            raise ConfigError(f"{where}.discriminator_model: {opt.discriminator_model!r} has no trainable parameters")
        self._stash: tuple[BatchKey, torch.Tensor, torch.Tensor] | None = None  # generator -> discriminator phase

    def _check_lumde_options(self, where: str) -> None:
        opt = self.options
        for name in ("pairwise_weight", "adversarial_weight", "adversarial_start_step", "adversarial_warmup_steps"):
            if getattr(opt, name) < 0:
                raise ConfigError(f"{where}.{name}: expected a number >= 0, got {getattr(opt, name)}")
        if opt.pairwise_grid < 1:
            raise ConfigError(f"{where}.pairwise_grid: expected a cell count >= 1, got {opt.pairwise_grid}")
        if opt.pairwise_source == "depth" and opt.pairwise_patch < 2:
            raise ConfigError(f"{where}.pairwise_patch: a depth cell needs at least 2x2 values for a cosine "
                              f"affinity; expected >= 2, got {opt.pairwise_patch}")
        if opt.pairwise_source == "features":  # features are never cached: the teacher runs once more per step
            for name, network, index in (("student", self.student, opt.pairwise_student_feature),
                                         ("teacher", self.teacher.model, opt.pairwise_teacher_feature)):
                count = len(getattr(network, "feature_info", ()))
                if not -count <= index < count:
                    raise ConfigError(f"{where}.pairwise_{name}_feature: the {name} has {count} feature maps; "
                                      f"expected an index in [{-count}, {count - 1}], got {index}")

    # ----------------------------------------------------------------------- phases
    def parameters_for(self, phase: str) -> Iterable[nn.Parameter]:
        """generator: every trainable parameter but the discriminator's; discriminator: only its own."""
        if phase == "discriminator":
            return [p for p in self.discriminator.parameters() if p.requires_grad]
        if phase == "generator":
            own = {id(p) for p in self.discriminator.parameters()}
            return [p for p in self.parameters() if p.requires_grad and id(p) not in own]
        return super().parameters_for(phase)  # raises KeyError naming the phases

    def forward(self, batch: dict[str, Any], phase: str = "generator", step: int = 0) -> dict[str, torch.Tensor]:
        if phase == "generator":
            return self.generator_step(batch, step)
        if phase == "discriminator":
            return self.discriminator_step(batch, step)
        raise KeyError(f"{type(self).__name__}: unknown phase {phase!r}; phases: {', '.join(self.phases)}")

    # ----------------------------------------------------------------------- pieces
    @staticmethod
    def batch_key(batch: dict[str, Any], step: int) -> BatchKey:
        """Identifies one step's batch (the trainer passes the same batch to every phase)."""
        image = batch["image"]
        keys = batch.get("frame_key")
        return (int(step), image.data_ptr(), tuple(image.shape), tuple(keys) if keys is not None else None)

    def depth_from_disp(self, disp: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Sigmoid disparity (B,1,h,w) -> depth (B,1,H,W) metres at `size` (bilinear upsampling first)."""
        if tuple(disp.shape[-2:]) != tuple(size):
            disp = F.interpolate(disp, size=size, mode="bilinear", align_corners=False)
        return geometry.disp_to_depth(disp.float(), self.min_depth, self.max_depth)[1]

    def discriminate(self, depth: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Discriminator scores (B,) of depths (B,1,H,W) metres seen with their images."""
        x = log_depth_structure(depth, self.options.discriminator_scale_invariant)
        return self.discriminator(x, image.float() if getattr(self.discriminator, "use_image", False) else None)

    @torch.no_grad()
    def teacher_features(self, image: torch.Tensor) -> torch.Tensor:
        """The teacher's feature map `pairwise_teacher_feature` for images (B,3,H,W) in [0, 1] (one eval pass)."""
        teacher = self.teacher
        out = teacher.model(teacher.preprocess(image), return_features=True)
        features = out.get("features") if isinstance(out, dict) else None
        if not features:
            raise RuntimeError(f"teacher {teacher.source}: returns no 'features'; use task.kwargs.pairwise_source: "
                               "depth")
        return features[self.options.pairwise_teacher_feature].float()

    # ----------------------------------------------------------------------- generator phase
    def generator_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """Student + pose net: method 1's terms + pair-wise + scheduled adversarial term."""
        opt = self.options
        need_features = opt.pairwise_weight > 0 and opt.pairwise_source == "features"
        image = batch["image"]
        out = self.student_outputs(image, return_features=True) if need_features else self.student_outputs(image)
        loss, parts, teacher_depth, _ = self.distillation_terms(batch, out)
        w_adv = adversarial_weight(step, opt.adversarial_weight, opt.adversarial_start_step,
                                   opt.adversarial_warmup_steps)
        with torch.autocast(device_type=image.device.type, enabled=False):  # losses in float32 under AMP
            student_depth = self.depth_from_disp(out["disp"][0], tuple(teacher_depth.shape[-2:]))
            if opt.pairwise_weight > 0:
                if need_features:
                    student_map = out["features"][opt.pairwise_student_feature].float()
                    pairwise = pairwise_affinity_loss(student_map, self.teacher_features(image), opt.pairwise_grid)
                else:
                    pairwise = depth_structure_loss(student_depth, teacher_depth, opt.pairwise_grid,
                                                    opt.pairwise_patch, opt.pairwise_scale_invariant)
                loss = loss + opt.pairwise_weight * pairwise
                parts["pairwise"] = pairwise.detach()
            if w_adv > 0:
                fake_scores = self.discriminate(student_depth, image)
                adversarial = generator_loss(fake_scores, opt.gan_loss)
                loss = loss + w_adv * adversarial
                parts.update(adversarial=adversarial.detach(), d_fake_score=fake_scores.detach().mean())
        parts["adversarial_weight"] = torch.tensor(w_adv)
        self._stash = (self.batch_key(batch, step), teacher_depth.detach(), student_depth.detach())
        return {"loss": loss, **parts}

    # ----------------------------------------------------------------------- discriminator phase
    def discriminator_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """Discriminator only: teacher depth is real, the (detached) student depth fake."""
        image = batch["image"]
        stash, self._stash = self._stash, None
        if stash is not None and stash[0] == self.batch_key(batch, step):
            _, teacher_depth, student_depth = stash
        else:  # no generator phase on this batch: labels and a gradient-free student pass
            teacher_depth = self.pseudo_labels(batch)[0]
            with torch.no_grad():
                disp = self.student(image)["disp"][0]
            student_depth = self.depth_from_disp(disp, tuple(teacher_depth.shape[-2:]))
        with torch.autocast(device_type=image.device.type, enabled=False):
            both = torch.cat([teacher_depth, student_depth]).detach()
            scores = self.discriminate(both, torch.cat([image, image]))
            real, fake = scores.chunk(2)
            loss = discriminator_loss(real, fake, self.options.gan_loss)
        threshold = 0.5 if self.options.gan_loss == "lsgan" else 0.0
        accuracy = 0.5 * ((real.detach() > threshold).float().mean() + (fake.detach() < threshold).float().mean())
        return {"loss": loss, "d_loss": loss.detach(), "d_real_score": real.detach().mean(),
                "d_fake_score": fake.detach().mean(), "d_accuracy": accuracy}

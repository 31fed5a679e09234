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
  task's part `train.self_supervised.PhotometricSupervision` (pose network, source poses,
  reprojection + smoothness), held through `distill.common.StudentTerms`, with the same option
  names (mode, ssim_weight, ...).
- A student with an uncertainty head (`model.kwargs.uncertainty: true`) learns log sigma from the
  ensemble: Laplacian or Gaussian NLL of r = sqrt(std^2 + (mean - student depth)^2), the RMS
  deviation of the teacher's samples from the student (`losses.ensemble_residual`).
- Mirror augmentation (`mirror`, a probability, 0 = off): the student sees some images mirrored
  left-right and its outputs are mirrored back before every loss, so labels stay cached per frame.
- The student predicts depth in the teacher's range (min/max depth from the teacher metadata) and
  inherits its scale kind: a metric teacher gives a metric student.

`deploy_model()` is the student alone; the teacher is left out of checkpoints (`checkpoint_exclude`).
The teacher, pseudo-labels and losses live in `distill.common.MonoTeacherDistillation` (shared with
'lumde'); this module is the method's forward.
"""
from __future__ import annotations

from typing import Any

import torch

from kd_depth_core.distill.common import (  # noqa: F401  (re-exported: imported from here by other methods)
    MonoTeacherDistillation,
    StudentOptions,
    StudentTerms,
    build_student,
    student_own_terms,
)
from kd_depth_core.train.tasks import register_task


@register_task("kd_ms_dpt")
class KDMSDPTTask(MonoTeacherDistillation):
    """Student distilled from an MC-dropout MS-DPT teacher (see the module docstring)."""

    Options = MonoTeacherDistillation.Options
    method = "kd_ms_dpt"

    def forward(self, batch: dict[str, Any], phase: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        loss, parts, _, _ = self.distillation_terms(batch, self.student_outputs(batch["image"]))
        return {"loss": loss, **parts}

"""GAN objectives for holistic distillation: least-squares and hinge losses, and the weight warm-up.

Scores are the discriminator's raw outputs (no sigmoid), any shape (typically (B,)); each loss is
a scalar mean over them. "real" = teacher outputs, "fake" = student outputs.

- ``lsgan`` (Mao et al. 2017, targets real 1 / fake 0): D = 0.5 E[(D(real) - 1)^2] + 0.5 E[D(fake)^2],
  G = 0.5 E[(D(fake) - 1)^2].
- ``hinge`` (Lim & Ye 2017; Miyato et al. 2018): D = E[relu(1 - D(real))] + E[relu(1 + D(fake))],
  G = -E[D(fake)].
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

GanKind = Literal["lsgan", "hinge"]
GAN_KINDS: tuple[str, ...] = ("lsgan", "hinge")


def _check_scores(name: str, scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor of discriminator scores, got "
                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")


def lsgan_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """0.5 mean((real - 1)^2) + 0.5 mean(fake^2). Scalar; 0 when real = 1 and fake = 0 everywhere."""
    _check_scores("real", real)
    _check_scores("fake", fake)
    return 0.5 * (real - 1).square().mean() + 0.5 * fake.square().mean()


def lsgan_generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """0.5 mean((fake - 1)^2). Scalar; 0 when the discriminator scores the student as real (1)."""
    _check_scores("fake", fake)
    return 0.5 * (fake - 1).square().mean()


def hinge_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - real)) + mean(relu(1 + fake)). Scalar; 0 once real >= 1 and fake <= -1."""
    _check_scores("real", real)
    _check_scores("fake", fake)
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def hinge_generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """-mean(fake). Scalar (unbounded below: the student pushes its scores up)."""
    _check_scores("fake", fake)
    return -fake.mean()


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: GanKind = "lsgan") -> torch.Tensor:
    """The discriminator's loss of GAN objective ``kind`` ('lsgan' or 'hinge')."""
    if kind == "lsgan":
        return lsgan_discriminator_loss(real, fake)
    if kind == "hinge":
        return hinge_discriminator_loss(real, fake)
    raise ValueError(f"kind: expected one of {', '.join(GAN_KINDS)}, got {kind!r}")


def generator_loss(fake: torch.Tensor, kind: GanKind = "lsgan") -> torch.Tensor:
    """The generator's (student's) loss of GAN objective ``kind`` ('lsgan' or 'hinge')."""
    if kind == "lsgan":
        return lsgan_generator_loss(fake)
    if kind == "hinge":
        return hinge_generator_loss(fake)
    raise ValueError(f"kind: expected one of {', '.join(GAN_KINDS)}, got {kind!r}")


def adversarial_weight(step: int, weight: float, start_step: int = 0, warmup_steps: int = 0) -> float:
    """Weight of the generator's adversarial term at optimizer step ``step`` (0-based).

    0 before ``start_step``; then a linear ramp from 0 that reaches ``weight`` after ``warmup_steps``
    steps (weight x (step - start_step) / warmup_steps); ``weight`` from then on (at once when
    ``warmup_steps`` is 0). E.g. weight 0.1, start 100, warm-up 200: step 99 -> 0, 200 -> 0.05, 300 -> 0.1.
    """
    if weight < 0:
        raise ValueError(f"weight: expected a number >= 0, got {weight}")
    if start_step < 0 or warmup_steps < 0:
        raise ValueError(f"start_step, warmup_steps: expected integers >= 0, got {start_step}, {warmup_steps}")
    if step < start_step:
        return 0.0
    if warmup_steps == 0:
        return float(weight)
    return float(weight) * min((step - start_step) / warmup_steps, 1.0)

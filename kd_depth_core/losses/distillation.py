"""Depth distillation terms: confidence weights, the multi-scale log-depth loss, uncertainty NLLs.

Small pure functions on tensors. Depths are metres, (B,1,H,W); weights and masks are (B,1,H,W)
(a bool mask is a 0/1 weight). Distillation works in log-depth space, e = log(student) -
log(teacher): a relative error, so near and far pixels count alike and a metric teacher's scale
is kept (Eigen's scale-invariant loss with ``variance_focus`` < 1 keeps part of the scale term).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from kd_depth_core import geometry

DEFAULT_SCALE_WEIGHTS: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
"""Per-scale weights of the multi-scale distillation loss for scales 0..3 (full resolution first).

The intended 1, 1/2, 1/4, 1/8 — real numbers. (The method's public code wrote them with integer
division, `1//4 == 0`, so only the full-resolution term trained.)"""

DistillKind = Literal["silog", "l1_log"]
ConfidenceKind = Literal["inverse", "exp", "none"]


def _check_map(name: str, tensor: torch.Tensor, like: torch.Tensor | None = None) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4 or tensor.shape[1] != 1:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name}: expected a (B,1,H,W) tensor, got {shape}")
    if like is not None and tensor.shape != like.shape:
        raise ValueError(f"{name}: expected shape {tuple(like.shape)}, got {tuple(tensor.shape)}")


def confidence_weights(mean: torch.Tensor, std: torch.Tensor, kind: ConfidenceKind = "inverse",
                       tau: float = 0.1) -> torch.Tensor:
    """Per-pixel weight (B,1,H,W) in (0, 1] from an ensemble's mean and std depth (metres).

    Uses the relative spread c = std / mean (dimensionless, so far pixels are not penalised for
    their larger absolute spread): ``inverse`` w = 1 / (1 + c / tau); ``exp`` w = exp(-c / tau);
    ``none`` w = 1. A certain pixel (c = 0) gets 1; the weight falls as the spread grows
    (``inverse`` with c = tau gives 0.5). Returned detached.
    """
    _check_map("mean", mean)
    _check_map("std", std, mean)
    if not tau > 0:
        raise ValueError(f"tau: expected a positive relative spread, got {tau}")
    with torch.no_grad():
        if kind == "none":
            return torch.ones_like(mean)
        spread = std.clamp_min(0) / mean.clamp_min(1e-6)
        if kind == "inverse":
            return 1.0 / (1.0 + spread / tau)
        if kind == "exp":
            return torch.exp(-spread / tau)
    raise ValueError(f"kind: expected 'inverse', 'exp' or 'none', got {kind!r}")


def log_depth_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                   kind: DistillKind = "silog", variance_focus: float = 0.85) -> torch.Tensor:
    """Weighted log-depth error between depths (B,1,H,W) in metres. Scalar, 0 when pred == target.

    e = log pred - log target over the pixels, each counted with ``weight`` (None = 1; 0 = left out):
    ``silog``: per image, mean_w(e^2) - variance_focus * mean_w(e)^2, then the mean over the images
    that have any weight (Eigen et al. 2014: the scale-invariant term is per image, so opposite
    scale errors of two images do not cancel; without the square root so the gradient stays finite
    at a perfect match; variance_focus = 1 is fully scale-invariant, 0 is the mean squared log
    error); ``l1_log``: mean_w(|e|) over all pixels of the batch.
    Weighted means are sum(w x) / sum(w); with no weight anywhere the loss is 0 (still a graph).
    """
    _check_map("pred", pred)
    _check_map("target", target, pred)
    if weight is None:
        weight = torch.ones_like(pred)
    _check_map("weight", weight, pred)
    if not 0 <= variance_focus <= 1:
        raise ValueError(f"variance_focus: expected a number in [0, 1], got {variance_focus}")
    weight = weight.to(pred.dtype)
    error = torch.log(pred.clamp_min(1e-6)) - torch.log(target.clamp_min(1e-6))
    if kind == "silog":
        dims = tuple(range(1, error.ndim))
        per_image_weight = weight.sum(dims)  # (B,)
        total = per_image_weight.clamp_min(1e-12)
        mean_sq = (weight * error * error).sum(dims) / total
        mean = (weight * error).sum(dims) / total
        per_image = (mean_sq - variance_focus * mean * mean).clamp_min(0)
        counted = (per_image_weight > 0).to(pred.dtype)
        return (per_image * counted).sum() / counted.sum().clamp_min(1)
    if kind == "l1_log":
        return (weight * error.abs()).sum() / weight.sum().clamp_min(1e-12)
    raise ValueError(f"kind: expected 'silog' or 'l1_log', got {kind!r}")


class MultiScaleDistillation(NamedTuple):
    """Result of :func:`multiscale_distillation_loss`."""

    loss: torch.Tensor  # scalar: sum_s w_s L_s / sum_s w_s
    per_scale: list[torch.Tensor]  # scalar L_s per scale


def multiscale_distillation_loss(disps: Sequence[torch.Tensor], target_depth: torch.Tensor,
                                 weight: torch.Tensor | None = None,
                                 scale_weights: Sequence[float] = DEFAULT_SCALE_WEIGHTS,
                                 min_depth: float = 0.1, max_depth: float = 100.0, kind: DistillKind = "silog",
                                 variance_focus: float = 0.85) -> MultiScaleDistillation:
    """Distil a teacher depth into every output scale of a student, computed at full resolution.

    disps: the student's sigmoid disparities, scale s of shape (B,1,H/2^s,W/2^s); each is upsampled
    (bilinear) to the target's (H,W) and turned into depth with ``geometry.disp_to_depth(min_depth,
    max_depth)`` (as the photometric loss does). target_depth (B,1,H,W) metres (the ensemble mean);
    weight (B,1,H,W) per-pixel confidence x validity (None = 1). Loss = sum_s w_s L_s / sum_s w_s
    with L_s = :func:`log_depth_loss`, w_s = ``scale_weights[s]`` (real numbers >= 0, not all 0).
    """
    if not disps:
        raise ValueError("disps: expected a non-empty list of (B,1,h,w) disparities")
    if len(scale_weights) != len(disps):
        raise ValueError(f"scale_weights: expected {len(disps)} weights (one per output scale), "
                         f"got {len(scale_weights)}: {list(scale_weights)}")
    scale_weights = [float(w) for w in scale_weights]
    if any(not w >= 0 for w in scale_weights) or sum(scale_weights) <= 0:
        raise ValueError(f"scale_weights: expected numbers >= 0 with a positive sum, got {scale_weights}")
    _check_map("target_depth", target_depth)
    height, width = target_depth.shape[-2:]
    per_scale = []
    for scale, disp in enumerate(disps):
        _check_map(f"disps[{scale}]", disp)
        if disp.shape[-2:] != (height, width):
            disp = F.interpolate(disp, size=(height, width), mode="bilinear", align_corners=False)
        _, depth = geometry.disp_to_depth(disp, min_depth, max_depth)
        per_scale.append(log_depth_loss(depth, target_depth, weight, kind, variance_focus))
    weights = torch.tensor(scale_weights, dtype=per_scale[0].dtype, device=per_scale[0].device)
    loss = (torch.stack(per_scale) * weights).sum() / weights.sum()
    return MultiScaleDistillation(loss, per_scale)


def ensemble_residual(student_depth: torch.Tensor, teacher_mean: torch.Tensor,
                      teacher_std: torch.Tensor) -> torch.Tensor:
    """RMS deviation (B,1,H,W) metres of the teacher's MC samples from the student depth, detached.

    For samples x with mean m and std s: sqrt(E[(x - d)^2]) = sqrt(s^2 + (m - d)^2). It is the
    depth std the student's uncertainty head should predict: the teacher's own spread plus the
    student's remaining disagreement with the teacher.
    """
    _check_map("student_depth", student_depth)
    _check_map("teacher_mean", teacher_mean, student_depth)
    _check_map("teacher_std", teacher_std, student_depth)
    with torch.no_grad():
        return torch.sqrt(teacher_std.square() + (teacher_mean - student_depth).square())


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return values.mean()
    _check_map("weight", weight, values)
    weight = weight.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1e-12)


def laplacian_nll(residual: torch.Tensor, log_sigma: torch.Tensor, weight: torch.Tensor | None = None,
                  floor: float = 1e-3) -> torch.Tensor:
    """Laplacian NLL r / sigma + log sigma (constant log 2 dropped), minimised at sigma = r. Scalar.

    residual (B,1,H,W) >= 0 metres (e.g. :func:`ensemble_residual`), floored at ``floor`` so the
    minimiser stays > 0; log_sigma (B,1,H,W) natural log of the predicted depth std (metres);
    weight (B,1,H,W) or None.
    """
    _check_map("log_sigma", log_sigma)
    _check_map("residual", residual, log_sigma)
    r = residual.clamp_min(floor)
    return _weighted_mean(r * torch.exp(-log_sigma) + log_sigma, weight)


def gaussian_nll(residual: torch.Tensor, log_sigma: torch.Tensor, weight: torch.Tensor | None = None,
                 floor: float = 1e-3) -> torch.Tensor:
    """Gaussian NLL r^2 / (2 sigma^2) + log sigma (constant dropped), minimised at sigma = r. Scalar.

    Same arguments as :func:`laplacian_nll`.
    """
    _check_map("log_sigma", log_sigma)
    _check_map("residual", residual, log_sigma)
    r = residual.clamp_min(floor)
    return _weighted_mean(0.5 * (r * torch.exp(-log_sigma)).square() + log_sigma, weight)

"""ADU-Depth distillation terms: teacher attention, attention-weighted feature loss, focal depth loss,
inverse-variance uncertainty weights.

Small pure functions on tensors. Feature maps are (B,C,h,w); depths, sigmas, weights and masks
are (B,1,H,W) (depth and sigma in metres; a bool mask is a 0/1 weight). Weighted means are
sum(w x) / sum(w) (0 when no weight anywhere, still a graph), as in `losses.distillation`.
The student's uncertainty NLL is method 1's (`losses.distillation.laplacian_nll` / `gaussian_nll`
of `ensemble_residual`); it is not repeated here.
"""
from __future__ import annotations

import torch


def _check_features(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name}: expected a (B,C,h,w) feature map, got {shape}")


def _check_map(name: str, tensor: torch.Tensor, batch_size: int | None = None,
               size: tuple[int, ...] | None = None) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4 or tensor.shape[1] != 1:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name}: expected a (B,1,H,W) tensor, got {shape}")
    if batch_size is not None and (tensor.shape[0] != batch_size or tuple(tensor.shape[-2:]) != tuple(size)):
        raise ValueError(f"{name}: expected shape ({batch_size}, 1, {size[0]}, {size[1]}), got {tuple(tensor.shape)}")


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return values.mean()
    weight = weight.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1e-12)


def spatial_attention(features: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Where a (teacher) feature map is active: (B,1,h,w), mean 1 over each image's positions, detached.

    a = mean over channels of |f|, divided by its mean over positions (dimensionless, so every
    stage's attention has the same sharpness whatever its feature magnitudes); attention =
    h*w * softmax over positions of a / temperature. A map with equal activation everywhere gives 1
    everywhere; a smaller temperature concentrates the weight on the most active positions.
    """
    _check_features("features", features)
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature}")
    with torch.no_grad():
        batch, _, height, width = features.shape
        activation = features.float().abs().mean(1).reshape(batch, -1)
        activation = activation / activation.mean(1, keepdim=True).clamp_min(1e-12)
        attention = torch.softmax(activation / temperature, dim=1) * (height * width)
        return attention.reshape(batch, 1, height, width)


def standardize_features(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B,C,h,w) -> each channel of each image shifted to mean 0 and scaled to std 1 over positions.

    Puts every teacher stage on one scale, so the per-stage feature losses are comparable.
    """
    _check_features("features", features)
    mean = features.mean((2, 3), keepdim=True)
    std = features.std((2, 3), keepdim=True, unbiased=False)
    return (features - mean) / (std + eps)


def attention_feature_loss(student: torch.Tensor, teacher: torch.Tensor,
                           weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean over positions of the mean-over-channels squared difference. Scalar, 0 when equal.

    student, teacher (B,C,h,w) (the student's already adapted to the teacher's shape); weight
    (B,1,h,w) per position (e.g. `spatial_attention(teacher)` x uncertainty weights) or None = 1.
    """
    _check_features("student", student)
    _check_features("teacher", teacher)
    if student.shape != teacher.shape:
        raise ValueError(f"student features {tuple(student.shape)} differ from the teacher's {tuple(teacher.shape)}: "
                         "adapt them first (distill.adapters.FeatureAdapters)")
    if weight is not None:
        _check_map("weight", weight, teacher.shape[0], tuple(teacher.shape[-2:]))
    error = (student - teacher).square().mean(1, keepdim=True)
    return _weighted_mean(error, weight)


def focal_weight(error: torch.Tensor, tau: float = 0.1, gamma: float = 2.0, floor: float = 0.0) -> torch.Tensor:
    """Focal modulation floor + (1 - exp(-error / tau))^gamma of a non-negative error: floor at 0, rising to
    floor + 1.

    Monotonically non-decreasing in the error: with ``floor = 0`` pixels with error << tau are nearly ignored
    (their gradient vanishes as error^(gamma+1)), pixels with error >> tau count fully; ``floor = 1`` keeps
    every pixel at least at the plain L1 weight and hard ones at up to twice it. ``gamma = 0`` gives a
    constant (no focusing).
    """
    if not tau > 0:
        raise ValueError(f"tau: expected a positive error scale, got {tau}")
    if not gamma >= 0:
        raise ValueError(f"gamma: expected a number >= 0, got {gamma}")
    if not floor >= 0:
        raise ValueError(f"floor: expected a number >= 0, got {floor}")
    return floor + (1.0 - torch.exp(-error.clamp_min(0) / tau)).pow(gamma)


def focal_depth_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                     tau: float = 0.1, gamma: float = 2.0, floor: float = 0.0) -> torch.Tensor:
    """Focal-depth response distillation between depths (B,1,H,W) in metres. Scalar, 0 when pred == target.

    e = |log pred - log target| (relative error, dimensionless); per pixel focal_weight(e) * e,
    monotonic in e, so hard pixels (large teacher-student discrepancy) dominate; weighted mean
    with ``weight`` (B,1,H,W) (None = 1; 0 = left out). The focal factor is not detached: it is
    part of the loss, whose gradient also grows with the error.
    """
    _check_map("pred", pred)
    _check_map("target", target, pred.shape[0], tuple(pred.shape[-2:]))
    if weight is not None:
        _check_map("weight", weight, pred.shape[0], tuple(pred.shape[-2:]))
    error = (torch.log(pred.clamp_min(1e-6)) - torch.log(target.clamp_min(1e-6))).abs()
    return _weighted_mean(focal_weight(error, tau, gamma, floor) * error, weight)


def inverse_variance_weights(sigma: torch.Tensor, depth: torch.Tensor, eps: float = 0.01,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel weight 1 / ((sigma / depth)^2 + eps), scaled to mean 1 over the masked pixels; detached.

    sigma (B,1,H,W) depth std in metres (e.g. the teacher's exp(log_sigma)); depth (B,1,H,W) metres:
    the relative std sigma/depth is used, so far pixels are not punished for their larger absolute
    spread. eps (> 0) is the relative variance at which the weight has halved from its maximum
    (eps = 0.01: sigma = 10 % of depth). Uncertain pixels weigh less; with sigma = 0 everywhere every
    pixel gets 1. mask (B,1,H,W): pixels outside get 0 and do not enter the mean.
    """
    _check_map("depth", depth)
    _check_map("sigma", sigma, depth.shape[0], tuple(depth.shape[-2:]))
    if mask is not None:
        _check_map("mask", mask, depth.shape[0], tuple(depth.shape[-2:]))
    if not eps > 0:
        raise ValueError(f"eps: expected a positive relative variance, got {eps}")
    with torch.no_grad():
        relative = sigma.float().clamp_min(0) / depth.float().clamp_min(1e-6)
        weight = 1.0 / (relative.square() + eps)
        valid = torch.ones_like(weight) if mask is None else mask.to(weight.dtype)
        weight = weight * valid
        return weight * (valid.sum().clamp_min(1.0) / weight.sum().clamp_min(1e-12))

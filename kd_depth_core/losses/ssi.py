"""Scale-and-shift-invariant (SSI) distillation in disparity space (MiDaS, Ranftl et al. TPAMI 2020).

A foundation teacher such as Depth Anything gives *affine-invariant* relative disparity: right up
to an unknown positive scale and shift per image. The student is compared with it after the
best affine alignment, so only the shape of the disparity map is distilled; the scale comes from
elsewhere (the photometric loss with a stereo baseline).

Per image, over the valid pixels (mask):

1. least squares, closed form: (s, t) = argmin Σ (s·p + t − q)², p = student disparity, q = teacher;
2. trimming: the ``trim`` fraction of pixels with the largest |s·p + t − q| is dropped and (s, t)
   is solved again on the kept pixels, so outliers (sky, reflections, teacher failures) neither
   bias the alignment nor the loss;
3. a non-positive scale (a student whose disparity is inverted relative to the teacher) is replaced
   by the median / mean-absolute-deviation alignment, which is always positive, so such a student
   is penalised instead of matched by a negative scale;
4. loss = mean over the kept pixels of |s·p + t − q|, divided by the teacher's spread (its mean absolute
   deviation from its median over the valid pixels), so the number is dimensionless and the same for
   any positive affine change of the teacher; plus ``gradient_weight`` × the multi-scale
   gradient-matching term of the aligned residual (MiDaS).

All maps are (B,1,H,W) float tensors; a pixel counts when its mask is True (None = every pixel).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DEGENERATE_EPS = 1e-10


@dataclass
class SSILoss:
    """``loss`` scalar (data + weighted gradient term, mean over images with valid pixels); ``data`` and
    ``gradient`` scalars; ``scale``/``shift`` (B,) of the final alignment; ``kept`` (B,1,H,W) bool."""

    loss: torch.Tensor
    data: torch.Tensor
    gradient: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    kept: torch.Tensor


def _check(name: str, tensor: torch.Tensor, like: torch.Tensor | None = None) -> None:
    if tensor.ndim != 4 or tensor.shape[1] != 1:
        raise ValueError(f"{name}: expected a (B,1,H,W) map, got {tuple(tensor.shape)}")
    if like is not None and tensor.shape != like.shape:
        raise ValueError(f"{name}: expected shape {tuple(like.shape)}, got {tuple(tensor.shape)}")


def _mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    _check("mask", mask, like)
    return mask.bool()


def align_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form least squares per image: (scale, shift), each (B,), minimising Σ_mask (s·pred + t − target)².

    Normal equations [[Σp², Σp], [Σp, n]]·[s, t] = [Σp·q, Σq]. Degenerate images (fewer than two pixels
    or a constant ``pred``) get s = 0 and t = mean of the target (0 with no pixel). Differentiable.
    """
    _check("pred", pred)
    _check("target", target, pred)
    weight = _mask(mask, pred).to(pred.dtype)
    dims = (1, 2, 3)
    a00 = (weight * pred * pred).sum(dims)
    a01 = (weight * pred).sum(dims)
    a11 = weight.sum(dims)
    b0 = (weight * pred * target).sum(dims)
    b1 = (weight * target).sum(dims)
    det = a00 * a11 - a01 * a01
    ok = det > DEGENERATE_EPS * (a00 * a11).clamp_min(DEGENERATE_EPS)
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.zeros_like(det))
    shift = torch.where(ok, (a00 * b1 - a01 * b0) / safe, b1 / a11.clamp_min(1.0))
    return scale, shift


def _masked_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image median (B,) of (B,N) values over a (B,N) bool mask (0 where the mask is empty)."""
    filled = torch.where(mask, values, torch.full_like(values, float("inf")))
    ordered = filled.sort(dim=1).values
    count = mask.sum(1)
    index = ((count - 1).clamp_min(0) // 2).unsqueeze(1)
    median = ordered.gather(1, index).squeeze(1)
    return torch.where(count > 0, median, torch.zeros_like(median))


def robust_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Median / mean-absolute-deviation alignment per image: s = MAD(q) / MAD(p) >= 0, t = med(q) − s·med(p). (B,)."""
    _check("pred", pred)
    _check("target", target, pred)
    valid = _mask(mask, pred).flatten(1)
    p, q = pred.flatten(1), target.flatten(1)
    count = valid.sum(1).clamp_min(1).to(pred.dtype)
    med_p, med_q = _masked_median(p, valid), _masked_median(q, valid)
    mad_p = (torch.where(valid, (p - med_p[:, None]).abs(), torch.zeros_like(p))).sum(1) / count
    mad_q = (torch.where(valid, (q - med_q[:, None]).abs(), torch.zeros_like(q))).sum(1) / count
    scale = mad_q / mad_p.clamp_min(1e-12)
    return scale, med_q - scale * med_p


def trimmed_mask(residual: torch.Tensor, mask: torch.Tensor, trim: float) -> torch.Tensor:
    """(B,1,H,W) bool: per image the valid pixels whose |residual| is among the smallest (1 − trim) fraction."""
    if not 0 <= trim < 1:
        raise ValueError(f"trim: expected a fraction in [0, 1), got {trim}")
    valid = mask.flatten(1)
    if trim == 0:
        return mask.clone()
    magnitude = torch.where(valid, residual.detach().abs().flatten(1), torch.full_like(valid, float("inf"),
                                                                                      dtype=residual.dtype))
    ordered = magnitude.sort(dim=1).values
    keep = torch.floor(valid.sum(1).to(torch.float64) * (1.0 - trim)).long().clamp_min(1)
    threshold = ordered.gather(1, (keep - 1).unsqueeze(1))
    kept = valid & (magnitude <= threshold) & (valid.sum(1, keepdim=True) > 0)
    return kept.view_as(mask)


def ssi_alignment(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, trim: float = 0.2
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trimmed alignment of ``pred`` to ``target`` (steps 1–3 of the module docstring): (scale (B,), shift (B,),
    kept (B,1,H,W) bool)."""
    valid = _mask(mask, pred)
    scale, shift = align_scale_shift(pred, target, valid)
    kept = valid
    if trim > 0:
        residual = scale.view(-1, 1, 1, 1) * pred + shift.view(-1, 1, 1, 1) - target
        kept = trimmed_mask(residual, valid, trim)
        scale, shift = align_scale_shift(pred, target, kept)
    robust_s, robust_t = robust_scale_shift(pred, target, kept)
    positive = scale > 0
    return torch.where(positive, scale, robust_s), torch.where(positive, shift, robust_t), kept


def gradient_matching(residual: torch.Tensor, mask: torch.Tensor | None = None, scales: int = 4) -> torch.Tensor:
    """Multi-scale gradient matching (MiDaS) of a residual map (B,1,H,W): per image (B,).

    At scale k the residual and mask are subsampled by 2^k; the term is Σ (|∂x R| + |∂y R|) over pixel pairs
    both valid, divided by the number of valid pixels at that scale, then averaged over the scales.
    """
    _check("residual", residual)
    valid = _mask(mask, residual).to(residual.dtype)
    total = torch.zeros(residual.shape[0], dtype=residual.dtype, device=residual.device)
    used = 0
    for k in range(int(scales)):
        step = 2 ** k
        r, m = residual[..., ::step, ::step], valid[..., ::step, ::step]
        if r.shape[-1] < 2 or r.shape[-2] < 2:
            break
        gx = (r[..., 1:] - r[..., :-1]).abs() * m[..., 1:] * m[..., :-1]
        gy = (r[..., 1:, :] - r[..., :-1, :]).abs() * m[..., 1:, :] * m[..., :-1, :]
        total = total + (gx.sum((1, 2, 3)) + gy.sum((1, 2, 3))) / m.sum((1, 2, 3)).clamp_min(1.0)
        used += 1
    return total / max(used, 1)


def teacher_spread(target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image mean absolute deviation of ``target`` from its median over the mask, (B,), floored at 1e-12."""
    valid = _mask(mask, target).flatten(1)
    q = target.flatten(1)
    median = _masked_median(q, valid)
    deviation = torch.where(valid, (q - median[:, None]).abs(), torch.zeros_like(q)).sum(1)
    return (deviation / valid.sum(1).clamp_min(1).to(q.dtype)).clamp_min(1e-12)


def ssi_loss(student_disparity: torch.Tensor, teacher_disparity: torch.Tensor, mask: torch.Tensor | None = None,
             trim: float = 0.2, gradient_weight: float = 0.0, gradient_scales: int = 4) -> SSILoss:
    """Scale-and-shift-invariant loss of a student disparity against a teacher disparity (module docstring).

    student_disparity (B,1,H,W): any positive-affine function of inverse depth (e.g. 1/depth in 1/m);
    teacher_disparity (B,1,H,W): the teacher's relative disparity (any units); mask (B,1,H,W) valid pixels.
    0 exactly when, on the kept pixels, the student equals a·teacher + b with a > 0 (and the gradient term
    then vanishes too); images without valid pixels are left out of the mean.
    """
    _check("student_disparity", student_disparity)
    _check("teacher_disparity", teacher_disparity, student_disparity)
    if gradient_weight < 0:
        raise ValueError(f"gradient_weight: expected a number >= 0, got {gradient_weight}")
    valid = _mask(mask, student_disparity)
    scale, shift, kept = ssi_alignment(student_disparity, teacher_disparity, valid, trim)
    residual = scale.view(-1, 1, 1, 1) * student_disparity + shift.view(-1, 1, 1, 1) - teacher_disparity
    spread = teacher_spread(teacher_disparity, valid)
    weight = kept.to(residual.dtype)
    data = (residual.abs() * weight).sum((1, 2, 3)) / weight.sum((1, 2, 3)).clamp_min(1.0) / spread
    gradient = gradient_matching(residual, kept, gradient_scales) / spread if gradient_weight > 0 \
        else torch.zeros_like(data)
    counted = (valid.flatten(1).sum(1) > 0).to(residual.dtype)
    denominator = counted.sum().clamp_min(1.0)
    data_mean = (data * counted).sum() / denominator
    gradient_mean = (gradient * counted).sum() / denominator
    return SSILoss(data_mean + gradient_weight * gradient_mean, data_mean, gradient_mean, scale, shift, kept)

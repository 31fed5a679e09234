"""Cross-task (segmentation) terms: masked cross-entropy and pixel accuracy against label maps, and the
per-pixel gradient guard that keeps a cross-task term from working against the depth network's own loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_IGNORE_INDEX = 255


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 4:
        raise ValueError(f"logits: expected shape (B,K,H,W), got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"labels: expected shape (B,H,W) = {(logits.shape[0], *logits.shape[2:])} matching the "
                         f"logits, got {tuple(labels.shape)}")


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = DEFAULT_IGNORE_INDEX,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy (nats) over pixels whose label is not `ignore_index`. Scalar.

    logits (B,K,H,W); labels (B,H,W) int64 in 0..K-1 or `ignore_index`; weight (K,) per-class
    weights (the mean is then weighted). No labelled pixel gives 0 (still connected to the graph),
    not NaN.
    """
    _check(logits, labels)
    per_pixel = F.cross_entropy(logits.float(), labels.long(), weight=weight, ignore_index=ignore_index,
                                reduction="none")
    valid = labels != ignore_index
    if weight is None:
        norm = valid.sum().clamp(min=1).to(per_pixel.dtype)
    else:
        norm = weight.to(per_pixel.dtype)[labels.clamp(0, len(weight) - 1)][valid].sum().clamp(min=1e-12)
    return per_pixel.sum() / norm


@torch.no_grad()
def pixel_accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = DEFAULT_IGNORE_INDEX
                   ) -> torch.Tensor:
    """Fraction of labelled pixels whose argmax over K equals the label (scalar; NaN without labels)."""
    _check(logits, labels)
    valid = labels != ignore_index
    correct = (logits.argmax(1) == labels) & valid
    return correct.sum().float() / valid.sum().float()


class _AgreeingGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(reference)
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        (reference,) = ctx.saved_tensors
        return grad * (grad * reference >= 0).to(grad.dtype), None


def agreeing_gradient(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`value` unchanged; in the backward pass only the gradient elements whose sign agrees with
    `reference` (same shape, e.g. the main loss's gradient at `value`) or where either is 0 pass,
    the rest become 0: per-element gradient surgery (PCGrad, Yu et al. 2020, on a scalar per pixel)."""
    if reference.shape != value.shape:
        raise ValueError(f"reference: expected the shape of value {tuple(value.shape)}, got {tuple(reference.shape)}")
    return _AgreeingGradient.apply(value, reference.detach())

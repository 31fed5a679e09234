"""The scale-and-shift-invariant distillation loss (losses/ssi.py), with values worked out by hand."""
from __future__ import annotations

import pytest
import torch

from kd_depth_core.losses.ssi import (
    align_scale_shift,
    gradient_matching,
    robust_scale_shift,
    ssi_alignment,
    ssi_loss,
    trimmed_mask,
)


def _maps(seed: int = 0, shape=(2, 1, 12, 16)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1


def test_alignment_matches_the_closed_form_on_a_hand_made_example():
    # p = 0, 1, 2, 3; q = 1, 3, 4, 8. Normal equations: [[14, 6], [6, 4]] [s, t] = [35, 16]
    # -> det = 20, s = (4*35 - 6*16) / 20 = 2.2, t = (14*16 - 6*35) / 20 = 0.7
    p = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64).view(1, 1, 2, 2)
    q = torch.tensor([1.0, 3.0, 4.0, 8.0], dtype=torch.float64).view(1, 1, 2, 2)
    scale, shift = align_scale_shift(p, q)
    assert scale.item() == pytest.approx(2.2) and shift.item() == pytest.approx(0.7)
    # the same as numpy's least squares
    A = torch.stack([p.flatten(), torch.ones(4, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(A, q.flatten()[:, None]).solution.flatten()
    assert torch.allclose(torch.stack([scale[0], shift[0]]), solution)
    # a mask leaves pixels out: the first three give s = 1.5, t = 1 + 1/6 ... solve [[5,3],[3,3]] [s,t] = [11, 8]
    mask = torch.tensor([True, True, True, False]).view(1, 1, 2, 2)
    scale, shift = align_scale_shift(p, q, mask)
    assert scale.item() == pytest.approx(1.5) and shift.item() == pytest.approx(7 / 6)


def test_degenerate_images_fall_back_to_the_mean():
    p = torch.full((1, 1, 3, 3), 2.0, dtype=torch.float64)
    q = torch.arange(9, dtype=torch.float64).view(1, 1, 3, 3)
    scale, shift = align_scale_shift(p, q)
    assert scale.item() == 0.0 and shift.item() == pytest.approx(4.0)


@pytest.mark.parametrize("a, b", [(1.0, 0.0), (3.5, 2.0), (0.01, -0.3), (250.0, 7.0)])
def test_loss_is_zero_for_any_positive_scale_and_shift(a, b):
    teacher = _maps(1)
    result = ssi_loss(a * teacher + b, teacher, gradient_weight=0.5)
    assert result.loss.item() == pytest.approx(0.0, abs=1e-9)
    assert torch.allclose(result.scale, torch.full((2,), 1 / a, dtype=torch.float64))
    # invariant to the teacher's own affine change too (the loss is divided by the teacher's spread)
    student = _maps(2)
    assert ssi_loss(student, teacher).loss.item() == pytest.approx(ssi_loss(student, 4 * teacher + 1).loss.item())


def test_loss_is_positive_otherwise_and_an_inverted_student_is_not_matched():
    teacher = _maps(3)
    assert ssi_loss(_maps(4), teacher).loss.item() > 0.1
    assert ssi_loss(teacher ** 2, teacher).loss.item() > 1e-3  # monotone but not affine
    inverted = ssi_loss(-2.0 * teacher + 5.0, teacher)  # a negative scale would fit exactly
    assert (inverted.scale > 0).all() and inverted.loss.item() > 0.5


def test_trimming_ignores_planted_outliers():
    teacher = _maps(5, (1, 1, 20, 20))
    student = 2.0 * teacher + 1.0
    corrupted = teacher.clone()
    flat = corrupted.view(-1)
    outliers = torch.randperm(400, generator=torch.Generator().manual_seed(0))[:40]  # 10 %
    flat[outliers] += 5.0  # large enough to rank last, small enough that the first fit keeps s > 0
    trimmed = ssi_loss(student, corrupted, trim=0.2)
    assert trimmed.loss.item() == pytest.approx(0.0, abs=1e-9)
    assert not trimmed.kept.view(-1)[outliers].any()  # every outlier dropped
    assert trimmed.scale.item() == pytest.approx(0.5) and trimmed.shift.item() == pytest.approx(-0.5)
    assert ssi_loss(student, corrupted, trim=0.0).loss.item() > 0.05  # without trimming they bias the fit


def test_trimmed_mask_keeps_the_smallest_fraction_of_valid_pixels():
    residual = torch.arange(10, dtype=torch.float64).view(1, 1, 2, 5)
    valid = torch.ones_like(residual, dtype=torch.bool)
    valid[0, 0, 0, 0] = False  # 9 valid pixels: keep floor(9 * 0.7) = 6 smallest of 1..9
    kept = trimmed_mask(residual, valid, 0.3)
    assert kept.view(-1).tolist() == [False] + [True] * 6 + [False] * 3


def test_gradients_flow_and_masked_pixels_do_not_count():
    teacher = _maps(6)
    student = _maps(7).requires_grad_()
    mask = torch.ones_like(teacher, dtype=torch.bool)
    mask[..., :, :4] = False
    ssi_loss(student, teacher, mask, gradient_weight=1.0).loss.backward()
    assert student.grad.abs().sum() > 0
    assert student.grad[..., :, :4].abs().max() == 0
    changed = teacher.clone()
    changed[..., :, :4] = 1e3  # what the teacher says under the mask does not matter
    assert ssi_loss(student.detach(), changed, mask).loss.item() == pytest.approx(
        ssi_loss(student.detach(), teacher, mask).loss.item())


def test_gradient_matching_by_hand():
    # a residual ramp 0, 1, 2 along x: |dx| = 1 at 2 pairs per row, 0 along y; 3x3 valid pixels at scale 0
    residual = torch.tensor([[0.0, 1.0, 2.0]] * 3, dtype=torch.float64).view(1, 1, 3, 3)
    assert gradient_matching(residual, scales=1).item() == pytest.approx(6 / 9)
    assert gradient_matching(residual + 5.0, scales=1).item() == pytest.approx(6 / 9)  # shift-free


def test_robust_alignment_is_positive_and_exact_for_affine_maps():
    teacher = _maps(8)
    scale, shift = robust_scale_shift(3 * teacher + 2, teacher)
    assert torch.allclose(scale, torch.full((2,), 1 / 3, dtype=torch.float64))
    scale, shift, kept = ssi_alignment(teacher, teacher, trim=0.0)
    assert torch.allclose(scale, torch.ones(2, dtype=torch.float64)) and kept.all()

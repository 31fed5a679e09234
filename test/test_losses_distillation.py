"""Distillation loss terms: hand-worked values, confidence weighting, real per-scale weights, NLLs."""
from __future__ import annotations

import math

import pytest
import torch

from kd_depth_core import geometry
from kd_depth_core.losses import (
    DEFAULT_SCALE_WEIGHTS,
    confidence_weights,
    ensemble_residual,
    gaussian_nll,
    laplacian_nll,
    log_depth_loss,
    multiscale_distillation_loss,
)

MIN_DEPTH, MAX_DEPTH = 0.1, 100.0


def student_disps_for(depth: torch.Tensor) -> list[torch.Tensor]:
    """Sigmoid disparities at 4 scales that reproduce `depth` (B,1,H,W) exactly once upsampled (constant maps)."""
    disp = geometry.depth_to_disp(depth, MIN_DEPTH, MAX_DEPTH)
    h, w = depth.shape[-2:]
    return [disp[..., : h >> s, : w >> s].clone() for s in range(4)]


def test_log_depth_loss_hand_values():
    target = torch.full((1, 1, 2, 2), 4.0)
    pred = target.clone()
    pred[0, 0, 0, 0] = 4.0 * math.e  # e = +1 on one pixel of four
    assert float(log_depth_loss(target, target)) == 0.0
    # silog: mean(e^2) - 0.85 mean(e)^2 = 1/4 - 0.85/16
    assert float(log_depth_loss(pred, target, kind="silog", variance_focus=0.85)) == pytest.approx(0.25 - 0.85 / 16)
    assert float(log_depth_loss(pred, target, kind="l1_log")) == pytest.approx(0.25)
    # weight 0 on the wrong pixel: it no longer counts
    weight = torch.ones_like(target)
    weight[0, 0, 0, 0] = 0
    assert float(log_depth_loss(pred, target, weight, kind="l1_log")) == 0.0
    # a uniform scale error is invisible to the fully scale-invariant loss only
    assert float(log_depth_loss(target * 2, target, variance_focus=1.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(log_depth_loss(target * 2, target, variance_focus=0.85)) == pytest.approx(0.15 * math.log(2) ** 2)


def test_scale_invariant_loss_is_per_image():
    """Eigen's SILog is per image: two images, each an exact rescale of its target (×2 and ×0.5), have zero
    scale-invariant loss; pooling mean(e) over the batch would cancel the two scales and give (ln 2)²."""
    target = torch.rand(2, 1, 4, 6, generator=torch.Generator().manual_seed(0)) * 10 + 1
    pred = target * torch.tensor([2.0, 0.5]).view(2, 1, 1, 1)
    assert float(log_depth_loss(pred, target, variance_focus=1.0)) == pytest.approx(0.0, abs=1e-6)
    e = torch.log(pred) - torch.log(target)
    pooled = float((e * e).mean() - e.mean() ** 2)
    assert pooled == pytest.approx(math.log(2) ** 2, rel=1e-5)  # what the batch-pooled mean gives
    # per image, then averaged: image 0 ×2 (0.15 (ln 2)² at focus 0.85), image 1 exact
    mixed = pred.clone()
    mixed[1] = target[1]
    assert float(log_depth_loss(mixed, target, variance_focus=0.85)) == pytest.approx(0.15 * math.log(2) ** 2 / 2, rel=1e-5)
    # an image with no weight is left out of the mean (not counted as a zero)
    weight = torch.ones_like(target)
    weight[1] = 0
    assert float(log_depth_loss(mixed, target, weight, variance_focus=0.85)) == pytest.approx(0.15 * math.log(2) ** 2, rel=1e-5)
    empty = log_depth_loss(pred.requires_grad_(), target, torch.zeros_like(target))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_distillation_zero_when_student_reproduces_teacher_and_grows_with_error():
    teacher = torch.full((2, 1, 16, 32), 7.5)
    disps = student_disps_for(teacher)
    result = multiscale_distillation_loss(disps, teacher, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH)
    assert float(result.loss) == pytest.approx(0.0, abs=1e-10)
    losses = []
    for factor in (1.1, 1.5, 2.0, 4.0):
        wrong = student_disps_for(teacher * factor)
        losses.append(float(multiscale_distillation_loss(wrong, teacher, min_depth=MIN_DEPTH,
                                                         max_depth=MAX_DEPTH, variance_focus=0.0).loss))
    assert losses == sorted(losses) and losses[0] > 0
    # variance_focus 0: the loss is the squared log error, log(factor)^2, at every scale
    assert losses[-1] == pytest.approx(math.log(4.0) ** 2, rel=1e-4)


def test_every_scale_weight_is_real_and_every_scale_contributes():
    assert all(w > 0 for w in DEFAULT_SCALE_WEIGHTS) and len(DEFAULT_SCALE_WEIGHTS) == 4
    assert DEFAULT_SCALE_WEIGHTS == (1.0, 0.5, 0.25, 0.125)  # not 1 // 4 == 0
    teacher = torch.full((1, 1, 16, 32), 5.0)
    exact = student_disps_for(teacher)
    for scale in range(4):
        # only scale `scale` is wrong: the total must see it, in proportion to its weight
        disps = [d.clone().requires_grad_(True) for d in exact]
        with torch.no_grad():
            disps[scale].mul_(0.5)
        result = multiscale_distillation_loss(disps, teacher, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH)
        per_scale = [float(v.detach()) for v in result.per_scale]
        assert per_scale[scale] > 1e-3 and sum(per_scale) == pytest.approx(per_scale[scale])
        expected = DEFAULT_SCALE_WEIGHTS[scale] * per_scale[scale] / sum(DEFAULT_SCALE_WEIGHTS)
        assert float(result.loss.detach()) == pytest.approx(expected, rel=1e-5)
        result.loss.backward()
        assert disps[scale].grad.abs().sum() > 0
    # all four wrong: every scale's input gets a gradient
    disps = [(d * 0.5).requires_grad_(True) for d in exact]
    multiscale_distillation_loss(disps, teacher, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH).loss.backward()
    assert all(float(d.grad.abs().sum()) > 0 for d in disps)


def test_multiscale_rejects_bad_scale_weights():
    teacher = torch.full((1, 1, 8, 8), 5.0)
    disps = student_disps_for(teacher)
    with pytest.raises(ValueError, match="scale_weights: expected 4"):
        multiscale_distillation_loss(disps, teacher, scale_weights=(1.0, 0.5))
    with pytest.raises(ValueError, match="positive sum"):
        multiscale_distillation_loss(disps, teacher, scale_weights=(0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"target_depth: expected a \(B,1,H,W\)"):
        multiscale_distillation_loss(disps, teacher[0])


def test_confidence_weighting_lowers_uncertain_pixels():
    mean = torch.full((1, 1, 1, 3), 10.0)
    std = torch.tensor([0.0, 1.0, 3.0]).view(1, 1, 1, 3)  # relative spread 0, 0.1, 0.3
    inverse = confidence_weights(mean, std, "inverse", tau=0.1).flatten().tolist()
    assert inverse == pytest.approx([1.0, 0.5, 0.25])
    exp = confidence_weights(mean, std, "exp", tau=0.1).flatten().tolist()
    assert exp == pytest.approx([1.0, math.exp(-1), math.exp(-3)])
    assert confidence_weights(mean, std, "none").flatten().tolist() == [1.0, 1.0, 1.0]
    # relative: the same absolute spread far away is more certain than near by
    far = confidence_weights(torch.full((1, 1, 1, 1), 50.0), torch.full((1, 1, 1, 1), 1.0))
    near = confidence_weights(torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 1.0))
    assert float(far) > float(near)
    # in the loss, an error on an uncertain pixel costs less than the same error on a certain one
    target = torch.full((1, 1, 1, 2), 10.0)
    spread = torch.tensor([0.0, 3.0]).view(1, 1, 1, 2)
    weight = confidence_weights(target, spread)
    wrong_on_certain = target.clone()
    wrong_on_certain[..., 0] *= 2
    wrong_on_uncertain = target.clone()
    wrong_on_uncertain[..., 1] *= 2
    assert float(log_depth_loss(wrong_on_uncertain, target, weight, kind="l1_log")) < \
        float(log_depth_loss(wrong_on_certain, target, weight, kind="l1_log"))


def test_uncertainty_nll_minimised_at_the_ensemble_residual():
    student = torch.full((1, 1, 1, 1), 10.0)
    teacher_mean = torch.full((1, 1, 1, 1), 13.0)
    teacher_std = torch.full((1, 1, 1, 1), 4.0)
    residual = ensemble_residual(student, teacher_mean, teacher_std)
    assert float(residual) == pytest.approx(5.0)  # sqrt(4^2 + 3^2)
    sigmas = torch.linspace(1.0, 9.0, 801)  # steps of 0.01 m
    for nll_fn in (laplacian_nll, gaussian_nll):
        values = [float(nll_fn(residual, torch.log(s).view(1, 1, 1, 1))) for s in sigmas]
        assert float(sigmas[min(range(len(values)), key=values.__getitem__)]) == pytest.approx(5.0, abs=0.01)
        log_sigma = torch.full((1, 1, 1, 1), math.log(5.0), requires_grad=True)
        nll_fn(residual, log_sigma).backward()
        assert float(log_sigma.grad) == pytest.approx(0.0, abs=1e-5), nll_fn.__name__
    # hand values at sigma = 1: Laplacian r + 0, Gaussian r^2 / 2
    zero = torch.zeros(1, 1, 1, 1)
    assert float(laplacian_nll(residual, zero)) == pytest.approx(5.0)
    assert float(gaussian_nll(residual, zero)) == pytest.approx(12.5)
    # the floor keeps a zero residual finite
    assert math.isfinite(float(laplacian_nll(torch.zeros(1, 1, 1, 1), zero)))

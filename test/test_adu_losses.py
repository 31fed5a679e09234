"""ADU-Depth loss terms (losses/adu.py): attention, feature loss, focal depth loss, uncertainty weights."""
from __future__ import annotations

import math

import pytest
import torch

from kd_depth_core.distill.adapters import FeatureAdapter
from kd_depth_core.losses import (
    attention_feature_loss,
    focal_depth_loss,
    focal_weight,
    inverse_variance_weights,
    spatial_attention,
    standardize_features,
)


# --------------------------------------------------------------------------- attention
def test_spatial_attention_by_hand():
    # channel-mean |f| = [1, 3] -> normalised [0.5, 1.5] -> 2 * softmax = [2/(1+e), 2e/(1+e)]
    features = torch.tensor([[[[1.0, -3.0]], [[-1.0, 3.0]]]])  # (1,2,1,2)
    attention = spatial_attention(features)
    expected = torch.tensor([2 / (1 + math.e), 2 * math.e / (1 + math.e)])
    assert attention.shape == (1, 1, 1, 2)
    assert torch.allclose(attention.flatten(), expected, atol=1e-6)
    # a colder softmax concentrates more weight on the active position; the mean stays 1
    sharp = spatial_attention(features, temperature=0.25)
    assert sharp[0, 0, 0, 1] > attention[0, 0, 0, 1] and torch.isclose(sharp.mean(), torch.tensor(1.0))
    # equal activation everywhere (any magnitude) -> 1 everywhere; the result carries no graph
    flat = torch.full((2, 4, 3, 5), -7.0, requires_grad=True)
    uniform = spatial_attention(flat)
    assert torch.allclose(uniform, torch.ones(2, 1, 3, 5)) and not uniform.requires_grad
    with pytest.raises(ValueError, match="temperature: expected a positive number"):
        spatial_attention(features, temperature=0.0)
    with pytest.raises(ValueError, match=r"features: expected a \(B,C,h,w\) feature map"):
        spatial_attention(torch.ones(2, 3))


def test_standardize_features():
    torch.manual_seed(0)
    features = torch.randn(2, 3, 4, 5) * torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1, 1) + 5.0
    out = standardize_features(features)
    assert torch.allclose(out.mean((2, 3)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(out.std((2, 3), unbiased=False), torch.ones(2, 3), atol=1e-3)


# --------------------------------------------------------------------------- feature loss
def test_feature_loss_is_zero_for_matching_features_and_weighted_by_hand():
    torch.manual_seed(0)
    teacher = torch.randn(2, 6, 4, 5)
    assert float(attention_feature_loss(teacher.clone(), teacher)) == 0.0
    assert float(attention_feature_loss(teacher.clone(), teacher, spatial_attention(teacher))) == 0.0
    # per-position errors (mean over 2 channels of the squared difference): 1 at position 0, 4 at position 1
    student = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 2.0]], [[1.0, 2.0]]]])
    assert float(attention_feature_loss(student, target)) == pytest.approx(2.5)
    assert float(attention_feature_loss(student, target, torch.tensor([[[[1.0, 0.0]]]]))) == pytest.approx(1.0)
    assert float(attention_feature_loss(student, target, torch.tensor([[[[1.0, 3.0]]]]))) == pytest.approx(13 / 4)
    with pytest.raises(ValueError, match="differ from the teacher's .* adapt them first"):
        attention_feature_loss(torch.zeros(1, 3, 1, 2), target)
    with pytest.raises(ValueError, match=r"weight: expected shape \(1, 1, 1, 2\)"):
        attention_feature_loss(student, target, torch.ones(1, 1, 2, 2))


def test_feature_loss_decreases_while_an_adapter_learns_the_teacher_features():
    torch.manual_seed(0)
    student = torch.randn(4, 8, 6, 8)
    mixing = torch.randn(12, 8)  # the "teacher" is an unknown linear map of the student's features, at half size
    teacher = torch.nn.functional.avg_pool2d(torch.einsum("tc,bchw->bthw", mixing, student), 2)
    adapter = FeatureAdapter(8, 12)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=0.05)
    losses = []
    for _ in range(25):
        loss = attention_feature_loss(adapter(student, teacher.shape[-2:]), teacher, spatial_attention(teacher))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(b < a for a, b in zip(losses[:5], losses[1:6])), losses  # falls from the first step
    assert losses[-1] < 0.2 * losses[0], losses


# --------------------------------------------------------------------------- focal response loss
def test_focal_weight_is_monotonic_and_matches_hand_values():
    errors = torch.linspace(0.0, 3.0, 301)
    for tau, gamma in ((0.1, 2.0), (0.5, 1.0), (0.05, 3.0)):
        weight = focal_weight(errors, tau, gamma)
        assert bool((weight[1:] >= weight[:-1]).all()) and float(weight[0]) == 0.0 and float(weight.max()) <= 1.0
        per_pixel = weight * errors  # the focal loss of one pixel
        assert bool((per_pixel[1:] > per_pixel[:-1]).all())  # strictly increasing in the error
    assert float(focal_weight(torch.tensor(0.1), 0.1, 2.0)) == pytest.approx((1 - math.exp(-1)) ** 2)
    assert torch.equal(focal_weight(errors, 0.1, 0.0), torch.ones_like(errors))  # gamma 0: no focusing
    with pytest.raises(ValueError, match="tau: expected a positive error scale"):
        focal_weight(errors, 0.0)
    with pytest.raises(ValueError, match="gamma: expected a number >= 0"):
        focal_weight(errors, 0.1, -1.0)


def test_a_focal_floor_keeps_the_easy_pixels_gradient():
    # floor 1: weight 1 + (1 - e^(-e/tau))^gamma, so an exact pixel weighs 1 and a very wrong one 2
    assert float(focal_weight(torch.tensor(0.0), 0.1, 2.0, floor=1.0)) == 1.0
    assert float(focal_weight(torch.tensor(0.1), 0.1, 2.0, floor=1.0)) == pytest.approx(1 + (1 - math.exp(-1)) ** 2)
    assert float(focal_weight(torch.tensor(5.0), 0.1, 2.0, floor=1.0)) == pytest.approx(2.0)
    # a pixel 1 % off: the pure focal loss hardly moves it (gradient ~ e^2 / tau^2), the floored one does
    target = torch.full((1, 1, 1, 1), 10.0)
    grads = {}
    for floor in (0.0, 1.0):
        pred = (target * math.exp(0.01)).requires_grad_()
        focal_depth_loss(pred, target, tau=0.1, gamma=2.0, floor=floor).backward()
        grads[floor] = float(pred.grad)
    assert grads[0.0] < 0.05 * grads[1.0] and grads[1.0] == pytest.approx(1 / float(target * math.exp(0.01)), rel=0.1)
    with pytest.raises(ValueError, match="floor: expected a number >= 0"):
        focal_weight(torch.tensor(0.1), 0.1, 2.0, floor=-1.0)


def test_focal_depth_loss_by_hand_and_hard_pixels_dominate():
    target = torch.full((1, 1, 2, 3), 10.0)
    assert float(focal_depth_loss(target.clone(), target)) == 0.0
    # every pixel 10 % off in log depth: (1 - e^-1)^2 * 0.1
    pred = target * math.exp(0.1)
    assert float(focal_depth_loss(pred, target, tau=0.1, gamma=2.0)) == pytest.approx(0.1 * (1 - math.exp(-1)) ** 2,
                                                                                      rel=1e-5)
    # relative to plain L1 of log depth (gamma 0), a pixel 4x as wrong weighs far more than 4x
    easy, hard = target * math.exp(0.05), target * math.exp(0.2)
    focal_ratio = float(focal_depth_loss(hard, target)) / float(focal_depth_loss(easy, target))
    l1_ratio = float(focal_depth_loss(hard, target, gamma=0.0)) / float(focal_depth_loss(easy, target, gamma=0.0))
    assert l1_ratio == pytest.approx(4.0, rel=1e-4) and focal_ratio > 3 * l1_ratio
    # the gradient reaches the prediction and grows with the error
    pred = torch.tensor([[[[10.5, 13.0]]]], requires_grad=True)
    focal_depth_loss(pred, torch.full((1, 1, 1, 2), 10.0)).backward()
    assert 0 < float(pred.grad[0, 0, 0, 0]) < float(pred.grad[0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"target: expected shape \(1, 1, 1, 2\)"):
        focal_depth_loss(pred, target)


# --------------------------------------------------------------------------- uncertainty weights
def test_inverse_variance_weights_by_hand():
    depth = torch.tensor([[[[10.0, 10.0, 20.0]]]])
    # relative sigma 0, 0.1, 0.1 with eps 0.01 -> raw 100, 50, 50 -> mean 1: 1.5, 0.75, 0.75
    sigma = torch.tensor([[[[0.0, 1.0, 2.0]]]])
    weight = inverse_variance_weights(sigma, depth, eps=0.01)
    assert torch.allclose(weight, torch.tensor([[[[1.5, 0.75, 0.75]]]]))
    assert torch.equal(inverse_variance_weights(torch.zeros_like(depth), depth), torch.ones_like(depth))
    # masked pixels get 0 and do not enter the mean
    masked = inverse_variance_weights(sigma, depth, eps=0.01, mask=torch.tensor([[[[True, True, False]]]]))
    assert torch.allclose(masked, torch.tensor([[[[4 / 3, 2 / 3, 0.0]]]]))
    with pytest.raises(ValueError, match="eps: expected a positive relative variance"):
        inverse_variance_weights(sigma, depth, eps=0.0)
    with pytest.raises(ValueError, match=r"sigma: expected shape \(1, 1, 1, 3\)"):
        inverse_variance_weights(sigma[..., :2], depth)


def test_uncertainty_weighting_lowers_the_contribution_of_uncertain_pixels():
    target = torch.full((1, 1, 1, 4), 10.0)
    pred = target.clone()
    pred[..., 3] = 14.0  # the only wrong pixel
    sigma = torch.tensor([[[[0.1, 0.1, 0.1, 0.1]]]])
    unweighted = focal_depth_loss(pred, target, inverse_variance_weights(sigma, target))
    sigma_uncertain = sigma.clone()
    sigma_uncertain[..., 3] = 5.0  # the teacher is unsure exactly where the student disagrees
    weighted = focal_depth_loss(pred, target, inverse_variance_weights(sigma_uncertain, target))
    assert float(weighted) < 0.2 * float(unweighted)
    # the same weights scale the feature loss: an error at an uncertain position counts less
    student, teacher = torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4)
    teacher[..., 3] = 1.0
    assert float(attention_feature_loss(student, teacher, inverse_variance_weights(sigma_uncertain, target))) < \
        0.2 * float(attention_feature_loss(student, teacher, inverse_variance_weights(sigma, target)))

"""LUMDE loss terms: GAN objectives on hand-worked scores, the weight warm-up, the pair-wise affinity loss."""
from __future__ import annotations

import pytest
import torch

from kd_depth_core.losses import (
    adversarial_weight,
    affinity_matrix,
    depth_structure_loss,
    discriminator_loss,
    generator_loss,
    grid_nodes,
    hinge_discriminator_loss,
    hinge_generator_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    pairwise_affinity_loss,
)


# --------------------------------------------------------------------------- adversarial
def test_least_squares_gan_losses_on_hand_worked_scores():
    real, fake = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # D: 0.5 * mean((real-1)^2) + 0.5 * mean(fake^2) = 0.5 * 0.5 + 0.5 * 0.5
    assert float(lsgan_discriminator_loss(real, fake)) == pytest.approx(0.5)
    assert float(lsgan_discriminator_loss(torch.ones(3), torch.zeros(3))) == 0.0  # a perfect discriminator
    # G: 0.5 * mean((fake-1)^2) = 0.5 * (1 + 0) / 2
    assert float(lsgan_generator_loss(fake)) == pytest.approx(0.25)
    assert float(lsgan_generator_loss(torch.ones(4))) == 0.0  # the student passes as real
    assert float(discriminator_loss(real, fake, "lsgan")) == pytest.approx(0.5)
    assert float(generator_loss(torch.tensor([3.0]), "lsgan")) == pytest.approx(2.0)


def test_hinge_gan_losses_on_hand_worked_scores():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # D: mean(relu(1 - real)) + mean(relu(1 + fake)) = mean(0, 0.5) + mean(0, 1)
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx(0.25 + 0.5)
    assert float(hinge_discriminator_loss(torch.tensor([1.5]), torch.tensor([-1.0]))) == 0.0  # margins met
    # G: -mean(fake)
    assert float(hinge_generator_loss(fake)) == pytest.approx(1.0)
    assert float(discriminator_loss(real, fake, "hinge")) == pytest.approx(0.75)
    assert float(generator_loss(fake, "hinge")) == pytest.approx(1.0)


def test_gan_loss_gradients_push_scores_the_right_way_and_bad_input_fails():
    fake = torch.tensor([0.2, -0.3], requires_grad=True)
    generator_loss(fake, "lsgan").backward()
    assert bool((fake.grad < 0).all())  # gradient descent raises the student's scores towards "real"
    real = torch.tensor([0.2], requires_grad=True)
    discriminator_loss(real, torch.tensor([0.1]), "hinge").backward()
    assert float(real.grad) == pytest.approx(-1.0)  # d/d real of relu(1 - real) below the margin
    with pytest.raises(ValueError, match="kind: expected one of lsgan, hinge, got 'wgan'"):
        discriminator_loss(real, real, "wgan")
    with pytest.raises(ValueError, match="kind: expected one of lsgan, hinge"):
        generator_loss(real, "bce")
    with pytest.raises(ValueError, match="fake: expected a non-empty tensor"):
        lsgan_generator_loss(torch.zeros(0))


def test_adversarial_weight_linear_warm_up():
    assert adversarial_weight(0, 0.1) == pytest.approx(0.1)  # no warm-up: full weight at once
    schedule = [adversarial_weight(s, 0.1, start_step=100, warmup_steps=200) for s in (0, 99, 100, 200, 300, 5000)]
    assert schedule == pytest.approx([0.0, 0.0, 0.0, 0.05, 0.1, 0.1])
    assert adversarial_weight(5, 0.2, warmup_steps=10) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="weight: expected a number >= 0"):
        adversarial_weight(0, -1.0)
    with pytest.raises(ValueError, match="start_step, warmup_steps"):
        adversarial_weight(0, 1.0, warmup_steps=-1)


# --------------------------------------------------------------------------- pair-wise structure
def test_grid_nodes_and_cosine_affinity_by_hand():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    nodes = grid_nodes(x, grid=2, patch=1)  # 2x2 average pooling: cells in row-major order
    assert nodes.shape == (1, 4, 1)
    assert nodes[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
    blocks = grid_nodes(x, grid=(1, 2), patch=2)  # two cells, each its 2x2 block of the 2x4 pooled map
    assert blocks.shape == (1, 2, 4)
    # pooled (2,4) map: rows [2, 3, 4, 5] and [10, 11, 12, 13]; a cell lists its block row by row
    assert blocks[0].tolist() == [[2.0, 3.0, 10.0, 11.0], [4.0, 5.0, 12.0, 13.0]]
    affinity = affinity_matrix(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]))
    s = 2 ** -0.5
    assert torch.allclose(affinity[0], torch.tensor([[1.0, 0.0, s], [0.0, 1.0, s], [s, s, 1.0]]), atol=1e-6)


def test_pairwise_loss_hand_value_zero_for_identical_structure_and_teacher_has_no_gradient():
    # two cells (columns) with 2-channel vectors: student e0, e1 (orthogonal), teacher e0, e0 (parallel)
    student = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], requires_grad=True)  # (1,2,1,2)
    teacher = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]], requires_grad=True)
    loss = pairwise_affinity_loss(student, teacher, grid=(1, 2))
    assert float(loss.detach()) == pytest.approx(0.5)  # A_s = I, A_t = all ones: two of four entries differ by 1
    loss.backward()
    assert student.grad is not None and teacher.grad is None
    features = torch.randn(2, 8, 12, 20)
    assert float(pairwise_affinity_loss(features, features.clone(), grid=4)) == pytest.approx(0.0, abs=1e-10)
    # a positive factor per node leaves every angle unchanged; channels and sizes of the two sides may differ
    assert float(pairwise_affinity_loss(features * 3.0, features, grid=4)) == pytest.approx(0.0, abs=1e-10)
    other = torch.randn(2, 16, 24, 40)
    assert pairwise_affinity_loss(features, other, grid=4) > 0.01


def test_depth_structure_loss_scale_invariance_when_configured():
    torch.manual_seed(0)
    teacher = torch.exp(torch.randn(2, 1, 48, 64) * 0.3 + 1.0)  # metres, roughly 1-8 m
    student = teacher * torch.exp(0.2 * torch.randn_like(teacher))
    assert float(depth_structure_loss(teacher.clone(), teacher, grid=8, patch=4)) == pytest.approx(0.0, abs=1e-10)
    assert float(depth_structure_loss(student, teacher, grid=8, patch=4)) > 1e-3
    # a student off by a global factor: no loss when scale-invariant, a loss when not
    scaled = teacher * 3.7
    assert float(depth_structure_loss(scaled, teacher, grid=8, patch=4, scale_invariant=True)) < 1e-9
    assert float(depth_structure_loss(scaled, teacher, grid=8, patch=4, scale_invariant=False)) > 1e-2
    # the invariant version still sees structure: the scaled, noisy student scores like the noisy one
    assert float(depth_structure_loss(student * 3.7, teacher, grid=8, patch=4)) == pytest.approx(
        float(depth_structure_loss(student, teacher, grid=8, patch=4)), rel=1e-4)
    with pytest.raises(ValueError, match="need patch >= 2"):
        depth_structure_loss(student, teacher, grid=8, patch=1)
    with pytest.raises(ValueError, match="same batch size"):
        pairwise_affinity_loss(student, teacher[:1])
    with pytest.raises(ValueError, match=r"grid: expected a positive cell count"):
        grid_nodes(teacher, grid=0)


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of `fn()`."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return total


def test_pairwise_memory_is_set_by_the_grid_not_the_image_size():
    grid, patch = 8, 4
    sizes = [(32, 48), (128, 192)]  # 16x the pixels
    saved, shapes = [], []
    for height, width in sizes:
        teacher = torch.rand(2, 1, height, width) * 5 + 0.5
        student = (torch.rand(2, 1, height, width) * 5 + 0.5).requires_grad_()
        saved.append(_saved_bytes(lambda s=student, t=teacher: depth_structure_loss(s, t, grid, patch)))
        shapes.append(tuple(affinity_matrix(grid_nodes(student, grid, patch)).shape))
    assert shapes[0] == shapes[1] == (2, grid * grid, grid * grid)  # fixed by the grid
    pixels = (sizes[1][0] * sizes[1][1]) / (sizes[0][0] * sizes[0][1])
    # at most linear growth in the pixel count (a dense HW x HW affinity would grow 256x)
    assert saved[1] / saved[0] <= pixels
    dense_affinity_bytes = 2 * (sizes[1][0] * sizes[1][1]) ** 2 * 4
    assert saved[1] < dense_affinity_bytes / 1000

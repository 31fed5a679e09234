"""The Transformer discriminator: registry, shapes at any input size, errors, and that it learns real vs fake."""
from __future__ import annotations

import pytest
import torch

from kd_depth_core.losses import discriminator_loss
from kd_depth_core.models import create_model, list_models, model_info
from kd_depth_core.models.discriminator import TransformerDiscriminator

TINY = {"input_size": (32, 48), "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def test_registered_and_scores_any_input_size():
    assert "transformer_discriminator" in list_models("discriminator")
    assert model_info("transformer_discriminator")["defaults"]["pooling"] == "cls"
    torch.manual_seed(0)
    disc = create_model("transformer_discriminator", **TINY)
    assert isinstance(disc, TransformerDiscriminator)
    assert disc.model_spec["name"] == "transformer_discriminator" and disc.model_spec["kwargs"]["embed_dim"] == 32
    assert isinstance(disc.encoder, torch.nn.TransformerEncoder) and len(disc.encoder.layers) == 2
    # 4x6 = 24 patch tokens + CLS at the fixed input size, whatever the depth map's size
    assert disc.pos_embed.shape == (1, 25, 32)
    for size in [(32, 48), (64, 96), (20, 30)]:
        scores = disc(torch.randn(3, 1, *size), torch.rand(3, 3, *size))
        assert scores.shape == (3,) and bool(torch.isfinite(scores).all())
    # the image may come at another resolution than the depth
    assert disc(torch.randn(2, 1, 32, 48), torch.rand(2, 3, 64, 96)).shape == (2,)


def test_every_parameter_gets_a_gradient_and_depth_only_mean_pooling_works():
    torch.manual_seed(0)
    disc = create_model("transformer_discriminator", **TINY)
    disc(torch.randn(2, 1, 32, 48), torch.rand(2, 3, 32, 48)).sum().backward()
    missing = [name for name, p in disc.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, missing
    plain = create_model("transformer_discriminator", **{**TINY, "use_image": False, "pooling": "mean"})
    assert plain.cls_token is None and plain.pos_embed.shape == (1, 24, 32) and plain.patch_embed.in_channels == 1
    assert plain(torch.randn(2, 1, 40, 40)).shape == (2,)


def test_clear_errors_for_bad_input_and_settings():
    disc = create_model("transformer_discriminator", **TINY)
    with pytest.raises(ValueError, match=r"depth: expected a \(B,1,H,W\) depth map, got \(2, 3, 32, 48\)"):
        disc(torch.randn(2, 3, 32, 48), torch.rand(2, 3, 32, 48))
    with pytest.raises(ValueError, match="image: this discriminator was built with use_image=True"):
        disc(torch.randn(2, 1, 32, 48))
    with pytest.raises(ValueError, match=r"image: expected \(2,3,H,W\)"):
        disc(torch.randn(2, 1, 32, 48), torch.rand(1, 3, 32, 48))
    with pytest.raises(ValueError, match="patch_size: expected a positive divisor of input_size 32x48, got 5"):
        create_model("transformer_discriminator", **{**TINY, "patch_size": 5})
    with pytest.raises(ValueError, match="embed_dim: expected a multiple of num_heads"):
        create_model("transformer_discriminator", **{**TINY, "num_heads": 3})
    with pytest.raises(ValueError, match="pooling: expected 'cls' or 'mean'"):
        create_model("transformer_discriminator", **{**TINY, "pooling": "max"})
    with pytest.raises(ValueError, match="valid parameters: use_image, input_size"):
        create_model("transformer_discriminator", typo=1)


@pytest.mark.parametrize("kind", ["lsgan", "hinge"])
def test_learns_to_separate_teacher_depth_from_a_fixed_noisy_student(kind: str):
    """A toy batch: smooth 'teacher' depth ramps (real) vs the same ramps with fixed pixel noise (fake)."""
    torch.manual_seed(0)
    rows = torch.linspace(0, 1, 32).view(1, 1, 32, 1)
    slopes = torch.linspace(0.5, 2.0, 8).view(8, 1, 1, 1)
    teacher = slopes * rows.expand(1, 1, 32, 48) - 0.5 * slopes  # centred log-depth ramps
    student = teacher + 0.3 * torch.randn_like(teacher)  # fixed: never updated
    image = torch.rand(8, 3, 32, 48)
    disc = create_model("transformer_discriminator", **TINY)
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        scores = disc(torch.cat([teacher, student]), torch.cat([image, image]))
        real, fake = scores.chunk(2)
        loss = discriminator_loss(real, fake, kind)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        real, fake = disc(torch.cat([teacher, student]), torch.cat([image, image])).chunk(2)
    threshold = 0.5 if kind == "lsgan" else 0.0
    assert bool((real > threshold).all()) and bool((fake < threshold).all()), (real, fake)
    assert losses[-1] < 0.3 * losses[0], losses

"""Monte Carlo dropout: only the MC sites are active, batched sampling statistics, MS-DPT behaviour."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from kd_depth_core.models import MCDropout, create_model, enable_mc_dropout, mc_dropout_mode, mc_dropout_predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ConstantDispNet(nn.Module):
    """disp = MCDropout(p)(c): c / (1 - p) with probability 1 - p, else 0 (a BatchNorm checks eval mode)."""

    def __init__(self, c: float, p: float) -> None:
        super().__init__()
        self.c = c
        self.bn = nn.BatchNorm2d(3)
        self.site = MCDropout(p)

    def forward(self, image: torch.Tensor) -> dict:
        x = self.bn(image)  # eval mode: running stats (0, 1) -> x ~= image, no update
        disp = self.site(torch.full_like(x[:, :1], self.c))
        return {"disp": [disp] * 4}


def test_mc_dropout_predict_matches_the_two_point_distribution() -> None:
    torch.manual_seed(0)
    p, c, min_depth, max_depth = 0.5, 0.4, 1.0, 10.0
    model = ConstantDispNet(c, p)
    # kept: disp 0.8 -> scaled 0.1 + 0.9 * 0.8 = 0.82 1/m -> 1/0.82 m; dropped: disp 0 -> max_depth 10 m
    kept = 1.0 / 0.82
    expected_mean = (1 - p) * kept + p * max_depth
    expected_std = abs(max_depth - kept) * math.sqrt(p * (1 - p))
    image = torch.rand(2, 3, 16, 16)
    for max_batch in (None, 6):  # one forward, then 3 samples of 2 images per forward
        mean, std = mc_dropout_predict(model, image, 400, min_depth, max_depth, max_batch=max_batch)
        assert mean.shape == std.shape == (2, 1, 16, 16)
        assert float(mean.mean()) == pytest.approx(expected_mean, rel=0.01)
        assert float(std.mean()) == pytest.approx(expected_std, rel=0.01)
        # each pixel's 400 samples: std of the sample mean is 4.39 / 20 = 0.22 m
        assert float((mean - expected_mean).abs().max()) < 6 * 0.22
    assert torch.equal(model.bn.running_mean, torch.zeros(3)) and model.bn.num_batches_tracked == 0
    assert model.training  # the mode before the call is restored
    one_mean, one_std = mc_dropout_predict(model, image, 1, min_depth, max_depth)
    assert torch.equal(one_std, torch.zeros_like(one_std))
    is_kept = (one_mean - kept).abs() < 1e-5
    assert torch.all(is_kept | ((one_mean - max_depth).abs() < 1e-5)) and is_kept.any() and not is_kept.all()


def test_mc_mode_activates_only_the_sites_and_restores_flags() -> None:
    model = ConstantDispNet(0.4, 0.5)
    model.train()
    with mc_dropout_mode(model):
        assert model.site.training and not model.bn.training and not model.training
    assert model.training and model.bn.training and model.site.training
    with pytest.raises(ValueError, match="no Monte Carlo dropout sites"):
        enable_mc_dropout(ConstantDispNet(0.4, 0.0))
    with pytest.raises(ValueError, match="no Monte Carlo dropout sites"):
        mc_dropout_predict(nn.Sequential(nn.Conv2d(3, 1, 1)), torch.rand(1, 3, 8, 8), 2)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        mc_dropout_predict(model, torch.rand(1, 3, 8, 8), 0)


def test_ms_dpt_eval_passes_are_identical_and_mc_passes_differ() -> None:
    torch.manual_seed(0)
    model = create_model("ms_dpt_teacher", backbone="vit_tiny_patch16_224", depth=4, embed_dim=64, num_heads=2,
                         img_size=(32, 64), features=16, dropout=0.2)
    image = torch.rand(1, 3, 32, 64)
    model.eval()
    with torch.no_grad():
        first, second = model(image)["disp"][0], model(image)["disp"][0]
        assert torch.equal(first, second)
        with mc_dropout_mode(model):
            mc_a, mc_b = model(image)["disp"][0], model(image)["disp"][0]
    assert not torch.equal(mc_a, mc_b)
    assert not model.training  # eval restored
    mean, std = mc_dropout_predict(model, image, 4, 0.1, 100.0)
    assert mean.shape == std.shape == (1, 1, 32, 64)
    assert float(std.min()) >= 0 and float(std.max()) > 0
    assert 0.1 <= float(mean.min()) and float(mean.max()) <= 100.0


def test_mc_dropout_site_drops_a_share_p_and_rescales_the_rest() -> None:
    torch.manual_seed(0)
    site = MCDropout(0.1)
    x = torch.full((200, 500), 2.0)
    y = site.train()(x)
    dropped = y == 0
    assert float(dropped.float().mean()) == pytest.approx(0.1, abs=0.005)  # 100,000 draws: std 0.001
    assert torch.allclose(y[~dropped], torch.full_like(y[~dropped], 2.0 / 0.9))
    assert torch.equal(site.eval()(x), x)
    assert torch.equal(MCDropout(1.0).train()(x), torch.zeros_like(x))

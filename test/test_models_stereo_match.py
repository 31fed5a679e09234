"""The stereo teacher that matches: soft-argmin over a cost volume, the rig, its training signal."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kd_depth_core import geometry
from kd_depth_core.classical.sgbm import SGBMSettings
from kd_depth_core.config import TrainConfig, config_from_dict
from kd_depth_core.data.dataset import SequenceDataset
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset
from kd_depth_core.models import create_model
from kd_depth_core.models.stereo import (
    Refinement,
    block_matching_volume,
    local_matching_cost,
    pool_hints,
    resample_candidates,
    sgbm_hints,
    soft_argmin,
)
from kd_depth_core.train.tasks import create_task

TINY = {"backbone": "lcnet_050", "max_disparity": 32, "match_channels": 8, "aggregation_channels": 16,
        "refine_channels": 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_soft_argmin_of_a_peaked_volume_is_the_peak_and_its_spread_is_small():
    candidates = torch.arange(9, dtype=torch.float32) * 4  # 0, 4, ..., 32 px
    logits = torch.full((1, 9, 2, 3), -30.0)
    logits[:, 5] = 30.0  # every pixel matches candidate 5 = 20 px
    mean, std = soft_argmin(logits, candidates)
    assert torch.allclose(mean, torch.full((1, 1, 2, 3), 20.0)) and float(std.max()) < 1e-3
    logits = torch.zeros(1, 9, 1, 1)
    logits[:, 2] = logits[:, 3] = 50.0  # a tie between 8 and 12 px: the expectation is subpixel
    mean, std = soft_argmin(logits, candidates)
    assert mean.item() == pytest.approx(10.0) and std.item() == pytest.approx(2.0)


class HandMadeVolume(nn.Module):
    """Stands in for the aggregation: logits that peak at one candidate everywhere."""

    def __init__(self, index: int, candidates: int) -> None:
        super().__init__()
        self.index, self.candidates = index, candidates

    def forward(self, volume, context):
        logits = torch.full((volume.shape[0], self.candidates, *volume.shape[-2:]), -30.0)
        logits[:, self.index] = 30.0
        return logits


def test_the_network_outputs_the_disparity_of_its_only_cost_minimum_and_the_rig_makes_it_metric():
    torch.manual_seed(0)
    # the learned volume only, no local matching on the (random) images
    model = create_model("stereo_teacher", **TINY, block_matching=0, local_matching=0).eval()
    candidates = len(model.candidates)  # 32 / 4 + 1
    model.aggregation = HandMadeVolume(3, candidates)  # candidate 3 = 12 px
    model.set_rig(fx=60.0, baseline=0.2, width=64, min_depth=0.5, max_depth=50.0)  # fx·B = 12 px·m
    left, right = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    out = model(left, right)
    # refinement starts as the identity (zero residual), so every scale carries the matched 12 px
    for disparity in out["disparity"]:
        assert torch.allclose(disparity, torch.full_like(disparity, 12.0), atol=1e-4)
    _, depth = geometry.disp_to_depth(out["disp"][0], 0.5, 50.0)
    assert torch.allclose(depth, torch.full_like(depth, 1.0), rtol=1e-4)  # 12 px·m / 12 px
    # at twice the width, the same match is 24 px: the depth stays 1 m for the same rig
    model.aggregation = HandMadeVolume(6, candidates)
    wide = model(torch.rand(1, 3, 64, 128), torch.rand(1, 3, 64, 128))
    _, depth = geometry.disp_to_depth(wide["disp"][0], 0.5, 50.0)
    assert torch.allclose(depth, torch.full_like(depth, 1.0), rtol=1e-4)


def shifted_pair(shift: int, height: int = 64, width: int = 128, seed: int = 0):
    """A random texture and the same texture seen `shift` px further left: left[u] = right[u - shift]."""
    generator = torch.Generator().manual_seed(seed)
    texture = torch.rand(1, 3, height, width + shift, generator=generator)
    return texture[..., :width], texture[..., shift:]


def test_block_matching_finds_a_known_shift_on_one_pixel_candidates():
    left, right = shifted_pair(7)
    volume = block_matching_volume(left, right, candidates=17, step=1, stride=4, block=5)
    assert volume.shape == (1, 17, 16, 32)
    best = volume.argmax(1)[:, :, 4:]  # away from the left border, where right[u - 7] does not exist
    assert (best == 7).all()
    # 2-px candidates: 7 px is candidate 4 (it stands for [7, 9) px) -> the match is not lost between candidates
    coarse = block_matching_volume(left, right, candidates=9, step=2, stride=4, block=5).argmax(1)[:, :, 4:]
    assert (coarse == 4).all()


def test_resample_candidates_is_linear_along_the_disparity_axis():
    volume = torch.tensor([0.0, 4.0, 8.0]).view(1, 3, 1, 1)  # candidates 0, 4, 8 px
    fine = resample_candidates(volume, 9)  # 0, 1, ..., 8 px
    assert torch.allclose(fine.flatten(), torch.arange(9, dtype=torch.float32))


def test_the_untrained_network_already_matches_through_block_matching():
    torch.manual_seed(0)
    left, right = shifted_pair(9)
    with torch.no_grad():
        on = create_model("stereo_teacher", **TINY).eval()(left, right)["disparity"][0][..., 16:]
        off = create_model("stereo_teacher", **TINY, block_matching=0).eval()(left, right)["disparity"][0][..., 16:]
    assert abs(float(on.median()) - 9.0) < 1.0
    assert abs(float(off.median()) - 9.0) > 2.0  # without it, an untrained net does not match


def test_forward_backward_and_the_feature_contract():
    torch.manual_seed(0)
    model = create_model("stereo_teacher", **TINY)
    left, right = torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96)
    out = model(left, right, return_features=True)
    assert [tuple(d.shape) for d in out["disparity"]] == [(2, 1, 64 // 2 ** s, 96 // 2 ** s) for s in range(4)]
    assert out["log_sigma"].shape == (2, 1, 64, 96) and torch.isfinite(out["log_sigma"]).all()
    assert [f.shape[1] for f in out["features"]] == [i["num_chs"] for i in model.feature_info]
    assert [64 // f.shape[-2] for f in out["features"]] == [i["reduction"] for i in model.feature_info]
    (out["disp"][0].mean() + out["log_sigma"].mean()).backward()
    assert model.encoder.parameters().__next__().grad is not None
    assert model.match_proj.weight.grad.abs().sum() > 0
    # the right image matters
    model.eval()
    with torch.no_grad():
        a = model(left, right)["disparity"][0]
        b = model(left, right.flip(-1))["disparity"][0]
    assert not torch.allclose(a, b)


@pytest.mark.slow
def test_a_short_run_with_the_proxy_lowers_the_disparity_error_against_ground_truth(tmp_path):
    root = tmp_path / "street"
    generate_dataset(root, SynthSpec(sequences=2, frames=8, width=128, height=64, seed=4), workers=1, progress=False)
    cfg = config_from_dict(TrainConfig, {
        "data": {"root": str(root), "size": [64, 128], "stereo": True, "offsets": [], "batch_size": 4,
                 "num_workers": 0},
        # the learned path alone (block matching would start it near the answer)
        "model": {"name": "stereo_teacher", "kwargs": {**TINY, "max_disparity": 48, "block_matching": 0}},
        "task": {"name": "self_supervised", "kwargs": {"mode": "stereo", "min_depth": 1.0, "max_depth": 80.0,
                                                       "proxy_weight": 1.0}},
        "train": {"out_dir": str(tmp_path / "run")},
    }, "stereo.yaml")
    torch.manual_seed(0)
    task = create_task("self_supervised", cfg)
    dataset = SequenceDataset(root, split=None, offsets=(), size=(64, 128), stereo=True, load_depth=True,
                              **{k: v for k, v in task.dataset_options().items() if k != "offsets"})
    batch = {k: (torch.stack([dataset[i][k] for i in range(8)]) if k != "frame_key" else None)
             for k in dataset[0]}

    def disparity_error() -> float:
        with torch.no_grad():  # batch statistics: 30 steps are too few for BatchNorm's running averages
            predicted = task.depth_net(batch["image"], batch["image_right"])["disparity"][0]
        gt = batch["depth_gt"]
        valid = (gt > 1.0) & (gt < 80.0)
        truth = batch["K"][:, 0, 0].view(-1, 1, 1, 1) * batch["baseline"].view(-1, 1, 1, 1) / gt.clamp(min=1e-3)
        return float((predicted - truth).abs()[valid].mean())

    task._set_rig(float(batch["K"][0, 0, 0]), float(batch["baseline"][0]), 128)
    before = disparity_error()
    optimizer = torch.optim.Adam(task.parameters_for("main"), lr=2e-3)
    for step in range(30):
        index = torch.arange(4) + 4 * (step % 2)
        out = task({k: (v[index] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()})
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert out["proxy"] > 0 and 0 < out["proxy_fraction"] <= 1
    after = disparity_error()
    assert after < 0.6 * before, (before, after)
    assert np.isfinite(after)


def smooth_pair(shift: float, height: int = 32, width: int = 96, seed: int = 0):
    """A smooth random texture and the same texture `shift` px (fractional) further left, by resampling:
    left[u] = right[u - shift]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 4, (width + 16) // 4, generator=generator)
    texture = nn.functional.interpolate(coarse, size=(height, width + 16), mode="bicubic", align_corners=True)
    columns = torch.arange(width, dtype=torch.float32)
    left = texture[..., 8:8 + width]
    # right[x] = texture[8 + x + shift] (linear), so left[u] = right[u - shift]
    x = 8 + columns + shift
    lo = x.floor().long()
    frac = (x - lo.float()).view(1, 1, 1, -1)
    right = texture[..., lo] * (1 - frac) + texture[..., lo + 1] * frac
    return left, right


def test_local_matching_cost_is_lowest_at_the_true_shift_around_a_guess():
    left, right = smooth_pair(3.5)
    offsets = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    guess = torch.full((1, 1, 32, 96), 3.0)  # half a pixel short
    cost = local_matching_cost(left, right, guess, offsets, block=5)
    assert cost.shape == (1, 5, 32, 96)
    inside = cost[..., 8:-8]  # away from the borders the right image cannot fill
    assert (inside.argmin(1) == 3).float().mean() > 0.95  # offset +0.5 -> 3.5 px
    means = inside.mean((0, 2, 3))
    assert float(means[3]) < 0.3 * float(means[2])  # +0.5 px is far better than the guess itself
    assert float(means[2]) == pytest.approx(float(means[4]), rel=0.05)  # and the cost is symmetric about it
    # an integer shift is matched exactly (no interpolation on either side)
    left, right = smooth_pair(3.0)
    assert float(local_matching_cost(left, right, guess, offsets, block=5)[:, 2, :, 8:-8].max()) < 1e-5


def test_a_refinement_step_with_local_matching_moves_a_wrong_guess_to_the_true_shift():
    left, right = smooth_pair(5.25)
    step = Refinement(guide_channels=0, width=8, stride=1, local_offsets=[k / 2 for k in range(-4, 5)]).eval()
    plain = Refinement(guide_channels=0, width=8, stride=1).eval()
    guess = torch.full((1, 1, 32, 96), 4.5)
    with torch.no_grad():
        refined, _ = step(guess, left, None, 32.0, right=right)
        kept, _ = plain(guess, left, None, 32.0)
    error = (refined - 5.25).abs()[..., 8:-8]
    assert float(error.median()) < 0.15, float(error.median())  # subpixel, from 0.75 px off
    assert torch.equal(kept, guess)  # without local matching the untrained step is the identity


def test_sgbm_hints_are_sgbm_with_its_holes_filled_and_pooling_averages_them():
    left, right = shifted_pair(6, height=32, width=96)
    hint, confidence = sgbm_hints(left, right, 64.0, SGBMSettings(min_depth=2.0))  # up to 32 px searched
    assert hint.shape == confidence.shape == (1, 1, 32, 96)
    sure = confidence[..., 16:] > 0
    assert float(sure.float().mean()) > 0.9
    assert float((hint[..., 16:][sure] - 6.0).abs().median()) < 0.25
    assert (hint[..., 16:] > 0).all()  # the holes are filled from a row neighbour
    mean, fraction = pool_hints(torch.arange(4.0).view(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]]), (1, 1))
    assert mean.item() == pytest.approx(1.5) and fraction.item() == pytest.approx(0.75)


def test_the_classical_prior_makes_the_untrained_network_sgbm_and_gives_the_refinement_its_hints():
    torch.manual_seed(0)
    # no local matching: on random images it would move the result by up to its search radius
    model = create_model("stereo_teacher", **TINY, classical_prior=True, local_matching=0).eval()
    model.set_rig(fx=64.0, baseline=1.0, width=96, min_depth=2.0, max_depth=100.0)
    left, right = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)  # nothing to match: only the hints decide
    hints = (torch.full((1, 1, 64, 96), 7.0), torch.ones(1, 1, 64, 96))
    with torch.no_grad():
        guided = model(left, right, hints=hints)["disparity"][0]
        filled = model(left, right, hints=(hints[0], torch.zeros_like(hints[1])))["disparity"][0]
        unguided = create_model("stereo_teacher", **TINY, local_matching=0).eval()(left, right)["disparity"][0]
    # two refinement steps each move 95 % of the way to the hint: 99.75 % of the way from wherever it was
    assert float((guided - 7.0).abs().max()) < 0.0025 * 32 + 1e-3
    assert float((filled - 7.0).abs().max()) < 0.0025 * 32 + 1e-3  # row-filled hints too, by their own gate
    assert float((unguided - 7.0).abs().median()) > 0.5
    # without given hints it runs SGBM itself: on a shifted texture it then matches like SGBM
    pair = shifted_pair(6, height=64, width=96)
    with torch.no_grad():
        own = model(*pair)["disparity"][0][..., 16:]
    assert float((own - 6.0).abs().median()) < 0.25


def test_the_classical_prior_refuses_to_be_traced_with_a_clear_message():
    model = create_model("stereo_teacher", **TINY, classical_prior=True).eval()
    with pytest.raises(RuntimeError, match="classical_prior"):
        torch.jit.trace(model, (torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)), strict=False)


def test_training_guides_the_network_with_the_cached_proxy_when_it_is_the_same_sgbm(tmp_path):
    root = tmp_path / "street"
    generate_dataset(root, SynthSpec(sequences=1, frames=4, width=128, height=64, seed=4), workers=1, progress=False)

    def task_with(proxy_sgbm: dict):
        cfg = config_from_dict(TrainConfig, {
            "data": {"root": str(root), "size": [64, 128], "stereo": True, "offsets": [], "batch_size": 2,
                     "num_workers": 0},
            "model": {"name": "stereo_teacher", "kwargs": {**TINY, "classical_prior": True, "local_matching": 0}},
            "task": {"name": "self_supervised", "kwargs": {"mode": "stereo", "min_depth": 1.0, "max_depth": 80.0,
                                                           "proxy_weight": 1.0, "proxy_sgbm": proxy_sgbm}},
            "train": {"out_dir": str(tmp_path / "run")},
        }, "stereo.yaml")
        task = create_task("self_supervised", cfg)
        task._set_rig(60.0, 0.5, 128)
        return task.eval()

    image, right = torch.rand(1, 3, 64, 128), torch.rand(1, 3, 64, 128)
    proxy = torch.zeros(1, 1, 64, 128)
    proxy[..., ::2] = 5.0  # a hand-made proxy: 5 px on every other column, the rest filled from it
    batch = {"image": image, "image_right": right, "proxy_disparity": proxy}
    with torch.no_grad():
        same = task_with({"upsample": 2}).depth_outputs(batch)["disparity"][0]  # the model's own prior settings
        other = task_with({"upsample": 1}).depth_outputs(batch)["disparity"][0]  # another SGBM: it runs its own
    assert float((same - 5.0).abs().max()) < 0.1
    assert float((other - 5.0).abs().median()) > 0.5


def test_the_uncertainty_never_moves_the_disparity():
    torch.manual_seed(0)
    model = create_model("stereo_teacher", **TINY)
    out = model(torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96))
    out["log_sigma"].sum().backward()  # the uncertainty's loss alone
    moved = [name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert moved and all(name.startswith("sigma_head.") for name in moved), moved


def test_a_guided_network_is_served_with_pytorch_by_the_auto_backend():
    from kd_depth_core.inference.predictor import DepthPredictor
    from kd_depth_core.models.io import ModelMetadata

    model = create_model("stereo_teacher", **TINY, classical_prior=True).eval()
    metadata = ModelMetadata(model_name="stereo_teacher", model_kwargs={**TINY, "classical_prior": True},
                             input_height=64, input_width=96, mean=(0.0,) * 3, std=(1.0,) * 3, size_multiple=32,
                             min_depth=2.0, max_depth=100.0, scale_kind="metric", focal_length_px=64.0, stereo=True,
                             has_uncertainty=True, training_config={}, created_by="test")
    predictor = DepthPredictor((model, metadata), device="cpu", cpu_backend="onnxruntime")
    assert "served with PyTorch" in predictor.backend_note and not predictor.backend_fallback


def test_box_mean_is_the_border_clipped_window_mean():
    from kd_depth_core.models.stereo import box_mean

    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    # by hand, 3x3 clipped at the borders: corner (0,0) = mean(0,1,4,5) = 2.5; centre (1,1) = mean(0..2,4..6,8..10) = 5
    fast = box_mean(x, 3)
    assert float(fast[0, 0, 0, 0]) == pytest.approx(2.5) and float(fast[0, 0, 1, 1]) == pytest.approx(5.0)
    reference = box_mean(x.clone().requires_grad_(True), 3)  # with gradients: the avg_pool2d path
    torch.testing.assert_close(fast, reference.detach())
    y = torch.rand(2, 3, 17, 29)
    torch.testing.assert_close(box_mean(y, 9), torch.nn.functional.avg_pool2d(y, 9, stride=1, padding=4,
                                                                               count_include_pad=False))


def test_soft_argmin_stays_float32_for_bf16_logits() -> None:
    torch.manual_seed(0)
    logits = (4 * torch.randn(2, 64, 3, 5)).to(torch.bfloat16)  # what a bf16-autocast aggregation hands over
    candidates = torch.arange(64, dtype=torch.float32)
    mean, std = soft_argmin(logits, candidates)
    prob = torch.softmax(logits.double(), dim=1)
    expected = (prob * candidates.double().view(1, -1, 1, 1)).sum(1, keepdim=True)
    assert mean.dtype == std.dtype == torch.float32
    assert torch.allclose(mean.double(), expected, atol=1e-4)  # bf16 arithmetic: errors of ~0.1 px

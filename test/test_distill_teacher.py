"""TeacherWrapper: MC-dropout ensemble statistics, input resize, normalisation once (in the encoder), frozen,
fingerprint."""
from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest
import torch
import torch.nn as nn

from kd_depth_core.distill import TeacherWrapper
from kd_depth_core.distill.teacher import file_sha256
from kd_depth_core.models import MCDropout, create_model
from kd_depth_core.models.io import ModelMetadata, save_model

MIN_DEPTH, MAX_DEPTH = 1.0, 10.0


class ConstantDispNet(nn.Module):
    """disp = MCDropout(p)(c): c / (1 - p) with probability 1 - p, else 0. Records what it was fed."""

    def __init__(self, c: float, p: float) -> None:
        super().__init__()
        self.c = c
        self.bn = nn.BatchNorm2d(3)  # eval mode keeps its running stats untouched
        self.site = MCDropout(p)
        self.seen: torch.Tensor | None = None

    def forward(self, image: torch.Tensor) -> dict:
        self.seen = image.detach().clone()
        x = self.bn(image)
        return {"disp": [self.site(torch.full_like(x[:, :1], self.c))] * 4}


def metadata(height: int = 8, width: int = 12, **fields) -> ModelMetadata:
    values = dict(model_name="constant_test", model_kwargs={}, input_height=height, input_width=width,
                  mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), size_multiple=1, min_depth=MIN_DEPTH,
                  max_depth=MAX_DEPTH, scale_kind="metric", focal_length_px=None, stereo=False,
                  has_uncertainty=False, training_config={}, created_by="test")
    values.update(fields)
    return ModelMetadata.from_dict(values)


def tiny_ms_dpt(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("ms_dpt_teacher", backbone="vit_tiny_patch16_224", depth=4, embed_dim=64, num_heads=2,
                        img_size=(32, 64), features=16, dropout=0.2)


def released_teacher(path, seed: int = 0):
    model = tiny_ms_dpt(seed)
    meta = ModelMetadata.from_model(model, input_height=32, input_width=64, min_depth=0.1, max_depth=100.0,
                                    scale_kind="metric", focal_length_px=50.0)
    save_model(path, model, meta)
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_ensemble_mean_and_std_match_the_known_dropout_distribution():
    torch.manual_seed(0)
    p, c = 0.5, 0.4
    net = ConstantDispNet(c, p)
    teacher = TeacherWrapper((net, metadata()), num_samples=400)
    # kept: disp 0.8 -> scaled 1/10 + (1 - 1/10) * 0.8 = 0.82 1/m -> 1/0.82 m; dropped: disp 0 -> 10 m
    kept = 1.0 / 0.82
    expected_mean = (1 - p) * kept + p * MAX_DEPTH
    expected_std = (MAX_DEPTH - kept) * math.sqrt(p * (1 - p))
    image = torch.rand(2, 3, 16, 24)
    out = teacher.predict(image)
    assert set(out) == {"depth", "uncertainty"}
    assert out["depth"].shape == out["uncertainty"].shape == (2, 1, 16, 24)  # the student's resolution
    assert out["depth"].dtype == torch.float32 and not out["depth"].requires_grad
    assert float(out["depth"].mean()) == pytest.approx(expected_mean, rel=0.01)
    assert float(out["uncertainty"].mean()) == pytest.approx(expected_std, rel=0.01)
    # per pixel: 400 samples, std of the sample mean = 4.39 / 20 = 0.22 m
    assert float((out["depth"] - expected_mean).abs().max()) < 6 * 0.22
    # the whole ensemble ran as ONE batched forward of B x N images at the teacher's input size
    assert net.seen.shape == (2 * 400, 3, 8, 12)


def test_preprocessing_resizes_to_the_teacher_input_and_keeps_rgb_in_0_1():
    net = ConstantDispNet(0.4, 0.0)
    teacher = TeacherWrapper((net, metadata(height=8, width=12)), num_samples=1)
    image = torch.empty(1, 3, 32, 48)
    for channel, value in enumerate((0.2, 0.4, 0.6)):
        image[:, channel] = value
    out = teacher.predict(image, output_size=(4, 6))
    assert out["depth"].shape == (1, 1, 4, 6)
    # resized to the teacher's 8x12; the values reach the network unchanged (its encoder normalises)
    assert net.seen.shape == (1, 3, 8, 12)
    expected = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 8, 12)
    assert torch.allclose(net.seen, expected, atol=1e-6)
    # one deterministic pass: disp 0.4 -> 1 / (0.1 + 0.9 * 0.4) m, no spread
    assert torch.allclose(out["depth"], torch.full((1, 1, 4, 6), 1 / 0.46))
    assert torch.equal(out["uncertainty"], torch.zeros(1, 1, 4, 6))


def test_a_file_asking_for_outside_normalisation_is_refused():
    """Normalisation happens once, in the encoder: metadata mean/std other than the identity would be ignored."""
    with pytest.raises(ValueError, match=r"metadata mean \(0\.1, 0\.2, 0\.3\).*expected mean \(0, 0, 0\)"):
        TeacherWrapper((ConstantDispNet(0.4, 0.0), metadata(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))),
                       num_samples=1)


def test_the_teacher_network_sees_each_pixel_normalised_exactly_once():
    """A real ViT teacher: its patch embedding receives (rgb - 0.5) / 0.5 (timm's ViT mean/std, by hand).

    Pixels 0.1 / 0.3 / 0.9 are far from the fixed point of (x - m) / s (x = m / (1 - s) = 1.0), so
    leaving normalisation out (0.1) or applying it twice (-1.6) gives another input.
    """
    model = tiny_ms_dpt()
    meta = ModelMetadata.from_model(model, input_height=32, input_width=64, min_depth=0.1, max_depth=100.0,
                                    scale_kind="metric", focal_length_px=None)
    teacher = TeacherWrapper((model, meta), num_samples=1)
    seen = {}
    handle = model.encoder.body.patch_embed.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0]))
    image = torch.empty(1, 3, 32, 64)
    for channel, value in enumerate((0.1, 0.3, 0.9)):
        image[:, channel] = value
    try:
        depth = teacher.predict(image)["depth"]
    finally:
        handle.remove()
    expected = torch.tensor([-0.8, -0.4, 0.8]).view(1, 3, 1, 1).expand(1, 3, 32, 64)
    assert torch.allclose(seen["x"], expected, atol=1e-6)
    # and the teacher's depth is the network's own on the [0, 1] image (nothing normalised before it)
    with torch.no_grad():
        direct = teacher.model(image)["disp"][0]
    assert torch.allclose(depth, 1.0 / (1 / 100.0 + (1 / 0.1 - 1 / 100.0) * direct), rtol=1e-5)


def test_teacher_is_frozen_and_stays_in_eval_mode():
    net = ConstantDispNet(0.4, 0.3)
    teacher = TeacherWrapper((net, metadata()), num_samples=4)
    assert all(not p.requires_grad for p in teacher.parameters())
    owner = nn.ModuleDict({"teacher": teacher, "student": nn.Conv2d(3, 1, 1)})
    owner.train()  # the trainer puts the whole task in train mode
    assert owner["student"].training and not net.training and not net.bn.training and not net.site.training
    teacher.predict(torch.rand(2, 3, 8, 12))
    assert torch.equal(net.bn.running_mean, torch.zeros(3)) and int(net.bn.num_batches_tracked) == 0
    assert not net.training and not net.site.training  # the MC site is active only inside predict
    with pytest.raises(ValueError, match="num_samples=4 needs Monte Carlo dropout sites"):
        TeacherWrapper((ConstantDispNet(0.4, 0.0), metadata()), num_samples=4)
    with pytest.raises(ValueError, match="num_samples: expected an integer >= 1"):
        TeacherWrapper((net, metadata()), num_samples=0)


def test_focal_correction_of_a_metric_teacher():
    net = ConstantDispNet(0.4, 0.0)
    meta = metadata(height=8, width=12, focal_length_px=100.0)
    image = torch.rand(2, 3, 16, 24)
    K = torch.eye(3).repeat(2, 1, 1)
    K[0, 0, 0], K[1, 0, 0] = 300.0, 200.0  # at width 24 -> 150 and 100 px at the teacher's width 12
    base = 1 / 0.46
    out = TeacherWrapper((net, meta), num_samples=1).predict(image, K)
    assert torch.allclose(out["depth"][0], torch.full((1, 16, 24), base * 1.5))
    assert torch.allclose(out["depth"][1], torch.full((1, 16, 24), base))
    off = TeacherWrapper((net, meta), num_samples=1, focal_correction=False).predict(image, K)
    assert torch.allclose(off["depth"], torch.full((2, 1, 16, 24), base))
    relative = TeacherWrapper((net, metadata(focal_length_px=100.0, scale_kind="relative")), num_samples=1)
    assert torch.allclose(relative.predict(image, K)["depth"], torch.full((2, 1, 16, 24), base))


def test_released_teacher_file_fingerprint(tmp_path):
    path = released_teacher(tmp_path / "teacher.safetensors")
    teacher = TeacherWrapper(path, num_samples=3)
    assert teacher.metadata.model_name == "ms_dpt_teacher" and teacher.input_size == (32, 64)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == digest
    out = teacher.predict(torch.rand(2, 3, 16, 32))
    assert out["depth"].shape == (2, 1, 16, 32) and bool((out["uncertainty"] > 0).any())
    # the file's network, not another: one deterministic pass equals the loaded network's own depth
    single = TeacherWrapper(path, num_samples=1)
    image = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        direct = tiny_ms_dpt(0).eval()(image)["disp"][0]
    assert torch.allclose(single.predict(image)["depth"], 1.0 / (1 / 100.0 + (1 / 0.1 - 1 / 100.0) * direct),
                          rtol=1e-5)
    # same bytes elsewhere -> same fingerprint; other weights or sample count -> another one
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    assert TeacherWrapper(copy, num_samples=3).fingerprint == teacher.fingerprint
    assert TeacherWrapper(path, num_samples=4).fingerprint != teacher.fingerprint
    other = released_teacher(tmp_path / "other.safetensors", seed=1)
    assert TeacherWrapper(other, num_samples=3).fingerprint != teacher.fingerprint
    resized = dataclasses.replace(teacher.metadata, input_height=64, input_width=128)
    assert TeacherWrapper((teacher.model, resized), num_samples=3).fingerprint != \
        TeacherWrapper((teacher.model, teacher.metadata), num_samples=3).fingerprint
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        TeacherWrapper(tmp_path / "missing.safetensors")

"""Model zoo: registry, output/feature contract of every registered model, weights loading, FLOPs, CLI."""
from __future__ import annotations

import argparse

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file

from kd_depth_core.models import (
    DEFAULT_STUDENT,
    count_flops,
    count_parameters,
    create_model,
    list_models,
    model_info,
    models_cli,
)
from kd_depth_core.models.flops import nearest_valid_size
from kd_depth_core.models.stereo import correlation_volume

HEIGHT, WIDTH = 64, 96
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Small configurations so every model runs forward + backward in well under a second.
TINY_KWARGS: dict[str, dict] = {
    "ms_dpt_teacher": {"backbone": "vit_tiny_patch16_224", "depth": 4, "embed_dim": 64, "num_heads": 2,
                       "img_size": (HEIGHT, WIDTH), "features": 16},
    "stereo_teacher": {"backbone": "lcnet_050", "max_disparity": 32, "aggregation_channels": 16, "refine_channels": 8},
    "pose_resnet18": {"backbone": "lcnet_050"},
}
DEPTH_FAMILIES = {"baseline", "student", "teacher"}


def _check_disp(out: dict, batch: int) -> None:
    disp = out["disp"]
    assert len(disp) == 4
    for scale, d in enumerate(disp):
        assert d.shape == (batch, 1, HEIGHT >> scale, WIDTH >> scale)
        assert 0.0 <= float(d.detach().min()) and float(d.detach().max()) <= 1.0


def _check_features(model: nn.Module, features: list[torch.Tensor], batch: int) -> None:
    assert len(features) == len(model.feature_info)
    for feature, info in zip(features, model.feature_info):
        assert feature.shape == (batch, info["num_chs"], HEIGHT // info["reduction"], WIDTH // info["reduction"])


def _check_all_parameters_get_gradients(model: nn.Module) -> None:
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_registry_has_the_model_zoo() -> None:
    students = {"student_mobilenetv3", "student_mobilenetv4", "student_lcnet", "student_efficientnet_lite"}
    assert {"resnet18_md2", "ms_dpt_teacher", "stereo_teacher", "pose_resnet18"} | students <= set(list_models())
    assert set(list_models("student")) == students
    assert DEFAULT_STUDENT in list_models("student")
    info = model_info("resnet18_md2")
    assert info["family"] == "baseline" and info["defaults"] == {"uncertainty": False, "weights_path": None}


def test_create_model_rejects_unknown_names_listing_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet_nope'.*resnet18_md2.*student_lcnet"):
        create_model("resnet_nope")
    with pytest.raises(ValueError, match=r"'student_lcnet'.*valid parameters: backbone, decoder_channels"):
        create_model("student_lcnet", num_layers=3)
    with pytest.raises(ValueError, match=r"channels: expected 4 widths \(strides 2 .. 16\), got 2"):
        create_model("student_lcnet", backbone="lcnet_050", decoder_channels=(8, 16))
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        list_models("nope")
    with pytest.raises(ValueError, match="backbone 'not_a_net' is not a timm model"):
        create_model("student_lcnet", backbone="not_a_net")


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_forward_backward_and_feature_contract(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, **TINY_KWARGS.get(name, {}))
    assert model.model_spec["name"] == name
    model.train()
    batch = 2
    family = model_info(name)["family"]
    inputs = [torch.rand(batch, 3, HEIGHT, WIDTH) for _ in model.input_names]
    if family in DEPTH_FAMILIES or family == "stereo_teacher":
        assert HEIGHT % model.size_multiple == 0 and WIDTH % model.size_multiple == 0
        out = model(*inputs, return_features=True)
        _check_disp(out, batch)
        _check_features(model, out["features"], batch)
        assert model.encoder.feature_info == model.feature_info
        loss = sum(d.mean() for d in out["disp"])
        if family == "stereo_teacher":
            assert out["log_sigma"].shape == (batch, 1, HEIGHT, WIDTH)
            loss = loss + out["log_sigma"].mean()
        else:
            assert "log_sigma" not in out
        assert "features" not in model(*inputs)
    elif family == "pose":
        pose = model(*inputs)
        assert pose.shape == (batch, 6)
        loss = pose.sum()
    else:
        pytest.skip(f"family {family!r} has no output contract checked here")
    loss.backward()
    _check_all_parameters_get_gradients(model)


@pytest.mark.parametrize("name", ["student_lcnet", "ms_dpt_teacher"])
def test_disparity_stays_float32_under_bf16_autocast(name: str) -> None:
    """bf16 keeps 8 bits of a sigmoid disparity (0.4 % of depth): both decoders apply it in fp32."""
    torch.manual_seed(0)
    model = create_model(name, **TINY_KWARGS.get(name, {})).eval()
    image = torch.rand(1, 3, HEIGHT, WIDTH)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        disp = model(image)["disp"]
    assert all(d.dtype == torch.float32 for d in disp)
    # fp32 carries more than bf16's 256 levels per octave: the finest map is not on bf16's grid
    finest = disp[0].flatten()
    assert not torch.equal(finest, finest.to(torch.bfloat16).float())


def test_model_spec_rebuilds_the_same_network() -> None:
    model = create_model("student_lcnet", backbone="lcnet_050", uncertainty=True).eval()
    spec = model.model_spec
    assert spec == {"name": "student_lcnet", "kwargs": {
        "backbone": "lcnet_050", "decoder_channels": (24, 32, 48, 64), "uncertainty": True}}
    rebuilt = create_model(spec["name"], **spec["kwargs"]).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    image = torch.rand(1, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        a, b = model(image), rebuilt(image)
    assert a["log_sigma"].shape == (1, 1, HEIGHT, WIDTH)
    assert torch.equal(a["disp"][0], b["disp"][0]) and torch.equal(a["log_sigma"], b["log_sigma"])


def test_default_student_has_at_most_a_quarter_of_the_baseline_parameters() -> None:
    student = count_parameters(create_model(DEFAULT_STUDENT))
    baseline = count_parameters(create_model("resnet18_md2"))
    assert baseline > 14e6  # Monodepth2 ResNet18 depth net: 11.2 M encoder + 3.2 M decoder
    assert student <= 0.25 * baseline


def test_input_size_and_shape_errors_name_the_input() -> None:
    model = create_model("student_lcnet", backbone="lcnet_050")
    with pytest.raises(ValueError, match=r"image: height and width must be multiples of 32.*64x80"):
        model(torch.rand(1, 3, 64, 80))
    with pytest.raises(ValueError, match=r"image: expected shape \(B,3,H,W\)"):
        model(torch.rand(1, 1, 64, 64))
    vit = create_model("ms_dpt_teacher", **TINY_KWARGS["ms_dpt_teacher"])
    assert vit.size_multiple == 16  # lcm(patch 16, stride 8 of the coarsest output)
    with pytest.raises(ValueError, match=r"image: height and width must be multiples of 16.*64x72"):
        vit(torch.rand(1, 3, 64, 72))


def test_stereo_teacher_uses_the_right_image() -> None:
    torch.manual_seed(0)
    model = create_model("stereo_teacher", **TINY_KWARGS["stereo_teacher"]).eval()
    left, right = torch.rand(1, 3, HEIGHT, WIDTH), torch.rand(1, 3, HEIGHT, WIDTH, requires_grad=True)
    model(left, right)["disp"][0].sum().backward()
    assert float(right.grad.abs().sum()) > 0  # the disparity depends on the right view
    # the returned features carry the matching probabilities at stride 4: with block matching over 1-px
    # candidates (max_disparity + 1), without it over the learned volume's max_disparity / 4 + 1
    volumes = {info["reduction"]: info["num_chs"] for info in model.feature_info}
    backbone = {info["reduction"]: info["num_chs"] for info in model.encoder.backbone_feature_info}
    assert {r: volumes[r] - backbone[r] for r in volumes} == {2: 0, 4: 33, 8: 0, 16: 0, 32: 0}
    plain = create_model("stereo_teacher", **TINY_KWARGS["stereo_teacher"], block_matching=0)
    assert {i["reduction"]: i["num_chs"] for i in plain.feature_info}[4] - backbone[4] == 9
    with pytest.raises(ValueError, match="left .* and right .* must have the same shape"):
        model(left, torch.rand(1, 3, HEIGHT, 2 * WIDTH))


def test_weights_path_initialises_the_encoder_and_is_not_recorded(tmp_path) -> None:
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file(reference.state_dict(), str(path))
    model = create_model("resnet18_md2", weights_path=str(path))
    assert torch.equal(model.encoder.body.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert model.model_spec["kwargs"] == {"uncertainty": False}
    # the 3-channel first conv is adapted to the pose net's 6 channels by timm
    pose = create_model("pose_resnet18", weights_path=str(path))
    assert pose.encoder.body.conv1.weight.shape == (64, 6, 7, 7)
    assert torch.equal(pose.encoder.body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    with pytest.raises(FileNotFoundError, match=r"weights_path '.*missing.pth' does not exist"):
        create_model("resnet18_md2", weights_path=str(tmp_path / "missing.pth"))
    torch.save({"state_dict": {"foo": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other.pth' does not fit backbone 'resnet18'"):
        create_model("resnet18_md2", weights_path=str(tmp_path / "other.pth"))


def test_correlation_volume_matches_hand_computed_values() -> None:
    left = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    right = torch.tensor([10.0, 20.0, 30.0, 40.0]).view(1, 1, 1, 4)
    # volume[d, u] = left[u] * right[u - d], 0 where u - d < 0
    expected = torch.tensor([[10.0, 40.0, 90.0, 160.0], [0.0, 20.0, 60.0, 120.0], [0.0, 0.0, 30.0, 80.0]])
    assert torch.equal(correlation_volume(left, right, 3)[0, :, 0], expected)
    # a right view shifted by 2 px peaks at disparity 2 where the match exists (unit feature vectors:
    # the self-match is the largest dot product)
    features = torch.nn.functional.normalize(torch.randn(1, 8, 3, 12, generator=torch.Generator().manual_seed(0)),
                                             dim=1)
    shifted = torch.cat([features[..., 2:], torch.zeros(1, 8, 3, 2)], dim=-1)  # right[u] = left[u + 2]
    volume = correlation_volume(features, shifted, 5)
    assert torch.equal(volume[..., 2:].argmax(dim=1), torch.full((1, 3, 10), 2))


def test_flops_count_a_convolution_by_hand_and_sizes_snap() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # 8 outputs x 3 inputs x 9 taps x 16 x 16 pixels multiply-adds, 2 FLOPs each
    assert count_flops(conv, (torch.rand(1, 3, 16, 16),)) == 2 * 8 * 3 * 9 * 16 * 16
    assert nearest_valid_size(192, 644, 16) == (192, 640)
    assert nearest_valid_size(196, 10, 56) == (224, 56)


def test_models_command_lists_family_params_and_gflops(capsys) -> None:
    parser = argparse.ArgumentParser()
    models_cli.add_arguments(parser)
    assert models_cli.run(parser.parse_args(["--family", "student", "--height", "64", "--width", "90"])) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.startswith("student_")}
    assert set(rows) == set(list_models("student"))
    params = count_parameters(create_model("student_lcnet")) / 1e6
    assert rows["student_lcnet"][1] == "student" and float(rows["student_lcnet"][2]) == round(params, 2)
    assert float(rows["student_lcnet"][3]) > 0 and rows["student_lcnet"][4] == "96x64*"


def test_models_command_counts_the_discriminator_and_stars_only_snapped_rows(capsys):
    """The two-input discriminator (depth + image) is counted, not reported as a ValueError; the '*' note is
    printed only when a row is starred; a bad size is one line and exit 2."""
    parser = argparse.ArgumentParser()
    models_cli.add_arguments(parser)
    assert models_cli.run(parser.parse_args(["--family", "discriminator", "--height", "64", "--width", "96"])) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith("transformer_discriminator"))
    assert float(row[3]) > 0 and row[4] == "96x64", out
    assert "not counted" not in out and "Error" not in out and "*" not in out, out
    assert models_cli.run(parser.parse_args(["--family", "discriminator", "--height", "0"])) == 2
    assert "--height/--width" in capsys.readouterr().err

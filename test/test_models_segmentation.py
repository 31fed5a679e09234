"""The segmentation teacher (registry, shapes, gradients, local weights) and the depth->segmentation translator."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from kd_depth_core.data.synthetic.world import SEMANTIC_CLASSES
from kd_depth_core.models import create_model, list_models, model_info
from kd_depth_core.models import segmentation as _segmentation  # noqa: F401  (registers segmentation_teacher)
from kd_depth_core.models.io import ModelMetadata, load_model, save_model
from kd_depth_core.models.translator import DepthToSegTranslator

TINY = {"backbone": "lcnet_050", "decoder_channels": 8}
H, W = 64, 96


def test_segmentation_teacher_is_registered_with_synthetic_classes_by_default():
    assert "segmentation_teacher" in list_models("segmentation")
    info = model_info("segmentation_teacher")
    assert tuple(info["defaults"]["class_names"]) == SEMANTIC_CLASSES and info["defaults"]["weights_path"] is None
    model = create_model("segmentation_teacher", **TINY, class_names=["a", "b", "c"])
    assert model.num_classes == 3 and model.class_names == ("a", "b", "c") and model.size_multiple == 32
    assert model.model_spec["kwargs"]["class_names"] == ["a", "b", "c"]  # rebuildable: travels in the metadata
    with pytest.raises(ValueError, match="class_names: expected a list of distinct class names"):
        create_model("segmentation_teacher", **TINY, class_names=["a", "a"])


def test_forward_shapes_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = create_model("segmentation_teacher", **TINY).train()
    image = torch.rand(2, 3, H, W)
    logits = model(image)["logits"]
    assert logits.shape == (2, len(SEMANTIC_CLASSES), H, W)
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 12, (2, H, W))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:5]
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 60, 96))


def test_local_whole_network_weights_load_and_mismatches_are_named(tmp_path):
    torch.manual_seed(1)
    trained = create_model("segmentation_teacher", **TINY).eval()
    path = tmp_path / "seg.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    loaded = create_model("segmentation_teacher", **TINY, weights_path=str(path)).eval()
    image = torch.rand(1, 3, H, W)
    torch.testing.assert_close(loaded(image)["logits"], trained(image)["logits"])
    assert "weights_path" not in loaded.model_spec["kwargs"]
    with pytest.raises(ValueError, match=r"seg.safetensors'?: the classifier predicts 12 classes but class_names "
                                         r"lists 3"):
        create_model("segmentation_teacher", **TINY, class_names=["a", "b", "c"], weights_path=str(path))
    with pytest.raises(ValueError, match="does not fit this segmentation network"):
        create_model("segmentation_teacher", backbone="lcnet_050", decoder_channels=16, weights_path=str(path))
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_model("segmentation_teacher", **TINY, weights_path=str(tmp_path / "nope.safetensors"))


def test_backbone_only_weights_initialise_the_encoder(tmp_path):
    import timm

    torch.manual_seed(2)
    backbone = timm.create_model("resnet18", pretrained=False)  # an ImageNet classifier's state dict
    path = tmp_path / "resnet18_imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(path))
    model = create_model("segmentation_teacher", backbone="resnet18", decoder_channels=8, weights_path=str(path))
    stem = model.encoder.body.state_dict()["conv1.weight"]
    torch.testing.assert_close(stem, backbone.state_dict()["conv1.weight"])


def test_released_segmentation_model_round_trip(tmp_path):
    model = create_model("segmentation_teacher", **TINY, class_names=["x", "y"]).eval()
    meta = ModelMetadata.from_model(model, input_height=H, input_width=W, min_depth=0.1, max_depth=100.0,
                                    scale_kind="relative", focal_length_px=None)
    save_model(tmp_path / "teacher.safetensors", model, meta)
    loaded, loaded_meta = load_model(tmp_path / "teacher.safetensors")
    assert loaded.class_names == ("x", "y") and loaded_meta.model_name == "segmentation_teacher"
    image = torch.rand(1, 3, H, W)
    torch.testing.assert_close(loaded(image)["logits"], model(image)["logits"])


def _disps(batch: int = 2) -> list[torch.Tensor]:
    return [torch.rand(batch, 1, H // 2 ** s, W // 2 ** s) * 0.5 + 0.1 for s in range(4)]


def test_translator_shapes_scale_invariance_and_gradient():
    torch.manual_seed(3)
    translator = DepthToSegTranslator(num_groups=6, channels=8)
    disps = [d.requires_grad_() for d in _disps()]
    logits = translator(disps)
    assert logits.shape == (2, 6, H, W)
    # each disparity is divided by its own mean: a global depth scale does not change the output
    torch.testing.assert_close(translator([d * 3.0 for d in disps]), logits, rtol=1e-4, atol=1e-5)
    logits.logsumexp(1).mean().backward()
    assert all(d.grad is not None and d.grad.abs().sum() > 0 for d in disps)  # every scale is used
    with pytest.raises(ValueError, match="disps: expected 4 disparity scales, got 3"):
        translator(disps[:3])
    with pytest.raises(ValueError, match=r"disps\[1\]: expected shape \(B,1,h,w\)"):
        translator([disps[0], torch.rand(2, 2, 32, 48), disps[2], disps[3]])
    with pytest.raises(ValueError, match="num_groups: expected at least 2"):
        DepthToSegTranslator(num_groups=1)

"""MS-DPT with the DPT-Hybrid encoder (`stem=`): a CNN's stride-4/8 stages feed the decoder, a patch-1 ViT runs
on its stride-16 map; the plain ViT's decoder keeps its parameter names and shapes (old checkpoints load)."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from kd_depth_core.models import create_model
from kd_depth_core.models.registry import ModelConfigError

HEIGHT, WIDTH = 64, 96
TINY_VIT = {"backbone": "vit_tiny_patch16_224", "depth": 4, "embed_dim": 64, "num_heads": 2,
            "img_size": (HEIGHT, WIDTH), "features": 16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_hybrid_feature_contract_forward_backward() -> None:
    torch.manual_seed(0)
    model = create_model("ms_dpt_teacher", stem="resnet18", **TINY_VIT).train()
    # resnet18 layers 1-3 (64 ch at stride 4, 128 at 8, 256 at 16), the ViT's blocks 2 and 3 (of 4) at stride 16
    assert model.feature_info == [{"num_chs": 64, "reduction": 4}, {"num_chs": 128, "reduction": 8},
                                  {"num_chs": 64, "reduction": 16}, {"num_chs": 64, "reduction": 16}]
    assert model.encoder.hooks == (2, 3) and model.size_multiple == 16
    assert model.encoder.body.patch_embed.proj.kernel_size == (1, 1)
    assert model.encoder.body.patch_embed.proj.in_channels == 256
    image = torch.rand(2, 3, HEIGHT, WIDTH)
    out = model(image, return_features=True)
    assert [tuple(d.shape) for d in out["disp"]] == [(2, 1, HEIGHT >> s, WIDTH >> s) for s in range(4)]
    assert [tuple(f.shape) for f in out["features"]] == [(2, 64, 16, 24), (2, 128, 8, 12), (2, 64, 4, 6), (2, 64, 4, 6)]
    sum(d.mean() for d in out["disp"]).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    # the stem's maps are already at the decoder's strides 4 and 8: no resampling there, 2x down after the ViT
    kinds = [type(block.resample).__name__ for block in model.decoder.reassemble]
    assert kinds == ["Identity", "Identity", "Identity", "Conv2d"]
    assert model.model_spec["kwargs"]["stem"] == "resnet18"
    rebuilt = create_model("ms_dpt_teacher", **model.model_spec["kwargs"])
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_the_fine_disparity_sees_the_stride4_stage_directly() -> None:
    """Zeroing the stride-4 stem map changes the full-resolution output: the detail path exists."""
    torch.manual_seed(0)
    model = create_model("ms_dpt_teacher", stem="resnet18", dropout=0.0, **TINY_VIT).eval()
    image = torch.rand(1, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        reference = model(image)["disp"][0]
        handle = model.decoder.reassemble[0].register_forward_pre_hook(lambda _m, args: (torch.zeros_like(args[0]),))
        without = model(image)["disp"][0]
        handle.remove()
    assert float((reference - without).abs().max()) > 1e-4


def test_plain_vit_decoder_keeps_its_parameter_layout() -> None:
    """Checkpoints of the plain ViT MS-DPT from before the hybrid still load: same names, same shapes."""
    model = create_model("ms_dpt_teacher", **TINY_VIT)
    state = model.state_dict()
    channels = (8, 16, 32, 64)  # embed_dim / 8, / 4, / 2, / 1
    assert state["decoder.reassemble.0.project.weight"].shape == (channels[0], 64, 1, 1)
    assert state["decoder.reassemble.0.resample.weight"].shape == (channels[0], channels[0], 4, 4)
    assert state["decoder.reassemble.1.resample.weight"].shape == (channels[1], channels[1], 2, 2)
    assert "decoder.reassemble.2.resample.weight" not in state
    assert state["decoder.reassemble.3.resample.weight"].shape == (channels[3], channels[3], 3, 3)


def test_hybrid_errors_name_the_argument(tmp_path) -> None:
    with pytest.raises(ModelConfigError, match=r"stem 'resnet18' with stem_indices \[2, 3, 4\]: expected stages "
                                               r"at strides \[4, 8, 16\], got \[8, 16, 32\]"):
        create_model("ms_dpt_teacher", stem="resnet18", stem_indices=(2, 3, 4), **TINY_VIT)
    with pytest.raises(ModelConfigError, match="weights_path .* pass stem_weights_path"):
        create_model("ms_dpt_teacher", stem="resnet18", weights_path=str(tmp_path / "vit.safetensors"), **TINY_VIT)
    with pytest.raises(ValueError, match=r"hooks \(1, 2, 3\): expected 2 block indices of the 4 blocks"):
        create_model("ms_dpt_teacher", stem="resnet18", hooks=(1, 2, 3), **TINY_VIT)
    with pytest.raises(ValueError, match=r"hooks \(0, 1, 2, 9\): expected 4 block indices of the 4 blocks"):
        create_model("ms_dpt_teacher", hooks=(0, 1, 2, 9), **TINY_VIT)
    with pytest.raises(ModelConfigError, match="backbone 'resnet_nope' is not a timm model"):
        create_model("ms_dpt_teacher", stem="resnet_nope", **TINY_VIT)


def test_stem_weights_path_initialises_the_stem_and_is_not_recorded(tmp_path) -> None:
    torch.manual_seed(1)
    imagenet = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "resnet18.safetensors"
    save_file(imagenet, str(path))
    model = create_model("ms_dpt_teacher", stem="resnet18", stem_weights_path=str(path), **TINY_VIT)
    assert torch.equal(model.encoder.stem.layer2[0].conv1.weight, imagenet["layer2.0.conv1.weight"])
    assert "stem_weights_path" not in model.model_spec["kwargs"]

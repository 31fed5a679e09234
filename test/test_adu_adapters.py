"""Feature adapters (distill/adapters.py): stage pairing from feature_info, teacher-shaped outputs."""
from __future__ import annotations

import pytest
import torch

from kd_depth_core.distill.adapters import FeatureAdapter, FeatureAdapters, pair_stages
from kd_depth_core.models import create_model

STUDENT_INFO = [{"num_chs": 16, "reduction": 2}, {"num_chs": 24, "reduction": 4}, {"num_chs": 40, "reduction": 8},
                {"num_chs": 112, "reduction": 16}, {"num_chs": 160, "reduction": 32}]
TEACHER_INFO = [{"num_chs": 64, "reduction": 2}, {"num_chs": 68, "reduction": 4}, {"num_chs": 130, "reduction": 8},
                {"num_chs": 257, "reduction": 16}]  # no stride 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_pair_stages_default_explicit_and_errors():
    assert pair_stages(STUDENT_INFO, TEACHER_INFO) == [(4, 4), (8, 8), (16, 16)]  # shared strides >= 4
    assert pair_stages(STUDENT_INFO, TEACHER_INFO, min_reduction=2) == [(2, 2), (4, 4), (8, 8), (16, 16)]
    assert pair_stages(STUDENT_INFO, TEACHER_INFO, [[32, 16], (8, 4)]) == [(32, 16), (8, 4)]
    with pytest.raises(ValueError, match=r"pairs\[0\]: the teacher has no feature map at stride 32; "
                                         r"its strides: \[2, 4, 8, 16\]"):
        pair_stages(STUDENT_INFO, TEACHER_INFO, [[32, 32]])
    with pytest.raises(ValueError, match=r"pairs\[1\]: the student has no feature map at stride 64"):
        pair_stages(STUDENT_INFO, TEACHER_INFO, [[8, 8], [64, 16]])
    with pytest.raises(ValueError, match=r"pairs\[0\]: expected \[student_reduction, teacher_reduction\]"):
        pair_stages(STUDENT_INFO, TEACHER_INFO, [[8]])
    with pytest.raises(ValueError, match="a pairing is repeated"):
        pair_stages(STUDENT_INFO, TEACHER_INFO, [[8, 8], [8, 8]])
    with pytest.raises(ValueError, match="no stride >= 4 shared by the student"):
        pair_stages(STUDENT_INFO, [{"num_chs": 8, "reduction": 64}])


@pytest.mark.parametrize("pairs", [None, [[32, 16], [16, 16], [4, 8]], [[2, 16], [32, 2]]])
def test_adapters_give_teacher_shaped_features_for_every_pairing(pairs):
    torch.manual_seed(0)
    adapters = FeatureAdapters(STUDENT_INFO, TEACHER_INFO, pairs)
    height, width = 64, 96  # student input; the teacher runs at another size (its maps are 1.5x larger)
    student = [torch.randn(2, info["num_chs"], height // info["reduction"], width // info["reduction"])
               for info in STUDENT_INFO]
    teacher = [torch.randn(2, info["num_chs"], 96 // info["reduction"], 144 // info["reduction"])
               for info in TEACHER_INFO]
    targets = [teacher[j] for j in adapters.teacher_indices]
    adapted = adapters(student, [t.shape[-2:] for t in targets])
    assert len(adapted) == len(adapters) == len(adapters.pairs)
    for out, target in zip(adapted, targets):
        assert out.shape == target.shape
    # trainable: gradients reach every adapter
    sum(a.square().mean() for a in adapted).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters.parameters())
    with pytest.raises(ValueError, match=f"teacher_sizes: expected {len(adapters)} sizes"):
        adapters(student, [])


def test_adapter_is_a_1x1_conv_then_a_resize():
    adapter = FeatureAdapter(2, 3)
    with torch.no_grad():
        adapter.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]).view(3, 2, 1, 1))
        adapter.proj.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    features = torch.stack([torch.full((4, 6), 3.0), torch.full((4, 6), 5.0)])[None]  # constant channels 3 and 5
    out = adapter(features, (2, 3))
    assert out.shape == (1, 3, 2, 3)
    assert torch.allclose(out, torch.tensor([3.0, 11.0, 7.0]).view(1, 3, 1, 1).expand(1, 3, 2, 3))
    assert adapter(features, (4, 6)).shape == (1, 3, 4, 6)  # same size: no resize


def test_adapters_on_real_student_and_stereo_teacher_features():
    torch.manual_seed(0)
    student = create_model("student_lcnet", backbone="lcnet_050")
    teacher = create_model("stereo_teacher", backbone="resnet10t", max_disparity=16, match_channels=8,
                           aggregation_channels=16, refine_channels=8, uncertainty=True)
    adapters = FeatureAdapters(student.feature_info, teacher.feature_info)
    assert adapters.pairs == [(4, 4), (8, 8), (16, 16), (32, 32)]
    # the teacher's fused maps carry the correlation-volume channels on top of the backbone's
    assert adapters.teacher_channels == [info["num_chs"] for info in teacher.feature_info[1:]]
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        student_features = student(image, return_features=True)["features"]
        teacher_features = teacher(image, image, return_features=True)["features"]
        adapted = adapters(student_features, [teacher_features[j].shape[-2:] for j in adapters.teacher_indices])
    for out, j in zip(adapted, adapters.teacher_indices):
        assert out.shape == teacher_features[j].shape

"""Class grouping for X-Distill: validation errors name the class, LUT on hand-made label maps, shipped files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from kd_depth_core.data.synthetic.world import SEMANTIC_CLASSES
from kd_depth_core.distill.grouping import ClassGrouping, GroupingError, list_groupings, load_grouping

SMALL = {"name": "small", "classes": ["road", "car", "sky", "tree"],
         "groups": {"ground": ["road"], "object": ["car", "tree"], "sky": ["sky"]}}


def write(tmp_path, data) -> str:
    path = tmp_path / "grouping.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_unmapped_class_is_rejected_by_name(tmp_path):
    data = {**SMALL, "groups": {"ground": ["road"], "object": ["car"], "sky": ["sky"]}}
    path = write(tmp_path, data)
    with pytest.raises(GroupingError, match=rf"{path}: class 'tree' is not mapped to any group"):
        load_grouping(path)


def test_doubly_mapped_class_is_rejected_naming_both_groups(tmp_path):
    data = {**SMALL, "groups": {"ground": ["road", "car"], "object": ["car", "tree"], "sky": ["sky"]}}
    with pytest.raises(GroupingError, match=r"class 'car' is mapped more than once \(in groups 'ground' and 'object'\)"):
        load_grouping(write(tmp_path, data))
    twice = {**SMALL, "groups": {"ground": ["road"], "object": ["car", "tree", "car"], "sky": ["sky"]}}
    with pytest.raises(GroupingError, match=r"class 'car' is mapped more than once \(twice in group 'object'\)"):
        ClassGrouping.from_mapping(twice, "inline")


def test_other_malformed_groupings_name_the_field(tmp_path):
    cases = [
        ({**SMALL, "groups": {**SMALL["groups"], "ground": ["road", "cars"]}}, r"groups.ground: unknown class 'cars'"),
        ({**SMALL, "classes": ["road", "car", "sky", "car"]}, r"classes: class 'car' is listed twice \(ids 1 and 3\)"),
        ({**SMALL, "ignore_index": 2}, r"ignore_index: expected an integer in 4..65535"),
        ({**SMALL, "group": {}}, r"unknown key\(s\) group; valid keys"),
        ({**SMALL, "groups": {"ground": []}}, r"groups.ground: expected a non-empty list"),
        ({**SMALL, "classes": []}, r"classes: expected a non-empty list"),
    ]
    for data, message in cases:
        with pytest.raises(GroupingError, match=message):
            ClassGrouping.from_mapping(data, "inline.yaml")
    with pytest.raises(GroupingError, match="no shipped grouping of that name; shipped: cityscapes, synthetic"):
        load_grouping("kitti")
    with pytest.raises(GroupingError, match="grouping file .*missing.yaml not found"):
        load_grouping(tmp_path / "missing.yaml")


def test_group_labels_on_a_hand_made_label_map():
    grouping = ClassGrouping.from_mapping(SMALL, "inline")
    assert grouping.group_names == ("ground", "object", "sky") and grouping.class_to_group == (0, 1, 2, 1)
    labels = np.array([[0, 1, 2, 3],
                       [3, 3, 255, 0],
                       [7, -1, 1, 2]], dtype=np.int64)  # 7 and -1 are not classes
    expected = np.array([[0, 1, 2, 1],
                         [1, 1, 255, 0],
                         [255, 255, 1, 2]])
    np.testing.assert_array_equal(grouping.group_labels(labels), expected)
    np.testing.assert_array_equal(grouping.group_labels(labels.astype(np.uint8)[:2]), expected[:2])
    grouped = grouping.group_labels(torch.from_numpy(labels)[None])
    assert grouped.dtype == torch.int64 and grouped.shape == (1, 3, 4)
    np.testing.assert_array_equal(grouped[0].numpy(), expected)
    with pytest.raises(TypeError, match="integer"):
        grouping.group_labels(torch.zeros(2, 2))


def test_group_probabilities_sum_member_classes():
    grouping = ClassGrouping.from_mapping(SMALL, "inline")
    # one pixel with class probabilities road 0.4, car 0.3, sky 0.1, tree 0.2 (logits = log p)
    logits = torch.log(torch.tensor([0.4, 0.3, 0.1, 0.2])).view(1, 4, 1, 1)
    probs = grouping.group_probabilities(logits)[0, :, 0, 0]
    torch.testing.assert_close(probs, torch.tensor([0.4, 0.5, 0.1]))  # the class argmax (road) loses to object
    with pytest.raises(ValueError, match=r"expected shape \(B,4,H,W\)"):
        grouping.group_probabilities(torch.zeros(1, 3, 2, 2))


def test_class_names_check_names_the_mismatch():
    grouping = ClassGrouping.from_mapping(SMALL, "inline")
    grouping.check_class_names(["road", "car", "sky", "tree"], "teacher")
    with pytest.raises(GroupingError, match="teacher: class id 2 is 'vegetation' but grouping inline has 'sky'"):
        grouping.check_class_names(["road", "car", "vegetation", "tree"], "teacher")
    with pytest.raises(GroupingError, match="teacher: 5 classes but grouping inline has 4; teacher also lists 'bus'"):
        grouping.check_class_names(["road", "car", "sky", "tree", "bus"], "teacher")


def test_shipped_groupings():
    assert list_groupings() == ["cityscapes", "synthetic"]
    synthetic = load_grouping("synthetic")
    synthetic.check_class_names(SEMANTIC_CLASSES, "synthetic world")
    assert set(synthetic.members("ground")) == {"road", "sidewalk", "lane_marking", "floor"}
    cityscapes = load_grouping("cityscapes")
    assert cityscapes.num_classes == 19 and cityscapes.num_groups == 7
    assert cityscapes.class_names[:3] == ("road", "sidewalk", "building") and cityscapes.class_names[-1] == "bicycle"
    assert cityscapes.members("vehicle") == ("car", "truck", "bus", "train", "motorcycle", "bicycle")
    assert cityscapes.group_labels(np.array([0, 10, 18, 255])).tolist() == [0, 4, 6, 255]
    # round trip through the YAML form
    again = ClassGrouping.from_mapping(cityscapes.to_dict(), "again")
    assert again.class_to_group == cityscapes.class_to_group and math.isclose(again.ignore_index, 255)

"""Evaluation resizes the prediction in disparity, at the model's resolution (issue 21, item 1).

A hand-made two-plane scene: a near plane (5 m) on the left, a far one (50 m) on the right, imaged
at 32x64 with its ground truth at the same size. ``TwoPlaneNet`` reads the red channel (255 = near)
and runs at 8x16, so its output is an exact 5 m / 50 m step (the 4x area-downsampled image has a
clean edge). Upsampled x4 to the ground truth, the boundary pixels differ with the resize: linear
in disparity stays near the near plane (Monodepth2 resizes the disparity), linear in depth smears
them to 10-30 m. The protocol (and the predictor's own output resize) must give the former.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from kd_depth_core.eval.evaluate import evaluate
from kd_depth_core.eval.protocols import get_protocol, resize_prediction
from kd_depth_core.inference import DepthPredictor
from kd_depth_core.models.io import ModelMetadata

MIN_DEPTH, MAX_DEPTH = 0.1, 100.0
NEAR, FAR = 5.0, 50.0
NET_H, NET_W = 8, 16
IMG_H, IMG_W = 32, 64
EDGE = 24  # image column of the near/far edge (a multiple of 4: net column 6)
MODEL_NAME = "test_two_plane"


def sigmoid_disp(depth: float) -> float:
    """The sigmoid-space disparity that ``geometry.disp_to_depth`` maps to ``depth``."""
    return (1.0 / depth - 1.0 / MAX_DEPTH) / (1.0 / MIN_DEPTH - 1.0 / MAX_DEPTH)


class TwoPlaneNet(nn.Module):
    """disp = far + (near - far) * red: depth NEAR where the red channel is 1, FAR where it is 0."""

    input_names = ("image",)
    size_multiple = 8
    has_uncertainty = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("levels", torch.tensor([sigmoid_disp(FAR), sigmoid_disp(NEAR)]))

    def forward(self, image: torch.Tensor) -> dict:
        far, near = self.levels[0], self.levels[1]
        disp = far + (near - far) * image[:, :1]
        return {"disp": [disp] + [nn.functional.avg_pool2d(disp, 2 ** s) for s in range(1, 4)]}


def two_plane_metadata() -> ModelMetadata:
    return ModelMetadata.from_dict(dict(
        model_name=MODEL_NAME, model_kwargs={}, input_height=NET_H, input_width=NET_W, mean=(0, 0, 0),
        std=(1, 1, 1), size_multiple=8, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH, scale_kind="metric",
        focal_length_px=None, stereo=False, has_uncertainty=False, training_config={}, created_by="test"))


def two_plane_scene() -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (32,64,3): red left of the edge, ground truth (32,64) metres: 5 m | 50 m)."""
    image = np.zeros((IMG_H, IMG_W, 3), np.uint8)
    image[:, :EDGE, 0] = 255
    gt = np.full((IMG_H, IMG_W), FAR, np.float32)
    gt[:, :EDGE] = NEAR
    return image, gt


def model_resolution_depth() -> np.ndarray:
    """What the network predicts at 8x16: the exact step."""
    depth = np.full((NET_H, NET_W), FAR)
    depth[:, :EDGE * NET_W // IMG_W] = NEAR
    return depth


def reference_scores(protocol) -> tuple[dict, dict]:
    """(metrics of the disparity-resized prediction, metrics of the depth-resized one), by hand."""
    _, gt = two_plane_scene()
    pred = model_resolution_depth()
    by_disparity = 1.0 / cv2.resize(1.0 / pred, (IMG_W, IMG_H), interpolation=cv2.INTER_LINEAR)
    by_depth = cv2.resize(pred, (IMG_W, IMG_H), interpolation=cv2.INTER_LINEAR)
    return protocol.score(gt, by_disparity).metrics, protocol.score(gt, by_depth).metrics


@pytest.fixture(scope="module")
def protocol():
    return get_protocol("sequence", median_scaling=False)


def test_the_two_resizes_score_the_scene_differently(protocol):
    by_disparity, by_depth = reference_scores(protocol)
    pred = model_resolution_depth()
    # the boundary pixels of the issue: 5.6 / 7.5 / 11.4 m in disparity, 10.6 / 21.9 / 33.1 m in depth
    in_disparity = resize_prediction(pred, (IMG_H, IMG_W))[0, EDGE - 2:EDGE + 1]
    in_depth = cv2.resize(pred, (IMG_W, IMG_H), interpolation=cv2.INTER_LINEAR)[0, EDGE - 2:EDGE + 1]
    assert in_disparity == pytest.approx([5.63, 7.55, 11.43], abs=0.01)
    assert in_depth == pytest.approx([10.63, 21.88, 33.13], abs=0.01)
    assert by_disparity["abs_rel"] < 0.5 * by_depth["abs_rel"]  # 0.030 vs 0.077
    assert by_disparity["rmse"] != pytest.approx(by_depth["rmse"], rel=0.05)


def test_evaluate_resizes_a_model_resolution_prediction_in_disparity(protocol):
    image, gt = two_plane_scene()
    result = evaluate(lambda img: model_resolution_depth(), [(image, gt, "scene")], protocol, progress=False)
    by_disparity, by_depth = reference_scores(protocol)
    for name in ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1"):
        assert result.mean[name] == pytest.approx(by_disparity[name], rel=1e-6, abs=1e-9), name
    assert result.mean["abs_rel"] != pytest.approx(by_depth["abs_rel"], rel=0.05)


@pytest.mark.parametrize("output", ["model", "input"])
def test_evaluate_with_the_real_predictor_scores_the_disparity_resize(protocol, output):
    """No stubs: DepthPredictor -> evaluate. At 'model' resolution the protocol resizes; at 'input' the
    predictor's own resize must be the same disparity-linear one (not bilinear in depth)."""
    predictor = DepthPredictor((TwoPlaneNet(), two_plane_metadata()), device="cpu", output=output)
    image, gt = two_plane_scene()
    raw = predictor.predict(image).depth
    assert raw.shape == ((NET_H, NET_W) if output == "model" else (IMG_H, IMG_W))
    result = evaluate(lambda img, K=None: predictor.predict(img, K=K), [(image, gt, "scene")], protocol,
                      progress=False)
    by_disparity, by_depth = reference_scores(protocol)
    for name in ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1"):
        assert result.mean[name] == pytest.approx(by_disparity[name], rel=1e-4, abs=1e-6), name
    assert result.mean["abs_rel"] != pytest.approx(by_depth["abs_rel"], rel=0.05)
    assert result.mean["rmse"] != pytest.approx(by_depth["rmse"], rel=0.05)


def test_predictor_output_resize_interpolates_disparity():
    predictor = DepthPredictor((TwoPlaneNet(), two_plane_metadata()), device="cpu")
    image, _ = two_plane_scene()
    depth = predictor.predict(image).depth
    expected = 1.0 / cv2.resize(1.0 / model_resolution_depth(), (IMG_W, IMG_H), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(depth, expected, rtol=1e-4)
    # an edge pixel lies between the planes in disparity: 1/z is the mean of 1/5 and 1/50 weights
    assert depth[0, EDGE - 1] < 2 * NEAR and depth.dtype == np.float32

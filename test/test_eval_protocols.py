"""Protocols (settings, overrides, Make3D crop, resizing) and the evaluate() loop with simple predictors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kd_depth_core.data.benchmarks import Sample
from kd_depth_core.eval.evaluate import evaluate
from kd_depth_core.eval.protocols import PROTOCOLS, center_crop, get_protocol, resize_prediction


def test_protocol_settings_match_the_published_protocols():
    kitti = get_protocol("kitti_eigen")
    assert (kitti.min_depth, kitti.max_depth, kitti.crop, kitti.median_scaling) == (1e-3, 80.0, "garg", True)
    assert kitti.expected_images == 697
    assert get_protocol("kitti_eigen_benchmark").expected_images == 652
    nyu = get_protocol("nyu")
    assert (nyu.max_depth, nyu.crop, nyu.expected_images) == (10.0, "nyu", 654)
    make3d = get_protocol("make3d")
    assert (make3d.max_depth, make3d.center_crop_aspect, make3d.rmse_log_base, make3d.resize) == (
        70.0, 2.0, 10.0, "nearest")
    assert get_protocol("sequence", max_depth=30.0).max_depth == 30.0
    assert set(PROTOCOLS) == {"kitti_eigen", "kitti_eigen_benchmark", "nyu", "make3d", "drivingstereo", "sequence"}


def test_unknown_protocol_or_setting_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown protocol 'kitty'.*kitti_eigen"):
        get_protocol("kitty")
    with pytest.raises(ValueError, match="unknown setting.*median_scale"):
        get_protocol("nyu", median_scale=False)
    with pytest.raises(ValueError, match="min_depth < max_depth"):
        get_protocol("nyu", max_depth=-1.0)


def test_median_scaling_can_be_switched_off_for_metric_models():
    gt, pred = np.full((4, 4), 2.0), np.full((4, 4), 1.0)
    assert get_protocol("sequence").score(gt, pred).metrics["abs_rel"] == 0.0
    off = get_protocol("sequence", median_scaling=False).score(gt, pred)
    assert off.metrics["abs_rel"] == pytest.approx(0.5) and off.scale_ratio == 1.0


def test_eigen_benchmark_scores_all_positive_ground_truth_without_crop_or_cap():
    protocol = get_protocol("kitti_eigen_benchmark", median_scaling=False)
    gt = np.array([[100.0, 0.0]])  # beyond 80 m is still scored; the prediction is clipped to 80
    score = protocol.score(gt, np.array([[120.0, 5.0]]))
    assert score.num_pixels == 1
    assert score.metrics["abs_rel"] == pytest.approx(0.2)
    # the Velodyne protocol drops the same pixel (gt >= 80)
    with pytest.raises(ValueError, match="no valid"):
        get_protocol("kitti_eigen", crop=None).score(gt, np.array([[120.0, 5.0]]))


def test_make3d_centre_crop_keeps_the_2_to_1_band_of_image_and_laser_grid():
    image = np.broadcast_to(np.arange(2272)[:, None, None], (2272, 1704, 3))  # row index as value
    gt = np.arange(55, dtype=np.float64)[:, None].repeat(305, axis=1)
    cropped_image, cropped_gt = center_crop(image, gt, 2.0)
    # 1704 / 2 = 852 rows, from (2272 - 852) // 2 = 710; grid: round(55 * 852 / 2272) = 21 rows from 17
    assert cropped_image.shape == (852, 1704, 3) and cropped_image[0, 0, 0] == 710
    assert cropped_gt.shape == (21, 305) and cropped_gt[0, 0] == 17 and cropped_gt[-1, 0] == 37


def test_make3d_scores_only_depths_below_70m_with_log10_rmse():
    protocol = get_protocol("make3d", median_scaling=False)
    score = protocol.score(np.array([[10.0, 75.0]]), np.array([[20.0, 75.0]]))
    assert score.num_pixels == 1  # C1: 75 m is not scored
    assert score.metrics["rmse_log"] == pytest.approx(math.log10(2.0))


def test_resize_interpolates_disparity_not_depth():
    pred = np.array([[1.0, 2.0]])  # disparity 1, 0.5
    resized = resize_prediction(pred, (1, 4), "linear_disparity")
    # cv2 bilinear, half-pixel centres: x=1 samples src 0.25 -> disp 0.75*1 + 0.25*0.5 = 0.875
    assert resized[0] == pytest.approx([1.0, 1 / 0.875, 1 / 0.625, 2.0])
    assert resize_prediction(pred, (1, 4), "nearest")[0] == pytest.approx([1.0, 1.0, 2.0, 2.0])
    assert resize_prediction(pred, (1, 2)) is not None and resize_prediction(pred, (1, 2))[0, 1] == 2.0


def _samples(count: int = 3, shape=(6, 8)) -> list[Sample]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        depth = rng.uniform(2.0, 30.0, size=shape).astype(np.float32)
        depth[0, :] = 0.0  # an invalid row
        image = rng.integers(0, 255, size=shape + (3,), dtype=np.uint8)
        samples.append(Sample(image, depth, f"frame_{i}", {"depth": depth}))
    return samples


def test_evaluate_with_a_scaled_oracle_predictor():
    samples = _samples()
    lookup = {s.image.tobytes(): s.depth for s in samples}

    def predict(image):
        return 0.5 * lookup[image.tobytes()].astype(np.float64), None  # right shape, wrong scale

    result = evaluate(predict, samples, get_protocol("sequence"), progress=False, num_visuals=2)
    assert result.mean["abs_rel"] == pytest.approx(0.0, abs=1e-9)
    assert result.scale_ratio["median"] == pytest.approx(2.0) and result.scale_ratio["std"] == pytest.approx(0.0)
    assert [row["name"] for row in result.per_image] == ["frame_0", "frame_1", "frame_2"]
    assert all(row["num_pixels"] == 5 * 8 for row in result.per_image)  # row 0 invalid
    assert result.uncertainty is None
    assert [v.name for v in result.visuals] == ["frame_0", "frame_2"]  # evenly spaced
    assert np.isnan(result.visuals[0].error[0, 0]) and result.visuals[0].error[1, 1] == pytest.approx(0.0)

    metric = evaluate(predict, samples, get_protocol("sequence", median_scaling=False), progress=False)
    assert metric.mean["abs_rel"] == pytest.approx(0.5)
    assert metric.scale_ratio is None


def test_evaluate_resizes_low_resolution_predictions_and_accepts_result_objects():
    class Prediction:
        def __init__(self, depth, uncertainty):
            self.depth, self.uncertainty = depth, uncertainty

    samples = [Sample(np.zeros((4, 8, 3), np.uint8), np.full((4, 8), 5.0, np.float32), "a", {})]
    result = evaluate(lambda image: Prediction(np.full((2, 4), 5.0), np.ones((2, 4))), samples,
                      get_protocol("sequence", median_scaling=False), progress=False)
    assert result.mean["abs_rel"] == pytest.approx(0.0)
    assert result.uncertainty is not None and result.uncertainty["num_images"] == 1
    assert "ause_abs_rel" in result.per_image[0]


def test_evaluate_names_the_image_without_valid_ground_truth():
    samples = _samples(2)
    samples[1] = Sample(samples[1].image, np.zeros_like(samples[1].depth), "empty_frame", {})
    with pytest.raises(ValueError, match="empty_frame"):
        evaluate(lambda image: np.ones(image.shape[:2]), samples, get_protocol("sequence"), progress=False)

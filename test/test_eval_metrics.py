"""Depth metrics on hand-worked arrays: every metric, median scaling, caps, crops, batches, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_depth_core.eval.metrics import (
    METRIC_NAMES,
    DepthMetricsAccumulator,
    EmptyMaskError,
    compute_depth_metrics,
    crop_box,
    crop_mask,
    depth_errors,
    scale_ratio_summary,
    score_image,
)

LN2 = math.log(2.0)


def test_every_metric_on_a_hand_worked_example():
    # gt = [1, 2, 4], pred = [2, 2, 2]
    m = compute_depth_metrics(np.array([[1.0, 2.0, 4.0]]), np.array([[2.0, 2.0, 2.0]]))
    assert m["abs_rel"] == pytest.approx((1 / 1 + 0 + 2 / 4) / 3)  # 0.5
    assert m["sq_rel"] == pytest.approx((1 / 1 + 0 + 4 / 4) / 3)  # 2/3
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert m["rmse_log"] == pytest.approx(LN2 * math.sqrt(2 / 3))  # natural log
    assert m["log10"] == pytest.approx(2 * math.log10(2) / 3)
    assert m["silog"] == pytest.approx(100 * LN2 * math.sqrt(2 / 3))  # mean(e) = 0 here
    # ratios max(gt/p, p/gt) = [2, 1, 2]: only the middle pixel is below 1.25, 1.5625 and 1.953125
    assert (m["a1"], m["a2"], m["a3"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert m["scale_ratio"] == 1.0 and m["num_images"] == 1
    assert set(METRIC_NAMES) <= set(m)


def test_delta_thresholds_are_strict_powers_of_1_25():
    # ratios 1.2, 1.5, 1.9, 2.5 -> below 1.25: 1; below 1.5625: 2; below 1.953125: 3
    m = depth_errors(np.ones(4), np.array([1.2, 1.5, 1.9, 2.5]))
    assert (m["a1"], m["a2"], m["a3"]) == pytest.approx((0.25, 0.5, 0.75))
    # the bound itself is not "below": a ratio of exactly 1.25 fails δ1
    assert depth_errors(np.array([1.0]), np.array([1.25]))["a1"] == 0.0


def test_silog_removes_a_global_scale_and_uses_the_variance_form():
    gt = np.array([1.0, 3.0, 7.0])
    m = depth_errors(gt, 2.0 * gt)  # e = ln 2 everywhere
    assert m["silog"] == pytest.approx(0.0, abs=1e-6)
    assert m["rmse_log"] == pytest.approx(LN2)
    # e = [ln2, -ln2]: mean(e^2) - mean(e)^2 = ln2^2 -> silog = 100 ln2 (the 0.5-weighted variant would differ)
    m = depth_errors(np.array([1.0, 1.0]), np.array([2.0, 0.5]))
    assert m["silog"] == pytest.approx(100 * LN2)


def test_rmse_log_base_10_for_make3d():
    m = compute_depth_metrics(np.array([[1.0, 2.0, 4.0]]), np.array([[2.0, 2.0, 2.0]]), rmse_log_base=10.0)
    assert m["rmse_log"] == pytest.approx(math.log10(2) * math.sqrt(2 / 3))


def test_median_scaling_returns_the_ratio_and_aligns_the_prediction():
    gt = np.array([[1.0, 2.0, 4.0]])
    pred = 0.25 * gt
    score = score_image(gt, pred, median_scaling=True)
    assert score.scale_ratio == pytest.approx(4.0)  # median(gt)=2 / median(pred)=0.5
    assert score.metrics["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert score.metrics["a1"] == 1.0
    # without scaling the same prediction is 75 % off everywhere
    assert score_image(gt, pred).metrics["abs_rel"] == pytest.approx(0.75)


def test_caps_clip_predictions_and_drop_ground_truth_outside_the_range():
    gt = np.array([[10.0, 50.0, 90.0, 0.0]])  # 90 m is beyond the 80 m cap, 0 is invalid
    pred = np.array([[100.0, 50.0, 1.0, 5.0]])
    score = score_image(gt, pred, min_depth=1e-3, max_depth=80.0)
    assert score.num_pixels == 2
    assert score.metrics["abs_rel"] == pytest.approx((70 / 10 + 0) / 2)  # 100 clipped to 80
    # predictions below min_depth are clipped up
    low = score_image(np.array([[1.0]]), np.array([[1e-6]]), min_depth=0.5, max_depth=80.0)
    assert low.metrics["abs_rel"] == pytest.approx(0.5)
    # median scaling happens before clipping: pred 50 -> x2 -> 100 -> 80
    scaled = score_image(np.array([[100.0 - 30.0, 70.0, 70.0]]), np.array([[50.0, 35.0, 35.0]]),
                         median_scaling=True)
    assert scaled.scale_ratio == pytest.approx(2.0)
    assert scaled.pred[0, 0] == 80.0


def test_no_valid_pixel_raises_a_clear_error_naming_the_image():
    with pytest.raises(EmptyMaskError, match="frame_42.*no valid ground-truth pixel"):
        score_image(np.zeros((4, 4)), np.ones((4, 4)), name="frame_42")
    with pytest.raises(ValueError, match="image 1"):  # EmptyMaskError is a ValueError; batches name the index
        compute_depth_metrics(np.stack([np.ones((2, 2)), np.full((2, 2), 100.0)]), np.ones((2, 2, 2)))
    # skip_empty leaves such images out instead
    m = compute_depth_metrics(np.stack([np.ones((2, 2)), np.full((2, 2), 100.0)]), np.ones((2, 2, 2)),
                              skip_empty=True)
    assert m["num_images"] == 1 and m["abs_rel"] == 0.0


def test_nan_prediction_at_valid_pixels_is_an_error():
    with pytest.raises(ValueError, match="img.*NaN"):
        score_image(np.ones((2, 2)), np.array([[1.0, np.nan], [1.0, 1.0]]), name="img")


def test_garg_and_eigen_crops_select_the_hand_computed_rows_and_columns_of_375x1242():
    # Garg: int(0.40810811*375)=int(153.04)=153, int(0.99189189*375)=int(371.96)=371,
    #       int(0.03594771*1242)=int(44.65)=44,  int(0.96405229*1242)=int(1197.35)=1197
    assert crop_box("garg", 375, 1242) == (153, 371, 44, 1197)
    # Eigen: int(0.3324324*375)=int(124.66)=124, int(0.91351351*375)=int(342.57)=342, columns as Garg
    assert crop_box("eigen", 375, 1242) == (124, 342, 44, 1197)
    mask = crop_mask("garg", 375, 1242)
    assert mask.sum() == (371 - 153) * (1197 - 44)
    assert mask[153, 44] and mask[370, 1196] and not mask[152, 44] and not mask[153, 43]
    assert not mask[371, 500] and not mask[200, 1197]
    # NYU (Eigen) crop at 480x640
    assert crop_box("nyu", 480, 640) == (45, 471, 41, 601)
    with pytest.raises(ValueError, match="unknown crop"):
        crop_box("kitti", 10, 10)


def test_scores_use_only_pixels_inside_the_crop():
    gt = np.ones((375, 1242))
    pred = np.full((375, 1242), 2.0)
    pred[153:371, 44:1197] = 1.0  # perfect inside the Garg crop, wrong outside
    assert score_image(gt, pred, crop="garg").metrics["abs_rel"] == 0.0
    assert score_image(gt, pred).metrics["abs_rel"] > 0.1


def test_torch_batches_give_the_per_image_mean_of_the_numpy_results():
    gt = np.array([[[1.0, 2.0, 4.0]], [[2.0, 2.0, 2.0]]])  # (B=2, H=1, W=3)
    pred = np.full_like(gt, 2.0)
    expected = compute_depth_metrics(gt[0], pred[0])["abs_rel"] / 2  # image 2 is perfect
    from_torch = compute_depth_metrics(torch.from_numpy(gt).float()[:, None], torch.from_numpy(pred).float()[:, None])
    assert from_torch["num_images"] == 2
    assert from_torch["abs_rel"] == pytest.approx(expected)  # 0.25
    assert from_torch["abs_rel"] == pytest.approx(0.25)


def test_accumulator_averages_per_image_not_per_pixel():
    acc = DepthMetricsAccumulator()
    acc.update(np.array([[1.0, 1.0, 1.0, 1.0]]), np.array([[2.0, 2.0, 2.0, 2.0]]))  # abs_rel 1, 4 pixels
    acc.update(np.array([[1.0]]), np.array([[1.0]]))  # abs_rel 0, 1 pixel
    assert len(acc) == 2
    assert acc.mean()["abs_rel"] == pytest.approx(0.5)  # per-pixel pooling would give 0.8
    assert [row["num_pixels"] for row in acc.per_image] == [4, 1]


def test_scale_ratio_summary_reports_median_and_std_of_normalised_ratios():
    summary = scale_ratio_summary([1.0, 2.0, 3.0])
    assert summary["median"] == 2.0
    assert summary["std"] == pytest.approx(np.std([0.5, 1.0, 1.5]))
    with pytest.raises(ValueError):
        scale_ratio_summary([])

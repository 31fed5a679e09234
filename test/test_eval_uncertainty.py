"""Sparsification curves, AUSE and Gaussian calibration on hand-worked and seeded random data."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kd_depth_core.eval.uncertainty import (
    UncertaintyAccumulator,
    ause,
    gaussian_calibration,
    pixel_errors,
    sparsification,
)

GT = np.ones(4)
PRED = np.array([1.0, 1.1, 1.5, 2.0])  # abs rel errors 0, 0.1, 0.5, 1.0
FRACTIONS = np.array([0.0, 0.25, 0.5, 0.75])


def test_sparsification_curve_by_hand():
    errors = pixel_errors(GT, PRED, "abs_rel")
    _, curve, oracle = sparsification(GT, PRED, errors, "abs_rel", FRACTIONS)
    # keep 4, 3, 2, 1 least uncertain pixels
    assert curve == pytest.approx([1.6 / 4, 0.6 / 3, 0.1 / 2, 0.0])
    assert oracle == pytest.approx(curve)
    # the worst possible ranking: the most accurate pixels are removed first
    _, worst, _ = sparsification(GT, PRED, -errors, "abs_rel", FRACTIONS)
    assert worst == pytest.approx([0.4, 1.6 / 3, 0.75, 1.0])
    # gaps 0, 1/3, 0.7, 1 -> trapezoid with step 0.25
    expected = 0.25 * ((0 + 1 / 3) / 2 + (1 / 3 + 0.7) / 2 + (0.7 + 1.0) / 2)
    assert ause(FRACTIONS, worst, oracle) == pytest.approx(expected)


def test_rmse_and_delta_curves_by_hand():
    _, curve, _ = sparsification(GT, PRED, np.arange(4.0), "rmse", FRACTIONS)
    assert curve[0] == pytest.approx(math.sqrt((0 + 0.01 + 0.25 + 1.0) / 4))
    assert curve[2] == pytest.approx(math.sqrt(0.01 / 2))
    _, curve, _ = sparsification(GT, PRED, np.arange(4.0), "a1", FRACTIONS)
    assert curve == pytest.approx([0.5, 1 / 3, 0.0, 0.0])  # 1.5 and 2.0 fail δ<1.25


def test_ause_is_zero_for_oracle_uncertainty_and_positive_for_random():
    rng = np.random.default_rng(1)
    gt = rng.uniform(1.0, 50.0, 5000)
    pred = gt * np.exp(rng.normal(0.0, 0.2, gt.size))
    for metric, oracle_sigma in (("abs_rel", np.abs(pred - gt) / gt), ("rmse", np.abs(pred - gt)),
                                 ("a1", (np.maximum(gt / pred, pred / gt) >= 1.25).astype(float))):
        fr, curve, oracle = sparsification(gt, pred, oracle_sigma, metric)
        assert ause(fr, curve, oracle) == pytest.approx(0.0, abs=1e-12), metric
        fr, curve, oracle = sparsification(gt, pred, rng.uniform(size=gt.size), metric)
        assert ause(fr, curve, oracle) > 0.01, metric
        assert np.all(curve >= oracle - 1e-12)


def test_bad_uncertainty_input_is_rejected():
    with pytest.raises(ValueError, match="one per pixel"):
        sparsification(GT, PRED, np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        sparsification(GT, PRED, np.array([1.0, np.nan, 1.0, 1.0]))
    with pytest.raises(ValueError, match="metric"):
        pixel_errors(GT, PRED, "silog")


def test_calibration_by_hand_and_for_a_true_gaussian():
    gt = np.full(4, 10.0)
    pred = np.array([10.5, 11.0, 12.0, 13.0])  # |error| / sigma = 0.5, 1, 2, 3
    result = gaussian_calibration(gt, pred, np.ones(4), ks=[1.0, 2.0])
    assert result["observed"] == pytest.approx([0.5, 0.75])
    assert result["expected"] == pytest.approx([math.erf(1 / math.sqrt(2)), math.erf(2 / math.sqrt(2))])

    rng = np.random.default_rng(2)
    sigma = rng.uniform(0.1, 2.0, 200_000)
    gt = rng.uniform(5.0, 20.0, sigma.size)
    pred = gt + rng.normal(0.0, 1.0, sigma.size) * sigma
    calibrated = gaussian_calibration(gt, pred, sigma)
    assert calibrated["error"] < 0.005
    overconfident = gaussian_calibration(gt, pred, sigma / 2)
    assert overconfident["error"] > 0.1
    assert all(o < e for o, e in zip(overconfident["observed"], overconfident["expected"]))


def test_accumulator_averages_curves_over_images():
    acc = UncertaintyAccumulator(fractions=FRACTIONS)
    errors = pixel_errors(GT, PRED, "abs_rel")
    per_image = acc.add(GT, PRED, errors)  # perfect ranking
    assert per_image["abs_rel"] == pytest.approx(0.0)
    acc.add(GT, PRED, -errors)  # worst ranking
    summary = acc.summary()
    assert summary["num_images"] == 2
    assert summary["curves"]["abs_rel"][1] == pytest.approx((0.2 + 1.6 / 3) / 2)
    assert summary["ause"]["abs_rel"] == pytest.approx(ause(FRACTIONS, summary["curves"]["abs_rel"],
                                                            summary["oracle"]["abs_rel"]))
    assert summary["calibration"]["num_pixels"] == 8

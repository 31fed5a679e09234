"""Uncertainty metrics: sparsification curves, AUSE and Gaussian calibration.

Sparsification (Ilg et al. ECCV 2018; Poggi et al. CVPR 2020): remove the fraction f of pixels
with the largest predicted uncertainty and compute the error of the rest; the *oracle* removes
pixels by their true error instead. AUSE is the area between the two curves over f (trapezoid
rule on the fraction grid, no normalisation); 0 means the uncertainty ranks errors perfectly.
Curves are computed per image and averaged over images, like the depth metrics.

Calibration of a Gaussian standard deviation σ (metres): the observed fraction of pixels with
|pred − gt| ≤ k·σ against the expected 2Φ(k) − 1 = erf(k/√2), pooled over all scored pixels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SPARSIFICATION_METRICS = ("abs_rel", "rmse", "a1")
"""Metrics with a sparsification curve; for ``a1`` the error is 1 − δ1 (fraction of pixels with ratio ≥ 1.25)."""
DEFAULT_FRACTIONS = np.round(np.arange(100) / 100.0, 2)
"""Removed fractions 0.00, 0.01, ..., 0.99."""
DEFAULT_KS = np.round(np.arange(1, 31) / 10.0, 1)
"""Calibration multiples k of σ: 0.1 ... 3.0."""


def pixel_errors(gt: np.ndarray, pred: np.ndarray, metric: str) -> np.ndarray:
    """Per-pixel error whose mean (square-rooted for ``rmse``) is ``metric`` over those pixels."""
    gt = np.asarray(gt, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if metric == "abs_rel":
        return np.abs(gt - pred) / gt
    if metric == "rmse":
        return (gt - pred) ** 2
    if metric == "a1":
        return (np.maximum(gt / pred, pred / gt) >= 1.25).astype(np.float64)
    raise ValueError(f"metric: expected one of {SPARSIFICATION_METRICS}, got {metric!r}")


def _curve(errors: np.ndarray, order: np.ndarray, fractions: np.ndarray, metric: str) -> np.ndarray:
    """Error of the pixels kept after removing the last ``f`` of ``order`` (most trusted first)."""
    cumulative = np.cumsum(errors[order])
    count = errors.size
    kept = np.maximum(count - np.floor(fractions * count).astype(np.int64), 1)
    curve = cumulative[kept - 1] / kept
    return np.sqrt(curve) if metric == "rmse" else curve


def sparsification(gt: np.ndarray, pred: np.ndarray, uncertainty: np.ndarray, metric: str = "abs_rel",
                   fractions: Sequence[float] | np.ndarray = DEFAULT_FRACTIONS
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fractions, curve, oracle) for 1-D arrays of valid pixels; higher uncertainty is removed first."""
    fractions = np.asarray(fractions, dtype=np.float64)
    uncertainty = np.asarray(uncertainty, dtype=np.float64).ravel()
    errors = pixel_errors(gt, pred, metric)
    if errors.size == 0:
        raise ValueError("sparsification: no pixels")
    if uncertainty.shape != errors.shape:
        raise ValueError(f"uncertainty: expected {errors.size} values (one per pixel), got {uncertainty.size}")
    if not np.all(np.isfinite(uncertainty)):
        raise ValueError("uncertainty: contains NaN/inf at scored pixels")
    if np.any((fractions < 0) | (fractions >= 1)):
        raise ValueError("fractions: expected values in [0, 1)")
    curve = _curve(errors, np.argsort(uncertainty, kind="stable"), fractions, metric)
    oracle = _curve(errors, np.argsort(errors, kind="stable"), fractions, metric)
    return fractions, curve, oracle


def ause(fractions: np.ndarray, curve: np.ndarray, oracle: np.ndarray) -> float:
    """Area Under the Sparsification Error: trapezoid integral of (curve − oracle) over fractions."""
    fractions = np.asarray(fractions, dtype=np.float64)
    gap = np.asarray(curve, dtype=np.float64) - np.asarray(oracle, dtype=np.float64)
    return float(np.sum((gap[1:] + gap[:-1]) * np.diff(fractions)) / 2.0)


def gaussian_calibration(gt: np.ndarray, pred: np.ndarray, sigma: np.ndarray,
                         ks: Sequence[float] | np.ndarray = DEFAULT_KS) -> dict[str, Any]:
    """Observed vs expected fraction of |pred − gt| ≤ k·σ; ``error`` is the mean absolute gap."""
    within, total = _calibration_counts(gt, pred, sigma, np.asarray(ks, dtype=np.float64))
    return _calibration_result(np.asarray(ks, dtype=np.float64), within, total)


def _calibration_counts(gt: np.ndarray, pred: np.ndarray, sigma: np.ndarray, ks: np.ndarray
                        ) -> tuple[np.ndarray, int]:
    gt = np.asarray(gt, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    sigma = np.asarray(sigma, dtype=np.float64).ravel()
    if not gt.shape == pred.shape == sigma.shape:
        raise ValueError(f"gt/pred/sigma: expected the same number of pixels, got {gt.size}, {pred.size}, {sigma.size}")
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, np.abs(pred - gt) / sigma, np.inf)
    z = np.sort(z)
    within = np.searchsorted(z, ks, side="right")
    return within.astype(np.int64), int(z.size)


def _calibration_result(ks: np.ndarray, within: np.ndarray, total: int) -> dict[str, Any]:
    observed = within / max(total, 1)
    expected = np.array([math.erf(k / math.sqrt(2.0)) for k in ks])
    return {"ks": ks.tolist(), "observed": observed.tolist(), "expected": expected.tolist(),
            "error": float(np.mean(np.abs(observed - expected))), "num_pixels": total}


class UncertaintyAccumulator:
    """Per-image sparsification curves (averaged) and pooled calibration counts over a dataset."""

    def __init__(self, metrics: Sequence[str] = SPARSIFICATION_METRICS,
                 fractions: np.ndarray = DEFAULT_FRACTIONS, ks: np.ndarray = DEFAULT_KS) -> None:
        unknown = [m for m in metrics if m not in SPARSIFICATION_METRICS]
        if unknown:
            raise ValueError(f"metrics: unknown {unknown}; valid: {SPARSIFICATION_METRICS}")
        self.metrics = tuple(metrics)
        self.fractions = np.asarray(fractions, dtype=np.float64)
        self.ks = np.asarray(ks, dtype=np.float64)
        self._curves: dict[str, list[np.ndarray]] = {m: [] for m in self.metrics}
        self._oracles: dict[str, list[np.ndarray]] = {m: [] for m in self.metrics}
        self._ause: dict[str, list[float]] = {m: [] for m in self.metrics}
        self._within = np.zeros(self.ks.shape, dtype=np.int64)
        self._total = 0

    def add(self, gt: np.ndarray, pred: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
        """Add one image's valid pixels (1-D, metres); returns its AUSE per metric."""
        result = {}
        for metric in self.metrics:
            _, curve, oracle = sparsification(gt, pred, sigma, metric, self.fractions)
            self._curves[metric].append(curve)
            self._oracles[metric].append(oracle)
            result[metric] = ause(self.fractions, curve, oracle)
            self._ause[metric].append(result[metric])
        within, total = _calibration_counts(gt, pred, sigma, self.ks)
        self._within += within
        self._total += total
        return result

    def __len__(self) -> int:
        return len(self._ause[self.metrics[0]]) if self.metrics else 0

    def summary(self) -> dict[str, Any]:
        """{'fractions', 'curves', 'oracle', 'ause', 'calibration', 'num_images'} (JSON-ready)."""
        if len(self) == 0:
            raise ValueError("UncertaintyAccumulator: no image was added")
        return {
            "num_images": len(self),
            "fractions": self.fractions.tolist(),
            "curves": {m: np.mean(self._curves[m], axis=0).tolist() for m in self.metrics},
            "oracle": {m: np.mean(self._oracles[m], axis=0).tolist() for m in self.metrics},
            "ause": {m: float(np.mean(self._ause[m])) for m in self.metrics},
            "calibration": _calibration_result(self.ks, self._within, self._total),
        }

"""Metric scale at deployment: how a network's depth is turned into metres on *this* camera.

Modes (``Prediction.scale_info.mode``):

- ``none`` — the network's depth as is (metric on the training camera, or relative).
- ``focal`` — metric models on a camera whose focal length differs from the training camera's.
  A monocular network reads depth from apparent size: an object of size S at depth Z spans
  s = f·S/Z pixels. Trained at focal f_train, it maps s back to Z_pred = f_train·S/s. A
  runtime camera with focal f_run (at the network input resolution) images the same object
  with s = f_run·S/Z, so Z_pred = Z·f_train/f_run and therefore
  ``depth_runtime = depth_pred · fx_runtime / fx_train``. ``fx_runtime`` is the runtime fx
  rescaled to the network input width (``fx_image · input_width / image_width``), since
  the image is resized before the network; ``fx_train`` is ``ModelMetadata.focal_length_px``.
  A stereo network reads depth from disparity instead: trained on a rig with focal f_train and
  baseline B_train it maps a disparity d (pixels at the network input) to Z_pred = f_train·B_train/d,
  while on a rig with f_run and B_run the truth is Z = f_run·B_run/d, so
  ``depth_runtime = depth_pred · (fx_runtime · B_runtime) / (fx_train · B_train)``. The baselines
  (metres) come from the rig (a stereo ``predict_stereo(..., baseline=B)``) and from
  ``ModelMetadata.baseline_m``; when either is unknown only the focal part is corrected
  (``ScaleInfo.detail`` says so).
- ``fixed`` — multiply by a user-given factor (e.g. a relative model calibrated once).
- ``ground_plane`` — relative models on a robot with a known camera height above a flat floor:
  back-project the lower image region, fit a plane (RANSAC + least squares), and scale by
  ``known_height / estimated_height``. Plane points scale linearly with depth, so a prediction
  off by a factor k gives a plane k times too far from the camera.

Scale strategies are small objects with ``__call__(depth, K, baseline=None) -> ScaleInfo`` working
on the network-resolution depth, the intrinsics at that resolution and, for stereo rigs, the
runtime baseline in metres (None when unknown or monocular).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kd_depth_core.geometry import depth_to_points

SCALE_MODES = ("auto", "none", "focal", "fixed", "ground_plane")


@dataclass(frozen=True)
class ScaleInfo:
    """How depth was scaled: ``depth_out = depth_network · factor``.

    ``valid`` is False when the mode could not measure a factor for this frame (the factor
    then is the last good one, or 1); ``detail`` says why or how, ``extras`` holds numbers
    such as the estimated camera height (m) and the plane's inlier ratio.
    """

    mode: str
    factor: float
    valid: bool = True
    detail: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


class ScaleStrategy(Protocol):
    """Maps a network-resolution depth (h, w) in metres, K (3×3) at that resolution and the rig's
    stereo baseline (metres, or None) to a ScaleInfo."""

    mode: str

    def __call__(self, depth: np.ndarray, K: np.ndarray | None, baseline: float | None = None) -> ScaleInfo: ...


@dataclass(frozen=True)
class NoScale:
    """Depth as the network gives it."""

    detail: str = ""
    mode: str = "none"

    def __call__(self, depth: np.ndarray, K: np.ndarray | None, baseline: float | None = None) -> ScaleInfo:
        return ScaleInfo("none", 1.0, True, self.detail)


@dataclass(frozen=True)
class FixedScale:
    """Multiply depth by ``factor`` (> 0)."""

    factor: float
    mode: str = "fixed"

    def __post_init__(self) -> None:
        if not (self.factor > 0 and math.isfinite(self.factor)):
            raise ValueError(f"scale factor: expected a positive number, got {self.factor}")

    def __call__(self, depth: np.ndarray, K: np.ndarray | None, baseline: float | None = None) -> ScaleInfo:
        return ScaleInfo("fixed", float(self.factor), True, f"fixed factor {self.factor:g}")


def focal_scale_factor(fx_runtime: float, training_fx: float) -> float:
    """``fx_runtime / training_fx``, both in pixels at the network input width (see module docstring)."""
    if not (fx_runtime > 0 and training_fx > 0):
        raise ValueError(f"focal lengths must be positive pixels, got runtime fx {fx_runtime}, "
                         f"training fx {training_fx}")
    return float(fx_runtime) / float(training_fx)


def metric_scale_factor(fx_runtime: float, training_fx: float, baseline_runtime: float | None = None,
                        training_baseline: float | None = None) -> float:
    """The metric factor of a stereo model: ``(fx_runtime · B_runtime) / (training_fx · B_train)``.

    Focal lengths in pixels at the network input width, baselines in metres. With either baseline
    unknown (None) only the focal part is corrected: ``fx_runtime / training_fx``.
    """
    factor = focal_scale_factor(fx_runtime, training_fx)
    if baseline_runtime is None or training_baseline is None:
        return factor
    for name, value in (("runtime baseline", baseline_runtime), ("training baseline", training_baseline)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name}: expected a positive number of metres, got {value}")
    return factor * float(baseline_runtime) / float(training_baseline)


@dataclass(frozen=True)
class FocalScale:
    """Metric rescaling by runtime fx / training fx; K (at the network resolution) gives runtime fx.

    For a stereo model (``stereo=True``) with a known ``training_baseline`` (metres), a call with the
    rig's ``baseline`` rescales by (fx · B) / (fx_train · B_train) instead (see the module docstring).
    """

    training_fx: float
    training_baseline: float | None = None
    stereo: bool = False
    mode: str = "focal"

    def __call__(self, depth: np.ndarray, K: np.ndarray | None, baseline: float | None = None) -> ScaleInfo:
        if K is None:
            raise ValueError("scale mode 'focal' needs the camera intrinsics: pass K (or fx) to the predictor")
        fx = float(K[0, 0])
        extras: dict[str, Any] = {"fx_runtime": fx, "fx_train": self.training_fx}
        detail = f"fx {fx:.1f} px / training fx {self.training_fx:.1f} px (at the network input width)"
        if not self.stereo:
            return ScaleInfo("focal", focal_scale_factor(fx, self.training_fx), True, detail, extras)
        if baseline is not None and self.training_baseline is not None:
            factor = metric_scale_factor(fx, self.training_fx, float(baseline), self.training_baseline)
            extras.update(baseline_runtime=float(baseline), baseline_train=self.training_baseline)
            return ScaleInfo("focal", factor, True, f"{detail} × baseline {float(baseline):.4g} m / training "
                             f"baseline {self.training_baseline:.4g} m", extras)
        missing = "the rig's baseline" if baseline is None else "the training baseline (not in the model metadata)"
        return ScaleInfo("focal", focal_scale_factor(fx, self.training_fx), True,
                         f"{detail}; {missing} unknown: baseline not corrected", extras)


# --------------------------------------------------------------------------- ground plane
@dataclass(frozen=True)
class PlaneFit:
    """Plane n·X = d in the camera frame (n unit, d >= 0 = camera distance to the plane, metres)."""

    normal: np.ndarray
    distance: float
    inlier_ratio: float
    num_points: int


def fit_plane(points: np.ndarray, threshold: float, iterations: int = 200,
              rng: np.random.Generator | None = None) -> PlaneFit | None:
    """RANSAC plane through (N,3) points, refined by least squares (SVD) on the inliers.

    ``threshold``: inlier distance in the points' units. Hypotheses are scored all at once
    (iterations × N). Returns None with fewer than 3 points or no non-degenerate sample.
    """
    points = np.asarray(points, dtype=np.float64)
    count = len(points)
    if count < 3:
        return None
    rng = rng if rng is not None else np.random.default_rng(0)
    samples = points[rng.integers(0, count, size=(iterations, 3))]  # (I,3,3)
    normals = np.cross(samples[:, 1] - samples[:, 0], samples[:, 2] - samples[:, 0])
    norms = np.linalg.norm(normals, axis=1)
    good = norms > 1e-12
    if not good.any():
        return None
    normals = normals[good] / norms[good, None]
    offsets = np.einsum("ij,ij->i", normals, samples[good, 0])
    residuals = np.abs(points @ normals.T - offsets[None, :])  # (N,I)
    scores = (residuals < threshold).sum(0)
    inliers = residuals[:, int(scores.argmax())] < threshold
    for _ in range(2):  # least-squares refit, then re-select inliers once
        if inliers.sum() < 3:
            return None
        chosen = points[inliers]
        centroid = chosen.mean(0)
        normal = np.linalg.svd(chosen - centroid, full_matrices=False)[2][-1]
        offset = float(normal @ centroid)
        inliers = np.abs(points @ normal - offset) < threshold
    if offset < 0:
        normal, offset = -normal, -offset
    return PlaneFit(normal=normal, distance=offset, inlier_ratio=float(inliers.mean()), num_points=count)


class GroundPlaneScale:
    """Scale relative depth so the fitted ground plane lies ``camera_height`` metres below the camera.

    Looks at rows ``rows`` (fractions of the height, default the lower 40 %) and columns
    ``cols`` of the depth map, back-projects every ``stride``-th pixel, fits a plane with an
    inlier threshold of ``threshold`` × the median point distance, and accepts it when at least
    ``min_inlier_ratio`` of the points fit and its normal is within ``max_tilt_deg`` of the
    camera's y axis (optical frame: y points down, so a floor seen by a level camera has
    normal ≈ (0, ±1, 0)). ``smoothing`` in [0, 1) blends the log factor over frames
    (0 = per frame); a rejected frame reuses the last good factor (1 before the first).
    Thread-safe (the smoothing state is behind a lock).
    """

    mode = "ground_plane"

    def __init__(self, camera_height: float, rows: tuple[float, float] = (0.6, 1.0),
                 cols: tuple[float, float] = (0.1, 0.9), stride: int = 4, threshold: float = 0.02,
                 iterations: int = 200, min_inlier_ratio: float = 0.3, max_tilt_deg: float = 30.0,
                 smoothing: float = 0.0, seed: int = 0) -> None:
        if not (camera_height > 0 and math.isfinite(camera_height)):
            raise ValueError(f"camera_height: expected a positive number of metres, got {camera_height}")
        if not (0 <= rows[0] < rows[1] <= 1 and 0 <= cols[0] < cols[1] <= 1):
            raise ValueError(f"rows/cols: expected fractions 0 <= start < end <= 1, got {rows}, {cols}")
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing: expected a number in [0, 1), got {smoothing}")
        self.camera_height = float(camera_height)
        self.rows, self.cols, self.stride = rows, cols, int(stride)
        self.threshold, self.iterations = float(threshold), int(iterations)
        self.min_inlier_ratio, self.max_tilt_deg = float(min_inlier_ratio), float(max_tilt_deg)
        self.smoothing, self.seed = float(smoothing), int(seed)
        self._lock = threading.Lock()
        self._log_factor: float | None = None

    def region_points(self, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
        """Finite camera points (N,3) of the region of interest of a depth map (h, w) metres."""
        height, width = depth.shape
        r0, r1 = int(self.rows[0] * height), max(int(self.rows[0] * height) + 1, int(round(self.rows[1] * height)))
        c0, c1 = int(self.cols[0] * width), max(int(self.cols[0] * width) + 1, int(round(self.cols[1] * width)))
        K_region = np.array(K, dtype=np.float64, copy=True)
        K_region[0, 2] -= c0
        K_region[1, 2] -= r0
        points = depth_to_points(depth[r0:r1, c0:c1], K_region, stride=self.stride).reshape(-1, 3)
        return points[np.isfinite(points).all(1)]

    def measure(self, depth: np.ndarray, K: np.ndarray) -> tuple[PlaneFit | None, str]:
        """Fit the ground plane; returns (fit or None, reason when rejected)."""
        points = self.region_points(depth, K)
        if len(points) < 10:
            return None, f"only {len(points)} valid points in the ground region"
        scale_ref = float(np.median(np.linalg.norm(points, axis=1)))
        fit = fit_plane(points, self.threshold * scale_ref, self.iterations, np.random.default_rng(self.seed))
        if fit is None:
            return None, "no plane could be fitted (degenerate points)"
        tilt = math.degrees(math.acos(min(1.0, abs(float(fit.normal[1])))))
        if tilt > self.max_tilt_deg:
            return None, f"plane tilted {tilt:.1f} deg from the camera's vertical (max {self.max_tilt_deg:g})"
        if fit.inlier_ratio < self.min_inlier_ratio:
            return None, f"only {fit.inlier_ratio:.0%} of the points lie on the plane (min {self.min_inlier_ratio:.0%})"
        if fit.distance <= 0:
            return None, "the plane passes through the camera"
        return fit, ""

    def __call__(self, depth: np.ndarray, K: np.ndarray | None, baseline: float | None = None) -> ScaleInfo:
        if K is None:
            raise ValueError("scale mode 'ground_plane' needs the camera intrinsics: pass K to the predictor")
        fit, reason = self.measure(depth, K)
        with self._lock:
            if fit is None:
                factor = math.exp(self._log_factor) if self._log_factor is not None else 1.0
                return ScaleInfo("ground_plane", factor, False, f"rejected: {reason}; "
                                 + ("kept the last good factor" if self._log_factor is not None else "factor 1"))
            log_factor = math.log(self.camera_height / fit.distance)
            if self._log_factor is not None and self.smoothing > 0:
                log_factor = self.smoothing * self._log_factor + (1 - self.smoothing) * log_factor
            self._log_factor = log_factor
        return ScaleInfo("ground_plane", math.exp(log_factor), True,
                         f"camera height {self.camera_height:g} m / estimated {fit.distance:.4g}",
                         {"estimated_height": fit.distance, "inlier_ratio": fit.inlier_ratio,
                          "normal": [float(v) for v in fit.normal]})

    def reset(self) -> None:
        """Forget the smoothed factor (e.g. at a new sequence)."""
        with self._lock:
            self._log_factor = None


def make_scale(mode: str, scale_kind: str, training_fx: float | None, *, factor: float | None = None,
               camera_height: float | None = None, training_baseline: float | None = None, stereo: bool = False,
               **ground_options: Any) -> ScaleStrategy:
    """Build a scale strategy; ``auto`` = focal for metric models with a known training fx, else none.

    ``stereo`` / ``training_baseline`` (metres, ``ModelMetadata.baseline_m``): a stereo model's
    focal scale also corrects the baseline when the call gives the rig's baseline.

    ``auto`` with a metric model falls back to ``none`` at call time when no K is given
    (see :class:`AutoScale`).
    """
    if mode not in SCALE_MODES:
        raise ValueError(f"scale_mode: expected one of {', '.join(SCALE_MODES)}, got {mode!r}")
    if mode == "auto":
        if scale_kind == "metric" and training_fx is not None:
            return AutoScale(FocalScale(training_fx, training_baseline, bool(stereo)))
        return NoScale("relative depth: scale unknown" if scale_kind == "relative"
                       else "metric on the training camera (no training focal length recorded)")
    if mode == "none":
        return NoScale()
    if mode == "fixed":
        if factor is None:
            raise ValueError("scale_mode 'fixed' needs scale_factor")
        return FixedScale(float(factor))
    if mode == "focal":
        if training_fx is None:
            raise ValueError("scale_mode 'focal' needs the training focal length, but the model metadata has "
                             "focal_length_px = null")
        return FocalScale(training_fx, training_baseline, bool(stereo))
    if camera_height is None:
        raise ValueError("scale_mode 'ground_plane' needs camera_height (metres above the ground)")
    return GroundPlaneScale(camera_height, **ground_options)


@dataclass(frozen=True)
class AutoScale:
    """Focal rescaling when intrinsics are known, otherwise depth as trained."""

    focal: FocalScale
    mode: str = "auto"

    def __call__(self, depth: np.ndarray, K: np.ndarray | None, baseline: float | None = None) -> ScaleInfo:
        if K is None:
            return ScaleInfo("none", 1.0, True, "metric on the training camera (no runtime intrinsics given)")
        return self.focal(depth, K, baseline)

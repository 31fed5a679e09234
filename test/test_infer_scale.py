"""Deployment scale (inference/scale.py): focal-length rescaling and ground-plane scale recovery.

Synthetic frames are built by hand: a camera ``h`` metres above a flat floor, optionally pitched
down by ``theta``, sees floor pixel (u, v) at depth Z = h / (n · r) with r = ((u-cx)/fx,
(v-cy)/fy, 1) and n = (0, cos theta, sin theta) the floor normal in the camera frame.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from kd_depth_core.inference.scale import (
    AutoScale,
    FixedScale,
    FocalScale,
    GroundPlaneScale,
    NoScale,
    fit_plane,
    focal_scale_factor,
    make_scale,
    metric_scale_factor,
)

H, W = 96, 128
K = np.array([[100.0, 0.0, 63.5], [0.0, 100.0, 47.5], [0.0, 0.0, 1.0]])


def floor_depth(height_m: float, pitch_deg: float = 0.0, wall_m: float = 30.0) -> np.ndarray:
    """Depth (H, W) of a floor ``height_m`` below a camera pitched down ``pitch_deg``; a wall where no floor."""
    theta = math.radians(pitch_deg)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    n_dot_r = math.cos(theta) * (v - K[1, 2]) / K[1, 1] + math.sin(theta)
    depth = np.full((H, W), wall_m)
    floor = n_dot_r > height_m / wall_m
    depth[floor] = height_m / n_dot_r[floor]
    return depth.astype(np.float32)


def test_stereo_rig_with_twice_the_training_baseline_gives_twice_the_depth():
    """depth = f·B/d: the same network output (the same disparity) on a rig with 2B and the same f is 2× deeper."""
    assert metric_scale_factor(100.0, 100.0, 0.24, 0.12) == 2.0
    assert metric_scale_factor(150.0, 100.0, 0.06, 0.12) == pytest.approx(0.75)  # (f·B) / (f_train·B_train)
    assert metric_scale_factor(150.0, 100.0, None, 0.12) == metric_scale_factor(150.0, 100.0, 0.24, None) == 1.5
    network_depth = np.linspace(1.0, 20.0, 16, dtype=np.float32).reshape(4, 4)
    scale = make_scale("auto", "metric", 100.0, training_baseline=0.12, stereo=True)
    same_rig, wide_rig = scale(network_depth, K, baseline=0.12), scale(network_depth, K, baseline=0.24)
    assert same_rig.factor == 1.0 and wide_rig.factor == 2.0
    np.testing.assert_array_equal(network_depth * np.float32(wide_rig.factor),
                                  2 * network_depth * np.float32(same_rig.factor))
    assert wide_rig.extras["baseline_runtime"] == 0.24 and "baseline 0.24 m / training baseline 0.12 m" in \
        wide_rig.detail
    # focal only when a baseline is unknown, or for a monocular model (it reads depth from apparent size)
    assert scale(network_depth, K).factor == 1.0 and "rig's baseline unknown" in scale(network_depth, K).detail
    old_file = make_scale("focal", "metric", 100.0, training_baseline=None, stereo=True)(network_depth, K, 0.24)
    assert old_file.factor == 1.0 and "training baseline" in old_file.detail
    assert make_scale("auto", "metric", 100.0, training_baseline=0.12)(network_depth, K, baseline=0.24).factor == 1.0
    with pytest.raises(ValueError, match="runtime baseline"):
        metric_scale_factor(100.0, 100.0, -0.1, 0.12)


def test_focal_factor_is_runtime_over_training_focal():
    assert focal_scale_factor(150.0, 100.0) == pytest.approx(1.5)
    info = FocalScale(training_fx=100.0)(np.ones((4, 4), np.float32), np.diag([150.0, 150.0, 1.0]))
    assert (info.mode, info.factor, info.valid) == ("focal", pytest.approx(1.5), True)
    assert info.extras == {"fx_runtime": 150.0, "fx_train": 100.0}
    with pytest.raises(ValueError, match="needs the camera intrinsics"):
        FocalScale(100.0)(np.ones((4, 4), np.float32), None)
    with pytest.raises(ValueError, match="positive"):
        focal_scale_factor(0.0, 100.0)


def test_fit_plane_ignores_outliers():
    rng = np.random.default_rng(1)
    plane = np.column_stack([rng.uniform(-3, 3, 300), rng.uniform(-3, 3, 300), np.full(300, 2.0)])
    outliers = rng.uniform(-3, 3, (100, 3)) + np.array([0, 0, 6.0])
    fit = fit_plane(np.vstack([plane, outliers]), threshold=0.01)
    assert fit is not None
    np.testing.assert_allclose(np.abs(fit.normal), [0, 0, 1], atol=1e-9)
    assert fit.distance == pytest.approx(2.0, abs=1e-9)
    assert fit.inlier_ratio == pytest.approx(0.75, abs=0.01)
    assert fit_plane(np.zeros((2, 3)), 0.1) is None


@pytest.mark.parametrize("pitch_deg", [0.0, 10.0])
@pytest.mark.parametrize("unknown_scale", [0.25, 3.0])
def test_ground_plane_recovers_the_scale_of_relative_depth(pitch_deg, unknown_scale):
    true_depth = floor_depth(1.5, pitch_deg)
    relative = true_depth * np.float32(unknown_scale)
    info = GroundPlaneScale(camera_height=1.5)(relative, K)
    assert info.mode == "ground_plane" and info.valid
    assert info.factor == pytest.approx(1.0 / unknown_scale, rel=1e-4)
    assert info.extras["estimated_height"] == pytest.approx(1.5 * unknown_scale, rel=1e-4)
    theta = math.radians(pitch_deg)
    np.testing.assert_allclose(info.extras["normal"], [0.0, math.cos(theta), math.sin(theta)], atol=1e-4)
    np.testing.assert_allclose(relative * np.float32(info.factor), true_depth, rtol=1e-4)


def test_ground_plane_survives_an_obstacle_on_the_floor():
    depth = floor_depth(1.2) * np.float32(0.5)
    depth[62:, 40:72] = 1.5  # a box facing the camera covering a quarter of the floor region's width
    info = GroundPlaneScale(camera_height=1.2)(depth, K)
    # The box's lowest rows lie within the inlier band of the floor and pull the refit slightly.
    assert info.valid and info.factor == pytest.approx(2.0, rel=1e-2)
    assert 0.5 < info.extras["inlier_ratio"] < 0.9


def test_ground_plane_rejects_a_wall_and_keeps_the_last_good_factor():
    scale = GroundPlaneScale(camera_height=1.5)
    wall = np.full((H, W), 5.0, np.float32)  # fronto-parallel: plane normal along the optical axis
    first = scale(wall, K)
    assert (first.valid, first.factor) == (False, 1.0)
    assert "tilted" in first.detail
    good = scale(floor_depth(1.5) * np.float32(0.5), K)
    assert good.valid and good.factor == pytest.approx(2.0, rel=1e-4)
    again = scale(wall, K)
    assert not again.valid and again.factor == pytest.approx(2.0, rel=1e-4)
    assert "last good" in again.detail
    empty = scale(np.zeros((H, W), np.float32), K)
    assert not empty.valid and "valid points" in empty.detail


def test_ground_plane_smoothing_blends_log_factors():
    scale = GroundPlaneScale(camera_height=1.5, smoothing=0.5)
    assert scale(floor_depth(1.5) * np.float32(0.5), K).factor == pytest.approx(2.0, rel=1e-4)
    assert scale(floor_depth(1.5) * np.float32(0.25), K).factor == pytest.approx(2 ** 1.5, rel=1e-4)
    scale.reset()
    assert scale(floor_depth(1.5) * np.float32(0.25), K).factor == pytest.approx(4.0, rel=1e-4)


def test_ground_plane_needs_intrinsics_and_valid_options():
    with pytest.raises(ValueError, match="needs the camera intrinsics"):
        GroundPlaneScale(1.5)(floor_depth(1.5), None)
    with pytest.raises(ValueError, match="camera_height"):
        GroundPlaneScale(-1.0)
    with pytest.raises(ValueError, match="rows/cols"):
        GroundPlaneScale(1.5, rows=(0.8, 0.2))


def test_make_scale_modes_and_errors():
    assert isinstance(make_scale("auto", "relative", None), NoScale)
    auto = make_scale("auto", "metric", 100.0)
    assert isinstance(auto, AutoScale)
    assert auto(np.ones((2, 2), np.float32), None).factor == 1.0
    assert auto(np.ones((2, 2), np.float32), np.diag([50.0, 50.0, 1.0])).factor == pytest.approx(0.5)
    assert make_scale("fixed", "relative", None, factor=2.5)(np.ones((2, 2)), None).factor == 2.5
    assert isinstance(make_scale("ground_plane", "relative", None, camera_height=1.0), GroundPlaneScale)
    with pytest.raises(ValueError, match="focal_length_px = null"):
        make_scale("focal", "metric", None)
    with pytest.raises(ValueError, match="camera_height"):
        make_scale("ground_plane", "relative", None)
    with pytest.raises(ValueError, match="scale_factor"):
        make_scale("fixed", "relative", None)
    with pytest.raises(ValueError, match="auto, none, focal, fixed, ground_plane"):
        make_scale("magic", "relative", None)
    with pytest.raises(ValueError, match="positive"):
        FixedScale(0.0)

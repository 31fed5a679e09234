"""kd_depth_core.geometry: hand-worked values for conversions, poses, projection, warping and point clouds."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_depth_core import geometry


def _K(fx=50.0, fy=40.0, cx=7.5, cy=5.5, batch=1) -> torch.Tensor:
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return K.expand(batch, 3, 3).clone()


# --------------------------------------------------------------------------- depth <-> disparity
def test_disp_to_depth_endpoints_and_midpoint():
    disp = torch.tensor([0.0, 1.0, 0.5])
    scaled, depth = geometry.disp_to_depth(disp, 0.1, 100.0)
    # scaled = 1/100 + (1/0.1 - 1/100) * disp
    assert torch.allclose(scaled, torch.tensor([0.01, 10.0, 0.01 + 9.99 * 0.5]))
    assert torch.allclose(depth, torch.tensor([100.0, 0.1, 1.0 / 5.005]))
    assert torch.allclose(geometry.depth_to_disp(depth, 0.1, 100.0), disp, atol=1e-6)


def test_disp_to_depth_rejects_bad_range():
    with pytest.raises(ValueError, match="min_depth"):
        geometry.disp_to_depth(torch.zeros(1), 10.0, 1.0)


def test_stereo_disparity_depth_numpy_and_torch():
    # fx 700 px, baseline 0.5 m: 35 px -> 10 m; zero/negative disparity -> 0 (invalid).
    out = geometry.disparity_to_depth(np.array([35.0, 70.0, 0.0, -1.0]), 700.0, 0.5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [10.0, 5.0, 0.0, 0.0])
    np.testing.assert_allclose(geometry.depth_to_disparity(np.array([10.0, 0.0, np.inf]), 700.0, 0.5), [35.0, 0.0, 0.0])
    # Per-sample fx and baseline for a (B,1,H,W) tensor.
    disparity = torch.full((2, 1, 2, 3), 10.0)
    depth = geometry.disparity_to_depth(disparity, torch.tensor([100.0, 200.0]), torch.tensor([0.5, 0.1]))
    assert torch.allclose(depth[0], torch.full((1, 2, 3), 5.0))
    assert torch.allclose(depth[1], torch.full((1, 2, 3), 2.0))


# --------------------------------------------------------------------------- intrinsics
def test_scale_intrinsics_by_hand_numpy_and_torch():
    K = np.array([[500.0, 0.0, 320.0], [0.0, 400.0, 240.0], [0.0, 0.0, 1.0]])
    expected = np.array([[250.0, 0.0, 160.0], [0.0, 100.0, 60.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(geometry.scale_intrinsics(K, 0.5, 0.25), expected)
    assert K[0, 0] == 500.0  # input untouched
    K_t = torch.tensor(K, dtype=torch.float32).expand(2, 3, 3)
    out = geometry.scale_intrinsics(K_t, 0.5, 0.25)
    assert out.shape == (2, 3, 3)
    assert torch.allclose(out, torch.tensor(expected, dtype=torch.float32).expand(2, 3, 3))
    with pytest.raises(ValueError, match="K: expected shape"):
        geometry.scale_intrinsics(np.eye(4), 1.0, 1.0)


# --------------------------------------------------------------------------- poses
def test_pose_vec_to_mat_90_degrees_about_z():
    vec = torch.tensor([[0.0, 0.0, math.pi / 2, 1.0, 2.0, 3.0]])
    expected = torch.tensor([[[0.0, -1.0, 0.0, 1.0],
                              [1.0, 0.0, 0.0, 2.0],
                              [0.0, 0.0, 1.0, 3.0],
                              [0.0, 0.0, 0.0, 1.0]]])
    assert torch.allclose(geometry.pose_vec_to_mat(vec), expected, atol=1e-6)
    # Inverse: R^T and -R^T t = -(2, -1, 3).
    expected_inv = torch.tensor([[[0.0, 1.0, 0.0, -2.0],
                                  [-1.0, 0.0, 0.0, 1.0],
                                  [0.0, 0.0, 1.0, -3.0],
                                  [0.0, 0.0, 0.0, 1.0]]])
    assert torch.allclose(geometry.pose_vec_to_mat(vec, invert=True), expected_inv, atol=1e-6)


def test_mat_to_pose_vec_round_trip_including_small_and_near_pi_angles():
    gen = torch.Generator().manual_seed(0)
    axes = torch.nn.functional.normalize(torch.randn(8, 3, generator=gen, dtype=torch.float64), dim=1)
    angles = torch.tensor([0.0, 1e-9, 1e-4, 0.3, 1.0, 2.0, 3.0, math.pi - 1e-3], dtype=torch.float64)
    vec = torch.cat([axes * angles[:, None], torch.randn(8, 3, generator=gen, dtype=torch.float64)], 1)
    for invert in (False, True):
        T = geometry.pose_vec_to_mat(vec, invert=invert)
        back = geometry.mat_to_pose_vec(T, invert=invert)
        assert torch.allclose(back, vec, atol=1e-6), (invert, back - vec)
    # Exactly pi: the axis sign is ambiguous, the matrix is not.
    vec_pi = torch.tensor([[0.0, math.pi, 0.0, 0.1, 0.2, 0.3]], dtype=torch.float64)
    T_pi = geometry.pose_vec_to_mat(vec_pi)
    assert torch.allclose(geometry.pose_vec_to_mat(geometry.mat_to_pose_vec(T_pi)), T_pi, atol=1e-9)


def test_pose_vec_to_mat_gradient_at_zero_is_finite_and_is_the_generator():
    vec = torch.zeros(1, 6, requires_grad=True)
    T = geometry.pose_vec_to_mat(vec)
    T[0, 1, 0].backward()  # R ~ I + [w]x, so dR[1,0]/dw_z = 1
    assert torch.isfinite(vec.grad).all()
    assert torch.allclose(vec.grad, torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]]))


def test_invert_pose_matches_matrix_inverse():
    vec = torch.tensor([[0.1, -0.2, 0.3, 1.0, -2.0, 0.5]], dtype=torch.float64)
    T = geometry.pose_vec_to_mat(vec)
    assert torch.allclose(geometry.invert_pose(T), torch.linalg.inv(T))
    assert torch.allclose(geometry.invert_pose(T), geometry.pose_vec_to_mat(vec, invert=True))


def test_stereo_pose_moves_points_by_minus_baseline():
    T = geometry.stereo_pose(torch.tensor([0.5, 0.12]))
    point_left = torch.tensor([1.0, 2.0, 10.0, 1.0])
    assert torch.allclose(T[0] @ point_left, torch.tensor([0.5, 2.0, 10.0, 1.0]))
    assert torch.allclose(T[1] @ point_left, torch.tensor([0.88, 2.0, 10.0, 1.0]))
    with pytest.raises(ValueError, match="baseline"):
        geometry.stereo_pose(torch.tensor(0.5))


# --------------------------------------------------------------------------- projection
def test_project_of_backproject_with_identity_is_the_pixel_grid():
    height, width = 5, 7
    depth = torch.rand(2, 1, height, width) * 10 + 1
    K = _K(batch=2)
    points = geometry.backproject(depth, torch.linalg.inv(K))
    assert points.shape == (2, 3, height * width)
    assert torch.allclose(points[:, 2], depth.reshape(2, -1))
    grid = geometry.project(points, K, torch.eye(4).expand(2, 4, 4), height, width)
    assert grid.shape == (2, height, width, 2)
    xs = torch.linspace(-1, 1, width).expand(2, height, width)
    ys = torch.linspace(-1, 1, height)[:, None].expand(2, height, width)
    assert torch.allclose(grid[..., 0], xs, atol=1e-5)
    assert torch.allclose(grid[..., 1], ys, atol=1e-5)
    # Homogeneous input and T=None give the same grid.
    homog = torch.cat([points, torch.ones(2, 1, height * width)], 1)
    assert torch.allclose(geometry.project(homog, K, None, height, width), grid)


def test_backproject_by_hand():
    # Pixel (u=3, v=1) at depth 2 with fx 50, fy 40, cx 7.5, cy 5.5: X = (3-7.5)*2/50, Y = (1-5.5)*2/40.
    depth = torch.full((1, 1, 4, 6), 2.0)
    points = geometry.backproject(depth, torch.linalg.inv(_K()))
    assert torch.allclose(points[0, :, 1 * 6 + 3], torch.tensor([-0.18, -0.225, 2.0]))
    with pytest.raises(ValueError, match="depth"):
        geometry.backproject(torch.ones(1, 4, 6), torch.eye(3)[None])


def test_translation_shifts_pixels_by_fx_t_over_z():
    # Fronto-parallel plane at Z = 5, fx = 50, source camera 0.2 m to the left (X_s = X_t + 0.2): u_s = u_t + 2.
    depth = torch.full((1, 1, 4, 6), 5.0)
    T = torch.eye(4)[None].clone()
    T[0, 0, 3] = 0.2
    uv, z = geometry.project_to_pixels(geometry.backproject(depth, torch.linalg.inv(_K())), _K(), T)
    u_grid = geometry.pixel_grid(4, 6)[0]
    assert torch.allclose(uv[0, 0], u_grid + 2.0, atol=1e-4)
    assert torch.allclose(z, torch.full_like(z, 5.0))


def test_stereo_projection_gives_the_disparity():
    # Left pixel (u, v) at depth Z lands at right pixel (u - fx*b/Z, v).
    depth = torch.full((1, 1, 3, 4), 8.0)
    K = _K()
    uv, _ = geometry.project_to_pixels(geometry.backproject(depth, torch.linalg.inv(K)), K,
                                       geometry.stereo_pose(torch.tensor([0.4])))
    grid = geometry.pixel_grid(3, 4)
    assert torch.allclose(uv[0, 0], grid[0] - 50.0 * 0.4 / 8.0, atol=1e-4)
    assert torch.allclose(uv[0, 1], grid[1], atol=1e-4)


# --------------------------------------------------------------------------- warping
def test_warp_identity_returns_source():
    source = torch.rand(2, 3, 6, 8)
    warped, valid = geometry.warp(source, torch.full((2, 1, 6, 8), 3.0), _K(batch=2), torch.eye(4).expand(2, 4, 4))
    assert torch.allclose(warped, source, atol=1e-5)
    assert valid.shape == (2, 1, 6, 8) and bool((valid == 1).all())


def test_warp_two_pixel_shift_and_mask():
    source = torch.rand(1, 3, 4, 6)
    T = torch.eye(4)[None].clone()
    T[0, 0, 3] = 0.2  # shift of fx*t/Z = 50*0.2/5 = 2 px
    warped, valid = geometry.warp(source, torch.full((1, 1, 4, 6), 5.0), _K(), T)
    assert torch.allclose(warped[..., :4], source[..., 2:], atol=1e-4)
    assert valid[0, 0, :, :4].eq(1).all() and valid[0, 0, :, 4:].eq(0).all()


def test_warp_is_differentiable_in_depth_and_pose():
    source = torch.rand(1, 3, 6, 8)
    depth = torch.full((1, 1, 6, 8), 4.0, requires_grad=True)
    vec = torch.tensor([[0.01, 0.02, -0.01, 0.1, 0.0, 0.05]], requires_grad=True)
    warped, _ = geometry.warp(source, depth, _K(), geometry.pose_vec_to_mat(vec))
    warped.mean().backward()
    assert torch.isfinite(depth.grad).all() and depth.grad.abs().sum() > 0
    assert torch.isfinite(vec.grad).all() and vec.grad.abs().sum() > 0


def test_warp_rejects_mismatched_depth():
    with pytest.raises(ValueError, match="depth: expected shape"):
        geometry.warp(torch.rand(1, 3, 6, 8), torch.ones(1, 1, 3, 4), _K(), torch.eye(4)[None])


# --------------------------------------------------------------------------- numpy point clouds
def test_depth_to_points_by_hand_with_invalid_pixels():
    K = np.array([[100.0, 0.0, 2.0], [0.0, 50.0, 1.0], [0.0, 0.0, 1.0]])
    depth = np.array([[1.0, 0.0, 3.0, 4.0],
                      [5.0, np.nan, 7.0, 2.0]], dtype=np.float32)
    points = geometry.depth_to_points(depth, K)
    assert points.shape == (2, 4, 3) and points.dtype == np.float32
    np.testing.assert_allclose(points[1, 3], [(3 - 2) * 2 / 100, (1 - 1) * 2 / 50, 2.0], rtol=1e-6)
    np.testing.assert_allclose(points[0, 0], [(0 - 2) * 1 / 100, (0 - 1) * 1 / 50, 1.0], rtol=1e-6)
    assert np.isnan(points[0, 1]).all() and np.isnan(points[1, 1]).all()
    assert np.isfinite(points[0, 2]).all()
    # Stride 2 keeps u = 0, 2 and v = 0; cached rays give the same result.
    strided = geometry.depth_to_points(depth, K, stride=2)
    assert strided.shape == (1, 2, 3)
    np.testing.assert_allclose(strided[0, 1], [0.0, (0 - 1) * 3 / 50, 3.0], atol=1e-7)
    rays = geometry.pixel_rays(K, 2, 4, stride=2)
    np.testing.assert_array_equal(geometry.depth_to_points(depth, stride=2, rays=rays), strided)
    with pytest.raises(ValueError, match="rays: expected shape"):
        geometry.depth_to_points(depth, stride=1, rays=rays)


def test_depth_to_points_matches_backproject():
    depth = np.random.default_rng(0).uniform(1, 5, (6, 8)).astype(np.float32)
    K = _K()[0]
    points = geometry.depth_to_points(depth, K.numpy())
    reference = geometry.backproject(torch.from_numpy(depth)[None, None], torch.linalg.inv(K)[None])
    np.testing.assert_allclose(points.reshape(-1, 3), reference[0].T.numpy(), rtol=1e-5, atol=1e-6)

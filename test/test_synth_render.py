"""Synthetic world renderer: exact depth of known geometry, stereo/temporal consistency, determinism."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from kd_depth_core.data.synthetic.presets import build_scene
from kd_depth_core.data.synthetic.render import Renderer, kitti_like_K, stereo_right_pose
from kd_depth_core.data.synthetic.trajectory import pose_matrix, rotation_ypr
from kd_depth_core.data.synthetic.world import CLASS_ID, SEMANTIC_CLASSES, Box, World

W, H = 128, 48


def _normalized_rays(K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """x = (u - cx) / fx, y = (v - cy) / fy at pixel centres, worked out independently of the renderer."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]


def _wall(z_front: float) -> Box:
    """A 100 m x 100 m wall whose front face is the plane z = z_front."""
    return Box((0.0, 0.0, z_front + 0.5), (50.0, 50.0, 0.5), "concrete", "wall")


def test_kitti_like_intrinsics_are_off_centre():
    K = kitti_like_K(320, 96)
    assert K[0, 0] == pytest.approx(0.58 * 320) and K[1, 1] == pytest.approx(1.92 * 96)
    assert K[0, 2] != 160 and K[1, 2] != 48


def test_plane_depth_is_exact_for_level_and_rotated_camera():
    K = kitti_like_K(W, H)
    renderer = Renderer(World([_wall(5.0)]))
    level = renderer.render(np.eye(4), K, W, H)[0]
    np.testing.assert_allclose(level.depth, 5.0, rtol=1e-4)
    assert np.all(level.semantic == CLASS_ID["wall"])

    # Rotated and translated camera: depth along its optical axis to the plane z = 5 (world), by hand:
    # ray d = R (x, y, 1), hit at o + t d with o_z + t d_z = 5, and the depth is t (camera z of the ray is 1).
    R = rotation_ypr(0.3, -0.1, 0.05)
    origin = np.array([0.4, -1.2, 1.0])
    x, y = _normalized_rays(K, W, H)
    d_z = R[2, 0] * x + R[2, 1] * y + R[2, 2]
    expected = (5.0 - origin[2]) / d_z
    view = renderer.render(pose_matrix(R, origin), K, W, H)[0]
    np.testing.assert_allclose(view.depth, expected, rtol=1e-4)


def test_box_front_and_side_faces_have_exact_depth():
    # Box x in [1, 2], y in [-0.5, 0.5], z in [2, 4] in front of a wall at z = 10; camera at the origin.
    K = kitti_like_K(W, H)
    world = World([_wall(10.0), Box((1.5, 0.0, 3.0), (0.5, 0.5, 1.0), "wood", "furniture")])
    view = Renderer(world).render(np.eye(4), K, W, H)[0]
    x, y = _normalized_rays(K, W, H)
    # Front face z = 2: hit point (2x, 2y) must lie in x [1, 2], |y| <= 0.5.
    front = (2 * x >= 1) & (2 * x <= 2) & (np.abs(2 * y) <= 0.5)
    # Left face x = 1: depth t = 1 / x, must lie in z [2, 4] with |t y| <= 0.5 (and not behind the front).
    with np.errstate(divide="ignore"):
        t_side = np.where(x > 0, 1.0 / x, np.inf)
    side = ~front & (t_side >= 2) & (t_side <= 4) & (np.abs(t_side * y) <= 0.5)
    expected = np.where(front, 2.0, np.where(side, t_side, 10.0))
    # Leave out pixels whose centre lies within 1e-3 (normalised units) of a face edge.
    edge = np.zeros_like(front)
    for value, bound in [(2 * x, 1), (2 * x, 2), (np.abs(2 * y), 0.5), (t_side, 2), (t_side, 4),
                         (np.abs(t_side * y), 0.5), (x, 0.5)]:
        edge |= np.abs(value - bound) < 1e-3 * max(1.0, bound)
    assert front.sum() > 50 and side.sum() > 50, "the test scene must show both faces"
    np.testing.assert_allclose(view.depth[~edge], expected[~edge], rtol=1e-4)
    assert np.all(view.semantic[front & ~edge] == CLASS_ID["furniture"])
    assert np.all(view.semantic[~front & ~side & ~edge] == CLASS_ID["wall"])


def _reference_box_depth(box: Box, T_world_camera: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth of a (yawed) box by intersecting the ray with each face plane (not the slab method).

    Returns (depth with inf for misses, distance of the hit point to the nearest face edge, m)."""
    x, y = _normalized_rays(K, W, H)
    rays = np.stack([x, y, np.ones_like(x)], axis=-1) @ T_world_camera[:3, :3].T
    c, s = np.cos(box.yaw), np.sin(box.yaw)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    o_loc = rot.T @ (T_world_camera[:3, 3] - np.asarray(box.center))
    d_loc = rays @ rot                                      # rows: R^T d
    half = np.asarray(box.half_size)
    best = np.full(x.shape, np.inf)
    margin = np.full(x.shape, np.inf)
    for axis in range(3):
        for sign in (-1, 1):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (sign * half[axis] - o_loc[axis]) / d_loc[..., axis]
            p = o_loc + t[..., None] * d_loc
            others = [a for a in range(3) if a != axis]
            slack = np.min([half[a] - np.abs(p[..., a]) for a in others], axis=0)
            ok = (t > 0) & (slack >= 0) & (t < best)
            best = np.where(ok, t, best)
            margin = np.where(ok, slack, margin)
    return best, margin


@pytest.mark.parametrize("yaw", [0.0, 0.5, -1.1])
def test_yawed_box_matches_face_plane_reference(yaw):
    K = kitti_like_K(W, H)
    box = Box((0.6, -0.3, 6.0), (1.2, 0.8, 0.7), "metal", "vehicle", yaw=yaw)
    T = pose_matrix(rotation_ypr(0.1, 0.05, -0.03), np.array([0.2, -0.1, 0.5]))
    view = Renderer(World([box])).render(T, K, W, H)[0]
    expected, margin = _reference_box_depth(box, T, K)
    hit = np.isfinite(expected)
    inner = hit & (margin > 1e-3)
    assert inner.sum() > 200
    np.testing.assert_allclose(view.depth[inner], expected[inner], rtol=1e-4)
    # Clear misses are sky: depth 0 and the sky class.
    assert np.all(view.depth[~hit] == 0) and np.all(view.semantic[~hit] == CLASS_ID["sky"])


def test_ground_depth_and_sky_above_the_horizon():
    # Level camera 1.5 m above an infinite-looking ground (top face y = 0, y is down).
    K = kitti_like_K(W, H)
    ground = Box((0.0, 5.0, 0.0), (1e4, 5.0, 1e4), "asphalt", "road")
    view = Renderer(World([ground])).render(pose_matrix(np.eye(3), np.array([0.0, -1.5, 0.0])), K, W, H)[0]
    _, y = _normalized_rays(K, W, H)
    below = y > 0.01
    np.testing.assert_allclose(view.depth[below], 1.5 / y[below], rtol=1e-4)
    above = y < 0
    assert above.any()
    assert np.all(view.depth[above] == 0) and np.all(view.semantic[above] == CLASS_ID["sky"])
    assert np.all(view.semantic[below] == CLASS_ID["road"])


def test_semantic_classes_are_named_and_sky_means_invalid_depth():
    assert len(SEMANTIC_CLASSES) >= 6 and len(set(SEMANTIC_CLASSES)) == len(SEMANTIC_CLASSES)
    assert {"sky", "road", "sidewalk", "building", "vehicle", "wall", "floor"} <= set(SEMANTIC_CLASSES)
    scene = build_scene("street", np.random.default_rng(3), 4)
    view = Renderer(scene.world).render(scene.poses[0], kitti_like_K(W, H), W, H)[0]
    sky = view.semantic == CLASS_ID["sky"]
    assert sky.any() and np.array_equal(sky, view.depth == 0)
    assert len(np.unique(view.semantic)) >= 5
    assert view.rgb.dtype == np.uint8 and view.rgb.shape == (H, W, 3) and view.depth.dtype == np.float32


def _mean_abs(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(axis=-1)[mask].mean())


@pytest.mark.parametrize("preset,baseline", [("street", 0.54), ("indoor", 0.12)])
def test_right_image_warped_by_gt_disparity_reconstructs_left(preset, baseline):
    scene = build_scene(preset, np.random.default_rng(0), 8)
    K = kitti_like_K(W, H)
    T = scene.poses[5]
    left, right = Renderer(scene.world).render([T, stereo_right_pose(T, baseline)], K, W, H)
    valid = left.depth > 0
    disparity = np.where(valid, K[0, 0] * baseline / np.where(valid, left.depth, 1.0), 0.0).astype(np.float32)
    u, v = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    warped = cv2.remap(right.rgb, u - disparity, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = valid & (u - disparity >= 0)
    assert mask.mean() > 0.5
    err_warped, err_unwarped = _mean_abs(warped, left.rgb, mask), _mean_abs(right.rgb, left.rgb, mask)
    assert err_unwarped > 4.0, "the stereo pair should differ before warping"
    assert err_warped < 0.3 * err_unwarped
    per_pixel = np.abs(warped.astype(np.float64) - left.rgb).mean(axis=-1)[mask]
    assert np.median(per_pixel) < 2.0


def test_next_frame_warped_by_gt_depth_and_poses_reconstructs_current():
    """Checks the pose convention (T_world_camera) together with the depth."""
    scene = build_scene("street", np.random.default_rng(1), 8)
    K = kitti_like_K(W, H)
    renderer = Renderer(scene.world)
    cur, nxt = (renderer.render(scene.poses[i], K, W, H, exposure=scene.exposure[i])[0] for i in (4, 5))
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(W * H)])
    points_cur = (np.linalg.inv(K) @ pix) * cur.depth.ravel()
    T_next_cur = np.linalg.inv(scene.poses[5]) @ scene.poses[4]
    points_next = T_next_cur[:3, :3] @ points_cur + T_next_cur[:3, 3:4]
    proj = K @ points_next
    u2 = (proj[0] / proj[2]).reshape(H, W).astype(np.float32)
    v2 = (proj[1] / proj[2]).reshape(H, W).astype(np.float32)
    warped = cv2.remap(nxt.rgb, u2, v2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = (cur.depth > 0) & (u2 >= 0) & (u2 <= W - 1) & (v2 >= 0) & (v2 <= H - 1)
    assert mask.mean() > 0.5
    diff_warped = np.abs(warped.astype(np.float64) - cur.rgb).mean(axis=-1)[mask]
    diff_unwarped = np.abs(nxt.rgb.astype(np.float64) - cur.rgb).mean(axis=-1)[mask]
    assert diff_unwarped.mean() > 4.0
    assert np.median(diff_warped) < 0.25 * np.median(diff_unwarped)
    assert diff_warped.mean() < 0.5 * diff_unwarped.mean()


def test_same_seed_same_pixels_different_seed_different():
    K = kitti_like_K(W, H)

    def render(seed: int):
        scene = build_scene("street", np.random.default_rng(seed), 3)
        return Renderer(scene.world).render(scene.poses[2], K, W, H, exposure=scene.exposure[2])[0]

    a, b, c = render(7), render(7), render(8)
    assert a.rgb.tobytes() == b.rgb.tobytes()
    assert a.depth.tobytes() == b.depth.tobytes() and a.semantic.tobytes() == b.semantic.tobytes()
    assert a.rgb.tobytes() != c.rgb.tobytes() and a.depth.tobytes() != c.depth.tobytes()


def test_texture_sticks_to_the_surface_not_the_screen():
    # Moving the camera parallel to a wall shifts its texture in the image by exactly fx * dx / Z pixels.
    K = kitti_like_K(W, H)
    renderer = Renderer(World([Box((0.0, 0.0, 4.5), (50.0, 50.0, 0.5), "facade_brick", "building")]))
    shift_px = 5.0
    dx = shift_px * 4.0 / K[0, 0]
    a = renderer.render(np.eye(4), K, W, H)[0].rgb.astype(np.float64)
    b = renderer.render(pose_matrix(np.eye(3), np.array([dx, 0.0, 0.0])), K, W, H)[0].rgb.astype(np.float64)
    assert np.abs(a - b).mean() > 3.0
    np.testing.assert_allclose(b[:, :-5], a[:, 5:], atol=3)


def test_bad_intrinsics_are_rejected_with_the_parameter_name():
    renderer = Renderer(World([_wall(5.0)]))
    with pytest.raises(ValueError, match="K"):
        renderer.render(np.eye(4), np.zeros((3, 3)), W, H)
    with pytest.raises(ValueError, match="Box.semantic"):
        Box((0, 0, 0), (1, 1, 1), "wood", "no_such_class")

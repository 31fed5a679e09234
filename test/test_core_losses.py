"""kd_depth_core.losses photometric, smoothness and cross-task terms: hand values and a synthetic ray-cast scene."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_depth_core import geometry
from kd_depth_core.losses import (
    edge_aware_smoothness,
    masked_cross_entropy,
    min_reprojection_loss,
    multiscale_reprojection_loss,
    multiscale_smoothness,
    photometric_error,
    ssim_dissimilarity,
    stereo_photometric_error,
    warp_right_to_left,
    warp_sources,
)

# --------------------------------------------------------------------------- synthetic scene
HEIGHT, WIDTH = 48, 64
K_NP = np.array([[50.0, 0.0, 31.5], [0.0, 50.0, 23.5], [0.0, 0.0, 1.0]])
PLANE_NORMAL = np.array([-0.3, 0.1, 1.0])  # points with Z = 4 + 0.3 X - 0.1 Y (target frame)
PLANE_OFFSET = 4.0


def _texture(points: np.ndarray) -> np.ndarray:
    """Smooth 3-channel texture in [0.1, 0.9] defined on 3D points (N,3); periods of ~6-12 px at 4 m."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    channels = [
        0.5 + 0.2 * np.sin(9.0 * x + 2.0 * y) + 0.2 * np.cos(7.0 * y - 3.0 * z),
        0.5 + 0.2 * np.sin(6.0 * x - 8.0 * y + 1.0) + 0.2 * np.sin(5.0 * z + 3.0 * x),
        0.5 + 0.2 * np.cos(10.0 * x + 4.0 * z) + 0.2 * np.sin(9.0 * y + 0.5),
    ]
    return np.stack(channels, 1)


def _render(T_target_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the textured plane from a camera at pose T_target_camera -> (image (3,H,W), depth (H,W))."""
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    rays = np.stack([(u - K_NP[0, 2]) / K_NP[0, 0], (v - K_NP[1, 2]) / K_NP[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    origin = T_target_camera[:3, 3]
    directions = rays @ T_target_camera[:3, :3].T
    t = (PLANE_OFFSET - PLANE_NORMAL @ origin) / (directions @ PLANE_NORMAL)  # ray z = 1, so t = depth
    points = origin + t[:, None] * directions
    image = _texture(points).T.reshape(3, HEIGHT, WIDTH)
    return image, t.reshape(HEIGHT, WIDTH)


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


@pytest.fixture(scope="module")
def scene() -> dict:
    target, depth = _render(np.eye(4))
    T_target_source = np.eye(4)
    T_target_source[:3, :3] = _rotation_y(math.radians(2.0))
    T_target_source[:3, 3] = [0.3, 0.05, 0.1]
    source, _ = _render(T_target_source)
    baseline = 0.5
    T_left_right = np.eye(4)
    T_left_right[0, 3] = baseline
    right, _ = _render(T_left_right)

    def tensor(a):
        return torch.tensor(np.asarray(a), dtype=torch.float32)[None]

    return {
        "target": tensor(target), "source": tensor(source), "right": tensor(right),
        "depth": tensor(depth)[None], "K": tensor(K_NP), "baseline": torch.tensor([baseline]),
        "T_source_target": tensor(np.linalg.inv(T_target_source)),
    }


def _masked_error(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean photometric error over valid pixels away from the image border (SSIM windows)."""
    error = photometric_error(pred, target)[..., 2:-2, 2:-2]
    valid = valid[..., 2:-2, 2:-2]
    return float((error * valid).sum() / valid.sum())


def test_true_depth_and_pose_reconstruct_the_target(scene):
    def error_with(depth, T):
        warped, valid = geometry.warp(scene["source"], depth, scene["K"], T)
        return _masked_error(warped, scene["target"], valid), valid

    true_error, valid = error_with(scene["depth"], scene["T_source_target"])
    assert valid.mean() > 0.7
    wrong_depth_error, _ = error_with(scene["depth"] * 2, scene["T_source_target"])
    wrong_pose = scene["T_source_target"].clone()
    wrong_pose[:, :3, 3] *= -1
    wrong_pose_error, _ = error_with(scene["depth"], wrong_pose)
    unwarped_error = float(photometric_error(scene["source"], scene["target"]).mean())
    assert true_error < 0.02
    assert true_error * 20 < wrong_depth_error
    assert true_error * 20 < wrong_pose_error
    assert true_error * 20 < unwarped_error


def test_stereo_warp_with_true_baseline_reconstructs_left(scene):
    warped, valid = warp_right_to_left(scene["right"], scene["depth"], scene["K"], scene["baseline"])
    true_error = _masked_error(warped, scene["target"], valid)
    unwarped_error = _masked_error(scene["right"], scene["target"], valid)
    assert true_error < 0.02
    assert true_error * 20 < unwarped_error
    # Metric scale: with the known baseline, half or double the depth reconstructs far worse.
    for factor in (0.5, 2.0):
        error_map = stereo_photometric_error(scene["depth"] * factor, scene["target"], scene["right"],
                                             scene["K"], scene["baseline"])
        assert error_map.shape == (1, 1, HEIGHT, WIDTH)
        assert true_error * 20 < _masked_error_map(error_map, valid)


def _masked_error_map(error: torch.Tensor, valid: torch.Tensor) -> float:
    error, valid = error[..., 2:-2, 2:-2], valid[..., 2:-2, 2:-2]
    return float((error * valid).sum() / valid.sum())


def test_multiscale_loss_prefers_the_true_depth(scene):
    true_disp = geometry.depth_to_disp(scene["depth"], 0.1, 100.0)
    scales = [torch.nn.functional.interpolate(true_disp, scale_factor=0.5 ** s, mode="area") for s in range(4)]
    sources = torch.stack([scene["source"], scene["right"]], 1)
    poses = torch.stack([scene["T_source_target"], geometry.stereo_pose(scene["baseline"])], 1)

    def loss_for(disps):
        return multiscale_reprojection_loss(disps, scene["target"], sources, scene["K"], poses, noise_std=0.0)

    good = loss_for(scales)
    bad = loss_for([geometry.depth_to_disp(geometry.disp_to_depth(d, 0.1, 100.0)[1] * 2, 0.1, 100.0) for d in scales])
    assert len(good.per_scale) == 4 and good.automask.shape == (1, 1, HEIGHT, WIDTH)
    assert good.warped.shape == (1, 2, 3, HEIGHT, WIDTH)
    assert float(good.loss) * 2 < float(bad.loss)
    assert float(good.automask.float().mean()) > float(bad.automask.float().mean())


# --------------------------------------------------------------------------- SSIM / photometric error by hand
def test_ssim_of_identical_images_is_zero():
    x = torch.rand(2, 3, 8, 9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim_dissimilarity(x, x), torch.zeros_like(x), atol=1e-5)
    assert float(photometric_error(x, x).abs().max()) < 1e-5
    assert float(ssim_dissimilarity(x, torch.rand_like(x)).mean()) > 0.1


def test_photometric_error_on_constant_images_by_hand():
    # float64: the windowed variance E[x^2] - E[x]^2 cancels to ~1e-8 in float32, ~1e-5 off after / C2.
    pred = torch.full((1, 3, 5, 6), 0.2, dtype=torch.float64)
    target = torch.full((1, 3, 5, 6), 0.6, dtype=torch.float64)
    # Zero variance: SSIM = (2*0.2*0.6 + C1) / (0.2^2 + 0.6^2 + C1) (the C2 factors cancel) = 0.2401/0.4001.
    ssim = (2 * 0.2 * 0.6 + 1e-4) / (0.2 ** 2 + 0.6 ** 2 + 1e-4)
    expected = 0.85 * (1 - ssim) / 2 + 0.15 * 0.4  # = 0.229957...
    error = photometric_error(pred, target)
    assert error.shape == (1, 1, 5, 6)
    assert torch.allclose(error, torch.full_like(error, expected), atol=1e-7)
    error32 = photometric_error(pred.float(), target.float())
    assert torch.allclose(error32, torch.full_like(error32, expected), atol=1e-4)
    assert torch.allclose(photometric_error(pred, target, alpha=0.0), torch.full_like(error, 0.4))
    with pytest.raises(ValueError, match="equal shape"):
        photometric_error(pred, target[..., :3])


# --------------------------------------------------------------------------- minimum and auto-masking
def test_per_pixel_minimum_picks_the_smaller_source():
    errors = torch.tensor([[[[0.1, 0.5], [0.3, 0.9]],
                            [[0.2, 0.4], [0.3, 0.1]]]])
    loss, mask = min_reprojection_loss(errors)
    assert math.isclose(float(loss), (0.1 + 0.4 + 0.3 + 0.1) / 4, rel_tol=1e-6)
    assert mask.all()


def test_auto_mask_masks_pixels_where_identity_is_better():
    reprojection = torch.tensor([[[[0.1, 0.5], [0.3, 0.9]],
                                  [[0.2, 0.4], [0.3, 0.1]]]])
    identity = torch.tensor([[[[0.5, 0.05], [0.3, 0.9]],
                              [[0.5, 0.9], [0.9, 0.9]]]])
    loss, mask = min_reprojection_loss(reprojection, identity, noise_std=0.0)
    # Pixel (0,1): identity 0.05 < best warped 0.4 -> masked; (1,0): tie 0.3 = 0.3 -> identity wins, masked.
    assert mask.tolist() == [[[[True, False], [False, True]]]]
    assert math.isclose(float(loss), (0.1 + 0.05 + 0.3 + 0.1) / 4, rel_tol=1e-6)
    # With tie-breaking noise from a seeded generator the result is reproducible.
    a = min_reprojection_loss(reprojection, identity, generator=torch.Generator().manual_seed(3))
    b = min_reprojection_loss(reprojection, identity, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    with pytest.raises(ValueError, match="identity_errors"):
        min_reprojection_loss(reprojection, identity[:, :1])


def test_masked_pixels_give_no_gradient():
    reprojection = torch.tensor([[[[0.1, 0.5]]]], requires_grad=True)
    identity = torch.tensor([[[[0.2, 0.3]]]])
    loss, mask = min_reprojection_loss(reprojection, identity, noise_std=0.0)
    loss.backward()
    assert mask.tolist() == [[[[True, False]]]]
    assert reprojection.grad.tolist() == [[[[0.5, 0.0]]]]


# --------------------------------------------------------------------------- smoothness
def test_smoothness_zero_for_constant_disparity():
    image = torch.rand(2, 3, 6, 7)
    assert float(edge_aware_smoothness(torch.full((2, 1, 6, 7), 0.3), image)) == pytest.approx(0.0, abs=1e-7)


def test_smoothness_on_a_ramp_by_hand():
    # disp = u + 1 over 4 columns: mean 2.5, normalised steps 1/2.5 = 0.4 along x, 0 along y.
    disp = torch.arange(1.0, 5.0).expand(1, 1, 3, 4)
    flat = torch.full((1, 3, 3, 4), 0.5)
    assert float(edge_aware_smoothness(disp, flat)) == pytest.approx(0.4, rel=1e-5)
    # An image edge between columns 1 and 2 (step 1 in every channel) weights that step by exp(-1).
    edge = torch.zeros(1, 3, 3, 4)
    edge[..., 2:] = 1.0
    assert float(edge_aware_smoothness(disp, edge)) == pytest.approx(0.4 * (2 + math.exp(-1)) / 3, rel=1e-5)
    # Scale invariant: 10x the disparity gives the same loss.
    assert float(edge_aware_smoothness(disp * 10, edge)) == pytest.approx(0.4 * (2 + math.exp(-1)) / 3, rel=1e-5)


def test_multiscale_smoothness_weights_scales():
    image = torch.full((1, 3, 8, 8), 0.5)
    ramp0 = torch.arange(1.0, 9.0).expand(1, 1, 8, 8)  # normalised step 1/4.5 along x
    ramp1 = torch.arange(1.0, 5.0).expand(1, 1, 4, 4)  # normalised step 1/2.5 along x
    expected = (1e-3 * (1 / 4.5) + 1e-3 / 2 * (1 / 2.5)) / 2
    assert float(multiscale_smoothness([ramp0, ramp1], image)) == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- gradients through the whole loss
def test_gradients_finite_at_every_scale():
    gen = torch.Generator().manual_seed(0)
    batch, height, width = 2, 16, 24
    target = torch.rand(batch, 3, height, width, generator=gen)
    sources = torch.rand(batch, 2, 3, height, width, generator=gen)
    disps = [torch.rand(batch, 1, height // 2 ** s, width // 2 ** s, generator=gen).requires_grad_() for s in range(4)]
    pose_vec = (torch.randn(batch * 2, 6, generator=gen) * 0.01).requires_grad_()
    poses = geometry.pose_vec_to_mat(pose_vec).reshape(batch, 2, 4, 4)
    K = geometry.scale_intrinsics(torch.tensor([[0.58, 0, 0.5], [0, 1.92, 0.5], [0, 0, 1]]), width, height)
    K = K.expand(batch, 3, 3)
    result = multiscale_reprojection_loss(disps, target, sources, K, poses, generator=gen)
    total = result.loss + multiscale_smoothness(disps, target)
    total.backward()
    assert torch.isfinite(total)
    for scale, disp in enumerate(disps):
        assert torch.isfinite(disp.grad).all(), scale
        assert disp.grad.abs().sum() > 0, scale
    assert torch.isfinite(pose_vec.grad).all() and pose_vec.grad.abs().sum() > 0


def test_warp_sources_shapes_and_bad_pose_shape():
    sources = torch.rand(2, 3, 3, 6, 8)
    poses = torch.eye(4).expand(2, 3, 4, 4)
    K = torch.tensor([[5.0, 0, 4], [0, 5.0, 3], [0, 0, 1]]).expand(2, 3, 3)
    warped, valid = warp_sources(sources, torch.full((2, 1, 6, 8), 2.0), K, poses)
    assert warped.shape == sources.shape and valid.shape == (2, 3, 6, 8)
    assert torch.allclose(warped, sources, atol=1e-5)
    with pytest.raises(ValueError, match="T_source_target"):
        warp_sources(sources, torch.ones(2, 1, 6, 8), K, poses[:, :2])


def test_masked_cross_entropy_class_weights_by_hand_over_three_classes() -> None:
    """One labelled pixel per class, each with another loss, so a weight on the wrong class or a mean
    normalised by the pixel count instead of the weight sum gives another number."""
    # class 0: logits (0, 0, 0) -> ln 3; class 1: (ln 2, 0, 0) -> p = 1/4 -> ln 4; class 2: (0, 0, ln 6) ->
    # p = 6/8 -> ln(4/3); the fourth pixel is ignored (255) whatever its logits
    logits = torch.tensor([[0.0, math.log(2.0), 0.0, 9.0],
                           [0.0, 0.0, 0.0, -9.0],
                           [0.0, 0.0, math.log(6.0), 0.0]]).view(1, 3, 1, 4)
    labels = torch.tensor([[[0, 1, 2, 255]]])
    ce = (math.log(3.0), math.log(4.0), math.log(4.0 / 3.0))
    assert masked_cross_entropy(logits, labels) == pytest.approx(sum(ce) / 3, rel=1e-6)
    weight = torch.tensor([1.0, 2.0, 4.0])
    expected = (1 * ce[0] + 2 * ce[1] + 4 * ce[2]) / 7
    assert masked_cross_entropy(logits, labels, weight=weight) == pytest.approx(expected, rel=1e-6)
    # permuting the weights moves them to other classes: another value (weights follow the labels)
    other = (4 * ce[0] + 1 * ce[1] + 2 * ce[2]) / 7
    assert masked_cross_entropy(logits, labels, weight=torch.tensor([4.0, 1.0, 2.0])) == pytest.approx(other, rel=1e-6)
    assert abs(expected - other) > 0.1


def test_masked_cross_entropy_by_hand_skips_ignored_pixels() -> None:
    # pixel a: logits (0, 0), label 0 -> ln 2; pixel b: (ln 3, 0), label 0 -> -ln(3/4); pixel c ignored
    logits = torch.tensor([[0.0, math.log(3.0), 5.0], [0.0, 0.0, -5.0]]).view(1, 2, 1, 3)
    labels = torch.tensor([[[0, 0, 255]]])
    a, b = math.log(2.0), -math.log(0.75)
    assert masked_cross_entropy(logits, labels) == pytest.approx((a + b) / 2, rel=1e-6)
    # class weights (2, 1) with every labelled pixel in class 0: the weighted mean is the plain mean
    assert masked_cross_entropy(logits, labels, weight=torch.tensor([2.0, 1.0])) == pytest.approx((a + b) / 2, rel=1e-6)
    assert masked_cross_entropy(logits, torch.full((1, 1, 3), 255)) == 0.0  # nothing labelled: 0, not NaN
    with pytest.raises(ValueError, match=r"labels: expected shape \(B,H,W\) = \(1, 1, 3\)"):
        masked_cross_entropy(logits, torch.zeros(1, 3, dtype=torch.long))


def test_mean3x3_is_the_3x3_window_mean_with_its_gradient():
    from kd_depth_core.losses.photometric import mean3x3

    x = torch.arange(20.0).reshape(1, 1, 4, 5).requires_grad_(True)
    out = mean3x3(x)
    # by hand: the window at the top left holds 0,1,2,5,6,7,10,11,12 -> 6; every window of a ramp is its centre
    assert out.shape == (1, 1, 2, 3) and float(out[0, 0, 0, 0]) == pytest.approx(6.0)
    torch.testing.assert_close(out, torch.nn.functional.avg_pool2d(x, 3, 1))
    out.sum().backward()
    # the corner pixel is in 1 window, the centre ones in 6 (2 rows x 3 columns): gradients 1/9 and 6/9
    assert float(x.grad[0, 0, 0, 0]) == pytest.approx(1 / 9) and float(x.grad[0, 0, 1, 2]) == pytest.approx(6 / 9)


def test_agreeing_gradient_passes_only_the_elements_that_agree_in_sign_with_the_reference():
    from kd_depth_core.losses.cross_task import agreeing_gradient

    value = torch.tensor([0.3, 0.3, 0.3, 0.3, 0.3], requires_grad=True)
    reference = torch.tensor([1.0, -1.0, 0.0, 2.0, -0.5])
    guarded = agreeing_gradient(value, reference)
    assert torch.equal(guarded, value)  # the forward is the identity
    # d(sum(c * v))/dv = c = [1, 1, 1, -1, -2]; c * reference = [1, -1, 0, -2, 1] -> keep where >= 0
    (torch.tensor([1.0, 1.0, 1.0, -1.0, -2.0]) * guarded).sum().backward()
    assert value.grad.tolist() == [1.0, 0.0, 1.0, 0.0, -2.0]
    with pytest.raises(ValueError, match=r"reference: expected the shape of value \(5,\)"):
        agreeing_gradient(value, reference[:3])

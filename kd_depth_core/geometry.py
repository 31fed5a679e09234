"""Camera geometry: depth <-> disparity, back-projection, projection, poses, warping, point clouds.

Conventions (see docs/architecture.md):
- Camera frame is optical (x right, y down, z forward); depth is metres along z.
- Pixel (u, v) = (column, row); pixel centres sit at integer coordinates, so K's principal point
  is in that convention. Normalised sampling grids use ``align_corners=True``
  (u = 0 -> -1, u = W-1 -> +1); :data:`GRID_ALIGN_CORNERS` is what every ``grid_sample`` here uses.
- ``T_a_b`` (4x4) maps points in frame b to frame a: ``X_a = T_a_b @ X_b``.
- Pose vectors are (axis-angle (3), translation (3) in metres). ``pose_vec_to_mat(v)`` is the
  rigid transform ``[R(v[:3]) | v[3:]]``; ``invert=True`` gives its inverse. The pose network
  ``pose_net(img_a, img_b)`` predicts ``v`` with ``pose_vec_to_mat(v) = T_b_a`` (maps points of
  frame a into frame b), as in Monodepth2: for a later source frame call ``pose_net(target,
  source)`` -> ``T_source_target``; for an earlier one call ``pose_net(source, target)`` and
  ``invert=True`` -> ``T_source_target``. Warping the source into the target needs
  ``T_source_target``.
- Stereo: the right camera sits at +x of the left by ``baseline`` metres, so
  ``T_right_left = [I | (-baseline, 0, 0)]`` and disparity ``d = fx * baseline / Z``.

Torch functions are batched with per-sample intrinsics K (B,3,3) and poses (B,4,4).

torch is imported inside the functions that need it, never at module level: the numpy functions
(:func:`scale_intrinsics` and :func:`disparity_to_depth` on arrays, :func:`pixel_rays`,
:func:`depth_to_points`) are what a node serving an ONNX export uses, and that path never imports
torch (``test/test_lean_runtime.py``). A tensor argument implies torch is already imported.
"""
from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

GRID_ALIGN_CORNERS = True
"""``align_corners`` used by :func:`project` grids and every ``grid_sample`` in :func:`warp`."""


def _is_tensor(value) -> bool:
    """``isinstance(value, torch.Tensor)`` without importing torch (no torch loaded: no tensor exists)."""
    torch_module = sys.modules.get("torch")
    return torch_module is not None and isinstance(value, torch_module.Tensor)


# --------------------------------------------------------------------------- validation helpers
def _check_shape(name: str, tensor: torch.Tensor, tail: tuple[int, ...], ndim: int) -> None:
    if not _is_tensor(tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != ndim or tuple(tensor.shape[ndim - len(tail):]) != tail:
        expected = "(B," + ",".join(str(t) for t in tail) + ")" if ndim == len(tail) + 1 else str(tail)
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(tensor.shape)}")


def _check_depth_range(min_depth: float, max_depth: float) -> None:
    if not (0 < min_depth < max_depth):
        raise ValueError(f"min_depth/max_depth: expected 0 < min_depth < max_depth, got {min_depth}, {max_depth}")


# --------------------------------------------------------------------------- depth <-> disparity
def disp_to_depth(disp: torch.Tensor, min_depth: float = 0.1, max_depth: float = 100.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Map sigmoid output ``disp`` in [0, 1] to (scaled_disp in [1/max_depth, 1/min_depth] 1/m, depth in m).

    disp 0 -> depth ``max_depth``; disp 1 -> depth ``min_depth`` (Monodepth2). Any shape.
    """
    _check_depth_range(min_depth, max_depth)
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    scaled_disp = min_disp + (max_disp - min_disp) * disp
    return scaled_disp, 1.0 / scaled_disp


def depth_to_disp(depth: torch.Tensor, min_depth: float = 0.1, max_depth: float = 100.0) -> torch.Tensor:
    """Inverse of :func:`disp_to_depth`: depth in metres -> sigmoid-space disparity (in [0, 1] inside the range)."""
    _check_depth_range(min_depth, max_depth)
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    return (1.0 / depth - min_disp) / (max_disp - min_disp)


def _per_sample(value, like):
    """Reshape a (B,) tensor to (B,1,...,1) so it broadcasts against ``like``; scalars pass through."""
    if _is_tensor(value) and value.ndim == 1 and _is_tensor(like) and like.ndim > 1:
        return value.reshape(-1, *([1] * (like.ndim - 1))).to(like)
    return value


def disparity_to_depth(disparity, fx, baseline):
    """Stereo disparity (pixels) -> depth (m) = fx * baseline / disparity; 0 where disparity <= 0.

    Works on numpy arrays and tensors. ``fx`` (pixels) and ``baseline`` (m) are scalars or, for a
    tensor disparity (B,...), (B,) tensors.
    """
    fx, baseline = _per_sample(fx, disparity), _per_sample(baseline, disparity)
    if _is_tensor(disparity):
        import torch

        valid = disparity > 0
        return torch.where(valid, fx * baseline / torch.where(valid, disparity, torch.ones_like(disparity)),
                           torch.zeros_like(disparity))
    disparity = np.asarray(disparity, dtype=np.float32)
    valid = disparity > 0
    return np.where(valid, fx * baseline / np.where(valid, disparity, 1.0), 0.0).astype(np.float32)


def depth_to_disparity(depth, fx, baseline):
    """Depth (m) -> stereo disparity (pixels) = fx * baseline / depth; 0 where depth <= 0 or not finite.

    Same argument rules as :func:`disparity_to_depth` (they are the same formula).
    """
    return disparity_to_depth(depth, fx, baseline)


# --------------------------------------------------------------------------- intrinsics
def scale_intrinsics(K, sx: float, sy: float):
    """Intrinsics for an image resized by (sx, sy): fx, skew, cx scale by sx; fy, cy by sy.

    ``K`` is a numpy array or tensor of shape (..., 3, 3); returns a new one of the same kind
    (float). Uses K' = diag(sx, sy, 1) @ K (resize factors = new size / old size).
    """
    if _is_tensor(K):
        import torch

        if K.ndim < 2 or tuple(K.shape[-2:]) != (3, 3):
            raise ValueError(f"K: expected shape (..., 3, 3), got {tuple(K.shape)}")
        dtype = K.dtype if K.is_floating_point() else torch.float32
        scale = torch.tensor([sx, sy, 1.0], dtype=dtype, device=K.device)
        return K.to(dtype) * scale[:, None]
    K = np.asarray(K)
    if K.ndim < 2 or K.shape[-2:] != (3, 3):
        raise ValueError(f"K: expected shape (..., 3, 3), got {K.shape}")
    dtype = K.dtype if np.issubdtype(K.dtype, np.floating) else np.float64
    return K.astype(dtype) * np.array([sx, sy, 1.0], dtype=dtype)[:, None]


# --------------------------------------------------------------------------- pixel grids, (back)projection
@functools.lru_cache(maxsize=32)
def _pixel_grid_cached(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    import torch

    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                          torch.arange(width, device=device, dtype=dtype), indexing="ij")
    grid = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(height * width, device=device, dtype=dtype)])
    grid.requires_grad_(False)
    return grid


def pixel_grid(height: int, width: int, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """Homogeneous pixel coordinates (3, H*W): rows u (column), v (row), 1; row-major order; ``dtype`` None =
    float32. Cached; do not modify."""
    import torch

    return _pixel_grid_cached(int(height), int(width), torch.device(device), dtype or torch.float32)


def backproject(depth: torch.Tensor, K_inv: torch.Tensor) -> torch.Tensor:
    """Depth (B,1,H,W) in metres and inverse intrinsics (B,3,3) -> camera points (B,3,H*W) in metres.

    Points are row-major over pixels (index v*W + u); X = depth * K_inv @ (u, v, 1).
    """
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth: expected shape (B,1,H,W), got {tuple(depth.shape)}")
    _check_shape("K_inv", K_inv, (3, 3), 3)
    batch, _, height, width = depth.shape
    rays = K_inv @ pixel_grid(height, width, depth.device, depth.dtype)  # (B,3,HW)
    return rays * depth.reshape(batch, 1, height * width)


def project_to_pixels(points: torch.Tensor, K: torch.Tensor, T: torch.Tensor | None = None,
                      eps: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """Project camera points into pixels.

    points: (B,3,N) or homogeneous (B,4,N) in the frame T maps from; K (B,3,3); T (B,4,4) or None
    (identity). Returns (uv (B,2,N) pixels, z (B,1,N) metres in the destination camera). Points
    with z <= eps are divided by eps (far outside the image) — mask them with ``z > eps``.
    """
    if points.ndim != 3 or points.shape[1] not in (3, 4):
        raise ValueError(f"points: expected shape (B,3,N) or (B,4,N), got {tuple(points.shape)}")
    _check_shape("K", K, (3, 3), 3)
    xyz = points[:, :3]
    if T is not None:
        _check_shape("T", T, (4, 4), 3)
        xyz = T[:, :3, :3] @ xyz + T[:, :3, 3:]
    cam = K @ xyz
    z = cam[:, 2:3]
    uv = cam[:, :2] / z.clamp(min=eps)
    return uv, z


def pixels_to_grid(uv: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates (B,2,H*W) -> grid_sample grid (B,H,W,2) in [-1, 1] (``align_corners=True``)."""
    import torch

    batch = uv.shape[0]
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], dtype=uv.dtype, device=uv.device)
    grid = uv * scale[None, :, None] - 1.0
    return grid.reshape(batch, 2, height, width).permute(0, 2, 3, 1)


def project(points: torch.Tensor, K: torch.Tensor, T: torch.Tensor | None, height: int, width: int) -> torch.Tensor:
    """Points (B,3|4,H*W) -> normalised sampling grid (B,H,W,2) for ``grid_sample(align_corners=True)``.

    ``T`` (B,4,4) maps the points' frame to the camera with intrinsics K (B,3,3); None = identity.
    """
    if points.shape[-1] != height * width:
        raise ValueError(f"points: expected N = height*width = {height * width}, got {points.shape[-1]}")
    uv, _ = project_to_pixels(points, K, T)
    return pixels_to_grid(uv, height, width)


# --------------------------------------------------------------------------- poses
def _skew(v: torch.Tensor) -> torch.Tensor:
    """(B,3) -> cross-product matrices (B,3,3)."""
    import torch

    zero = torch.zeros_like(v[:, 0])
    x, y, z = v.unbind(1)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=1).reshape(-1, 3, 3)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: axis-angle (B,3) (angle = norm, radians) -> rotation matrices (B,3,3). Smooth at 0."""
    import torch

    _check_shape("axis_angle", axis_angle, (3,), 2)
    theta_sq = (axis_angle * axis_angle).sum(1)
    small = theta_sq < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta_sq), theta_sq))
    # Taylor expansions near 0 keep values and gradients finite.
    a = torch.where(small, 1.0 - theta_sq / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta_sq / 24.0, (1.0 - torch.cos(theta)) / torch.where(small, 1.0, theta_sq))
    k = _skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    return eye + a[:, None, None] * k + b[:, None, None] * (k @ k)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (B,3,3) -> axis-angle (B,3) with angle in [0, pi], via a quaternion (stable near pi)."""
    import torch

    _check_shape("R", R, (3, 3), 3)
    r00, r01, r02 = R[:, 0, 0], R[:, 0, 1], R[:, 0, 2]
    r10, r11, r12 = R[:, 1, 0], R[:, 1, 1], R[:, 1, 2]
    r20, r21, r22 = R[:, 2, 0], R[:, 2, 1], R[:, 2, 2]
    # Shepperd: four candidate quaternions (w, x, y, z); use the one with the largest pivot.
    pivots = torch.stack([1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22], 1)
    s = torch.sqrt(pivots.clamp(min=1e-12))  # = 2 * |pivot component|
    candidates = torch.stack([
        torch.stack([s[:, 0] / 2, (r21 - r12) / (2 * s[:, 0]), (r02 - r20) / (2 * s[:, 0]), (r10 - r01) / (2 * s[:, 0])], 1),
        torch.stack([(r21 - r12) / (2 * s[:, 1]), s[:, 1] / 2, (r01 + r10) / (2 * s[:, 1]), (r02 + r20) / (2 * s[:, 1])], 1),
        torch.stack([(r02 - r20) / (2 * s[:, 2]), (r01 + r10) / (2 * s[:, 2]), s[:, 2] / 2, (r12 + r21) / (2 * s[:, 2])], 1),
        torch.stack([(r10 - r01) / (2 * s[:, 3]), (r02 + r20) / (2 * s[:, 3]), (r12 + r21) / (2 * s[:, 3]), s[:, 3] / 2], 1),
    ], 1)  # (B, case, 4)
    best = pivots.argmax(1)
    quat = candidates[torch.arange(R.shape[0], device=R.device), best]
    quat = torch.where(quat[:, :1] < 0, -quat, quat)  # w >= 0 -> angle in [0, pi]
    w, vec = quat[:, 0], quat[:, 1:]
    vec_norm = vec.norm(dim=1)
    angle = 2.0 * torch.atan2(vec_norm, w)
    small = vec_norm < 1e-8
    factor = torch.where(small, 2.0 / w.clamp(min=1e-12), angle / torch.where(small, 1.0, vec_norm))
    return vec * factor[:, None]


def pose_vec_to_mat(vec: torch.Tensor, invert: bool = False) -> torch.Tensor:
    """Pose vector (B,6) = (axis-angle (3), translation (3) m) -> rigid transform (B,4,4).

    Returns ``[R | t]`` (rotate, then translate); with ``invert=True`` its inverse ``[R^T | -R^T t]``.
    See the module docstring for which frame maps to which (pose net: ``T_b_a``).
    """
    import torch

    _check_shape("vec", vec, (6,), 2)
    R = axis_angle_to_matrix(vec[:, :3])
    t = vec[:, 3:, None]
    if invert:
        R = R.transpose(1, 2)
        t = -R @ t
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=vec.dtype, device=vec.device).expand(vec.shape[0], 1, 4)
    return torch.cat([torch.cat([R, t], 2), bottom], 1)


def invert_pose(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms (B,4,4): ``T_a_b -> T_b_a``."""
    import torch

    _check_shape("T", T, (4, 4), 3)
    R_t = T[:, :3, :3].transpose(1, 2)
    t = -R_t @ T[:, :3, 3:]
    out = torch.zeros_like(T)
    out[:, :3, :3] = R_t
    out[:, :3, 3:] = t
    out[:, 3, 3] = 1.0
    return out


def mat_to_pose_vec(T: torch.Tensor, invert: bool = False) -> torch.Tensor:
    """Rigid transform (B,4,4) -> pose vector (B,6); inverse of ``pose_vec_to_mat(vec, invert)``."""
    import torch

    _check_shape("T", T, (4, 4), 3)
    if invert:
        T = invert_pose(T)
    return torch.cat([matrix_to_axis_angle(T[:, :3, :3]), T[:, :3, 3]], 1)


def stereo_pose(baseline: torch.Tensor) -> torch.Tensor:
    """Baselines (B,) metres -> ``T_right_left`` (B,4,4) of a rectified pair: X_right = X_left - (b, 0, 0)."""
    import torch

    baseline = torch.as_tensor(baseline, dtype=torch.float32) if not isinstance(baseline, torch.Tensor) else baseline
    if baseline.ndim != 1:
        raise ValueError(f"baseline: expected shape (B,), got {tuple(baseline.shape)}")
    dtype = baseline.dtype if baseline.is_floating_point() else torch.float32
    T = torch.eye(4, dtype=dtype, device=baseline.device).repeat(baseline.shape[0], 1, 1)
    T[:, 0, 3] = -baseline.to(dtype)
    return T


# --------------------------------------------------------------------------- warping
def warp(source_image: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, T_source_target: torch.Tensor,
         padding_mode: str = "border") -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruct the target view by sampling the source image at where target pixels land in it.

    source_image (B,C,H,W); depth (B,1,H,W) metres of the *target* view; K (B,3,3) at this
    resolution (shared by both views); T_source_target (B,4,4). Differentiable in depth, pose and
    image (bilinear, ``padding_mode`` border). Returns (warped (B,C,H,W), valid (B,1,H,W) float
    0/1: the point is in front of the source camera and lands inside the source image).
    """
    import torch
    import torch.nn.functional as F

    if source_image.ndim != 4:
        raise ValueError(f"source_image: expected shape (B,C,H,W), got {tuple(source_image.shape)}")
    if depth.ndim != 4 or depth.shape[1] != 1 or depth.shape[-2:] != source_image.shape[-2:] \
            or depth.shape[0] != source_image.shape[0]:
        raise ValueError(f"depth: expected shape (B,1,H,W) = {(source_image.shape[0], 1, *source_image.shape[-2:])}, "
                         f"got {tuple(depth.shape)}")
    height, width = depth.shape[-2:]
    points = backproject(depth, torch.linalg.inv(K))
    uv, z = project_to_pixels(points, K, T_source_target)
    grid = pixels_to_grid(uv, height, width)
    warped = F.grid_sample(source_image, grid, mode="bilinear", padding_mode=padding_mode,
                           align_corners=GRID_ALIGN_CORNERS)
    inside = (grid.abs() <= 1.0 + 1e-5).all(-1)  # (B,H,W); the tolerance keeps border pixels after rounding
    valid = (inside & (z.reshape(-1, height, width) > 1e-3)).unsqueeze(1).to(source_image.dtype)
    return warped, valid


# --------------------------------------------------------------------------- numpy point clouds
def pixel_rays(K: np.ndarray, height: int, width: int, stride: int = 1) -> np.ndarray:
    """Unit-depth rays (h, w, 3) float32: ((u-cx)/fx, (v-cy)/fy, 1) at u = 0, stride, ...; cache and reuse."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K: expected shape (3, 3), got {K.shape}")
    if stride < 1:
        raise ValueError(f"stride: expected an integer >= 1, got {stride}")
    fx, fy, cx, cy, skew = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    u = np.arange(0, width, stride, dtype=np.float64)
    v = np.arange(0, height, stride, dtype=np.float64)
    y = (v - cy) / fy
    x = (u[None, :] - cx - skew * y[:, None]) / fx
    rays = np.empty((len(v), len(u), 3), dtype=np.float32)
    rays[..., 0] = x
    rays[..., 1] = y[:, None]
    rays[..., 2] = 1.0
    return rays


def depth_to_points(depth: np.ndarray, K: np.ndarray | None = None, stride: int = 1,
                    rays: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Depth image (H, W) metres -> organised point cloud (h, w, 3) float32 in the camera frame.

    X = (u-cx)Z/fx, Y = (v-cy)Z/fy, Z = depth, sampled every ``stride`` pixels. Invalid depth
    (<= 0 or not finite) gives NaN points. Pass ``rays = pixel_rays(K, H, W, stride)`` to skip
    recomputing them per frame (then ``K`` may be None). ``out``: a float32 (h, w, C >= 3) array
    whose first three channels receive the points (e.g. a PointCloud2 buffer); returns that view.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected shape (H, W), got {depth.shape}")
    if rays is None:
        if K is None:
            raise ValueError("depth_to_points: pass K or precomputed rays")
        rays = pixel_rays(K, depth.shape[0], depth.shape[1], stride)
    z = depth[::stride, ::stride]
    if rays.shape != (*z.shape, 3):
        raise ValueError(f"rays: expected shape {(*z.shape, 3)} for depth {depth.shape} with stride {stride}, "
                         f"got {rays.shape}")
    z = np.where((z > 0) & (z < np.inf), z, np.float32(np.nan)).astype(np.float32, copy=False)
    if out is None:
        out = np.empty((*z.shape, 3), dtype=np.float32)
    elif out.dtype != np.float32 or out.shape[:2] != z.shape or out.shape[2] < 3:
        raise ValueError(f"out: expected float32 of shape {(*z.shape, '>=3')}, got {out.dtype} {out.shape}")
    np.multiply(z, rays[..., 0], out=out[..., 0])  # channel by channel: ~3x faster than one broadcast
    np.multiply(z, rays[..., 1], out=out[..., 1])
    out[..., 2] = z
    return out[..., :3]

"""Lidar ground truth: PointCloud2 -> points, static TF chains, and projection into a camera's depth image.

Vectorised throughout (numpy structured dtypes over ``msg.data``, no per-point Python). Works on
rosbags' deserialised messages and rclpy messages alike. Units: metres; ``T_a_b`` (4x4) maps
points in frame b to frame a (docs/architecture.md). Depth is along the camera's optical axis,
0 where no point lands; when several points land on a pixel the nearest wins.
"""
from __future__ import annotations

from collections import deque

import cv2
import numpy as np

# sensor_msgs/PointField datatype -> numpy type
POINTFIELD_DTYPES: dict[int, str] = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


class LidarError(ValueError):
    """A point cloud or transform cannot be used; the message names the field or frames."""


class TransformLookupError(LidarError):
    """No chain of static transforms between two frames."""


def cloud_dtype(msg) -> np.dtype:
    """Structured numpy dtype of one point of a PointCloud2 (field names, offsets, byte order, point_step)."""
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in POINTFIELD_DTYPES:
            raise LidarError(f"fields: {f.name!r} has unknown PointField datatype {f.datatype}")
        base = np.dtype(order + POINTFIELD_DTYPES[f.datatype])
        names.append(f.name)
        formats.append(base if f.count <= 1 else (base, (int(f.count),)))
        offsets.append(int(f.offset))
    try:
        return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})
    except ValueError as exc:
        raise LidarError(f"fields/point_step: inconsistent PointCloud2 layout ({exc})") from None


def cloud_to_xyz(msg) -> np.ndarray:
    """PointCloud2 -> (N, 3) float64 x, y, z of its finite points (metres, in ``msg.header.frame_id``).

    Handles any field layout and padding (``point_step``, ``row_step``), both byte orders and
    organised (H x W) or unorganised clouds. Needs fields x, y, z.
    """
    dtype = cloud_dtype(msg)
    missing = [name for name in "xyz" if name not in (dtype.names or ())]
    if missing:
        raise LidarError(f"fields: PointCloud2 lacks field(s) {missing}; has {list(dtype.names or ())}")
    height, width = int(msg.height), int(msg.width)
    row_step, point_step = int(msg.row_step), int(msg.point_step)
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if height * width == 0:
        return np.zeros((0, 3))
    if row_step < width * point_step or raw.size < row_step * (height - 1) + width * point_step:
        raise LidarError(f"data: {raw.size} bytes do not hold {height}x{width} points of {point_step} bytes "
                         f"(row_step {row_step})")
    points = np.ndarray((height, width), dtype=dtype, buffer=raw, strides=(row_step, point_step)).reshape(-1)
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=1).astype(np.float64)
    return xyz[np.isfinite(xyz).all(axis=1)]


# --------------------------------------------------------------------------- transforms
def quaternion_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """Unit quaternion (normalised here) -> rotation matrix (3, 3)."""
    q = np.array([w, x, y, z], dtype=np.float64)
    norm = np.linalg.norm(q)
    if not norm > 0:
        raise LidarError("transform.rotation: zero quaternion")
    w, x, y, z = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def transform_to_matrix(transform) -> np.ndarray:
    """geometry_msgs/Transform -> T (4, 4): rotation then translation."""
    T = np.eye(4)
    r, t = transform.rotation, transform.translation
    T[:3, :3] = quaternion_to_matrix(r.x, r.y, r.z, r.w)
    T[:3, 3] = (t.x, t.y, t.z)
    return T


class StaticTransforms:
    """A graph of static transforms (from ``/tf_static`` TFMessages) answering ``lookup(target, source) -> T_target_source``."""

    def __init__(self) -> None:
        # edges[a][b] = T_b_a: the step from frame a to its neighbour b
        self._edges: dict[str, dict[str, np.ndarray]] = {}

    def add_message(self, tf_message) -> None:
        """Add every TransformStamped of a TFMessage (header.frame_id = parent, child_frame_id = child)."""
        for stamped in tf_message.transforms:
            self.add(stamped.header.frame_id, stamped.child_frame_id, transform_to_matrix(stamped.transform))

    def add(self, parent: str, child: str, T_parent_child: np.ndarray) -> None:
        parent, child = parent.lstrip("/"), child.lstrip("/")
        self._edges.setdefault(child, {})[parent] = T_parent_child
        self._edges.setdefault(parent, {})[child] = np.linalg.inv(T_parent_child)

    @property
    def frames(self) -> list[str]:
        return sorted(self._edges)

    def lookup(self, target: str, source: str) -> np.ndarray:
        """T_target_source (4, 4) through any chain of static transforms; LidarError naming the frames if none."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        # breadth-first search from source; T holds T_frame_source
        if source not in self._edges or target not in self._edges:
            missing = [f for f in (source, target) if f not in self._edges]
            raise TransformLookupError(f"/tf_static: frame(s) {missing} not found (looking for {source!r} -> {target!r}); "
                             f"frames present: {', '.join(self.frames) or 'none'}")
        found = {source: np.eye(4)}
        queue = deque([source])
        while queue:
            frame = queue.popleft()
            for neighbour, T_neighbour_frame in self._edges[frame].items():
                if neighbour not in found:
                    found[neighbour] = T_neighbour_frame @ found[frame]
                    if neighbour == target:
                        return found[neighbour]
                    queue.append(neighbour)
        raise TransformLookupError(f"/tf_static: no transform chain from {source!r} to {target!r}; frames present: "
                         f"{', '.join(self.frames) or 'none'}")


# --------------------------------------------------------------------------- projection
def project_to_depth(points_cam: np.ndarray, K: np.ndarray, width: int, height: int,
                     distortion: np.ndarray | None = None, min_depth: float = 0.1,
                     max_depth: float = 250.0, distortion_model: str = "plumb_bob") -> np.ndarray:
    """Camera-frame points (N, 3) metres -> depth image float32 (height, width) metres, 0 = no point.

    Pixel (u, v) = round(K @ X / Z) (pixel centres at integer coordinates); with ``distortion``
    (OpenCV plumb_bob / rational coefficients) points are projected through the lens model
    instead (``equidistant`` / ``fisheye``: OpenCV's fisheye model). Points with Z outside [min_depth, max_depth] or landing outside the image are
    ignored; the nearest point wins each pixel.
    """
    points_cam = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    z = points_cam[:, 2]
    keep = (z >= min_depth) & (z <= max_depth)
    points_cam, z = points_cam[keep], z[keep]
    depth = np.zeros((height, width), dtype=np.float32)
    if not len(z):
        return depth
    K = np.asarray(K, dtype=np.float64)
    if distortion is not None and np.any(distortion):
        distortion = np.asarray(distortion, dtype=np.float64)
        if distortion_model in ("equidistant", "fisheye"):
            uv, _ = cv2.fisheye.projectPoints(points_cam.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K,
                                              distortion[:4])
        else:
            uv, _ = cv2.projectPoints(points_cam.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, distortion)
        uv = uv.reshape(-1, 2)
    else:
        uv = (points_cam @ K.T)[:, :2] / z[:, None]
    u = np.floor(uv[:, 0] + 0.5)
    v = np.floor(uv[:, 1] + 0.5)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    pixel = (v[inside] * width + u[inside]).astype(np.int64)
    z = z[inside]
    order = np.lexsort((z, pixel))  # by pixel, nearest first
    first = np.unique(pixel[order], return_index=True)[1]
    winners = order[first]
    depth.reshape(-1)[pixel[winners]] = z[winners]
    return depth


def transform_points(T_a_b: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """Apply T_a_b (4, 4) to points (N, 3) in frame b -> (N, 3) in frame a."""
    return points_b @ T_a_b[:3, :3].T + T_a_b[:3, 3]

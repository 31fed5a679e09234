"""Camera calibration from ``sensor_msgs/CameraInfo`` and cached OpenCV rectification maps.

Works on any CameraInfo-like object: rosbags' deserialised messages (ROS 2 ``k/d/r/p`` or ROS 1
``K/D/R/P`` field names) and rclpy messages alike. Rectified intrinsics are the left 3x3 of P
(pixels); the stereo baseline comes from the right camera's P: B = -P[0,3] / P[0,0] metres.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np

from kd_depth_core.data.sequence import CameraModel

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant", "fisheye")
"""Distortion models OpenCV can undistort (``fisheye`` is accepted as a name for ``equidistant``)."""


class CalibrationError(ValueError):
    """A CameraInfo cannot be used: uncalibrated, malformed or an unsupported distortion model."""


def _field(msg, name: str):
    """``msg.k`` (ROS 2) or ``msg.K`` (ROS 1 read by rosbags)."""
    value = getattr(msg, name, None)
    return getattr(msg, name.upper()) if value is None else value


@dataclass(frozen=True, eq=False)
class CameraCalibration:
    """One camera's calibration as in CameraInfo: size (pixels), K (3,3), D (n,), R (3,3), P (3,4)."""

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    R: np.ndarray
    P: np.ndarray
    distortion_model: str = "plumb_bob"
    frame_id: str = ""
    key: bytes = field(default=b"", compare=False, repr=False)

    @classmethod
    def from_msg(cls, msg, where: str = "camera_info") -> CameraCalibration:
        """Build from a CameraInfo message; ``where`` names it in errors (e.g. the topic)."""
        try:
            K = np.asarray(_field(msg, "k"), dtype=np.float64).reshape(3, 3)
            D = np.asarray(_field(msg, "d"), dtype=np.float64).reshape(-1)
            R = np.asarray(_field(msg, "r"), dtype=np.float64).reshape(3, 3)
            P = np.asarray(_field(msg, "p"), dtype=np.float64).reshape(3, 4)
        except (AttributeError, ValueError) as exc:
            raise CalibrationError(f"{where}: malformed CameraInfo ({exc})") from None
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise CalibrationError(f"{where}: K has fx={K[0, 0]}, fy={K[1, 1]}; expected a calibrated camera "
                                   "(fx > 0 and fy > 0)")
        if not np.any(R):
            R = np.eye(3)  # an all-zero R means "not set" in uncalibrated drivers
        width, height = int(msg.width), int(msg.height)
        if width <= 0 or height <= 0:
            raise CalibrationError(f"{where}: width/height {width}x{height}; expected a positive image size")
        model = str(msg.distortion_model or "plumb_bob")
        frame_id = str(msg.header.frame_id)
        key = b"".join(a.tobytes() for a in (K, D, R, P)) + f"{width}x{height}:{model}".encode()
        return cls(width, height, K, D, R, P, model, frame_id, key)

    @property
    def has_distortion(self) -> bool:
        return bool(np.any(self.D != 0))

    @property
    def rectified_K(self) -> np.ndarray:
        """Intrinsics of the rectified image: P[:, :3], or K when P is not set (all zeros)."""
        return self.P[:, :3].copy() if self.P[0, 0] > 0 and self.P[1, 1] > 0 else self.K.copy()

    @property
    def is_identity(self) -> bool:
        """True when rectifying would not change the image: no distortion, R = I and P[:, :3] = K."""
        return (not self.has_distortion and np.allclose(self.R, np.eye(3), atol=1e-9)
                and np.allclose(self.rectified_K, self.K, rtol=0, atol=1e-9))

    @property
    def baseline(self) -> float | None:
        """Stereo baseline in metres from this (right) camera's P: -P[0,3] / P[0,0]; None when not positive."""
        if self.P[0, 0] <= 0:
            return None
        value = -self.P[0, 3] / self.P[0, 0]
        return float(value) if value > 0 else None


_MAPS_CACHE_SIZE = 16
_maps_cache: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()


def rectification_maps(calib: CameraCalibration) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV remap tables (fixed-point, ``CV_16SC2``) taking the raw image to the rectified one. Cached per calibration."""
    maps = _maps_cache.get(calib.key)
    if maps is None:
        maps = _compute_maps(calib)
        _maps_cache[calib.key] = maps
        while len(_maps_cache) > _MAPS_CACHE_SIZE:
            _maps_cache.popitem(last=False)
    else:
        _maps_cache.move_to_end(calib.key)
    return maps


def _compute_maps(calib: CameraCalibration) -> tuple[np.ndarray, np.ndarray]:
    size = (calib.width, calib.height)
    new_K = calib.rectified_K
    model = calib.distortion_model
    if model in ("equidistant", "fisheye"):
        if calib.D.size < 4:
            raise CalibrationError(f"camera_info: distortion model {model!r} needs 4 coefficients, got {calib.D.size}")
        return cv2.fisheye.initUndistortRectifyMap(calib.K, calib.D[:4], calib.R, new_K, size, cv2.CV_16SC2)
    if model not in DISTORTION_MODELS:
        raise CalibrationError(f"camera_info: distortion_model {model!r} is not supported; expected one of "
                               f"{', '.join(DISTORTION_MODELS)}")
    if calib.D.size not in (0, 4, 5, 8, 12, 14):
        raise CalibrationError(f"camera_info: {calib.D.size} distortion coefficients for {model!r}; "
                               "expected 0, 4, 5, 8, 12 or 14")
    return cv2.initUndistortRectifyMap(calib.K, calib.D, calib.R, new_K, size, cv2.CV_16SC2)


def rectify(image: np.ndarray, calib: CameraCalibration) -> np.ndarray:
    """Undistort and stereo-rectify ``image`` (H,W[,C], size = the calibration's) with bilinear sampling."""
    if image.shape[:2] != (calib.height, calib.width):
        raise CalibrationError(f"image is {image.shape[1]}x{image.shape[0]} but camera_info says "
                               f"{calib.width}x{calib.height}")
    map1, map2 = rectification_maps(calib)
    return cv2.remap(image, map1, map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def camera_model(calib: CameraCalibration, rectified: bool, right: CameraCalibration | None = None) -> CameraModel:
    """The sequence's camera for images taken with ``calib``.

    ``rectified``: the images are (or were made) rectified, so K = P[:, :3] and no distortion;
    otherwise K and D are kept as they are. ``right`` adds the baseline (metres) from its P.
    """
    baseline = None if right is None else right.baseline
    if right is not None and baseline is None:
        raise CalibrationError(f"right camera_info: P[0,3] = {right.P[0, 3]} with fx = {right.P[0, 0]} gives no "
                               "positive baseline; expected Tx = -fx * baseline (a rectified stereo pair)")
    return CameraModel(
        width=calib.width, height=calib.height,
        K=calib.rectified_K if rectified else calib.K.copy(),
        distortion=[] if rectified else calib.D.tolist(),
        distortion_model=calib.distortion_model,
        rectified=rectified or not calib.has_distortion,
        frame_id=calib.frame_id or "camera_optical_frame",
        baseline=baseline,
        right_frame_id=None if right is None else (right.frame_id or None),
    )


RECTIFY_MODES = ("auto", "remap", "rectified", "raw")
"""auto: remap unless the images are already rectified (topic name) or the calibration is an identity;
remap: always; rectified: images are already rectified (K = P[:, :3]); raw: keep them as they are (K and D)."""


def needs_remap(mode: str, already_rectified: bool, left: CameraCalibration,
                right: CameraCalibration | None = None) -> bool:
    """Whether frames must be remapped under rectify ``mode`` (one of :data:`RECTIFY_MODES`)."""
    if mode not in RECTIFY_MODES:
        raise ValueError(f"rectify: expected one of {RECTIFY_MODES}, got {mode!r}")
    if mode == "remap":
        return True
    if mode in ("raw", "rectified") or already_rectified:
        return False
    return not (left.is_identity and (right is None or right.is_identity))


def output_size(width: int, height: int, want_width: int | None, want_height: int | None) -> tuple[int, int]:
    """Output size in pixels: as asked, the missing side kept in aspect; (width, height) when neither is given."""
    if not want_width and not want_height:
        return width, height
    if not want_width:
        want_width = max(1, round(width * want_height / height))
    if not want_height:
        want_height = max(1, round(height * want_width / width))
    return int(want_width), int(want_height)


def prepare_frame(left: np.ndarray, left_calib: CameraCalibration, right: np.ndarray | None = None,
                  right_calib: CameraCalibration | None = None, *, mode: str = "auto", already_rectified: bool = False,
                  width: int | None = None, height: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None, CameraModel]:
    """Rectify (per ``mode``) and resize RGB frames; returns (left, right, the sequence camera at the output size).

    Images must have their camera_info's size. Resizing uses area averaging when shrinking.
    """
    for name, image, calib in (("left", left, left_calib), ("right", right, right_calib)):
        if image is not None and image.shape[:2] != (calib.height, calib.width):
            raise CalibrationError(f"{name} image is {image.shape[1]}x{image.shape[0]} but its camera_info says "
                                   f"{calib.width}x{calib.height}")
    if needs_remap(mode, already_rectified, left_calib, right_calib):
        left = rectify(left, left_calib)
        right = None if right is None else rectify(right, right_calib)
    camera = camera_model(left_calib, rectified=mode != "raw", right=right_calib)
    size = output_size(camera.width, camera.height, width, height)
    if size != (camera.width, camera.height):
        interp = cv2.INTER_AREA if size[0] < camera.width else cv2.INTER_LINEAR
        left = cv2.resize(left, size, interpolation=interp)
        right = None if right is None else cv2.resize(right, size, interpolation=interp)
        camera = camera.scaled(*size)
    return left, right, camera


def looks_rectified(topic: str) -> bool:
    """True when an image topic's name says it is rectified (``.../image_rect``, ``.../image_rect_color/compressed``)."""
    base = topic[: -len("/compressed")] if topic.endswith("/compressed") else topic
    return "rect" in base.rpartition("/")[2]

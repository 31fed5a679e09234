"""The depth nodes' output algorithm, without a node: a prediction in, the output messages of one frame out.

Pure functions and one buffer-holding builder, testable with plain messages (no rclpy, no DDS):

- :class:`OutputSettings`: the output parameters (size, depth range, encoding, which optional outputs).
- :func:`output_size`: the published size, ``output_width`` x ``output_height`` or the input image's.
- :class:`RangeMask`: NaN outside [min_depth, max_depth], in place, with reused masks.
- :class:`DepthOutputs`: :meth:`~DepthOutputs.depth` resizes the network-resolution depth to the output size
  into a reused message buffer, masks it and scales the camera_info (fx, cx by the x factor; fy, cy by the y
  factor); :meth:`~DepthOutputs.optional` then yields ``(output, message)`` for uncertainty, points and the
  colourised depth, each only when enabled and wanted (a subscriber exists), so depth goes out first.
- :func:`disparity_image` / :func:`disparity_message`: the stereo node's d = f*T/Z (NaN where invalid).

Depth is metres along the optical axis (REP 118), NaN = no estimate; every message carries the input header.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from kd_depth_core.geometry import depth_to_disparity
from kd_depth_core.inference.preprocess import resize_map
from kd_depth_core.utils.colorize import colorize_depth
from kd_depth_ros import conversions

OPTIONAL_OUTPUTS = ("uncertainty", "points", "colorized")
"""Outputs built only when enabled by their parameter and wanted (someone subscribes)."""


@dataclass(frozen=True)
class OutputSettings:
    """What the published outputs look like; field names are the node parameters of the same meaning.

    ``output_width``/``output_height``: pixels, 0 = the input image's size. Depths in metres.
    """

    output_width: int = 0
    output_height: int = 0
    min_depth: float = 0.1
    max_depth: float = 100.0
    depth_encoding: str = "32FC1"
    publish_uncertainty: bool = True
    publish_points: bool = True
    points_stride: int = 4
    points_organized: bool = True
    points_colored: bool = True
    publish_colorized: bool = False

    @classmethod
    def from_params(cls, values: Mapping[str, Any]) -> OutputSettings:
        """The settings from a node's parameter values (extra keys ignored)."""
        return cls(**{name: values[name] for name in cls.__dataclass_fields__ if name in values})


def output_size(settings: OutputSettings, info_width: int, info_height: int) -> tuple[int, int]:
    """(height, width) of the outputs: the settings' size, or the input image's where it is 0."""
    return settings.output_height or info_height, settings.output_width or info_width


class RangeMask:
    """NaN outside [min_depth, max_depth], in place, with reused OpenCV masks (no per-frame allocation)."""

    def __init__(self):
        self._invalid: np.ndarray | None = None
        self._nan: np.ndarray | None = None

    def invalid(self, depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
        """uint8 (H, W) mask, nonzero where ``depth`` is outside [min_depth, max_depth] or NaN."""
        if self._invalid is None or self._invalid.shape != depth.shape:
            self._invalid = np.empty(depth.shape, np.uint8)
            self._nan = np.full(depth.shape, np.nan, np.float32)
        cv2.inRange(depth, min_depth, max_depth, dst=self._invalid)
        return cv2.bitwise_not(self._invalid, dst=self._invalid)

    def set_nan(self, values: np.ndarray, invalid: np.ndarray) -> None:
        """``values[invalid] = NaN`` for a float32 (H, W) map of the mask's size."""
        cv2.copyTo(self._nan, invalid, dst=values)


@dataclass
class DepthFrame:
    """One frame's published depth: ``depth`` (h, w) float32 metres, NaN outside the range (the reused buffer,
    valid until the next frame), ``invalid`` its uint8 mask, ``info`` the camera_info at (h, w) with the input
    header, ``message`` the depth Image to publish (32FC1 wraps ``depth`` without a copy)."""

    depth: np.ndarray
    invalid: np.ndarray
    info: CameraInfo
    message: Image
    header: Header


class DepthOutputs:
    """Builds a frame's output messages from a prediction, reusing its buffers from frame to frame.

    Not thread-safe: one instance per inference thread. Messages wrapping a reused buffer are valid until the
    next call (``publish()`` copies them into the middleware before it returns).
    """

    def __init__(self):
        self._depth_out = conversions.ImageBuffer("32FC1")
        self._uncertainty_out = conversions.ImageBuffer("32FC1")
        self._mask = RangeMask()
        self._cloud = conversions.PointCloudBuilder(4, True, reuse_buffer=True)

    def depth(self, settings: OutputSettings, header: Header, info: CameraInfo, depth: np.ndarray) -> DepthFrame:
        """Resize ``depth`` (any (H, W) float32 metres, e.g. the network's) to the output size, mask it to
        [min_depth, max_depth] and scale ``info`` (describing the input image) to that size."""
        height, width = output_size(settings, info.width, info.height)
        out = resize_map(depth, height, width, out=self._depth_out.view(height, width))
        invalid = self._mask.invalid(out, settings.min_depth, settings.max_depth)
        self._mask.set_nan(out, invalid)
        if settings.depth_encoding == "32FC1":
            message = self._depth_out.message(header)
        else:
            message = conversions.depth_to_image(out, header, settings.depth_encoding)
        out_info = conversions.scale_camera_info(info, width, height)
        out_info.header = header
        return DepthFrame(out, invalid, out_info, message, header)

    def optional(self, settings: OutputSettings, frame: DepthFrame, uncertainty: np.ndarray | None,
                 rgb: np.ndarray | None, wanted: Callable[[str], bool] = lambda name: True
                 ) -> Iterator[tuple[str, Any]]:
        """``(output, message)`` for each of :data:`OPTIONAL_OUTPUTS` that is enabled and ``wanted(output)``.

        ``uncertainty``: (H, W) std of depth in metres (any size, resized like depth) or None (no output);
        ``rgb``: the input image (H, W, 3) uint8 at the output size for coloured points, or None.
        """
        height, width = frame.depth.shape
        if settings.publish_uncertainty and uncertainty is not None and wanted("uncertainty"):
            std = resize_map(uncertainty, height, width, out=self._uncertainty_out.view(height, width))
            self._mask.set_nan(std, frame.invalid)
            yield "uncertainty", self._uncertainty_out.message(frame.header)
        if settings.publish_points and wanted("points"):
            if (self._cloud.stride, self._cloud.organized) != (settings.points_stride, settings.points_organized):
                self._cloud = conversions.PointCloudBuilder(settings.points_stride, settings.points_organized,
                                                            reuse_buffer=True)
            colors = rgb if settings.points_colored else None
            yield "points", self._cloud.build(frame.depth, conversions.camera_matrix(frame.info), frame.header, colors)
        if settings.publish_colorized and wanted("colorized"):
            colors = colorize_depth(frame.depth, settings.min_depth, settings.max_depth)
            yield "colorized", conversions.numpy_to_image(colors, "rgb8", frame.header)

    def all(self, settings: OutputSettings, header: Header, info: CameraInfo, prediction, rgb: np.ndarray | None
            ) -> dict[str, Any]:
        """Every enabled output of one frame as ``{output: message}`` (depth, camera_info, then the optional
        ones); ``prediction`` has ``depth`` and ``uncertainty`` (see ``DepthPredictor``)."""
        frame = self.depth(settings, header, info, prediction.depth)
        messages = {"depth": frame.message, "camera_info": frame.info}
        messages.update(self.optional(settings, frame, prediction.uncertainty, rgb))
        return messages


def disparity_image(depth: np.ndarray, focal_px: float, baseline_m: float) -> np.ndarray:
    """d = f*T/Z in pixels for a depth map in metres; NaN where it is not positive (depth NaN or infinite)."""
    disparity = depth_to_disparity(depth, focal_px, baseline_m)
    disparity[~(disparity > 0)] = np.nan
    return disparity


def disparity_message(frame: DepthFrame, baseline_m: float, min_depth: float, max_depth: float):
    """The stereo_msgs/DisparityImage of a published depth frame: focal = the output camera_info's fx,
    disparity range from [min_depth, max_depth] (min_depth 0: unbounded)."""
    focal = float(frame.info.k[0])
    disparity = disparity_image(frame.depth, focal, baseline_m)
    max_disparity = focal * baseline_m / min_depth if min_depth > 0 else float("inf")
    return conversions.disparity_to_msg(disparity, frame.header, focal, baseline_m, focal * baseline_m / max_depth,
                                        max_disparity)

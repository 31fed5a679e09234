"""The depth nodes' output algorithm (kd_depth_ros/depth_outputs.py) without a node: hand-made predictions in,
messages out, every value worked out by hand (no rclpy node, no DDS)."""
from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from kd_depth_ros import conversions
from kd_depth_ros.depth_outputs import (
    DepthOutputs,
    OutputSettings,
    disparity_image,
    disparity_message,
    output_size,
)
from kd_depth_ros.node_params import COMMON_SPECS

NAN = np.nan


def header(frame_id: str = "cam_optical", sec: int = 7, nanosec: int = 5) -> Header:
    msg = Header(frame_id=frame_id)
    msg.stamp.sec, msg.stamp.nanosec = sec, nanosec
    return msg


def info(width: int = 4, height: int = 2, fx: float = 8.0, fy: float = 6.0, cx: float = 2.0, cy: float = 1.0
         ) -> CameraInfo:
    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    msg.d = [0.0] * 5
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def test_settings_defaults_are_the_parameter_defaults_and_sizes_fall_back_to_the_input():
    defaults = {spec.name: spec.default for spec in COMMON_SPECS}
    assert OutputSettings.from_params(defaults) == OutputSettings()
    assert output_size(OutputSettings(), 640, 480) == (480, 640)
    assert output_size(OutputSettings(output_width=320, output_height=240), 640, 480) == (240, 320)


def test_depth_is_masked_to_the_range_and_camera_info_scaled_to_the_output_size():
    outputs = DepthOutputs()
    settings = OutputSettings(min_depth=1.0, max_depth=10.0)
    depth = np.array([[0.5, 1.0, 4.0, 10.0], [10.5, NAN, 2.0, 3.0]], np.float32)
    frame = outputs.depth(settings, header(), info(), depth)
    expected = np.array([[NAN, 1.0, 4.0, 10.0], [NAN, NAN, 2.0, 3.0]], np.float32)  # range inclusive
    np.testing.assert_array_equal(frame.depth, expected)
    np.testing.assert_array_equal(conversions.image_to_numpy(frame.message), expected)
    assert frame.message.encoding == "32FC1" and frame.message.header.frame_id == "cam_optical"
    assert frame.info.header.stamp.sec == 7 and frame.info.header.stamp.nanosec == 5
    np.testing.assert_allclose(frame.info.k, [8, 0, 2, 0, 6, 1, 0, 0, 1])  # same size: unchanged

    # half the input size: fx, cx x 1/2 and fy, cy x 1/2; a 2x2 network map of constant 2 m stays 2 m
    half = OutputSettings(output_width=2, output_height=1, min_depth=1.0, max_depth=10.0)
    frame = outputs.depth(half, header(), info(), np.full((3, 5), 2.0, np.float32))
    assert frame.depth.shape == (1, 2) and (frame.info.width, frame.info.height) == (2, 1)
    np.testing.assert_allclose(frame.depth, 2.0)
    np.testing.assert_allclose(frame.info.k, [4, 0, 1, 0, 3, 0.5, 0, 0, 1])
    np.testing.assert_allclose(frame.info.p[:3], [4, 0, 1])


def test_16uc1_depth_is_millimetres_with_zero_for_invalid():
    settings = OutputSettings(min_depth=1.0, max_depth=10.0, depth_encoding="16UC1")
    depth = np.array([[1.2344, 20.0], [NAN, 2.0006]], np.float32)
    frame = DepthOutputs().depth(settings, header(), info(width=2, height=2), depth)
    assert frame.message.encoding == "16UC1"
    np.testing.assert_array_equal(conversions.image_to_numpy(frame.message), [[1234, 0], [0, 2001]])  # nearest mm


def test_bilinear_resize_of_a_linear_ramp():
    # a ramp 1, 2, 3, 4 m across 4 columns upsampled to 8: half-pixel centres give 1, 1.25, 1.75, ... 4
    ramp = np.tile(np.array([1.0, 2.0, 3.0, 4.0], np.float32), (2, 1))
    settings = OutputSettings(output_width=8, output_height=4, min_depth=0.1, max_depth=100.0)
    frame = DepthOutputs().depth(settings, header(), info(), ramp)
    np.testing.assert_allclose(frame.depth[0], [1.0, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 4.0], rtol=1e-6)


def test_optional_outputs_follow_the_settings_and_what_is_wanted():
    outputs = DepthOutputs()
    settings = OutputSettings(min_depth=1.0, max_depth=10.0, points_stride=1, publish_colorized=True)
    depth = np.array([[2.0, 4.0, 0.5, 8.0], [2.0, 2.0, 2.0, 2.0]], np.float32)
    std = np.full_like(depth, 0.25)
    rgb = np.zeros((2, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    frame = outputs.depth(settings, header(), info(), depth)
    messages = dict(outputs.optional(settings, frame, std, rgb))
    assert list(messages) == ["uncertainty", "points", "colorized"]
    uncertainty = conversions.image_to_numpy(messages["uncertainty"])
    np.testing.assert_array_equal(np.isnan(uncertainty), np.isnan(frame.depth))  # masked where depth is
    np.testing.assert_allclose(uncertainty[~np.isnan(uncertainty)], 0.25)

    points = conversions.cloud_to_numpy(messages["points"])
    # pixel (u=1, v=0), Z = 4: X = (1 - 2) * 4 / 8 = -0.5, Y = (0 - 1) * 4 / 6 = -2/3
    np.testing.assert_allclose(points[0, 1, :3], [-0.5, -4.0 / 6.0, 4.0], rtol=1e-6)
    assert np.isnan(points[0, 2, :3]).all()  # 0.5 m is outside the range
    (packed,) = struct.unpack_from("<I", bytes(messages["points"].data), 12)
    assert packed == (10 << 16) | (20 << 8) | 30  # r, g, b of the input image
    assert messages["colorized"].encoding == "rgb8"

    assert list(dict(outputs.optional(settings, frame, None, rgb))) == ["points", "colorized"]  # no std
    wanted = dict(outputs.optional(settings, frame, std, rgb, wanted=lambda name: name == "points"))
    assert list(wanted) == ["points"]
    off = OutputSettings(min_depth=1.0, max_depth=10.0, publish_uncertainty=False, publish_points=False)
    assert dict(outputs.optional(off, frame, std, rgb)) == {}


def test_all_outputs_of_a_prediction():
    prediction = SimpleNamespace(depth=np.full((2, 4), 3.0, np.float32), uncertainty=None)
    messages = DepthOutputs().all(OutputSettings(points_stride=2), header(), info(), prediction, None)
    assert list(messages) == ["depth", "camera_info", "points"]
    assert (messages["points"].height, messages["points"].width) == (1, 2)


def test_disparity_is_f_t_over_z_and_nan_where_depth_is_invalid():
    np.testing.assert_allclose(disparity_image(np.array([[2.0, 4.0]], np.float32), 100.0, 0.1), [[5.0, 2.5]])
    settings = OutputSettings(min_depth=1.0, max_depth=10.0)
    frame = DepthOutputs().depth(settings, header(), info(fx=100.0), np.array([[2.0, 4.0, 20.0, NAN]] * 2,
                                                                              np.float32))
    msg = disparity_message(frame, 0.1, settings.min_depth, settings.max_depth)
    image = conversions.image_to_numpy(msg.image)
    np.testing.assert_allclose(image[0, :2], [5.0, 2.5])  # 100 * 0.1 / Z
    assert np.isnan(image[:, 2:]).all()
    assert msg.f == pytest.approx(100.0) and msg.t == pytest.approx(0.1)
    assert msg.min_disparity == pytest.approx(1.0) and msg.max_disparity == pytest.approx(10.0)  # f*T/max, f*T/min
    assert msg.header.frame_id == "cam_optical"

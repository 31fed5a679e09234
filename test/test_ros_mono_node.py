"""mono_depth_node as a separate process (real rclpy, the config file, remaps) fed synthetic frames.

The model has all-zero weights, so its output is known: depth = 1 / (1/3 + (1/1 - 1/3) * 0.5) = 1.5 m
(min_depth 1, max_depth 3 in its metadata), uncertainty = exp(0) = 1 m. Also unit tests of the
pieces the node is made of: parameters, the newest-frame-wins worker, diagnostics, the QoS check.
"""
from __future__ import annotations

import array
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from kd_depth_ros import conversions
from kd_depth_ros.depth_worker import COMMON_SPECS, LatestFrameWorker, RangeMask, check_common
from kd_depth_ros.diagnostics import DepthNodeStatus, RateMeter, status_values
from kd_depth_ros.params import ParameterError, ParamSpec, coerce

sys.path.insert(0, str(Path(__file__).parent))
from ros_helpers import (  # noqa: E402
    CONFIG,
    DDS_ENV,
    NodeProcess,
    RosHarness,
    camera_info,
    constant_depth,
    header,
    write_constant_model,
)

STARTUP_S = 180.0  # importing torch dominates; bounded, generous for loaded CI machines
MESSAGE_S = 30.0
DEPTH_M = constant_depth(1.0, 3.0)  # 1.5
W, H = 64, 48  # input
OUT_W, OUT_H = 32, 24  # output_width/height: half the input
FX, FY, CX, CY = 50.0, 40.0, 32.0, 24.0
COLOR = (100, 150, 200)
FRAME = "test_cam_optical_frame"


# --------------------------------------------------------------------------- unit: parameters
def test_parameter_errors_name_the_parameter_and_range():
    specs = {spec.name: spec for spec in COMMON_SPECS}
    with pytest.raises(ParameterError, match=r"^parameter 'points_stride' = 0: expected an integer in \[1, 64\]$"):
        coerce(specs["points_stride"], 0)
    with pytest.raises(ParameterError, match="^parameter 'scale_mode' = 'metric': expected one of 'auto', 'none'"):
        coerce(specs["scale_mode"], "metric")
    with pytest.raises(ParameterError, match="^parameter 'device' = 'gpu': expected 'auto', 'cpu', 'cuda' or"):
        coerce(specs["device"], "gpu")
    assert coerce(specs["device"], "cuda:1") == "cuda:1"
    assert coerce(specs["max_depth"], 80) == 80.0 and isinstance(coerce(specs["max_depth"], 80), float)
    with pytest.raises(ParameterError, match="parameter 'publish_points' = 1: expected true or false"):
        coerce(specs["publish_points"], 1)
    with pytest.raises(ParameterError, match=r"parameter 'x' = 2.5: expected an integer"):
        coerce(ParamSpec("x", 1, "an int"), 2.5)
    values = {spec.name: spec.default for spec in COMMON_SPECS}
    check_common(values)
    with pytest.raises(ParameterError, match="^parameter 'max_depth' = 0.05: expected a number greater than min_depth"):
        check_common({**values, "max_depth": 0.05})
    with pytest.raises(ParameterError, match="'output_width'/'output_height' = 32/0"):
        check_common({**values, "output_width": 32})
    with pytest.raises(ParameterError, match="'camera_height' = 0.0: scale_mode 'ground_plane' needs"):
        check_common({**values, "scale_mode": "ground_plane"})


# --------------------------------------------------------------------------- unit: newest frame wins
def test_worker_keeps_only_the_newest_frame_and_counts_drops():
    release = threading.Event()
    started = threading.Event()
    done: list[int] = []

    def process(item: int) -> None:
        started.set()
        if item == 0:
            assert release.wait(10)
        if item == 5:
            raise ValueError("a bad frame")
        done.append(item)

    errors: list[BaseException] = []
    worker = LatestFrameWorker(process, errors.append)
    worker.start()
    try:
        worker.submit(0)
        assert started.wait(10)
        for item in (1, 2, 3):  # arrive while 0 is being processed: only 3 survives
            worker.submit(item)
        release.set()
        assert worker.wait_idle(10)
        assert done == [0, 3] and worker.dropped == 2
        worker.submit(5)  # an exception is reported, the thread keeps going
        assert worker.wait_idle(10)
        worker.submit(6)
        assert worker.wait_idle(10)
        assert done == [0, 3, 6] and [str(e) for e in errors] == ["a bad frame"] and worker.processed == 4
    finally:
        worker.stop()


# --------------------------------------------------------------------------- unit: diagnostics
def test_range_mask_sets_nan_outside_the_inclusive_range_in_place():
    depth = np.array([[0.05, 0.1, 5.0], [100.0, 100.5, np.nan]], dtype=np.float32)
    std = np.ones_like(depth)
    mask = RangeMask()
    invalid = mask.invalid(depth, 0.1, 100.0)
    np.testing.assert_array_equal(invalid > 0, [[True, False, False], [False, True, True]])
    mask.set_nan(depth, invalid)
    mask.set_nan(std, invalid)
    np.testing.assert_array_equal(depth, np.array([[np.nan, 0.1, 5.0], [100.0, np.nan, np.nan]], np.float32))
    np.testing.assert_array_equal(np.isnan(std), invalid > 0)
    assert mask.invalid(np.zeros((3, 1), np.float32), 0.1, 1.0).shape == (3, 1)  # a new size: new masks


def test_rates_and_status_levels():
    meter = RateMeter(window_s=2.0)
    for t in (10.0, 10.5, 11.0, 11.5):
        meter.tick(t)
    assert meter.rate(11.5) == pytest.approx(2.0)  # 3 intervals over 1.5 s
    assert meter.rate(13.2) == pytest.approx(0.0)  # only 11.5 is left in the window
    status = DepthNodeStatus("/kd/mono_depth_node: depth", stale_after_s=1.0)
    assert status.level_and_message(0.0)[0] == DiagnosticStatus.ERROR
    status.model_loaded, status.device = True, "cpu"
    assert status.level_and_message(0.0) == (DiagnosticStatus.WARN, "no input received yet")
    status.input_rate.tick(100.0)
    assert status.level_and_message(100.5)[0] == DiagnosticStatus.OK
    assert status.level_and_message(102.0) == (DiagnosticStatus.WARN, "no input for 2.0 s")
    status.dropped_frames = 3
    assert status.level_and_message(100.5)[0] == DiagnosticStatus.WARN
    status.inference.add(0.020)
    status.inference.add(0.040)
    msg = status.to_msg(DiagnosticArray().header.stamp, 100.5)
    values = status_values(msg)
    assert msg.status[0].hardware_id == "cpu" and values["device"] == "cpu"
    assert values["inference p50 (ms)"] == "30.0" and values["frames dropped"] == "3"


# --------------------------------------------------------------------------- real rclpy, one process: QoS check
def test_incompatible_qos_warns_once_with_the_fix():
    from kd_depth_ros.qos import IncompatibleQosWarner, make_qos

    harness = RosHarness("qos_check_harness")
    try:
        reliable = make_qos("reliable", 5)
        sub = harness.node.create_subscription(Image, "qos_check/image", lambda msg: None, reliable)
        harness.publisher(Image, "qos_check/image", "best_effort")
        warner = IncompatibleQosWarner(harness.node)
        warner.watch(sub, reliable, "Set parameter 'sub_reliability' to 'best_effort'.")
        assert harness.wait(lambda: len(harness.node.get_publishers_info_by_topic("/qos_check/image")) == 1, 10)
        messages = warner.check()
        assert len(messages) == 1
        assert "QoS mismatch on '/qos_check/image'" in messages[0] and "offers best_effort" in messages[0]
        assert "Set parameter 'sub_reliability'" in messages[0]
        assert warner.check() == []  # once per publisher
        compatible = IncompatibleQosWarner(harness.node)
        compatible.watch(sub, make_qos("best_effort", 5), "")
        assert compatible.check() == []  # a best-effort subscription hears a best-effort publisher
    finally:
        harness.close()


# --------------------------------------------------------------------------- the executable
def test_help_lists_topics_and_parameters_without_starting_ros():
    # rclpy.init fails with this domain id, so a clean --help proves ROS was not started
    with NodeProcess("mono_depth_node", extra_args=["--help"], env={"ROS_DOMAIN_ID": "not-a-number"}) as node:
        assert node.process.wait(STARTUP_S) == 0, node.log()
        for text in ("image/compressed", "depth/camera_info", "points", "/diagnostics", "points_stride",
                     "an integer in [1, 64]", "sub_reliability"):
            assert text in node.log()


def test_invalid_parameter_exits_with_the_parameter_and_range():
    node = NodeProcess("mono_depth_node", params_file=CONFIG / "mono_depth.yaml", params={"points_stride": 0})
    try:
        node.process.wait(STARTUP_S)
        assert node.process.returncode == 2
        assert "points_stride" in node.log() and "[1, 64]" in node.log()
    finally:
        node.stop()


@pytest.fixture(scope="module")
def mono(tmp_path_factory):
    model = write_constant_model(tmp_path_factory.mktemp("mono_model") / "zero.safetensors")
    params = {"model_path": str(model), "device": "cpu", "output_width": OUT_W, "output_height": OUT_H,
              "points_stride": 2, "publish_colorized": True, "no_input_warn_s": 1.0, "diagnostics_period_s": 0.5}
    node = NodeProcess("mono_depth_node", params_file=CONFIG / "mono_depth.yaml", params=params,
                       remaps={"image": "/test_cam/image", "camera_info": "/test_cam/camera_info", "__ns": "/kd"},
                       env=DDS_ENV)
    harness = RosHarness("mono_test_harness")
    try:
        topics = {"depth": Image, "depth/camera_info": CameraInfo, "uncertainty": Image, "points": PointCloud2,
                  "depth/colorized": Image}
        received = {name: harness.subscribe(kind, f"/kd/{name}") for name, kind in topics.items()}
        received["diagnostics"] = harness.subscribe(DiagnosticArray, "/diagnostics")
        image_pub = harness.publisher(Image, "/test_cam/image", "best_effort")
        info_pub = harness.publisher(CameraInfo, "/test_cam/camera_info", "best_effort")
        ready = harness.wait(lambda: image_pub.get_subscription_count() > 0
                             and all(harness.node.count_publishers(f"/kd/{n}") for n in topics), STARTUP_S)
        assert ready, f"node did not come up:\n{node.log()}"
        yield node, harness, image_pub, info_pub, received
    finally:
        harness.close()
        node.stop()


def rgb_frame(stamp_ns: int) -> Image:
    image = np.empty((H, W, 3), np.uint8)
    image[...] = COLOR
    return conversions.numpy_to_image(image, "rgb8", header(stamp_ns, FRAME))


def send(harness, info_pub, image_pub, image_msg, stamp_ns: int | None = None, with_info: bool = True) -> None:
    if with_info:
        info_pub.publish(camera_info(stamp_ns or 0, FRAME, W, H, FX, FY, CX, CY))  # matched by stamp
        harness.spin(0.05)  # the camera_info is in before the image
    image_pub.publish(image_msg)


def stamps(messages) -> list[int]:
    return [conversions.header_stamp_ns(m.header) for m in messages]


def test_node_warns_without_input_and_skips_frames_without_camera_info(mono):
    node, harness, image_pub, info_pub, received = mono
    assert node.wait_for_log("no input for", MESSAGE_S), node.log()
    assert "/test_cam/image' has 1 publisher(s)" in node.log()
    assert f"export FASTRTPS_DEFAULT_PROFILES_FILE={DDS_ENV['FASTRTPS_DEFAULT_PROFILES_FILE']}" in node.log()
    stamp = 1_000_000_000
    send(harness, info_pub, image_pub, rgb_frame(stamp), with_info=False)
    assert node.wait_for_log("camera_info: none received yet", MESSAGE_S), node.log()
    harness.spin(0.5)
    assert stamp not in stamps(received["depth"])


def test_known_frame_gives_known_depth_camera_info_uncertainty_and_points(mono):
    node, harness, image_pub, info_pub, received = mono
    stamp = 2_000_000_123
    send(harness, info_pub, image_pub, rgb_frame(stamp), stamp)
    for name in ("depth", "depth/camera_info", "uncertainty", "points", "depth/colorized"):
        assert harness.wait(lambda n=name: stamp in stamps(received[n]), MESSAGE_S), f"no {name}:\n{node.log()}"
    depth_msg = next(m for m in received["depth"] if conversions.header_stamp_ns(m.header) == stamp)
    assert depth_msg.encoding == "32FC1" and depth_msg.header.frame_id == FRAME
    assert (depth_msg.width, depth_msg.height) == (OUT_W, OUT_H)
    np.testing.assert_allclose(conversions.image_to_numpy(depth_msg), DEPTH_M, rtol=1e-5)

    info = next(m for m in received["depth/camera_info"] if conversions.header_stamp_ns(m.header) == stamp)
    assert (info.width, info.height, info.header.frame_id) == (OUT_W, OUT_H, FRAME)
    np.testing.assert_allclose(info.k, [25.0, 0, 16.0, 0, 20.0, 12.0, 0, 0, 1])  # x and y by 1/2

    std = next(m for m in received["uncertainty"] if conversions.header_stamp_ns(m.header) == stamp)
    assert std.encoding == "32FC1" and std.header.frame_id == FRAME
    np.testing.assert_allclose(conversions.image_to_numpy(std), 1.0, rtol=1e-5)

    cloud = next(m for m in received["points"] if conversions.header_stamp_ns(m.header) == stamp)
    assert (cloud.height, cloud.width, cloud.is_dense, cloud.header.frame_id) == (OUT_H // 2, OUT_W // 2, False, FRAME)
    points = conversions.cloud_to_numpy(cloud)
    # row 1, column 3 of the stride-2 grid = pixel (u=6, v=2): X = (6-16)*1.5/25, Y = (2-12)*1.5/20
    np.testing.assert_allclose(points[1, 3], [-0.6, -0.75, 1.5], rtol=1e-5)
    np.testing.assert_allclose(points[0, 8], [0.0, -0.9, 1.5], rtol=1e-5, atol=1e-6)  # u=16=cx: X = 0
    (packed,) = struct.unpack_from("<I", bytes(cloud.data), 12)
    assert packed == (COLOR[0] << 16) | (COLOR[1] << 8) | COLOR[2]

    colorized = next(m for m in received["depth/colorized"] if conversions.header_stamp_ns(m.header) == stamp)
    assert (colorized.encoding, colorized.width, colorized.height) == ("rgb8", OUT_W, OUT_H)
    assert "XMLPARSER" not in node.log(), "Fast DDS rejected config/fastdds_large_data.xml"


def test_bad_messages_are_logged_and_skipped_and_the_next_good_frame_is_published(mono):
    node, harness, image_pub, info_pub, received = mono
    good = rgb_frame(3_000_000_000)
    bad_encoding = rgb_frame(3_100_000_000)
    bad_encoding.encoding = "yuv422"
    wrong_step = rgb_frame(3_200_000_000)
    wrong_step.step = W  # fewer bytes than a row of rgb8
    empty = rgb_frame(3_300_000_000)
    empty.data = array.array("B")
    bad_stamps = []
    for msg, text in ((bad_encoding, "encoding: unsupported 'yuv422'"), (wrong_step, "step: 64 bytes is less"),
                      (empty, "data: expected step*height")):
        stamp = conversions.header_stamp_ns(msg.header)
        bad_stamps.append(stamp)
        send(harness, info_pub, image_pub, msg, stamp)
        assert node.wait_for_log(text, MESSAGE_S), f"{text!r} not logged:\n{node.log()}"
        assert node.running()
    mismatched = rgb_frame(3_400_000_000)
    info_pub.publish(camera_info(3_400_000_000, FRAME, 2 * W, 2 * H, FX, FY, CX, CY))  # of another size
    harness.spin(0.05)
    image_pub.publish(mismatched)
    assert node.wait_for_log(f"camera_info width/height: {2 * W}x{2 * H} differs from the image {W}x{H}", MESSAGE_S)
    bad_stamps.append(3_400_000_000)
    send(harness, info_pub, image_pub, good, 3_000_000_000)
    assert harness.wait(lambda: 3_000_000_000 in stamps(received["depth"]), MESSAGE_S), node.log()
    assert not set(bad_stamps) & set(stamps(received["depth"]))


def test_diagnostics_report_device_rates_and_invalid_messages(mono):
    node, harness, image_pub, info_pub, received = mono
    for i in range(3):
        send(harness, info_pub, image_pub, rgb_frame(4_000_000_000 + i * 100_000_000), 4_000_000_000)
        harness.spin(0.1)

    def latest() -> dict[str, str]:
        mine = [m for m in received["diagnostics"] if m.status and "mono_depth_node" in m.status[0].name]
        return status_values(mine[-1]) if mine else {}

    assert harness.wait(lambda: int(latest().get("frames published", 0)) >= 2, MESSAGE_S), node.log()
    values = latest()
    assert values["device"] == "cpu" and "student_lcnet" in values["model"]
    assert int(values["frames received"]) >= int(values["frames published"])
    assert float(values["inference p50 (ms)"]) > 0 and float(values["latency p50 (ms)"]) > 0
    assert 0 <= float(values["queue wait p50 (ms)"]) <= float(values["latency p50 (ms)"])
    assert float(values["input rate (Hz)"]) > 0 and "frames dropped" in values and "invalid messages" in values


def test_lifecycle_deactivate_stops_output_and_activate_resumes(mono):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    node, harness, image_pub, info_pub, received = mono
    change = harness.node.create_client(ChangeState, "/kd/mono_depth_node/change_state")
    get_state = harness.node.create_client(GetState, "/kd/mono_depth_node/get_state")
    assert change.wait_for_service(timeout_sec=MESSAGE_S) and get_state.wait_for_service(timeout_sec=MESSAGE_S)

    def call(client, request):
        future = client.call_async(request)
        assert harness.wait(future.done, MESSAGE_S)
        return future.result()

    assert call(get_state, GetState.Request()).current_state.label == "active"
    assert call(change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE))).success
    assert call(get_state, GetState.Request()).current_state.label == "inactive"
    send(harness, info_pub, image_pub, rgb_frame(5_000_000_000), 5_000_000_000)
    harness.spin(1.0)
    assert 5_000_000_000 not in stamps(received["depth"])
    assert call(change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE))).success
    assert harness.wait(lambda: image_pub.get_subscription_count() > 0, MESSAGE_S)
    deadline = time.monotonic() + MESSAGE_S
    stamp = 5_100_000_000
    while stamp not in stamps(received["depth"]) and time.monotonic() < deadline:
        send(harness, info_pub, image_pub, rgb_frame(stamp), stamp)  # discovery of the new subscription may lag
        harness.wait(lambda: stamp in stamps(received["depth"]), 1.0)
    assert stamp in stamps(received["depth"]), node.log()

"""mono_depth_node as a separate process (real rclpy, the config file, remaps) fed synthetic frames.

The model is ros_helpers.PixelModel as an ONNX export at 32x24: per pixel depth = 1 + 2*R - B and std =
0.1 + 0.5*G (R, G, B in [0, 1]), times the focal scale fx_runtime / fx_train = (50 * 32/64) / 12.5 = 2. The
64x48 test image is made of 2x2 tiles (R = 8 * tile column, B = 10 * tile row, G = 100), so the network sees
the tile grid exactly and every published value is worked out by hand: a swapped channel order, a wrong
resize or a missing focal scale changes them. Also unit tests of the pieces the node is made of: parameters,
the frame-queue worker (newest frames kept, oldest first), diagnostics, the QoS check, the configure error line.
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
from kd_depth_ros.depth_outputs import RangeMask
from kd_depth_ros.depth_worker import LatestFrameWorker
from kd_depth_ros.diagnostics import DepthNodeStatus, RateMeter, status_values
from kd_depth_ros.node_params import COMMON_SPECS, check_common
from kd_depth_ros.params import ParameterError, ParamSpec, coerce

sys.path.insert(0, str(Path(__file__).parent))
from ros_helpers import (  # noqa: E402
    CONFIG,
    DDS_ENV,
    PIXEL_MODEL,
    NodeProcess,
    RosHarness,
    block_image,
    camera_info,
    header,
    write_pixel_model,
)

STARTUP_S = 180.0  # importing torch dominates; bounded, generous for loaded CI machines
MESSAGE_S = 30.0
FOCAL_SCALE = 2.0  # fx at the network width, 50 * 32/64 = 25 px, over the model's training fx 12.5 px
W, H = 64, 48  # input
OUT_W, OUT_H = 32, 24  # output_width/height: half the input
FX, FY, CX, CY = 50.0, 40.0, 32.0, 24.0
IMAGE = block_image(H, W)  # RGB; the network (32x24, area resize) sees its 2x2 tiles: IMAGE[::2, ::2]
TILES = IMAGE[::2, ::2]
EXPECTED_DEPTH = FOCAL_SCALE * PIXEL_MODEL.depth(TILES)  # (24, 32) metres at the output size
EXPECTED_STD = FOCAL_SCALE * PIXEL_MODEL.uncertainty(TILES)
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
    with pytest.raises(ParameterError, match=r"^parameter 'frame_queue_size' = 0: expected an integer in \[1, 30\]$"):
        coerce(specs["frame_queue_size"], 0)
    assert specs["frame_queue_size"].default == 2 and specs["backend"].default == "auto"
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


# --------------------------------------------------------------------------- unit: the frame queue (newest frames kept)
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


def test_a_queue_of_two_keeps_the_two_newest_frames_oldest_first():
    """What the nodes run (frame_queue_size 2): a frame that arrives while the thread is late is still answered;
    the single slot (queue_size 1, above) would have dropped it."""
    release, started = threading.Event(), threading.Event()
    done: list[int] = []

    def process(item: int) -> None:
        started.set()
        if item == 0:
            assert release.wait(10)
        done.append(item)

    worker = LatestFrameWorker(process, queue_size=2)
    worker.start()
    try:
        worker.submit(0)
        assert started.wait(10)
        assert worker.submit(1) is False and worker.submit(2) is False and worker.pending == 2
        assert worker.submit(3) is True  # full: 1, the oldest waiting, is dropped
        release.set()
        assert worker.wait_idle(10)
        assert done == [0, 2, 3] and worker.dropped == 1 and worker.processed == 3
    finally:
        worker.stop()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="^queue_size: expected an integer >= 1, got"):
            LatestFrameWorker(process, queue_size=bad)


def test_a_worker_slower_than_its_input_keeps_only_the_newest_frame():
    """Persistent overload (process 60 ms, a frame every ~5 ms): the queue shrinks to one, so no frame waits behind
    older ones (latency ~ one inference time, as newest-frame-wins); once the input slows down the queue is back."""
    done: list[int] = []
    worker = LatestFrameWorker(lambda item: (time.sleep(0.06), done.append(item)), queue_size=3)
    worker.start()
    try:
        assert worker.keeping_up() and worker.capacity == 3  # nothing measured yet
        for item in range(60):
            worker.submit(item)
            time.sleep(0.005)
            if item >= 40:  # the medians saw the overload
                assert not worker.keeping_up() and worker.capacity == 1 and worker.pending <= 1
        assert worker.wait_idle(10)
        assert done[-1] == 59 and worker.dropped > 40 and len(done) + worker.dropped == 60
        for item in range(100, 110):  # a frame every 150 ms: keeping up again
            worker.submit(item)
            time.sleep(0.15)
        assert worker.keeping_up() and worker.capacity == 3
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


def test_malformed_ros_arguments_exit_with_one_line():
    node = NodeProcess("mono_depth_node", remaps={"__ns": "no_leading_slash"})
    try:
        assert node.process.wait(STARTUP_S) == 2, node.log()
        assert "[mono_depth_node] invalid ROS arguments:" in node.log() and "__ns:=no_leading_slash" in node.log()
        assert "Traceback" not in node.log()
    finally:
        node.stop()


@pytest.fixture(scope="module")
def mono(tmp_path_factory):
    model = write_pixel_model(tmp_path_factory.mktemp("mono_model") / "pixel.onnx", focal_length_px=12.5)
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


def rgb_frame(stamp_ns: int, encoding: str = "rgb8") -> Image:
    """The tile image as ``rgb8``, or as ``bgr8`` (the same colours, bytes in B, G, R order)."""
    image = IMAGE if encoding == "rgb8" else np.ascontiguousarray(IMAGE[..., ::-1])
    return conversions.numpy_to_image(image, encoding, header(stamp_ns, FRAME))


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
    # the warning repeats every no_input_warn_s; DDS discovery of our publisher may lag the first one
    assert node.wait_for_log("/test_cam/image' has 1 publisher(s)", MESSAGE_S), node.log()
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
    depth = conversions.image_to_numpy(depth_msg)
    # by hand: top right tile R = 8*31 = 248, B = 0: 2 * (1 + 2*248/255) = 5.8902 m; bottom left R = 0,
    # B = 10*23 = 230: 2 * (1 - 230/255) = 0.19608 m (a bgr/rgb mix-up would give 2*(1 + 2*0 - 248/255) there)
    assert depth[0, 31] == pytest.approx(5.890196, rel=1e-5) and depth[23, 0] == pytest.approx(0.196078, rel=1e-5)
    np.testing.assert_allclose(depth, EXPECTED_DEPTH, rtol=1e-5)

    info = next(m for m in received["depth/camera_info"] if conversions.header_stamp_ns(m.header) == stamp)
    assert (info.width, info.height, info.header.frame_id) == (OUT_W, OUT_H, FRAME)
    np.testing.assert_allclose(info.k, [25.0, 0, 16.0, 0, 20.0, 12.0, 0, 0, 1])  # x and y by 1/2

    std = next(m for m in received["uncertainty"] if conversions.header_stamp_ns(m.header) == stamp)
    assert std.encoding == "32FC1" and std.header.frame_id == FRAME
    # G = 100 everywhere: 2 * (0.1 + 0.5 * 100/255) = 0.59216 m
    np.testing.assert_allclose(conversions.image_to_numpy(std), EXPECTED_STD, rtol=1e-5)
    assert EXPECTED_STD[0, 0] == pytest.approx(0.592157, rel=1e-5)

    cloud = next(m for m in received["points"] if conversions.header_stamp_ns(m.header) == stamp)
    assert (cloud.height, cloud.width, cloud.is_dense, cloud.header.frame_id) == (OUT_H // 2, OUT_W // 2, False, FRAME)
    points = conversions.cloud_to_numpy(cloud)
    # row 1, column 3 of the stride-2 grid = pixel (u=6, v=2), tile R = 48, B = 20: Z = 2 * (1 + 96/255 - 20/255)
    # = 2.59608 m; X = (6-16) * Z / 25, Y = (2-12) * Z / 20
    z = 2.0 * (1.0 + 96.0 / 255.0 - 20.0 / 255.0)
    np.testing.assert_allclose(points[1, 3], [-10 * z / 25, -10 * z / 20, z], rtol=1e-5)
    z = EXPECTED_DEPTH[0, 16]
    np.testing.assert_allclose(points[0, 8], [0.0, -12 * z / 20, z], rtol=1e-5, atol=1e-6)  # u=16=cx: X = 0
    (packed,) = struct.unpack_from("<I", bytes(cloud.data), (1 * cloud.width + 3) * cloud.point_step + 12)
    assert packed == (48 << 16) | (100 << 8) | 20  # that pixel's R, G, B

    colorized = next(m for m in received["depth/colorized"] if conversions.header_stamp_ns(m.header) == stamp)
    assert (colorized.encoding, colorized.width, colorized.height) == ("rgb8", OUT_W, OUT_H)
    assert "XMLPARSER" not in node.log(), "Fast DDS rejected config/fastdds_large_data.xml"


def test_bgr8_gives_the_rgb8_depth_and_a_mislabelled_image_does_not(mono):
    node, harness, image_pub, info_pub, received = mono
    stamp, mislabelled = 2_500_000_000, 2_600_000_000
    send(harness, info_pub, image_pub, rgb_frame(stamp, "bgr8"), stamp)
    assert harness.wait(lambda: stamp in stamps(received["depth"]), MESSAGE_S), node.log()
    depth = next(m for m in received["depth"] if conversions.header_stamp_ns(m.header) == stamp)
    np.testing.assert_allclose(conversions.image_to_numpy(depth), EXPECTED_DEPTH, rtol=1e-5)
    # B, G, R bytes labelled rgb8: the network sees R and B exchanged, depth = 2 * (1 + 2*B - R)
    swapped = rgb_frame(mislabelled, "bgr8")
    swapped.encoding = "rgb8"
    send(harness, info_pub, image_pub, swapped, mislabelled)
    assert harness.wait(lambda: mislabelled in stamps(received["depth"]), MESSAGE_S), node.log()
    depth = next(m for m in received["depth"] if conversions.header_stamp_ns(m.header) == mislabelled)
    expected = FOCAL_SCALE * PIXEL_MODEL.depth(TILES[..., ::-1])
    expected[expected < 0.1] = np.nan  # below min_depth (config): NaN
    np.testing.assert_allclose(conversions.image_to_numpy(depth), expected, rtol=1e-5)
    # tile column 16 of row 0: R = 128, B = 0 -> 2 * (1 - 128/255) = 0.99608 m instead of 2 * (1 + 256/255)
    assert conversions.image_to_numpy(depth)[0, 16] == pytest.approx(0.996078, rel=1e-5)
    assert EXPECTED_DEPTH[0, 16] == pytest.approx(4.007843, rel=1e-5)


def test_bad_messages_are_logged_and_skipped_and_the_next_good_frame_is_published(mono):
    node, harness, image_pub, info_pub, received = mono
    good = rgb_frame(3_000_000_000)
    bad_encoding = rgb_frame(3_100_000_000)
    bad_encoding.encoding = "8UC5"
    wrong_step = rgb_frame(3_200_000_000)
    wrong_step.step = W  # fewer bytes than a row of rgb8
    empty = rgb_frame(3_300_000_000)
    empty.data = array.array("B")
    bad_stamps = []
    for msg, text in ((bad_encoding, "encoding: unsupported '8UC5'"), (wrong_step, "step: 64 bytes is less"),
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
    assert values["device"] == "cpu" and "pixel_model" in values["model"] and "onnxruntime" in values["model"]
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


# --------------------------------------------------------------------------- real rclpy, in process: configure
def in_process_node(params: dict):
    """(context, MonoDepthNode) in this process with ``params`` (autostart off); close with :func:`close`."""
    import rclpy
    from rclpy.context import Context

    from kd_depth_ros.mono_depth_node import MonoDepthNode

    context = Context()
    rclpy.init(context=context)
    args = ["--ros-args", "-r", "__ns:=/configure_test"]
    for key, value in {"device": "cpu", "warmup": False, **params}.items():
        args += ["-p", f"{key}:={value}"]
    return context, MonoDepthNode(context=context, cli_args=args)


def close(context, node) -> None:
    import rclpy

    node.destroy_node()
    rclpy.try_shutdown(context=context)


@pytest.mark.parametrize("queue, published, dropped", [(None, 3, 0), (1, 2, 1)])
def test_a_burst_while_inference_is_late_is_answered_in_full_by_default(tmp_path, queue, published, dropped):
    """The real node (in process): inference is held up (its predictor lock taken, as a scheduling hiccup would)
    while two more frames arrive. The default frame_queue_size (2) answers all three; a single slot drops one."""
    from rclpy.lifecycle import TransitionCallbackReturn

    from kd_depth_ros.node_base import Frame

    model = write_pixel_model(tmp_path / "pixel.onnx", focal_length_px=12.5)
    context, node = in_process_node({"model_path": str(model), "publish_points": False,
                                     **({} if queue is None else {"frame_queue_size": queue})})
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.worker.queue_size == (queue or 2)
        frames = []
        for i in range(3):
            stamp = 7_000_000_000 + i * 100_000_000
            node._on_camera_info(camera_info(stamp, FRAME, W, H, FX, FY, CX, CY))
            frames.append(Frame((rgb_frame(stamp),), ()))
        with node.predictor._lock:  # the inference thread will wait in predict()
            node.worker.submit(frames[0])
            assert _wait_for(lambda: node.worker.pending == 0)  # the thread took frame 0 and is stuck on the lock
            node.worker.submit(frames[1])
            node.worker.submit(frames[2])
        assert node.worker.wait_idle(30)
        assert node.status.output_rate.count == published and node.worker.dropped == dropped
        assert node.status.failure_counts() == {}
    finally:
        node._release()
        close(context, node)


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_a_model_without_uncertainty_does_not_advertise_it(tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn

    model = write_pixel_model(tmp_path / "no_std.onnx", has_uncertainty=False)
    context, node = in_process_node({"model_path": str(model)})
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        # the node's own publishers, not the ROS graph: the graph is asynchronous and, within one process,
        # may still list an earlier test's node of the same name
        advertised = {publisher.topic_name for publisher in node.publishers}
        assert {"/configure_test/depth", "/configure_test/points"} <= advertised, advertised
        assert "/configure_test/uncertainty" not in advertised and "uncertainty" not in node.pubs
    finally:
        close(context, node)


def test_a_failed_configure_names_the_parameter_in_one_line(tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn

    from kd_depth_ros.node_params import configure_error

    # scale_mode 'focal' on a model that records no training focal length: the predictor refuses it
    model = write_pixel_model(tmp_path / "no_focal.onnx", focal_length_px=None)
    context, node = in_process_node({"model_path": str(model), "scale_mode": "focal"})
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.predictor is None and node.pubs == {}
        node.values["scale_mode"] = "auto"
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS  # the node was left unconfigured
    finally:
        close(context, node)
    values = {"scale_mode": "ground_plane", "camera_height": 0.0, "device": "cpu"}
    line = configure_error(ValueError("scale_mode: a relative model needs\n 'ground_plane' or 'fixed'"), values)
    assert line == ("parameter 'scale_mode' = 'ground_plane': ValueError: scale_mode: a relative model needs "
                    "'ground_plane' or 'fixed'")
    assert configure_error(RuntimeError("device 'cuda' requested"), values).startswith("parameter 'device' = 'cpu'")
    assert configure_error(OSError("the CUDA device is gone"), values) == "OSError: the CUDA device is gone"
    assert configure_error(FileNotFoundError("parameter 'model_path' is empty"), values) == \
        "parameter 'model_path' is empty"


def test_configure_failure_exits_with_one_line_and_no_traceback(tmp_path):
    model = write_pixel_model(tmp_path / "no_focal.onnx", focal_length_px=None)
    node = NodeProcess("mono_depth_node", params_file=CONFIG / "mono_depth.yaml",
                       params={"model_path": str(model), "scale_mode": "focal", "device": "cpu"})
    try:
        assert node.process.wait(STARTUP_S) == 1, node.log()
        lines = [line for line in node.log().splitlines() if "configure failed" in line]
        assert len(lines) == 1 and "parameter 'scale_mode' = 'focal': ValueError: scale_mode 'focal' needs" \
            in lines[0], node.log()
        assert "Traceback" not in node.log()
    finally:
        node.stop()


# --------------------------------------------------------------------------- a foreign ONNX model with a card
def test_foreign_relative_model_publishes_metric_depth_with_ground_plane_scale(tmp_path):
    """A Depth-Anything-like ONNX (disparity = 10 x red, test/foreign_fixtures.py) with its YAML card given by
    ``model_card``: the red channel is proportional to a flat floor's inverse depth, so ground_plane scale with
    the camera height must publish the floor's true depth Z = f * h / (v - cy); no uncertainty is advertised."""
    from foreign_fixtures import pixel_disparity_onnx, write_card

    onnx = pixel_disparity_onnx(tmp_path / "foreign.onnx")
    (tmp_path / "cards").mkdir()
    card = write_card(tmp_path / "cards" / "pixel_disparity.yaml", **{"input.default_size": [84, 112]})
    height, width, f, cy, camera_height = 84, 112, 60.0, 84 * 0.4, 1.5
    rows = np.arange(height, dtype=np.float64)
    inverse_depth = np.where(rows > cy + 1, (rows - cy) / (f * camera_height), 0.0)  # floor below the horizon
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.round(inverse_depth / inverse_depth.max() * 0.9 * 255)[:, None]
    params = {"model_path": str(onnx), "model_card": str(card), "device": "cpu", "scale_mode": "ground_plane",
              "camera_height": camera_height, "min_depth": 0.1, "max_depth": 1000.0}
    node = NodeProcess("mono_depth_node", params_file=CONFIG / "mono_depth.yaml", params=params,
                       remaps={"image": "/foreign_cam/image", "camera_info": "/foreign_cam/camera_info",
                               "__ns": "/foreign"}, env=DDS_ENV)
    harness = RosHarness("foreign_test_harness")
    try:
        depth = harness.subscribe(Image, "/foreign/depth")
        image_pub = harness.publisher(Image, "/foreign_cam/image", "best_effort")
        info_pub = harness.publisher(CameraInfo, "/foreign_cam/camera_info", "best_effort")
        assert harness.wait(lambda: image_pub.get_subscription_count() > 0
                            and harness.node.count_publishers("/foreign/depth") > 0, STARTUP_S), node.log()
        assert harness.node.count_publishers("/foreign/uncertainty") == 0  # the model has none: not advertised
        stamp = 7_000_000_000
        while not depth and harness.wait(lambda: node.running(), 0.1):
            stamp += 100_000_000
            info_pub.publish(camera_info(stamp, FRAME, width, height, f, f, (width - 1) / 2, cy))
            harness.spin(0.05)
            image_pub.publish(conversions.numpy_to_image(image, "rgb8", header(stamp, FRAME)))
            harness.wait(lambda: bool(depth), 1.0)
        assert depth, node.log()
        msg = depth[-1]
        assert msg.encoding == "32FC1" and (msg.width, msg.height) == (width, height)
        published = conversions.image_to_numpy(msg)
        floor = rows > height * 0.6
        truth = 1.0 / inverse_depth[floor]  # e.g. the bottom row: 60 * 1.5 / (83 - 33.6) = 1.8219 m
        assert truth[-1] == pytest.approx(1.821862, rel=1e-5)
        np.testing.assert_allclose(published[floor, :], np.repeat(truth[:, None], width, 1), rtol=2e-2)
        assert "ground_plane" in node.log() and "Traceback" not in node.log()
    finally:
        harness.close()
        node.stop()


def test_foreign_relative_model_without_a_usable_scale_mode_fails_configure_in_one_line(tmp_path):
    from foreign_fixtures import pixel_disparity_onnx, write_card

    onnx = pixel_disparity_onnx(tmp_path / "foreign.onnx")
    card = write_card(tmp_path / "card.yaml", **{"input.default_size": [84, 112]})
    node = NodeProcess("mono_depth_node", params_file=CONFIG / "mono_depth.yaml",
                       params={"model_path": str(onnx), "model_card": str(card), "device": "cpu"})
    try:
        assert node.process.wait(STARTUP_S) == 1, node.log()
        lines = [line for line in node.log().splitlines() if "configure failed" in line]
        assert len(lines) == 1 and "parameter 'scale_mode' = 'auto': ValueError: scale_mode:" in lines[0], node.log()
        assert "'ground_plane'" in lines[0] and "Traceback" not in node.log()
    finally:
        node.stop()

"""Stereo pairing (kd_depth_ros.sync) and stereo_depth_node as a separate process with jittered stamps.

The stereo model is ros_helpers.PixelModel as an ONNX export at 32x24: per pixel depth = 1 + 2*R_left - R_right
- 0.5*B_left (in [0, 1]), times the metric scale (fx * T) / (fx_train * T_train) = (20 * 0.12) / (10 * 0.06) = 4
(fx at the network width 40 * 32/64 = 20 px; T = -P[3]/P[0] of the right camera_info). Left and right are tile
images with different red ramps, so exchanging them, the channel order, the baseline or the focal scaling all
change the published depth; the disparity is d = f*T/Z with f the output fx.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from stereo_msgs.msg import DisparityImage

from kd_depth_ros import conversions
from kd_depth_ros.diagnostics import status_values
from kd_depth_ros.sync import StampSynchronizer

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

MS = 1_000_000  # nanoseconds


# --------------------------------------------------------------------------- unit: the synchroniser
def test_pairs_within_slop_and_drops_the_rest():
    sync = StampSynchronizer(2, slop_s=0.005, queue_size=10)
    assert sync.add(0, 100 * MS, "L100") is None
    assert sync.add(1, 103 * MS, "R103") == ("L100", "R103")  # 3 ms apart: a pair
    assert sync.add(0, 200 * MS, "L200") is None
    assert sync.add(1, 207 * MS, "R207") is None  # 7 ms apart: no pair
    assert sync.add(0, 300 * MS, "L300") is None
    assert sync.add(1, 299 * MS, "R299") == ("L300", "R299")
    # the unmatched older messages can never pair any more: dropped and counted
    assert sync.dropped == [1, 1] and sync.matched == 2
    assert sync.queued(0) == 0 and sync.queued(1) == 0


def test_closest_partner_wins_and_late_messages_are_dropped():
    sync = StampSynchronizer(2, slop_s=0.010, queue_size=10)
    sync.add(1, 96 * MS, "R96")
    sync.add(1, 99 * MS, "R99")
    assert sync.add(0, 100 * MS, "L100") == ("L100", "R99")  # the closer of two candidates
    assert sync.dropped == [0, 1]  # R96 was older than the pair
    assert sync.add(0, 50 * MS, "L50") is None  # arrives after a newer pair was emitted
    assert sync.dropped == [1, 1]


def test_full_queue_drops_the_oldest():
    sync = StampSynchronizer(2, slop_s=0.001, queue_size=3)
    for i in range(5):
        sync.add(0, i * 100 * MS, f"L{i}")
    assert sync.queued(0) == 3 and sync.dropped == [2, 0]
    assert sync.add(1, 400 * MS, "R4") == ("L4", "R4")
    assert sync.dropped == [4, 0]  # L2 and L3 could no longer pair either


def test_four_streams_with_jitter_and_callback():
    pairs = []
    sync = StampSynchronizer(4, slop_s=0.004, queue_size=5, callback=lambda *msgs: pairs.append(msgs))
    rng = np.random.default_rng(0)
    expected = []
    for frame in range(20):
        base = frame * 50 * MS
        jitter = rng.integers(0, 3 * MS, size=4)  # within 3 ms: pairs
        if frame % 5 == 4:
            jitter[1] = 9 * MS  # right image 9 ms late: no pair for this frame
        else:
            expected.append(frame)
        for stream in rng.permutation(4):  # any arrival order
            sync.add(int(stream), base + int(jitter[stream]), (frame, int(stream)))
    assert [p[0][0] for p in pairs] == expected
    assert all([m[1] for m in p] == [0, 1, 2, 3] and len({m[0] for m in p}) == 1 for p in pairs)
    assert sync.matched == 16 and sync.dropped_total >= 4 * 3  # 4 frames lost, 3+ partners each dropped


def test_bad_arguments():
    with pytest.raises(ValueError, match="slop"):
        StampSynchronizer(2, slop_s=-1)
    with pytest.raises(ValueError, match="queue_size"):
        StampSynchronizer(2, slop_s=0.01, queue_size=0)
    with pytest.raises(ValueError, match="stream"):
        StampSynchronizer(2, slop_s=0.01).add(2, 0, None)


# --------------------------------------------------------------------------- the node
W, H = 64, 48
OUT_W, OUT_H = 32, 24  # the network's size too: its depth is published unresized
FX, FY, CX, CY = 40.0, 40.0, 32.0, 24.0
BASELINE = 0.12
TRAIN_FX, TRAIN_BASELINE = 10.0, 0.06  # the model's metadata
METRIC_SCALE = (FX * OUT_W / W * BASELINE) / (TRAIN_FX * TRAIN_BASELINE)  # 4
LEFT = block_image(H, W)  # R = 8 * tile column, B = 10 * tile row
RIGHT = block_image(H, W, red_step=4)  # R = 4 * tile column
EXPECTED_DEPTH = METRIC_SCALE * PIXEL_MODEL.depth(LEFT[::2, ::2], RIGHT[::2, ::2])
STARTUP_S = 180.0
MESSAGE_S = 30.0


def test_stereo_node_pairs_jittered_stamps_and_publishes_depth_and_disparity(tmp_path):
    model = write_pixel_model(tmp_path / "pixel_stereo.onnx", stereo=True, focal_length_px=TRAIN_FX,
                              baseline_m=TRAIN_BASELINE)
    params = {"model_path": str(model), "device": "cpu", "sync_slop_s": 0.005, "points_stride": 4,
              "output_width": OUT_W, "output_height": OUT_H, "diagnostics_period_s": 0.5}
    remaps = {f"{side}/{kind}": f"/test_stereo/{side}/{kind}" for side in ("left", "right")
              for kind in ("image_rect", "camera_info")}
    harness = RosHarness("stereo_test_harness")
    node = NodeProcess("stereo_depth_node", params_file=CONFIG / "stereo_depth.yaml", params=params,
                       remaps={**remaps, "__ns": "/kds"}, env=DDS_ENV)
    try:
        depth = harness.subscribe(Image, "/kds/depth")
        disparity = harness.subscribe(DisparityImage, "/kds/disparity")
        points = harness.subscribe(PointCloud2, "/kds/points")
        diagnostics = harness.subscribe(DiagnosticArray, "/diagnostics")
        pubs = {topic: harness.publisher(CameraInfo if "info" in topic else Image, f"/test_stereo/{topic}",
                                         "best_effort") for topic in remaps}
        ready = harness.wait(lambda: all(p.get_subscription_count() for p in pubs.values())
                             and harness.node.count_publishers("/kds/disparity") > 0, STARTUP_S)
        assert ready, f"node did not come up:\n{node.log()}"
        def publish_frame(stamp: int, right_offset: int) -> None:
            msgs = {"left/image_rect": conversions.numpy_to_image(LEFT, "rgb8", header(stamp, "left_optical")),
                    "right/image_rect": conversions.numpy_to_image(RIGHT, "rgb8",
                                                                   header(stamp + right_offset, "right_optical")),
                    "left/camera_info": camera_info(stamp, "left_optical", W, H, FX, FY, CX, CY),
                    "right/camera_info": camera_info(stamp + right_offset, "right_optical", W, H, FX, FY, CX, CY,
                                                     baseline=BASELINE)}
            for topic, msg in msgs.items():
                pubs[topic].publish(msg)

        # Discovery is not symmetric: seeing the node's publishers does not mean the node has matched our
        # subscriptions yet. Warm up with paired frames until outputs arrive, so no test frame is lost to it.
        warm_stamp = 5_000_000_000

        def warmed_up() -> bool:
            nonlocal warm_stamp
            if depth and disparity and points:
                return True
            warm_stamp += 200 * MS
            publish_frame(warm_stamp, 0)
            harness.spin(0.2)
            return False

        assert harness.wait(warmed_up, STARTUP_S), f"no output for paired warm-up frames:\n{node.log()}"
        paired, unpaired = [], []
        for frame in range(8):
            stamp = 10_000_000_000 + frame * 200 * MS
            right_offset = 2 * MS if frame % 2 == 0 else 20 * MS  # odd frames: right image 20 ms late
            (paired if frame % 2 == 0 else unpaired).append(stamp)
            publish_frame(stamp, right_offset)
            harness.spin(0.3)  # slower than the model: no frame is dropped by the inference thread

        def stamps(messages):
            return {conversions.header_stamp_ns(m.header) for m in messages}

        assert harness.wait(lambda: set(paired) <= stamps(disparity) and set(paired) <= stamps(depth), MESSAGE_S), \
            node.log()
        harness.spin(0.5)
        assert not set(unpaired) & stamps(depth)  # outside the slop: never paired
        msg = next(m for m in disparity if conversions.header_stamp_ns(m.header) == paired[0])
        focal = FX * OUT_W / W  # the output camera_info's fx: 20 px
        assert msg.f == pytest.approx(focal) and msg.t == pytest.approx(BASELINE)  # T = -P[3]/P[0]
        assert msg.header.frame_id == "left_optical" and msg.image.encoding == "32FC1"
        np.testing.assert_allclose(conversions.image_to_numpy(msg.image), focal * BASELINE / EXPECTED_DEPTH, rtol=1e-5)
        assert msg.min_disparity == pytest.approx(focal * BASELINE / 80.0)  # max_depth 80 m (config)
        assert (msg.valid_window.width, msg.valid_window.height) == (OUT_W, OUT_H)
        depth_msg = next(m for m in depth if conversions.header_stamp_ns(m.header) == paired[0])
        published = conversions.image_to_numpy(depth_msg)
        # by hand, top right tile: left R = 248, right R = 124, left B = 0: 4 * (1 + 496/255 - 124/255) = 9.8353 m
        # (left and right exchanged: 4 * (1 + 248/255 - 496/255) = 0.1098 m); bottom left: left B = 230:
        # 4 * (1 - 0.5 * 230/255) = 2.1961 m
        assert published[0, 31] == pytest.approx(9.835294, rel=1e-5)
        assert published[23, 0] == pytest.approx(2.196078, rel=1e-5)
        np.testing.assert_allclose(published, EXPECTED_DEPTH, rtol=1e-5)
        cloud = next(m for m in points if conversions.header_stamp_ns(m.header) == paired[0])
        assert (cloud.height, cloud.width) == (OUT_H // 4, OUT_W // 4)

        def dropped_pairs() -> int:
            mine = [m for m in diagnostics if m.status and "stereo_depth_node" in m.status[0].name]
            return int(status_values(mine[-1])["stereo pairs dropped"]) if mine else 0

        # the last late right image may still be waiting in the queue; the earlier ones were dropped
        assert harness.wait(lambda: dropped_pairs() >= len(unpaired) - 1, MESSAGE_S), node.log()
    finally:
        harness.close()
        node.stop()


@pytest.mark.parametrize("transport, suffix", [("compressed", "/compressed"), ("raw", "")])
def test_stereo_images_follow_the_remapped_base_topic(transport, suffix):
    """image_transport convention: ``-r left/image_rect:=/cam/left/image_raw`` with compressed input subscribes
    ``/cam/left/image_raw/compressed``; camera_infos are never suffixed."""
    import rclpy
    from rclpy.context import Context

    from kd_depth_ros.qos import make_qos
    from kd_depth_ros.stereo_depth_node import StereoDepthNode

    context = Context()
    rclpy.init(context=context)
    node = None
    try:
        node = StereoDepthNode(context=context, cli_args=[
            "--ros-args", "-r", "left/image_rect:=/cam/left/image_raw", "-r", "right/image_rect:=/cam/right/image_raw",
            "-r", "__ns:=/stereo_remap_test", "-p", f"image_transport:={transport}"])
        node.create_inputs(make_qos("best_effort", 5))
        assert [sub.topic_name for sub in node.subs] == [
            f"/cam/left/image_raw{suffix}", f"/cam/right/image_raw{suffix}", "/stereo_remap_test/left/camera_info",
            "/stereo_remap_test/right/camera_info"]
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_the_stereo_node_needs_a_model_path():
    from kd_depth_ros.node_params import resolve_model_path
    from kd_depth_ros.stereo_depth_node import StereoDepthNode

    with pytest.raises(FileNotFoundError, match="^parameter 'model_path' is empty: stereo_depth_node has no bundled"):
        resolve_model_path("", StereoDepthNode.DEFAULT_MODEL, StereoDepthNode.NODE_NAME)

"""Faults a robot meets, injected into a real mono_depth_node process: the node survives each one, counts it
by kind, shows it in /diagnostics (WARN while frames fail, ERROR when none succeeds, OK after) and answers
the next good frame. Also the pieces as units: the worker's supervision, the throttled log (one rclpy
call site per severity), failure levels, camera_info matching, the compressed topic under a remap, the
bundled model without AMENT_PREFIX_PATH and the Fast DDS hint.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import CameraInfo, Image

from kd_depth_ros import conversions
from kd_depth_ros.depth_worker import LatestFrameWorker, ThrottledLog
from kd_depth_ros.diagnostics import DepthNodeStatus, status_values
from kd_depth_ros.node_base import dds_profile_hint
from kd_depth_ros.node_params import resolve_model_path
from kd_depth_ros.sync import CameraInfoMatcher

sys.path.insert(0, str(Path(__file__).parent))
from ros_helpers import (  # noqa: E402
    BACKEND_FAULT_RGB,
    CONFIG,
    DDS_ENV,
    REPO,
    THREAD_DEATH_RGB,
    NodeProcess,
    RosHarness,
    camera_info,
    faulty_node_command,
    header,
    write_constant_model,
)

STARTUP_S = 180.0
MESSAGE_S = 30.0
W, H = 64, 48
FX, FY, CX, CY = 50.0, 40.0, 32.0, 24.0
GOOD_RGB = (100, 150, 200)
FRAME = "faults_cam_optical_frame"
WINDOW_S, ERROR_S = 1.0, 0.8  # failure_window_s, failure_error_s of the node under test
TOLERANCE_S, MAX_AGE_S = 0.01, 0.5  # camera_info_tolerance_s, camera_info_max_age_s


# --------------------------------------------------------------------------- units
def test_a_dead_worker_thread_is_restarted_and_counted():
    class Death(BaseException):
        pass

    done: list[int] = []

    def process(item: int) -> None:
        if item == 1:
            raise Death("gone")
        done.append(item)

    worker = LatestFrameWorker(process)
    worker.start()
    try:
        assert worker.supervise() is None  # running: nothing to do
        worker.submit(1)
        assert worker.wait_idle(10) and _wait(lambda: not worker.alive, 10)
        error = worker.supervise()
        assert isinstance(error, Death) and worker.restarts == 1 and worker.alive
        worker.submit(2)
        assert worker.wait_idle(10) and done == [2]
        worker.stop()
        assert worker.alive and worker.supervise() is None  # a stopped worker is not restarted
    finally:
        worker.stop()


def test_a_failing_error_handler_does_not_stop_the_worker_for_good():
    def on_error(exc: BaseException) -> None:
        raise RuntimeError("the handler itself fails")

    done: list[int] = []
    worker = LatestFrameWorker(lambda item: done.append(item) if item else 1 / 0, on_error)
    worker.start()
    try:
        worker.submit(0)  # ZeroDivisionError -> on_error raises -> the thread ends
        assert _wait(lambda: not worker.alive, 10)
        assert isinstance(worker.supervise(), RuntimeError)
        worker.submit(3)
        assert worker.wait_idle(10) and done == [3]
    finally:
        worker.stop()


def test_throttled_log_severities_never_share_a_call_site():
    import rclpy.logging

    log = ThrottledLog(rclpy.logging.get_logger("kd_depth_faults_test"))
    # rclpy raised 'Logger severity cannot be changed between calls' when one line logged both
    assert log("a", "a warning", "warning", period_s=10.0)
    assert log("b", "an error", "error", period_s=10.0)
    assert log("c", "some info", "info", period_s=10.0)
    assert log("d", "another warning", "warning", period_s=10.0)
    assert not log("a", "again", "warning", period_s=10.0)  # throttled per key
    assert log("a", "after the period", "warning", period_s=0.0)


def test_failures_make_diagnostics_warn_then_error_then_ok():
    status = DepthNodeStatus("/x/mono_depth_node: depth", stale_after_s=100.0, failure_window_s=1.0,
                             failure_error_s=2.0)
    status.model_loaded = True
    status.input_rate.tick(10.0)
    assert status.level_and_message(10.0) == (DiagnosticStatus.OK, "running")
    status.frame_failed("bad_encoding", now=10.0)
    status.frame_failed("bad_camera_info", now=10.5)
    level, message = status.level_and_message(10.6)
    assert level == DiagnosticStatus.WARN and message == "2 frame(s) failed in the last 1 s " \
                                                         "(bad_camera_info 1, bad_encoding 1)"
    status.frame_failed("bad_camera_info", now=11.5)
    level, message = status.level_and_message(12.1)  # nothing published since the first failure at 10.0
    assert level == DiagnosticStatus.ERROR and message == "no frame published for 2.1 s: every frame failed " \
                                                          "(bad_camera_info 1)"
    status.frame_ok()
    assert status.level_and_message(12.2)[0] == DiagnosticStatus.WARN  # the failure at 11.5 is still in the window
    assert status.level_and_message(12.6) == (DiagnosticStatus.OK, "running")
    status.worker_alive = False
    assert status.level_and_message(12.6)[0] == DiagnosticStatus.ERROR
    values = status_values(status.to_msg(DiagnosticArray().header.stamp, 12.6))
    assert values["failed: bad_camera_info"] == "2" and values["invalid messages"] == "3"


def test_camera_info_is_matched_by_stamp_or_max_age():
    matcher = CameraInfoMatcher(history=4)
    info, why = matcher.match(5_000_000_000, TOLERANCE_S, MAX_AGE_S)
    assert info is None and why.startswith("none received yet")
    for stamp in (1_000_000_000, 2_000_000_000, 2_100_000_000):
        matcher.add(stamp, f"info@{stamp}")
    assert matcher.match(2_005_000_000, TOLERANCE_S, MAX_AGE_S)[0] == "info@2000000000"  # nearest, in tolerance
    assert matcher.match(2_095_000_000, TOLERANCE_S, 0.0)[0] == "info@2100000000"  # newer but within tolerance
    assert matcher.match(2_500_000_000, TOLERANCE_S, MAX_AGE_S)[0] == "info@2100000000"  # latest, 0.4 s old
    info, why = matcher.match(2_700_000_000, TOLERANCE_S, MAX_AGE_S)  # 0.6 s old
    assert info is None and "nearest: -0.600 s" in why and "camera_info_max_age_s = 0.5" in why
    assert matcher.match(2_050_000_000, TOLERANCE_S, 0.0)[0] is None  # between two, neither within tolerance
    assert matcher.match(500_000_000, TOLERANCE_S, MAX_AGE_S)[0] is None  # only newer ones
    for stamp in range(3, 8):
        matcher.add(stamp * 1_000_000_000, stamp)
    assert matcher.match(1_000_000_000, TOLERANCE_S, MAX_AGE_S)[0] is None  # pushed out of the history


def test_bundled_model_is_found_without_ament_prefix_path(monkeypatch):
    for value in (None, ""):
        if value is None:
            monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
        else:
            monkeypatch.setenv("AMENT_PREFIX_PATH", value)
        assert resolve_model_path("") == REPO / "models" / "default_student.safetensors"


def test_no_input_hint_names_the_profile_and_the_export_line(monkeypatch):
    monkeypatch.delenv("RMW_IMPLEMENTATION", raising=False)
    monkeypatch.delenv("FASTRTPS_DEFAULT_PROFILES_FILE", raising=False)
    hint = dds_profile_hint()
    line = hint.split("export FASTRTPS_DEFAULT_PROFILES_FILE=", 1)[1]
    assert Path(line.split()[0]).resolve() == (CONFIG / "fastdds_large_data.xml").resolve()
    assert "large-data profile" in hint and "runs without it" in hint
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
    assert dds_profile_hint() == ""


@pytest.mark.parametrize("transport, expected", [("compressed", "/cam/image_raw/compressed"),
                                                 ("raw", "/cam/image_raw")])
def test_image_subscription_follows_the_remapped_base_topic(transport, expected):
    import rclpy
    from rclpy.context import Context

    from kd_depth_ros.mono_depth_node import MonoDepthNode
    from kd_depth_ros.qos import make_qos

    context = Context()
    rclpy.init(context=context)
    node = None
    try:
        node = MonoDepthNode(context=context, cli_args=["--ros-args", "-r", "image:=/cam/image_raw",
                                                        "-r", "__ns:=/remap_test", "-p",
                                                        f"image_transport:={transport}"])
        node.create_inputs(make_qos("best_effort", 5))
        assert [sub.topic_name for sub in node.subs] == [expected, "/remap_test/camera_info"]
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


# --------------------------------------------------------------------------- the real node, with faults
@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    model = write_constant_model(tmp_path_factory.mktemp("faults_model") / "zero.safetensors")
    params = {"model_path": str(model), "device": "cpu", "publish_points": False, "publish_uncertainty": False,
              "diagnostics_period_s": 0.1, "failure_window_s": WINDOW_S, "failure_error_s": ERROR_S,
              "camera_info_tolerance_s": TOLERANCE_S, "camera_info_max_age_s": MAX_AGE_S}
    node = NodeProcess("mono_depth_node", params_file=CONFIG / "mono_depth.yaml", params=params,
                       remaps={"image": "/faults_cam/image", "camera_info": "/faults_cam/camera_info",
                               "__ns": "/faults"}, env=DDS_ENV, command=faulty_node_command("mono_depth_node"))
    harness = RosHarness("faults_test_harness")
    try:
        client = Client(node, harness)
        ready = harness.wait(lambda: client.image_pub.get_subscription_count() > 0
                             and client.info_pub.get_subscription_count() > 0
                             and harness.node.count_publishers("/faults/depth") > 0, STARTUP_S)
        assert ready, f"node did not come up:\n{node.log()}"
        yield client
    finally:
        harness.close()
        node.stop()


class Client:
    """Publishes frames to the node under test and reads its depth and diagnostics."""

    def __init__(self, node: NodeProcess, harness: RosHarness):
        self.node, self.harness = node, harness
        self.depth = harness.subscribe(Image, "/faults/depth")
        self.diagnostics = harness.subscribe(DiagnosticArray, "/diagnostics")
        self.image_pub = harness.publisher(Image, "/faults_cam/image", "best_effort")
        self.info_pub = harness.publisher(CameraInfo, "/faults_cam/camera_info", "best_effort")

    def statuses(self) -> list:
        return [m.status[0] for m in self.diagnostics if m.status and m.status[0].name.startswith("/faults/")]

    def value(self, key: str) -> int:
        statuses = self.statuses()
        return int(status_values_of(statuses[-1]).get(key, 0)) if statuses else 0

    def answered(self, stamp: int) -> bool:
        return stamp in [conversions.header_stamp_ns(m.header) for m in self.depth]

    def send(self, stamp: int, rgb=GOOD_RGB, encoding: str = "rgb8", info: CameraInfo | None = None,
             info_stamp: int | None = None, with_info: bool = True) -> None:
        if with_info:
            if info is None:
                info = camera_info(stamp if info_stamp is None else info_stamp, FRAME, W, H, FX, FY, CX, CY)
            self.info_pub.publish(info)
            self.harness.spin(0.03)
        image = np.empty((H, W, 3), np.uint8)
        image[...] = rgb
        msg = conversions.numpy_to_image(image, "rgb8", header(stamp, FRAME))
        msg.encoding = encoding
        self.image_pub.publish(msg)

    def good(self, stamp: int) -> None:
        """A good frame is answered (resent while discovery settles)."""
        deadline = time.monotonic() + MESSAGE_S
        while not self.answered(stamp) and time.monotonic() < deadline:
            self.send(stamp)
            self.harness.wait(lambda: self.answered(stamp), 1.0)
        assert self.answered(stamp), f"good frame {stamp} not answered:\n{self.node.log()}"

    def fails(self, kind: str, send) -> None:
        """``send()`` makes the node count one more ``failed: <kind>`` in /diagnostics."""
        before = self.value(f"failed: {kind}")
        send()
        assert self.harness.wait(lambda: self.value(f"failed: {kind}") > before, MESSAGE_S), \
            f"no {kind} counted:\n{self.node.log()}"
        assert self.node.running()

    def wait_ok(self, stamp: int) -> int:
        """Good frames every 0.1 s until /diagnostics is OK; returns the next free stamp."""
        deadline = time.monotonic() + WINDOW_S + MESSAGE_S
        while time.monotonic() < deadline:
            self.send(stamp)
            stamp += 100_000_000
            self.harness.spin(0.1)
            statuses = self.statuses()
            if statuses and statuses[-1].level == DiagnosticStatus.OK:
                return stamp
        raise AssertionError(f"never OK again: {[s.message for s in self.statuses()[-5:]]}\n{self.node.log()}")


def status_values_of(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def bad_info(stamp: int, **changes) -> CameraInfo:
    info = camera_info(stamp, FRAME, W, H, FX, FY, CX, CY)
    k = list(info.k)
    for index, value in changes.pop("k", {}).items():
        k[index] = value
    info.k = k
    for key, value in changes.items():
        setattr(info, key, value)
    return info


def test_every_fault_is_survived_counted_and_shown_in_diagnostics(faulty):
    client = faulty
    s = 10_000_000_000
    client.good(s)
    # the repro: a warning (no camera_info), then errors at other severities, then a NaN K
    client.fails("no_camera_info", lambda: client.send(s + 5_000_000_000, with_info=False))
    s += 10_000_000_000
    client.fails("backend_error", lambda: client.send(s, rgb=BACKEND_FAULT_RGB))
    client.good(s + 1)
    client.fails("bad_encoding", lambda: client.send(s + 2, encoding="8UC5"))
    client.good(s + 3)
    nan = float("nan")
    for i, info_changes in enumerate(({"k": {0: nan, 4: nan, 2: nan, 5: nan}}, {"k": {5: float("inf")}},
                                      {"k": {0: 0.0, 4: 0.0}}, {"k": {2: 10 * W}}, {"width": 2 * W, "height": 2 * H})):
        stamp = s + 1_000_000_000 * (i + 1)
        client.fails("bad_camera_info", lambda st=stamp, ch=info_changes: client.send(st, info=bad_info(st, **ch)))
        client.good(stamp + 1)
    s += 10_000_000_000
    client.fails("worker_restart", lambda: client.send(s, rgb=THREAD_DEATH_RGB))
    client.good(s + 1)

    log = client.node.log()
    assert "Logger severity cannot be changed" not in log and "Traceback" not in log, log
    for text in ("(no_camera_info): camera_info: none matches the image stamp", "(backend_error): RuntimeError: "
                 "injected backend failure", "(bad_encoding): encoding:", "camera_info k: fx (k[0]) = nan",
                 "camera_info width/height: 128x96 differs from the image 64x48",
                 "the inference thread ended (InjectedThreadDeath: injected thread death); restarted"):
        assert text in log, f"{text!r} not logged:\n{log}"
    values = status_values_of(client.statuses()[-1])
    assert int(values["failed: bad_camera_info"]) >= 5 and values["inference thread restarts"] == "1"
    assert any(st.level == DiagnosticStatus.WARN and "frame(s) failed" in st.message for st in client.statuses())
    client.wait_ok(s + 2)


def test_diagnostics_error_while_every_frame_fails_then_ok(faulty):
    client = faulty
    stamp = 100_000_000_000
    client.wait_ok(stamp)
    stamp += 100_000_000_000
    deadline = time.monotonic() + ERROR_S + MESSAGE_S

    def error_seen() -> bool:
        return any(st.level == DiagnosticStatus.ERROR and "every frame failed" in st.message
                   for st in client.statuses())

    while not error_seen() and time.monotonic() < deadline:
        client.send(stamp, rgb=BACKEND_FAULT_RGB)
        stamp += 50_000_000
        client.harness.spin(0.05)
    assert error_seen(), [st.message for st in client.statuses()[-5:]]
    client.wait_ok(stamp)
    client.good(stamp + 10_000_000_000)


def test_frames_without_a_matching_camera_info_are_skipped(faulty):
    client = faulty
    s = 1_000_000_000_000  # far from the stamps of the other tests (their camera_infos are in the history)
    client.send(s + 5_000_000, info_stamp=s)  # within camera_info_tolerance_s
    assert client.harness.wait(lambda: client.answered(s + 5_000_000), MESSAGE_S), client.node.log()
    client.send(s + 300_000_000, with_info=False)  # the latest one, 0.3 s old: within camera_info_max_age_s
    assert client.harness.wait(lambda: client.answered(s + 300_000_000), MESSAGE_S), client.node.log()
    client.fails("no_camera_info", lambda: client.send(s + 800_000_000, with_info=False))  # 0.8 s old
    client.fails("no_camera_info", lambda: client.send(s + 5_000_000_000, info_stamp=s + 5_020_000_000))  # newer
    client.good(s + 6_000_000_000)
    assert not client.answered(s + 800_000_000) and not client.answered(s + 5_000_000_000)

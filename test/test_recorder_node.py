"""The live recorder, started as its own process with config/recorder.yaml and fed by real rclpy publishers here,
writes sequences that validate; ~/stop, low disk space and Ctrl-C all leave a complete sequence."""
from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import bag_fixtures as bf  # noqa: E402

rclpy = pytest.importorskip("rclpy")
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from kd_depth_core.data.sequence import validate_sequence  # noqa: E402
from kd_depth_ros.conversions import numpy_to_image  # noqa: E402
from kd_depth_ros.recorder_node import SPECS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "config" / "recorder.yaml"
W, H = 64, 48
K = bf.intrinsics(W, H)
BASELINE = 0.1
FRAMES = bf.textured_frames(60, W, H, seed=7)
RIGHT = bf.textured_frames(60, W, H, seed=8)
T0 = 1_700_000_000_000_000_000
DT = 50_000_000


def start_node(tmp_path: Path, name: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kd_depth_ros.recorder_node", "--ros-args", "--params-file", str(PARAMS),
           "-p", f"output_dir:={tmp_path / 'out'}", "-p", "min_free_disk_mb:=0.0", "-p", "disk_check_period_s:=0.2",
           "-r", f"__node:={name}", *extra]
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


class Feeder:
    """Publishers and service clients in this process (real rclpy, own context)."""

    def __init__(self, node_name: str, prefix: str, stereo: bool = False) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"feeder_{node_name}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        sides = ("left", "right") if stereo else ("",)
        self.pubs = {s: (self.node.create_publisher(type(numpy_to_image(FRAMES[0], "rgb8")),
                                                    f"{prefix}/{s + '/' if s else ''}image", 10),
                         self.node.create_publisher(CameraInfo, f"{prefix}/{s + '/' if s else ''}camera_info", 10))
                     for s in sides}
        self.start_client = self.node.create_client(Trigger, f"/{node_name}/start")
        self.stop_client = self.node.create_client(Trigger, f"/{node_name}/stop")
        self.node_name = node_name

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def wait_ready(self, services: bool = True, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matched = all(p.get_subscription_count() > 0 for pair in self.pubs.values() for p in pair)
            if matched and (not services or self.start_client.service_is_ready()):
                return
            self.executor.spin_once(timeout_sec=0.1)
        raise AssertionError(f"recorder '{self.node_name}' did not come up within {timeout} s")

    def call(self, client, timeout: float = 30.0, publish_from: int | None = None) -> Trigger.Response:
        """Call a Trigger service; with ``publish_from``, keep publishing frames while waiting (a stop mid-stream)."""
        future = client.call_async(Trigger.Request())
        deadline, i = time.monotonic() + timeout, publish_from
        while not future.done():
            assert time.monotonic() < deadline, "service call timed out"
            if i is not None:
                self.publish(i)
                i += 1
            self.executor.spin_once(timeout_sec=0.02)
        return future.result()

    def publish(self, i: int) -> int:
        """Publish frame i (and its camera_info) on every side; returns its stamp (ns)."""
        stamp = T0 + i * DT
        header = Header(frame_id="camera_optical_frame")
        header.stamp.sec, header.stamp.nanosec = stamp // 10**9, stamp % 10**9
        for side, (image_pub, info_pub) in self.pubs.items():
            info = CameraInfo(header=header, width=W, height=H, distortion_model="plumb_bob")
            info.k = K.reshape(-1).tolist()
            info.r = np.eye(3).reshape(-1).tolist()
            P = np.hstack([K, [[-K[0, 0] * BASELINE if side == "right" else 0.0], [0], [0]]])
            info.p = P.reshape(-1).tolist()
            info_pub.publish(info)
            image_pub.publish(numpy_to_image((RIGHT if side == "right" else FRAMES)[i % 60], "rgb8", header))
        return stamp

    def publish_many(self, indices, period: float = 0.03) -> list[int]:
        stamps = []
        for i in indices:
            stamps.append(self.publish(i))
            end = time.monotonic() + period
            while time.monotonic() < end:
                self.executor.spin_once(timeout_sec=0.005)
        return stamps


def check_sequence(path: Path, stamps: list[int], stereo: bool = False, min_len: int = 3):
    seq = validate_sequence(path)
    assert len(seq) >= min_len
    np.testing.assert_array_equal(seq.camera.K, K)
    by_stamp = {T0 + i * DT: i for i in range(60)}
    for k, stamp in enumerate(seq.stamps_ns.tolist()):
        assert stamp in stamps, "a frame that was never published"
        np.testing.assert_array_equal(seq.load_left(k), FRAMES[by_stamp[stamp] % 60])
        if stereo:
            np.testing.assert_array_equal(seq.load_right(k), RIGHT[by_stamp[stamp] % 60])
    if stereo:
        assert seq.camera.baseline == pytest.approx(BASELINE)
    return seq


def sequences(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) if out.exists() else []


def stop_node(proc: subprocess.Popen, timeout: float = 60.0) -> int | None:
    """Ctrl-C the node; its exit code (None if it had to be killed)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Both recorder processes start together (their start-up overlaps): a mono one waiting for ~/start and a
    stereo one recording from launch."""
    tmp = tmp_path_factory.mktemp("recorder")
    mono_name, stereo_name = f"rec_mono_{os.getpid()}", f"rec_stereo_{os.getpid()}"
    (tmp / "mono").mkdir()
    (tmp / "stereo").mkdir()
    procs = {
        "mono": start_node(tmp / "mono", mono_name, "-p", "autostart:=false", "-r", "image:=/kd_test_cam/image",
                           "-r", "camera_info:=/kd_test_cam/camera_info"),
        "stereo": start_node(tmp / "stereo", stereo_name, "-p", "stereo:=true", "-p", "autostart:=true",
                             "-r", "left/image:=/kd_test_stereo/left/image",
                             "-r", "left/camera_info:=/kd_test_stereo/left/camera_info",
                             "-r", "right/image:=/kd_test_stereo/right/image",
                             "-r", "right/camera_info:=/kd_test_stereo/right/camera_info"),
    }
    feeders = {"mono": Feeder(mono_name, "/kd_test_cam"), "stereo": Feeder(stereo_name, "/kd_test_stereo", True)}
    try:
        yield {kind: (feeders[kind], tmp / kind, procs[kind]) for kind in procs}
    finally:
        for feeder in feeders.values():
            feeder.close()
        for kind, proc in procs.items():
            stop_node(proc)
            print((tmp / kind / f"{mono_name if kind == 'mono' else stereo_name}.log").read_text()[-3000:])


@pytest.fixture(scope="module")
def mono(nodes):
    feeder, tmp, proc = nodes["mono"]
    feeder.wait_ready(timeout=90)
    return feeder, tmp / "out", proc


def test_start_record_stop_gives_a_valid_sequence(mono):
    feeder, out, _ = mono
    assert feeder.call(feeder.start_client).success
    stamps = feeder.publish_many(range(10))
    response = feeder.call(feeder.stop_client)
    assert response.success and "committed" in response.message, response.message
    [path] = sequences(out)
    assert path.name in response.message
    seq = check_sequence(path, stamps)
    assert seq.meta["source"]["recorder"] == "kd_depth_ros.recorder_node"
    assert not feeder.call(feeder.stop_client).success  # nothing to stop


def bayer_rggb(rgb: np.ndarray) -> np.ndarray:
    """The RGGB mosaic a Bayer camera would give for an RGB frame (H, W even)."""
    mosaic = rgb[..., 1].copy()
    mosaic[0::2, 0::2], mosaic[1::2, 1::2] = rgb[0::2, 0::2, 0], rgb[1::2, 1::2, 2]
    return mosaic


def test_live_recording_equals_the_same_stream_converted_from_a_bag(mono, tmp_path):
    """One Bayer stream, published live to the recorder and written to a bag and converted: the recorder's
    frames are byte-identical to the converter's for the same stamps, with the same camera metadata."""
    from sensor_msgs.msg import Image

    from kd_depth_ros.bag_converter import ConvertOptions, convert_bag

    feeder, out, _ = mono
    before = set(sequences(out))
    image_pub, info_pub = feeder.pubs[""]
    assert feeder.call(feeder.start_client).success
    bag_msgs, published = [], []
    for i in range(20, 32):
        stamp = T0 + i * DT
        mosaic = bayer_rggb(FRAMES[i])
        header = Header(frame_id="camera_optical_frame")
        header.stamp.sec, header.stamp.nanosec = divmod(stamp, 10**9)
        info = CameraInfo(header=header, width=W, height=H, distortion_model="plumb_bob", k=K.reshape(-1).tolist(),
                          r=np.eye(3).reshape(-1).tolist(), p=np.hstack([K, np.zeros((3, 1))]).reshape(-1).tolist())
        info_pub.publish(info)
        image_pub.publish(Image(header=header, height=H, width=W, encoding="bayer_rggb8", step=W,
                                data=mosaic.tobytes()))
        published.append(stamp)
        bag_msgs += [bf.image("/cam/image_raw", mosaic, stamp, encoding="bayer_rggb8"),
                     bf.camera_info("/cam/camera_info", stamp, W, H, K)]
        end = time.monotonic() + 0.03
        while time.monotonic() < end:
            feeder.executor.spin_once(timeout_sec=0.005)
    response = feeder.call(feeder.stop_client)
    assert response.success and "committed" in response.message, response.message
    [path] = set(sequences(out)) - before
    live = validate_sequence(path)
    convert_bag(bf.write_bag(tmp_path / "same", bag_msgs, "mcap"), tmp_path / "conv", ConvertOptions(image_format="png"))
    converted = validate_sequence(tmp_path / "conv" / "same_000")
    index = {stamp: k for k, stamp in enumerate(converted.stamps_ns.tolist())}
    assert len(live) >= 3 and set(live.stamps_ns.tolist()) <= set(index) <= set(published)
    for k, stamp in enumerate(live.stamps_ns.tolist()):
        assert live.frame_path("left", k).read_bytes() == converted.frame_path("left", index[stamp]).read_bytes()
    assert live.meta["camera"] == converted.meta["camera"]
    assert np.abs(live.load_left(0).astype(int) - FRAMES[20]).mean() < 40  # demosaiced, not grey or garbage


def test_stop_while_frames_keep_coming_leaves_a_complete_sequence(mono):
    feeder, out, _ = mono
    before = set(sequences(out))
    assert feeder.call(feeder.start_client).success
    stamps = feeder.publish_many(range(10, 20))
    response = feeder.call(feeder.stop_client, publish_from=20)
    assert response.success, response.message
    [path] = set(sequences(out)) - before
    check_sequence(path, stamps + [T0 + i * DT for i in range(20, 60)])
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"


def test_low_disk_space_stops_with_a_complete_sequence(mono):
    from rclpy.parameter_client import AsyncParameterClient

    feeder, out, _ = mono
    before = set(sequences(out))
    assert feeder.call(feeder.start_client).success
    stamps = feeder.publish_many(range(20, 30))
    params = AsyncParameterClient(feeder.node, feeder.node_name)
    future = params.set_parameters([Parameter("min_free_disk_mb", value=1e15)])
    feeder.executor.spin_until_future_complete(future, timeout_sec=10)
    assert future.result().results[0].successful
    deadline = time.monotonic() + 15
    while not set(sequences(out)) - before:
        assert time.monotonic() < deadline, "the recorder did not stop on low disk space"
        feeder.executor.spin_once(timeout_sec=0.1)
    [path] = set(sequences(out)) - before
    check_sequence(path, stamps)
    response = feeder.call(feeder.start_client)
    assert not response.success and "min_free_disk_mb" in response.message
    future = params.set_parameters([Parameter("min_free_disk_mb", value=0.0)])
    feeder.executor.spin_until_future_complete(future, timeout_sec=10)


def test_stereo_autostart_and_ctrl_c_commit_the_sequence(nodes):
    feeder, tmp, proc = nodes["stereo"]
    feeder.wait_ready(services=False, timeout=90)
    stamps = feeder.publish_many(range(8))
    feeder.publish_many([], period=0.5)  # let the last frames reach the node
    code = stop_node(proc)
    log = next(tmp.glob("*.log")).read_text()
    assert code == 0, log[-3000:]
    [path] = sequences(tmp / "out")
    seq = check_sequence(path, stamps, stereo=True)
    assert seq.has_right and "committed [shutdown" in log


def test_params_file_and_launch_file_match_the_node():
    params = yaml.safe_load(PARAMS.read_text())["/**/recorder_node"]["ros__parameters"]  # any namespace
    assert set(params) == {spec.name for spec in SPECS}
    for spec in SPECS:
        assert type(params[spec.name]) is spec.kind, spec.name
    launch = ast.parse((ROOT / "launch" / "recorder.launch.py").read_text())
    strings = {n.value for n in ast.walk(launch) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert {"recorder_node", "recorder.yaml", "output_dir", "left/image", "right/camera_info"} <= strings


def test_help_lists_parameters_without_ros():
    result = subprocess.run([sys.executable, "-m", "kd_depth_ros.recorder_node", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "usage" in result.stdout
    assert "min_free_disk_mb" in result.stdout and "~/start" in result.stdout

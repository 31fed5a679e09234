"""Benchmark of mono_depth_node at 640x480: node overhead, point-cloud build time, a slow model behind a
30 Hz camera (bounded latency, counted drops) and memory growth over many frames.

    python bench/bench_ros_node.py [--frames 300] [--slow-model student_mobilenetv3] [--json out.json]
        [--rss-frames 5000] [--relay] [--dds-profile config/fastdds_large_data.xml | '']

The node runs as its own process (``python -m kd_depth_ros.mono_depth_node``, real rclpy, loopback
discovery on a random domain); this process publishes synthetic frames stamped with the wall clock and
times the depth messages coming back. Numbers (milliseconds unless said otherwise):

- ``overhead``: end-to-end latency (stamp -> serialised depth received; the stamp is set just before
  the camera publishes) minus the node's inference time, p50,
  at a camera rate the model keeps up with (no drops), with depth + camera_info + uncertainty +
  organised coloured cloud (stride 4) published;
- ``cloud``: building the PointCloud2 in this process (organised, coloured; stride 1 and 4);
- ``slow``: a bigger student behind a 30 Hz camera: end-to-end latency p50/p95/max, output rate and
  frames dropped (newest frame wins, so the latency stays near one inference time);
- ``rss``: the node's resident memory after warm-up and after all frames (growth in MB);
- ``relay_floor`` (``--relay``): the same camera and subscriber around bench/ros_relay.py, which
  republishes each image unchanged: what rclpy and the DDS cost with no model and no work.
"""
from __future__ import annotations

import argparse
import array
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))

W, H = 640, 480
FX = FY = 525.0


def write_model(path: Path, name: str, height: int, width: int, **kwargs) -> Path:
    from kd_depth_core.models import create_model
    from kd_depth_core.models.io import ModelMetadata, save_model

    model = create_model(name, **kwargs)
    meta = ModelMetadata.from_model(model, input_height=height, input_width=width, min_depth=0.1, max_depth=100.0,
                                    scale_kind="metric", focal_length_px=None,
                                    has_uncertainty=bool(kwargs.get("uncertainty")))
    return save_model(path, model, meta)


def percentiles(values_s: list[float]) -> dict[str, float]:
    values = np.array(values_s) * 1e3
    if not values.size:
        return {"n": 0}
    return {"n": int(values.size), "p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "max": float(values.max())}


def cdr_header_stamp_ns(serialized: bytes) -> int:
    """The header stamp of a serialised message that starts with ``std_msgs/Header`` (CDR: 4-byte
    encapsulation, then int32 sec and uint32 nanosec in the encapsulation's byte order)."""
    order = "little" if serialized[1] & 1 else "big"
    sec = int.from_bytes(serialized[4:8], order, signed=True)
    return sec * 1_000_000_000 + int.from_bytes(serialized[8:12], order)


# --------------------------------------------------------------------------- in-process: cloud and message data
def bench_cloud(repeats: int) -> dict[str, float]:
    from std_msgs.msg import Header

    from kd_depth_ros.conversions import PointCloudBuilder

    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 20.0, (H, W)).astype(np.float32)
    depth[::7] = np.nan
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    K = np.array([[FX, 0, W / 2], [0, FY, H / 2], [0, 0, 1]])
    results = {}
    for stride, reuse in ((1, True), (4, True), (1, False)):  # reuse_buffer=True is what the nodes run
        builder = PointCloudBuilder(stride=stride, organized=True, reuse_buffer=reuse)
        builder.build(depth, K, Header(), rgb)  # rays cached
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            builder.build(depth, K, Header(), rgb)
            times.append(time.perf_counter() - start)
        results[f"organised_rgb_stride{stride}{'' if reuse else '_fresh_buffer'}_p50_ms"] = percentiles(times)["p50"]
    return results


def bench_message_data(repeats: int) -> dict[str, float]:
    """Ways to fill Image.data from a 640x480x3 array (rclpy stores uint8[] as array.array('B'))."""
    from sensor_msgs.msg import Image

    image = np.zeros((H, W, 3), np.uint8)
    msg = Image()

    def frombytes():
        data = array.array("B")
        data.frombytes(memoryview(image).cast("B"))
        msg.data = data

    variants = {
        "array_frombytes_memoryview": frombytes,
        "array_from_tobytes": lambda: setattr(msg, "data", array.array("B", image.tobytes())),
        "assign_bytes": lambda: setattr(msg, "data", image.tobytes()),
    }
    results = {}
    for name, fill in variants.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fill()
            times.append(time.perf_counter() - start)
        results[f"{name}_p50_ms"] = percentiles(times)["p50"]
    return results


# --------------------------------------------------------------------------- the node process
class Node:
    def __init__(self, params: dict[str, object], command: list[str] | None = None):
        if command is None:
            command = [sys.executable, "-m", "kd_depth_ros.mono_depth_node", "--ros-args",
                       "--params-file", str(REPO / "config" / "mono_depth.yaml"),
                       "-r", "image:=/bench/image", "-r", "camera_info:=/bench/camera_info", "-r", "__ns:=/bench"]
            for key, value in params.items():
                text = ("true" if value else "false") if isinstance(value, bool) else str(value)
                command += ["-p", f"{key}:={text}"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Camera:
    """Publishes 640x480 rgb8 frames + camera_info stamped with the wall clock; records depth and diagnostics."""

    def __init__(self, reliability: str = "best_effort"):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CameraInfo, Image

        from kd_depth_ros import conversions
        from kd_depth_ros.qos import make_qos

        rclpy.init()
        self.conversions = conversions
        self.node = rclpy.create_node("bench_camera")
        self.image_pub = self.node.create_publisher(Image, "/bench/image", make_qos(reliability, 5))
        self.info_pub = self.node.create_publisher(CameraInfo, "/bench/camera_info", make_qos(reliability, 5))
        self.latencies: list[float] = []
        self.decoded_latencies: list[float] = []
        self.received = 0
        self.diagnostics: dict[str, str] = {}
        # Depth is taken serialised: its arrival time is not the Python decoding of 1.2 MB in this process
        # (a C++ consumer such as nav2 never pays that); the decoded time is recorded alongside.
        self.node.create_subscription(Image, "/bench/depth", self._on_depth, make_qos("reliable", 5), raw=True)
        # What a navigation stack takes besides depth: the node builds optional outputs only for subscribers.
        from sensor_msgs.msg import PointCloud2

        self.extra_received = {"uncertainty": 0, "points": 0}
        for topic, kind in (("uncertainty", Image), ("points", PointCloud2)):
            self.node.create_subscription(kind, f"/bench/{topic}", lambda _msg, t=topic: self._count(t),
                                          make_qos("reliable", 5))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, make_qos("reliable", 10))
        rng = np.random.default_rng(0)
        self.image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        self.info = CameraInfo(width=W, height=H, distortion_model="plumb_bob")
        self.info.k = [FX, 0.0, W / 2, 0.0, FY, H / 2, 0.0, 0.0, 1.0]
        self.info.p = [FX, 0.0, W / 2, 0.0, 0.0, FY, H / 2, 0.0, 0.0, 0.0, 1.0, 0.0]

    def _count(self, topic: str) -> None:
        self.extra_received[topic] += 1

    def _on_depth(self, serialized: bytes) -> None:
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image

        now = time.time_ns()
        self.received += 1
        stamp = cdr_header_stamp_ns(serialized)
        self.latencies.append((now - stamp) / 1e9)
        msg = deserialize_message(serialized, Image)
        self.decoded_latencies.append((time.time_ns() - stamp) / 1e9)
        if self.conversions.header_stamp_ns(msg.header) != stamp:
            raise RuntimeError("the serialised depth header was read wrongly")

    def _on_diagnostics(self, msg) -> None:
        if msg.status and "mono_depth_node" in msg.status[0].name:
            self.diagnostics = {kv.key: kv.value for kv in msg.status[0].values}

    def spin(self, seconds: float) -> None:
        import rclpy

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=max(0.0, min(0.005, deadline - time.monotonic())))

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.image_pub.get_subscription_count() and self.node.count_publishers("/bench/depth"):
                return True
            self.spin(0.1)
        return False

    def run(self, frames: int, rate_hz: float) -> None:
        from std_msgs.msg import Header

        period = 1.0 / rate_hz
        next_time = time.monotonic()
        for _ in range(frames):
            image = self.conversions.numpy_to_image(self.image, "rgb8")  # the driver's work, before the stamp
            header = Header(frame_id="bench_optical")
            stamp = time.time_ns()
            header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            self.info.header = image.header = header
            self.info_pub.publish(self.info)
            self.image_pub.publish(image)
            next_time += period
            self.spin(max(0.0, next_time - time.monotonic()))
        self.spin(2.0)

    def reset(self) -> None:
        self.latencies, self.decoded_latencies, self.received = [], [], 0
        self.extra_received = dict.fromkeys(self.extra_received, 0)

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        rclpy.try_shutdown()


def bench_node(model: Path, frames: int, rate_hz: float, camera: Camera, startup_s: float,
               sub_reliability: str = "best_effort") -> dict:
    node = Node({"model_path": model, "device": "cpu", "points_stride": 4, "diagnostics_period_s": 0.5,
                 "max_depth": 100.0, "sub_reliability": sub_reliability})
    try:
        if not camera.wait_ready(startup_s):
            raise RuntimeError("node did not start:\n" + Path(node.log.name).read_text())
        camera.reset()
        camera.run(min(20, frames), rate_hz)  # warm-up
        rss_start = node.rss_mb()
        camera.reset()
        start_diag_published = int(camera.diagnostics.get("frames published", 0))
        start_received = int(camera.diagnostics.get("frames received", 0))
        start_dropped = int(camera.diagnostics.get("frames dropped", 0))
        start = time.monotonic()
        camera.run(frames, rate_hz)
        elapsed = time.monotonic() - start
        rss_end = node.rss_mb()
        diag = camera.diagnostics
        latency = percentiles(camera.latencies)
        inference_p50 = float(diag.get("inference p50 (ms)", "nan"))
        return {
            "frames_sent": frames, "rate_hz": rate_hz, "depth_received": camera.received,
            "uncertainty_received": camera.extra_received["uncertainty"], "points_received": camera.extra_received["points"],
            "output_rate_hz": camera.received / elapsed,
            "e2e_latency_ms": latency, "e2e_decoded_latency_ms": percentiles(camera.decoded_latencies),
            "inference_p50_ms": inference_p50,
            "node_latency_p50_ms": float(diag.get("latency p50 (ms)", "nan")),
            "node_queue_wait_p50_ms": float(diag.get("queue wait p50 (ms)", "nan")),
            "overhead_p50_ms": latency.get("p50", float("nan")) - inference_p50,
            "frames_dropped": int(diag.get("frames dropped", 0)) - start_dropped,
            "frames_received_by_node": int(diag.get("frames received", 0)) - start_received,
            "frames_published_diag": int(diag.get("frames published", 0)) - start_diag_published,
            "rss_start_mb": rss_start, "rss_end_mb": rss_end, "rss_growth_mb": rss_end - rss_start,
        }
    finally:
        node.stop()


def bench_relay(frames: int, rate_hz: float, camera: Camera, startup_s: float) -> dict:
    """The transport floor: bench/ros_relay.py republishes each image unchanged (no model, no work)."""
    relay = Node({}, command=[sys.executable, str(REPO / "bench" / "ros_relay.py")])
    try:
        if not camera.wait_ready(startup_s):
            raise RuntimeError("relay did not start:\n" + Path(relay.log.name).read_text())
        camera.reset()
        camera.run(min(20, frames), rate_hz)
        camera.reset()
        camera.run(frames, rate_hz)
        return {"frames_sent": frames, "rate_hz": rate_hz, "received": camera.received,
                "e2e_latency_ms": percentiles(camera.latencies),
                "e2e_decoded_latency_ms": percentiles(camera.decoded_latencies)}
    finally:
        relay.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per node run")
    parser.add_argument("--fast-rate", type=float, default=5.0, help="camera rate (Hz) for the overhead run")
    parser.add_argument("--slow-model", default="student_mobilenetv3", help="registered model for the 30 Hz run")
    parser.add_argument("--slow-size", type=int, nargs=2, default=(320, 416), metavar=("H", "W"))
    parser.add_argument("--startup-s", type=float, default=300.0)
    parser.add_argument("--reliable", action="store_true",
                        help="camera publishes reliable and the node subscribes reliable (default best effort)")
    parser.add_argument("--skip-slow", action="store_true", help="only the overhead run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--dds-profile", default=str(REPO / "config" / "fastdds_large_data.xml"),
                        help="FASTRTPS_DEFAULT_PROFILES_FILE of the camera and the node, as the launch files set it; "
                             "'' = Fast DDS defaults (512 KB shared-memory segment: images go over fragmented UDP)")
    parser.add_argument("--rss-frames", type=int, default=0,
                        help="also run this many frames at --rss-rate Hz and report the node's memory growth")
    parser.add_argument("--rss-rate", type=float, default=30.0)
    parser.add_argument("--relay", action="store_true",
                        help="also time bench/ros_relay.py (image in, the same image out, no work): the floor "
                             "that rclpy and the DDS set for any node at this image size and rate")
    args = parser.parse_args(argv)
    if args.dds_profile:
        os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = args.dds_profile
    else:
        os.environ.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)

    results: dict[str, object] = {"load_average": os.getloadavg(), "cpus": os.cpu_count(),
                                  "dds_profile": args.dds_profile or "fast dds defaults"}
    results["cloud_build"] = bench_cloud(30)
    results["message_data"] = bench_message_data(30)
    print(json.dumps({k: results[k] for k in ("cloud_build", "message_data")}, indent=2), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        fast = write_model(Path(tmp) / "fast.safetensors", "student_lcnet", 96, 128, backbone="lcnet_050",
                           uncertainty=True)
        slow = None if args.skip_slow else write_model(Path(tmp) / "slow.safetensors", args.slow_model,
                                                       *args.slow_size, uncertainty=True)
        reliability = "reliable" if args.reliable else "best_effort"
        results["input_reliability"] = reliability
        camera = Camera(reliability)
        try:
            results["overhead_run"] = bench_node(fast, args.frames, args.fast_rate, camera, args.startup_s,
                                                 reliability)
            print(json.dumps(results["overhead_run"], indent=2), flush=True)
            if args.relay:
                results["relay_floor"] = bench_relay(args.frames, args.fast_rate, camera, args.startup_s)
                print(json.dumps(results["relay_floor"], indent=2), flush=True)
            if not args.skip_slow:
                results["slow_model_30hz"] = bench_node(slow, args.frames, 30.0, camera, args.startup_s, reliability)
                print(json.dumps(results["slow_model_30hz"], indent=2), flush=True)
            if args.rss_frames:
                results["memory_run"] = bench_node(fast, args.rss_frames, args.rss_rate, camera, args.startup_s,
                                                   reliability)
                print(json.dumps(results["memory_run"], indent=2), flush=True)
        finally:
            camera.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

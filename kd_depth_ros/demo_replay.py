"""Replay held-out frames of a training dataset as camera topics through a running `mono_depth_node`.

Used by the demo's ROS stage (and handy on its own): starts the node executable in its own process,
exactly as `ros2 run` / the launch file would (``--ros-args --params-file ... -p model_path:=...``),
publishes ``image`` (rgb8) and ``camera_info`` at a fixed rate from a best-effort publisher (like a
camera driver), and records what comes back on ``depth``, ``uncertainty`` and ``points``. Writes a
JSON summary: frames sent and received, output rate, end-to-end latency percentiles.

    python -m kd_depth_ros.demo_replay --model M.safetensors --data demo_output/synth/street --out ros.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def node_command(executable: str, module: str) -> list[str]:
    """The installed ROS executable (``lib/kd_depth_ros/<name>``, what ``ros2 run`` starts) or ``python -m``."""
    for candidate in (Path(sys.prefix) / "lib" / "kd_depth_ros" / executable, Path(sys.prefix) / "bin" / executable):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    found = shutil.which(executable)
    return [found] if found else [sys.executable, "-m", module]


def load_frames(data_root: Path, count: int) -> tuple[list[np.ndarray], np.ndarray, str]:
    """Up to ``count`` left images (RGB) of the test split, their K and the camera frame id."""
    from kd_depth_core.data.sequence import Sequence, read_split

    frames: list[np.ndarray] = []
    K, frame_id = None, "camera_optical_frame"
    for name in read_split(data_root, "test"):
        seq = Sequence(data_root / name)
        K, frame_id = seq.camera.K, seq.camera.frame_id
        for index in range(len(seq)):
            frames.append(seq.load_left(index))
            if len(frames) >= count:
                return frames, K, frame_id
    if not frames:
        raise RuntimeError(f"{data_root}: the test split has no frames to replay")
    return frames, K, frame_id


def replay(model: str, data_root: Path, frames_count: int, rate_hz: float, params_file: Path | None,
           device: str, settle_s: float = 60.0) -> dict:
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from kd_depth_ros.conversions import numpy_to_image
    from kd_depth_ros.stamps import set_stamp, stamp_ns

    frames, K, frame_id = load_frames(data_root, frames_count)
    height, width = frames[0].shape[:2]
    command = node_command("mono_depth_node", "kd_depth_ros.mono_depth_node") + ["--ros-args"]
    if params_file is not None:
        command += ["--params-file", str(params_file)]
    command += ["-p", f"model_path:={model}", "-p", f"device:={device}", "-r", "__node:=mono_depth_node"]
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"kd_depth_demo_node_{os.getpid()}.log"
    node_log = open(log_path, "w")  # noqa: SIM115 — closed in finally
    process = subprocess.Popen(command, stdout=node_log, stderr=subprocess.STDOUT, start_new_session=True)

    rclpy.init()
    received: dict[str, list[tuple[int, float]]] = {"depth": [], "uncertainty": [], "points": []}
    sent_at: dict[int, float] = {}
    try:
        node = Node("kd_depth_demo_replay")
        image_pub = node.create_publisher(Image, "image", qos_profile_sensor_data)
        info_pub = node.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)

        def recorder(name: str):
            def callback(msg) -> None:
                received[name].append((stamp_ns(msg), time.perf_counter()))
            return callback

        node.create_subscription(Image, "depth", recorder("depth"), 10)
        node.create_subscription(Image, "uncertainty", recorder("uncertainty"), 10)
        node.create_subscription(PointCloud2, "points", recorder("points"), 10)

        info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
        info.k = [float(v) for v in K.reshape(-1)]
        info.p = [float(K[0, 0]), 0.0, float(K[0, 2]), 0.0, 0.0, float(K[1, 1]), float(K[1, 2]), 0.0, 0.0, 0.0, 1.0, 0.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]

        def publish(index: int) -> None:
            stamp = 10**18 + index * 10**8
            msg = numpy_to_image(frames[index % len(frames)], "rgb8")
            msg.header.frame_id = frame_id
            set_stamp(msg.header, stamp)
            info.header = msg.header
            info_pub.publish(info)
            image_pub.publish(msg)
            sent_at[stamp] = time.perf_counter()

        # Wait for the node to come up and answer: keep sending the first frame until depth arrives.
        deadline = time.monotonic() + settle_s
        warm_index = -1
        while not received["depth"]:
            if process.poll() is not None:
                raise RuntimeError(f"mono_depth_node exited with code {process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no depth from mono_depth_node within {settle_s:.0f} s; see {log_path}")
            publish(warm_index)
            warm_index -= 1
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.05)
        for name in received:
            received[name].clear()
        sent_at.clear()

        period = 1.0 / rate_hz
        start = time.perf_counter()
        for index in range(len(frames)):
            publish(index)
            next_time = start + (index + 1) * period
            while time.perf_counter() < next_time:
                rclpy.spin_once(node, timeout_sec=max(0.0, min(0.01, next_time - time.perf_counter())))
        drain_end = time.perf_counter() + 3.0
        while time.perf_counter() < drain_end and len(received["depth"]) < len(frames):
            rclpy.spin_once(node, timeout_sec=0.05)
        elapsed = time.perf_counter() - start
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        node_log.close()

    latencies = [1000.0 * (t - sent_at[s]) for s, t in received["depth"] if s in sent_at]
    depth_times = [t for _, t in received["depth"]]
    rate = (len(depth_times) - 1) / (depth_times[-1] - depth_times[0]) if len(depth_times) > 1 else 0.0
    return {
        "sent": len(frames), "depth": len(received["depth"]), "uncertainty": len(received["uncertainty"]),
        "points": len(received["points"]), "input_rate_hz": rate_hz, "rate_hz": rate,
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else float("nan"),
        "dropped": len(frames) - len(received["depth"]), "seconds": elapsed,
        "image_size": [width, height], "node_log": str(log_path),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kd_depth_ros.demo_replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="released model (.safetensors) or export for the node")
    parser.add_argument("--data", required=True, type=Path, help="dataset root with splits/test.txt")
    parser.add_argument("--out", required=True, type=Path, help="JSON summary to write")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate in Hz")
    parser.add_argument("--params-file", type=Path, default=None, help="the node's parameter file")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    summary = replay(args.model, args.data, args.frames, args.rate, args.params_file, args.device)
    from kd_depth_core.utils.atomic import write_text_atomic

    write_text_atomic(args.out, json.dumps(summary, indent=2))
    print(f"sent {summary['sent']} frames at {args.rate:g} Hz; received depth {summary['depth']}, uncertainty "
          f"{summary['uncertainty']}, points {summary['points']}; latency p50 {summary['latency_p50_ms']:.1f} ms")
    return 0 if summary["depth"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Fault soak and supervision overhead of mono_depth_node (issue 19): does every good frame get an answer while
bad ones arrive, and what does the per-frame supervision cost?

    python bench/bench_node_faults.py [--good 200] [--bad 20] [--rate 30] [--size 480 640] [--json out.json]

- ``soak``: a real node process (real rclpy, Fast DDS on loopback, the large-data profile) whose model backend
  raises on chosen frames (test/ros_helpers.faulty_node_command), fed ``--good`` good frames and ``--bad`` bad
  ones of mixed kinds (backend error, undecodable encoding, short step, NaN K, zero fx, camera_info of another
  size, no matching camera_info), shuffled, at ``--rate`` Hz. Reported: good frames answered (depth with their
  stamp), bad frames answered (must be 0), frames dropped by the worker's bounded queue (frame_queue_size), the node's
  ``failed: <kind>`` counts, the /diagnostics levels seen while failing and the level at the end (after good
  frames only), whether the node is alive, its RSS before and after (MB).
- ``overhead``: in this process, the same node class and model: p50 of ``process(frame)`` alone (the plain path:
  decode, match camera_info, predict, publish) against ``_process_timed(frame)`` (what the inference thread runs:
  the one try/except, timing, status and failure counting around it), and the cost of a failing frame
  (counted, throttled log) and of the thread hand-off (``submit`` to done).

The model is test/ros_helpers.PixelModel as a 32x24 ONNX export (ONNX Runtime), so the times are the node's own.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "test"))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_large_data.xml"))

import ros_helpers  # noqa: E402  (test/: the node process, the faulty backend, the pixel model)

FRAME_ID = "bench_optical"
BAD_KINDS = ("backend_error", "bad_encoding", "bad_image", "nan_k", "zero_fx", "size_mismatch", "no_camera_info")
"""Injected faults; the node counts them as (in order) backend_error, bad_encoding, bad_image, bad_camera_info x3,
no_camera_info."""


def percentiles(values_s: list[float]) -> dict[str, float]:
    values = np.array(values_s) * 1e3
    if not values.size:
        return {"n": 0}
    return {"n": int(values.size), "p50_ms": round(float(np.percentile(values, 50)), 4),
            "p95_ms": round(float(np.percentile(values, 95)), 4)}


def level_of(status) -> int:
    """DiagnosticStatus.level as an int (rclpy gives a one-byte ``bytes``)."""
    level = status.level
    return int.from_bytes(level, "little") if isinstance(level, bytes) else int(level)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


class Frames:
    """Good and bad (image, camera_info) pairs at (height, width)."""

    def __init__(self, height: int, width: int):
        from kd_depth_ros import conversions

        self.conversions, self.height, self.width = conversions, height, width
        self.fx, self.fy = 0.8 * width, 0.8 * width
        rng = np.random.default_rng(0)
        self.image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        self.image[0, 0] = (1, 2, 3)  # never the fault colours
        self.fault = self.image.copy()
        self.fault[0, 0] = ros_helpers.BACKEND_FAULT_RGB

    def info(self, stamp: int, width: int | None = None, height: int | None = None, k: dict | None = None):
        info = ros_helpers.camera_info(stamp, FRAME_ID, width or self.width, height or self.height, self.fx, self.fy,
                                       self.width / 2, self.height / 2)
        values = list(info.k)
        for index, value in (k or {}).items():
            values[index] = value
        info.k = values
        return info

    def make(self, kind: str, stamp: int):
        """(image message, camera_info or None) for a good frame ('good') or one of :data:`BAD_KINDS`."""
        image = self.fault if kind == "backend_error" else self.image
        msg = self.conversions.numpy_to_image(image, "rgb8", ros_helpers.header(stamp, FRAME_ID))
        info = self.info(stamp)
        if kind == "bad_encoding":
            msg.encoding = "8UC5"
        elif kind == "bad_image":
            msg.step = self.width  # fewer bytes than a row of rgb8
        elif kind == "nan_k":
            info = self.info(stamp, k={0: float("nan"), 4: float("nan")})
        elif kind == "zero_fx":
            info = self.info(stamp, k={0: 0.0})
        elif kind == "size_mismatch":
            info = self.info(stamp, width=2 * self.width, height=2 * self.height)
        elif kind == "no_camera_info":
            info = None
        return msg, info


# --------------------------------------------------------------------------- soak through real DDS
def soak(model: Path, good: int, bad: int, rate_hz: float, height: int, width: int, startup_s: float) -> dict:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from sensor_msgs.msg import CameraInfo, Image

    params = {"model_path": str(model), "device": "cpu", "publish_points": False, "diagnostics_period_s": 0.2,
              "failure_window_s": 1.0, "failure_error_s": 2.0, "camera_info_tolerance_s": 0.001,
              "camera_info_max_age_s": 0.0}  # stamps must match: a missing camera_info is skipped
    node = ros_helpers.NodeProcess("mono_depth_node", params_file=REPO / "config" / "mono_depth.yaml", params=params,
                                   remaps={"image": "/soak/image", "camera_info": "/soak/camera_info",
                                           "__ns": "/soak"}, command=ros_helpers.faulty_node_command("mono_depth_node"))
    harness = ros_helpers.RosHarness("soak_camera")
    try:
        depth = harness.subscribe(Image, "/soak/depth")
        diagnostics: list = []
        harness.node.create_subscription(DiagnosticArray, "/diagnostics",
                                         lambda m: diagnostics.extend(s for s in m.status if s.name.startswith("/soak/")),
                                         10)
        image_pub = harness.publisher(Image, "/soak/image", "best_effort")
        info_pub = harness.publisher(CameraInfo, "/soak/camera_info", "best_effort")
        if not harness.wait(lambda: image_pub.get_subscription_count() and info_pub.get_subscription_count()
                            and harness.node.count_publishers("/soak/depth"), startup_s):
            raise RuntimeError(f"node did not start:\n{node.log()}")
        frames = Frames(height, width)
        stamp = 1_000_000_000

        # warm-up: good frames until one is answered (discovery of both directions settled)
        deadline = time.monotonic() + startup_s
        while not depth and time.monotonic() < deadline:
            msg, info = frames.make("good", stamp)
            info_pub.publish(info)
            image_pub.publish(msg)
            stamp += 100_000_000
            harness.spin(0.2)
        depth.clear()
        rss_start = rss_mb(node.process.pid)
        kinds = ["good"] * good + [BAD_KINDS[i % len(BAD_KINDS)] for i in range(bad)]
        random.Random(0).shuffle(kinds)
        sent: dict[int, str] = {}
        period, next_time, start = 1.0 / rate_hz, time.monotonic(), time.monotonic()
        for kind in kinds:
            stamp += 1_000_000_000  # 1 s apart in stamp time: no camera_info of one frame matches another
            msg, info = frames.make(kind, stamp)
            if info is not None:
                info_pub.publish(info)
            image_pub.publish(msg)
            sent[stamp] = kind
            next_time += period
            harness.spin(max(0.0, next_time - time.monotonic()))
        harness.spin(2.0)
        elapsed = time.monotonic() - start
        levels_failing = sorted({level_of(s) for s in diagnostics})
        # then good frames only until /diagnostics is OK again
        recovered_after = None
        ok_deadline = time.monotonic() + 30.0
        recovery_start = time.monotonic()
        while time.monotonic() < ok_deadline:
            stamp += 1_000_000_000
            msg, info = frames.make("good", stamp)
            info_pub.publish(info)
            image_pub.publish(msg)
            harness.spin(0.1)
            if diagnostics and level_of(diagnostics[-1]) == level_of(DiagnosticStatus(level=DiagnosticStatus.OK)):
                recovered_after = time.monotonic() - recovery_start
                break
        answered_stamps = {frames.conversions.header_stamp_ns(m.header) for m in depth}
        values = {kv.key: kv.value for kv in diagnostics[-1].values} if diagnostics else {}
        good_stamps = [s for s, k in sent.items() if k == "good"]
        return {
            "frames": {"good": good, "bad": bad, "rate_hz": rate_hz, "size": [width, height],
                       "seconds": round(elapsed, 2)},
            "good_answered": sum(s in answered_stamps for s in good_stamps),
            "good_answered_pct": round(100.0 * sum(s in answered_stamps for s in good_stamps) / max(1, good), 2),
            "bad_answered": sum(s in answered_stamps for s, k in sent.items() if k != "good"),
            "published_total": int(values.get("frames published", 0)),
            "dropped_by_queue": int(values.get("frames dropped", 0)),
            "failed_by_kind": {k.split(": ", 1)[1]: int(v) for k, v in values.items() if k.startswith("failed: ")},
            "injected_by_kind": {k: kinds.count(k) for k in BAD_KINDS},
            "diagnostics_levels_seen": [{0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}.get(lv, lv)
                                        for lv in levels_failing],
            "ok_again_after_s": None if recovered_after is None else round(recovered_after, 2),
            "worker_restarts": int(values.get("inference thread restarts", 0)),
            "node_alive": node.running(),
            "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_mb(node.process.pid), 1),
            "traceback_in_log": "Traceback" in node.log(),
        }
    finally:
        harness.close()
        node.stop()


# --------------------------------------------------------------------------- supervision overhead, in process
def overhead(model: Path, repeats: int, height: int, width: int) -> dict:
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn

    from kd_depth_ros.mono_depth_node import MonoDepthNode
    from kd_depth_ros.node_base import Frame

    rclpy.init()
    node = MonoDepthNode(cli_args=["--ros-args", "-r", "__ns:=/overhead", "-p", f"model_path:={model}",
                                   "-p", "device:=cpu", "-p", "publish_points:=false", "-p", "warmup:=true"])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        frames = Frames(height, width)
        stamp = 5_000_000_000
        msg, info = frames.make("good", stamp)
        node._on_camera_info(info)  # what the camera_info subscription does
        good = Frame((msg,), ())
        bad_msg, _ = frames.make("bad_encoding", stamp)
        bad = Frame((bad_msg,), ())

        def timed(run) -> list[float]:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            return times

        for _ in range(5):
            node.process(good)
        plain = timed(lambda: node.process(good))
        supervised = timed(lambda: node._process_timed(good))
        plain_again = timed(lambda: node.process(good))  # interleaved: load drift shows as a plain/plain gap
        failing = timed(lambda: node._process_timed(bad))

        def handoff() -> None:
            node.worker.submit(good)
            node.worker.wait_idle(10.0)

        via_thread = timed(handoff)
        p = {name: percentiles(v) for name, v in (("plain", plain + plain_again), ("supervised", supervised),
                                                   ("failing_frame", failing), ("via_worker_thread", via_thread))}
        return {**p, "supervision_overhead_p50_ms": round(p["supervised"]["p50_ms"] - p["plain"]["p50_ms"], 4),
                "plain_first_vs_second_half_p50_ms": [percentiles(plain)["p50_ms"], percentiles(plain_again)["p50_ms"]],
                "thread_handoff_p50_ms": round(p["via_worker_thread"]["p50_ms"] - p["supervised"]["p50_ms"], 4),
                "frames_failed_counted": dict(node.status.failures)}
    finally:
        node._release()
        node.destroy_node()
        rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--good", type=int, default=200, help="good frames in the soak")
    parser.add_argument("--bad", type=int, default=20, help="bad frames in the soak (mixed kinds)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=300, help="frames per in-process timing")
    parser.add_argument("--startup-s", type=float, default=180.0)
    parser.add_argument("--skip-soak", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    height, width = args.size
    results: dict[str, object] = {"load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        model = ros_helpers.write_pixel_model(Path(tmp) / "pixel.onnx")
        results["overhead"] = overhead(model, args.repeats, height, width)
        print(json.dumps({"overhead": results["overhead"]}, indent=2), flush=True)
        if not args.skip_soak:
            results["soak"] = soak(model, args.good, args.bad, args.rate, height, width, args.startup_s)
            print(json.dumps({"soak": results["soak"]}, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

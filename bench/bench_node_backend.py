"""The node's default CPU backend (issue 19, item 8): the bundled student in mono_depth_node with ``backend:=torch``
against the default (``auto``: ONNX Runtime, exported in memory at configure), interleaved in one run, and the
memory of a node serving an ``.onnx`` export (which never imports torch).

    taskset -c 1 python bench/bench_node_backend.py [--rounds 6] [--frames 16] [--rate 6] [--json out.json]

Three real node processes (real rclpy, Fast DDS on loopback with the large-data profile, the launch files'
config/mono_depth.yaml) run side by side, each on its own camera topics:

- ``torch``: ``models/default_student.safetensors`` with ``backend:=torch`` (eager PyTorch);
- ``auto``: the same file with the default ``backend:=auto``;
- ``onnx_file``: the same network exported with ``kd-depth export``'s code path to an ``.onnx`` file.

This process publishes 640x480 rgb8 frames and their camera_info at ``--rate`` Hz to one node at a time, in
rounds of ``--frames`` frames, the order rotating every round (ABC, BCA, CAB, ...), so load drift on a shared
machine hits every arm alike. Reported per node: inference p50/p95 (the node's own timing of the network call,
from /diagnostics: its last 200 frames), end-to-end latency p50 (stamp -> depth received here), frames answered,
the backend line it logged at configure, RSS (VmRSS) and peak RSS (VmHWM) after all frames, and whether torch is
loaded (the ``.onnx`` node is started through test/ros_helpers.module_probe_command and reports it at exit).
The headline figures: ``speedup_auto_vs_torch`` = torch inference p50 / auto inference p50 (goal >= 2) and the
``.onnx`` node's RSS (goal <= 300 MB). The load average is printed before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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

import ros_helpers  # noqa: E402  (test/: node processes, the harness, the module probe)

STUDENT = REPO / "models" / "default_student.safetensors"
W, H = 640, 480
FX = FY = 525.0


def status_of(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            values[key] = int(rest.split()[0]) / (1024.0 if key != "Threads" else 1)
    return values


def p50(values: list[float]) -> float:
    return round(float(np.percentile(values, 50)) * 1e3, 2) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds; each node gets --frames frames per round")
    parser.add_argument("--frames", type=int, default=16, help="frames per node per round (all rounds <= 200)")
    parser.add_argument("--rate", type=float, default=6.0, help="camera rate (Hz): slow enough for eager PyTorch")
    parser.add_argument("--startup-s", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image

    from kd_depth_core.inference.export import export_onnx
    from kd_depth_core.models.io import load_model
    from kd_depth_ros import conversions

    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"affinity {sorted(os.sched_getaffinity(0))}", "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "rounds": args.rounds, "frames_per_round": args.frames, "rate_hz": args.rate, "image": f"{W}x{H} rgb8"}
    print(json.dumps(results), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(*load_model(STUDENT), Path(tmp) / "student.onnx")
        arms = {
            "torch": ({"model_path": str(STUDENT), "backend": "torch"}, None),
            "auto": ({"model_path": str(STUDENT)}, None),
            "onnx_file": ({"model_path": str(onnx_path)}, ros_helpers.module_probe_command("mono_depth_node")),
        }
        nodes, harness = {}, ros_helpers.RosHarness("backend_bench_camera")
        pubs, depth_times, diagnostics = {}, {name: [] for name in arms}, {}
        try:
            for name, (params, command) in arms.items():
                nodes[name] = ros_helpers.NodeProcess(
                    "mono_depth_node", params_file=REPO / "config" / "mono_depth.yaml",
                    params={"device": "cpu", "diagnostics_period_s": 0.5, "points_stride": 4, **params},
                    remaps={"image": f"/{name}/image", "camera_info": f"/{name}/camera_info", "__ns": f"/{name}"},
                    command=command)

                def on_depth(serialized: bytes, arm: str = name) -> None:
                    stamp = stamp_of(serialized)
                    depth_times[arm].append((time.time_ns() - stamp) / 1e9)

                harness.node.create_subscription(Image, f"/{name}/depth", on_depth,
                                                 reliable_qos(), raw=True)
                pubs[name] = (harness.publisher(Image, f"/{name}/image", "best_effort", 5),
                              harness.publisher(CameraInfo, f"/{name}/camera_info", "best_effort", 5))

            def on_diagnostics(msg) -> None:
                for status in msg.status:
                    arm = status.name.strip("/").split("/", 1)[0]
                    if arm in arms:
                        diagnostics[arm] = {kv.key: kv.value for kv in status.values}

            harness.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
            ready = harness.wait(lambda: all(image.get_subscription_count() and info.get_subscription_count()
                                             and harness.node.count_publishers(f"/{n}/depth")
                                             for n, (image, info) in pubs.items()), args.startup_s)
            if not ready:
                raise RuntimeError("nodes did not start:\n" + "\n".join(n.log()[-3000:] for n in nodes.values()))
            rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
            info = CameraInfo(width=W, height=H, distortion_model="plumb_bob")
            info.k = [FX, 0.0, W / 2, 0.0, FY, H / 2, 0.0, 0.0, 1.0]
            info.p = [FX, 0.0, W / 2, 0.0, 0.0, FY, H / 2, 0.0, 0.0, 0.0, 1.0, 0.0]

            def feed(arm: str, frames: int) -> None:
                image_pub, info_pub = pubs[arm]
                period, next_time = 1.0 / args.rate, time.monotonic()
                for _ in range(frames):
                    image = conversions.numpy_to_image(rgb, "rgb8")
                    image.header = info.header = ros_helpers.header(time.time_ns(), "bench_optical")
                    info_pub.publish(info)
                    image_pub.publish(image)
                    next_time += period
                    harness.spin(max(0.0, next_time - time.monotonic()))

            for arm in arms:  # warm-up: discovery both ways, first-frame allocations
                deadline = time.monotonic() + 60.0
                while not depth_times[arm] and time.monotonic() < deadline:
                    feed(arm, 1)
                depth_times[arm].clear()
            names = list(arms)
            for round_index in range(args.rounds):
                order = names[round_index % 3:] + names[:round_index % 3]
                for arm in order:
                    feed(arm, args.frames)
                    harness.spin(1.0)
            harness.spin(2.0)
            for name, node in nodes.items():
                diag = diagnostics.get(name, {})
                log = node.log()
                results[name] = {
                    "inference_p50_ms": float(diag.get("inference p50 (ms)", "nan")),
                    "inference_p95_ms": float(diag.get("inference p95 (ms)", "nan")),
                    "e2e_latency_p50_ms": p50(depth_times[name]),
                    "frames_answered": len(depth_times[name]), "frames_sent": args.rounds * args.frames,
                    "frames_dropped": int(diag.get("frames dropped", 0)),
                    "backend_line": next((line.split("]: ", 1)[-1] for line in log.splitlines()
                                          if "backend 'auto'" in line), ""),
                    "model": diag.get("model", ""),
                    "rss_mb": round(status_of(node.process.pid)["VmRSS"], 1),
                    "peak_rss_mb": round(status_of(node.process.pid)["VmHWM"], 1),
                    "threads": int(status_of(node.process.pid)["Threads"]),
                }
        finally:
            harness.close()
            for node in nodes.values():
                node.stop()
        probe = nodes["onnx_file"].log() if "onnx_file" in nodes else ""
        loaded = next((line.split(ros_helpers.MODULES_AT_EXIT, 1)[1].strip() for line in probe.splitlines()
                       if ros_helpers.MODULES_AT_EXIT in line), None)
        if "onnx_file" in results:
            results["onnx_file"]["torch_loaded"] = None if loaded is None else "torch" in loaded.split(",")
    results["speedup_auto_vs_torch"] = round(results["torch"]["inference_p50_ms"]
                                             / results["auto"]["inference_p50_ms"], 2)
    results["speedup_onnx_file_vs_torch"] = round(results["torch"]["inference_p50_ms"]
                                                  / results["onnx_file"]["inference_p50_ms"], 2)
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def stamp_of(serialized: bytes) -> int:
    """The header stamp of a serialised message that starts with ``std_msgs/Header`` (CDR)."""
    order = "little" if serialized[1] & 1 else "big"
    sec = int.from_bytes(serialized[4:8], order, signed=True)
    return sec * 1_000_000_000 + int.from_bytes(serialized[8:12], order)


def reliable_qos():
    from kd_depth_ros.qos import make_qos

    return make_qos("reliable", 5)


if __name__ == "__main__":
    sys.exit(main())

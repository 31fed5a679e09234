"""Bag conversion throughput vs rosbags alone reading and decoding the same bag (goal: ratio >= 0.8).

Writes a 640x480 bag (mcap, a moving texture so every frame is a keyframe, camera_info per frame)
with rosbags' writer, then, in one run and alternating, times
  baseline:   AnyReader + deserialise + rosbags-image decode to RGB of every image message;
  conversion: ``convert_bag`` (matching, keyframes, rectification check, SequenceWriter; by default
              ``--image-format auto``: a jpeg/png camera's bytes stored as recorded, raw images as PNG).
Reports frames/s of each (best of ``--repeats``) and the ratio conversion / baseline.

    .venv/bin/python bench/bench_convert_bag.py [--frames 120] [--formats jpeg png raw] [--repeats 3]
        [--output-format auto|png|jpg]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))
sys.path.insert(0, str(ROOT))

import bag_fixtures as bf  # noqa: E402
from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.image import message_to_cvimage  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from kd_depth_ros.bag_converter import ConvertOptions, convert_bag  # noqa: E402

WIDTH, HEIGHT = 640, 480
T0, DT = 1_000_000_000, 33_333_333


def write_bench_bag(path: Path, frames: int, fmt: str) -> tuple[Path, str]:
    topic = "/cam/image_raw" if fmt == "raw" else "/cam/image_raw/compressed"
    K = bf.intrinsics(WIDTH, HEIGHT, 500.0)
    msgs = []
    for i, frame in enumerate(bf.textured_frames(frames, WIDTH, HEIGHT, shift_px=4)):
        stamp = T0 + i * DT
        msgs.append(bf.image(topic, frame, stamp) if fmt == "raw" else bf.compressed(topic, frame, stamp, fmt=fmt))
        msgs.append(bf.camera_info("/cam/camera_info", stamp, WIDTH, HEIGHT, K))
    return bf.write_bag(path, msgs, "mcap"), topic


def baseline(bag: Path, topic: str) -> int:
    """rosbags alone: read, deserialise and decode every image to RGB."""
    count = 0
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        for connection, _, raw in reader.messages(connections=connections):
            message_to_cvimage(reader.deserialize(raw, connection.msgtype), "rgb8")
            count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--formats", nargs="+", default=["jpeg", "png", "raw"], choices=["jpeg", "png", "raw"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-format", choices=["auto", "png", "jpg"], default="auto", help="sequence image format")
    args = parser.parse_args()
    results = []
    print(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "load_start": os.getloadavg()}), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_convert_bag_") as tmp:
        tmp = Path(tmp)
        for fmt in args.formats:
            bag, topic = write_bench_bag(tmp / f"bench_{fmt}", args.frames, fmt)
            base_s, conv_s = [], []
            for repeat in range(args.repeats):
                start = time.perf_counter()
                assert baseline(bag, topic) == args.frames
                base_s.append(time.perf_counter() - start)
                out = tmp / f"out_{fmt}_{repeat}"
                start = time.perf_counter()
                summary = convert_bag(bag, out, ConvertOptions(image_topic=topic, image_format=args.output_format))
                conv_s.append(time.perf_counter() - start)
                assert summary.frames_written == args.frames, summary.line()
                shutil.rmtree(out)
            base_fps, conv_fps = args.frames / min(base_s), args.frames / min(conv_s)
            result = {"input": fmt, "size": f"{WIDTH}x{HEIGHT}", "frames": args.frames, "output": args.output_format,
                      "baseline_fps": round(base_fps, 1), "convert_fps": round(conv_fps, 1),
                      "ratio": round(conv_fps / base_fps, 3), "goal": 0.8}
            results.append(result)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

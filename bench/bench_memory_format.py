"""Benchmark: a training step's forward + backward with NCHW weights (A) against channels-last (B,
`train.channels_last`, the default), interleaved in one process, for the networks the recipes train.

    python bench/bench_memory_format.py                   # 96x320, batch 4, 2 threads
    python bench/bench_memory_format.py --reps 8 --threads 1

Each repetition times A then B on the same random batch (the loss is the mean of the first output); the
first repetition is a warm-up, the median of the rest is printed with the ratio A / B and the load average.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kd_depth_core.models import create_model  # noqa: E402

NETWORKS = {  # name: (registry name, kwargs, stereo input)
    "ms_dpt_teacher (DPT-Hybrid, ViT-Tiny)": ("ms_dpt_teacher", {"backbone": "vit_tiny_patch16_224",
                                                                  "stem": "resnet18", "img_size": [96, 320]}, False),
    "student_mobilenetv4": ("student_mobilenetv4", {}, False),
    "resnet18_md2": ("resnet18_md2", {}, False),
    "stereo_teacher (resnet18)": ("stereo_teacher", {"backbone": "resnet18"}, True),
}


def first_tensor(output) -> torch.Tensor:
    """The model output dict's first disparity (or first tensor)."""
    while not torch.is_tensor(output):
        output = output["disp"] if isinstance(output, dict) and "disp" in output else (
            next(iter(output.values())) if isinstance(output, dict) else output[0])
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="repetitions of each variant (the first is a warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--size", default="96x320", help="HxW")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    left, right = torch.rand(args.batch, 3, height, width), torch.rand(args.batch, 3, height, width)
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, torch {torch.__version__}, "
          f"{args.threads} threads, batch {args.batch} at {height}x{width}, load average {os.getloadavg()[0]:.2f}")
    print("| network | NCHW (s) | channels-last (s) | ratio |\n|---|---:|---:|---:|")
    for label, (name, kwargs, stereo) in NETWORKS.items():
        nchw = create_model(name, **kwargs).train()
        nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
        times: dict[str, list[float]] = {"a": [], "b": []}
        for rep in range(args.reps):
            for key, model in (("a", nchw), ("b", nhwc)):
                start = time.perf_counter()
                first_tensor(model(left, right) if stereo else model(left)).mean().backward()
                if rep:
                    times[key].append(time.perf_counter() - start)
        a, b = statistics.median(times["a"]), statistics.median(times["b"])
        print(f"| {label} | {a:.3f} | {b:.3f} | {a / b:.2f}× |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

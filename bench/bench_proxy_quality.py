"""Benchmark: how good the proxy labels a teacher learns from are, on its own training frames.

For each frame (every `--stride`-th of `--split`, stereo, with ground truth): the SGBM proxy exactly as the
teachers' `proxy_sgbm` computes it (`classical.sgbm.sgbm_disparity`, left-right checked) and, with
`--stereo-model`, a trained stereo network's depth kept where its own uncertainty is at most a fraction
of its depth. Printed per source: the share of valid ground-truth pixels (0, 80] m it labels, and AbsRel
over those pixels (pooled). A label source better than the network it supervises is worth more steps;
a network far worse than its labels on these very frames is short of steps, not of labels.

    python bench/bench_proxy_quality.py --data demo_output/synth/street --stereo-model runs/stereo/model.safetensors
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kd_depth_core.classical.sgbm import SGBMSettings, sgbm_disparity  # noqa: E402
from kd_depth_core.data.dataset import SequenceDataset  # noqa: E402

MAX_DEPTH = 80.0


class Pooled:
    """Coverage (mean over frames) and AbsRel pooled over every labelled pixel of a label source."""

    def __init__(self) -> None:
        self.coverage: list[float] = []
        self.error_sum = 0.0
        self.pixels = 0

    def add(self, depth: np.ndarray, labelled: np.ndarray, gt: np.ndarray) -> None:
        valid = (gt > 1e-3) & (gt <= MAX_DEPTH)
        used = valid & labelled
        self.coverage.append(float(used.sum()) / max(int(valid.sum()), 1))
        self.error_sum += float((np.abs(depth[used] - gt[used]) / gt[used]).sum())
        self.pixels += int(used.sum())

    def row(self, name: str) -> str:
        return f"| {name} | {np.mean(self.coverage):.3f} | {self.error_sum / max(self.pixels, 1):.4f} |"


@torch.no_grad()
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="stereo sequence root with ground-truth depth")
    parser.add_argument("--split", default="train")
    parser.add_argument("--stride", type=int, default=30, help="every n-th frame of the split")
    parser.add_argument("--size", default="96x320", help="HEIGHTxWIDTH the teachers train at")
    parser.add_argument("--min-depth", type=float, default=3.0, help="SGBM's nearest depth (the teacher's min_depth)")
    parser.add_argument("--upsample", type=int, default=2, help="SGBM on the pair enlarged this many times")
    parser.add_argument("--stereo-model", type=Path, default=None, help="a released stereo network (optional)")
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.05, 0.1, 0.2],
                        help="keep the stereo network's pixels with sigma <= this x depth")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size: expected HEIGHTxWIDTH in pixels, e.g. 96x320, got {args.size!r}")
    print(f"date {datetime.now(UTC).isoformat(timespec='seconds')}  machine {platform.node()}, {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}")
    data = SequenceDataset(args.data, args.split, offsets=(), size=(height, width), stereo=True, load_depth=True,
                           stride=args.stride)
    settings = SGBMSettings(min_depth=args.min_depth, upsample=args.upsample)
    teacher = None
    if args.stereo_model is not None:
        from kd_depth_core.distill.adu_depth import StereoTeacher

        teacher = StereoTeacher(args.stereo_model)
    sgbm = Pooled()
    by_sigma = {s: Pooled() for s in args.sigma + [float("inf")]} if teacher is not None else {}
    start = time.perf_counter()
    for index in range(len(data)):
        sample = data[index]
        gt = sample["depth_gt"][0].numpy()
        fx, baseline = float(sample["K"][0, 0]), float(sample["baseline"])
        left, right = ((sample[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                       for k in ("image", "image_right"))
        disparity, _ = sgbm_disparity(left, right, settings, fx=fx, baseline=baseline)
        sgbm.add(fx * baseline / np.maximum(disparity, 1e-6), disparity > 0, gt)
        if teacher is not None:
            out = teacher.predict(sample["image"][None], sample["image_right"][None])
            depth, sigma = out["depth"][0, 0].numpy(), out["uncertainty"][0, 0].numpy()
            for threshold, pooled in by_sigma.items():
                pooled.add(depth, sigma <= threshold * depth, gt)
    print(f"{len(data)} frames of {args.data} ({args.split}, every {args.stride}th, {width}x{height}) in "
          f"{time.perf_counter() - start:.0f} s\n")
    print("| label source | share of valid pixels labelled | AbsRel on them |\n|---|---:|---:|")
    print(sgbm.row(f"OpenCV SGBM proxy (`upsample: {args.upsample}`, min depth {args.min_depth:g} m, "
                              "left-right check)"))
    for threshold, pooled in by_sigma.items():
        where = "every pixel" if threshold == float("inf") else f"sigma <= {threshold:g} x depth"
        print(pooled.row(f"stereo network {args.stereo_model.name}, {where}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

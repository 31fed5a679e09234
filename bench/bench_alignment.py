"""Benchmark: how metric a relative teacher becomes when aligned per image to OpenCV SGBM (`align_to_proxy`).

For each model given, on the held-out frames of a stereo sequence root: its depth scored as it is
(metric), median-scaled with the ground truth (what a relative model is usually scored with), and
aligned per image to the pair's SGBM proxy exactly as task 'distill_foundation' does with
`align_to_proxy` (`losses.ssi.ssi_alignment` of its inverse depth onto d_sgbm / (fx·B) over SGBM's
confident pixels, 20 % trimmed) — the labels a student then learns from. AbsRel per image, averaged;
ground truth in (1e-3, 80] m; predictions clipped to [1e-3, 80] m (`eval.metrics.score_image`).

    python bench/bench_alignment.py --data demo_output/synth/street --model runs/teacher_supervised/model.safetensors
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kd_depth_core import geometry  # noqa: E402
from kd_depth_core.classical.sgbm import SGBMSettings, sgbm_disparity  # noqa: E402
from kd_depth_core.data.dataset import SequenceDataset  # noqa: E402
from kd_depth_core.eval.metrics import score_image  # noqa: E402
from kd_depth_core.losses.ssi import ssi_alignment  # noqa: E402
from kd_depth_core.models.io import load_model  # noqa: E402

MAX_DEPTH = 80.0


def abs_rel(pred: np.ndarray, gt: np.ndarray, median_scaling: bool = False) -> float:
    """`kd-depth evaluate`'s per-image AbsRel (eval.metrics.score_image), gt in (1e-3, 80] m."""
    return score_image(gt, pred, max_depth=MAX_DEPTH, median_scaling=median_scaling).metrics["abs_rel"]


@torch.no_grad()
def score(path: Path, data: SequenceDataset, settings: SGBMSettings, trim: float, limit: int) -> dict[str, float]:
    model, meta = load_model(path)
    model.eval()
    rows: dict[str, list[float]] = {"metric": [], "median-scaled": [], "aligned to SGBM": [], "confident": []}
    for index in range(min(limit, len(data))):
        sample = data[index]
        gt = sample["depth_gt"][0].numpy()
        inverse = geometry.disp_to_depth(model(sample["image"][None])["disp"][0], meta.min_depth, meta.max_depth)[0]
        inverse = inverse[0, 0].numpy()
        left, right = ((sample[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                       for k in ("image", "image_right"))
        fx, baseline = float(sample["K"][0, 0]), float(sample["baseline"])
        disparity, _ = sgbm_disparity(left, right, settings, fx=fx, baseline=baseline)
        confident = disparity > 0
        rows["metric"].append(abs_rel(1.0 / inverse, gt))
        rows["median-scaled"].append(abs_rel(1.0 / inverse, gt, median_scaling=True))
        target = np.where(confident, disparity / (fx * baseline), 0.0).astype(np.float32)
        scale, shift, _ = ssi_alignment(torch.from_numpy(inverse)[None, None], torch.from_numpy(target)[None, None],
                                        torch.from_numpy(confident)[None, None], trim)
        aligned = np.maximum(float(scale) * inverse + float(shift), 1.0 / MAX_DEPTH)
        rows["aligned to SGBM"].append(abs_rel(1.0 / aligned, gt))
        rows["confident"].append(float(confident.mean()))
    return {key: float(np.mean(values)) for key, values in rows.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="sequence root with a test split (right images, depth)")
    parser.add_argument("--model", action="append", type=Path, required=True, help="released model(s) to score")
    parser.add_argument("--split", default="test")
    parser.add_argument("--stride", type=int, default=2, help="every n-th frame")
    parser.add_argument("--limit", type=int, default=120, help="the first n of those (bench_teachers.py's frames)")
    parser.add_argument("--min-depth", type=float, default=2.0, help="SGBM's nearest depth (number of disparities)")
    parser.add_argument("--upsample", type=int, default=2, help="SGBM on the pair enlarged this many times")
    parser.add_argument("--trim", type=float, default=0.2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"date {datetime.now(UTC).isoformat(timespec='seconds')}  machine {platform.node()}, {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}")
    settings = SGBMSettings(min_depth=args.min_depth, upsample=args.upsample)
    print("| model | frames | metric AbsRel | median-scaled AbsRel | aligned to SGBM AbsRel | SGBM confident |\n"
          "|---|---:|---:|---:|---:|---:|")
    for path in args.model:
        data = SequenceDataset(args.data, args.split, offsets=(), stereo=True, load_depth=True, stride=args.stride)
        result = score(path, data, settings, args.trim, args.limit)
        print(f"| {path} | {min(args.limit, len(data))} | {result['metric']:.4f} | {result['median-scaled']:.4f} | "
              f"{result['aligned to SGBM']:.4f} | {result['confident']:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

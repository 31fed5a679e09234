"""Benchmark: one photometric training step, the SSIM window means by `F.avg_pool2d` (A, the former
code) against shifted slices (B, `losses.photometric.mean3x3`), interleaved in one process.

    python bench/bench_train_step.py                    # MS-DPT ViT-Tiny 96x320, mono+stereo + SGBM proxy
    python bench/bench_train_step.py --reps 6 --threads 2

Generates a small synthetic street world in a temp folder, builds the teacher task of
`config/train/teacher_ms_dpt.yaml` at 96x320 (batch 4) and times forward + backward of the same batch
with A and B alternately; the first repetition of each is a warm-up. Prints the load average: the
ratio is the meaningful part on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kd_depth_core.config import load_train_config  # noqa: E402
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset  # noqa: E402
from kd_depth_core.losses import photometric  # noqa: E402
from kd_depth_core.train.tasks import create_task  # noqa: E402
from kd_depth_core.train.train_cli import build_datasets  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "config" / "train" / "teacher_ms_dpt.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4, help="repetitions of each variant (the first is a warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as tmp:
        root = Path(tmp) / "street"
        generate_dataset(root, SynthSpec(sequences=4, frames=8, width=320, height=96, seed=0), workers=1,
                         progress=False)
        cfg = load_train_config(CONFIG, overrides=[
            f"data.root={root}", "data.size=[96,320]", "data.batch_size=4", "data.num_workers=0", "data.val_split=",
            f"model.kwargs.backbone={args.backbone}", "model.kwargs.img_size=[96,320]", "task.kwargs.min_depth=3.0",
            "task.kwargs.pose_kwargs={backbone: lcnet_100}", f"train.out_dir={tmp}/run"])
        task = create_task("self_supervised", cfg).train()
        batch = next(iter(torch.utils.data.DataLoader(build_datasets(cfg, task)[0], batch_size=4)))
        variants = {"A avg_pool2d": lambda x: F.avg_pool2d(x, 3, 1), "B slices (mean3x3)": photometric.mean3x3}
        times: dict[str, list[float]] = {name: [] for name in variants}
        load_before = os.getloadavg()
        try:
            for _ in range(args.reps):
                for name, mean in variants.items():
                    photometric.mean3x3 = mean
                    start = time.perf_counter()
                    task(batch)["loss"].backward()
                    times[name].append(time.perf_counter() - start)
                    task.zero_grad(set_to_none=True)
        finally:
            photometric.mean3x3 = variants["B slices (mean3x3)"]
        load_after = os.getloadavg()
    print(f"date {datetime.now(UTC).isoformat(timespec='seconds')}  machine {platform.node()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.threads} thread(s); MS-DPT {args.backbone} 96x320, batch 4, "
          "mono+stereo + SGBM proxy")
    print(f"load average before / after (1 min): {load_before[0]:.2f} / {load_after[0]:.2f}")
    medians = {}
    for name, values in times.items():
        kept = sorted(values[1:]) or values
        medians[name] = kept[len(kept) // 2]
        print(f"{name:<22} median step {medians[name]:.3f} s  ({', '.join(f'{v:.2f}' for v in values)})")
    a, b = medians.values()
    print(f"speed-up B over A: {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

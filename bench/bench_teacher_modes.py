"""Benchmark: one MS-DPT teacher training step in mode mono+stereo (A) against stereo (B), interleaved.

    python bench/bench_teacher_modes.py --threads 2          # DPT-Hybrid (resnet18 + ViT-Tiny) 96x320, batch 4
    python bench/bench_teacher_modes.py --reps 8 --threads 2

Generates a small synthetic street world in a temp folder and builds the teacher task of
`config/train/teacher_ms_dpt.yaml` twice at 96x320 (batch 4, SGBM proxy on, the two-core CPU recipe's
overrides), differing only in `task.kwargs.mode`. Each repetition times, for A then B, the parts of a step as
the trainer runs them: loading the batch (`num_workers=0`: decode, augment, cached SGBM proxy), the depth
network's forward, the losses (photometric, with the pose network in mono+stereo; smoothness; proxy), backward
and the optimiser. Repetitions alternate between two batches; the first two of each mode fill the SGBM
cache and warm up, and are not counted.
Prints the load average: the ratio is the meaningful part on a shared machine.
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

from kd_depth_core.config import load_train_config  # noqa: E402
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset  # noqa: E402
from kd_depth_core.train.tasks import create_task  # noqa: E402
from kd_depth_core.train.train_cli import build_datasets  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "config" / "train" / "teacher_ms_dpt.yaml"
PARTS = ("data", "depth forward", "losses", "backward", "optimiser")
MODES = {"A mono+stereo": "mono_stereo", "B stereo": "stereo"}


def build(root: Path, tmp: str, mode: str, backbone: str):
    """(task, optimiser, dataset) of the teacher config in `mode`."""
    cfg = load_train_config(CONFIG, overrides=[
        f"data.root={root}", "data.size=[96,320]", "data.batch_size=4", "data.num_workers=0", "data.val_split=",
        f"model.kwargs.backbone={backbone}", "model.kwargs.img_size=[96,320]", "task.kwargs.min_depth=3.0",
        "task.kwargs.pose_kwargs={backbone: lcnet_100}", "task.kwargs.proxy_sgbm={upsample: 2}",
        f"task.kwargs.mode={mode}", f"train.out_dir={tmp}/{mode}"])
    torch.manual_seed(0)
    task = create_task("self_supervised", cfg).train()
    optimiser = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    return task, optimiser, build_datasets(cfg, task)[0]


def step(task, optimiser, dataset, indices: list[int]) -> dict[str, float]:
    """Seconds per part of one training step on the samples `indices`."""
    marks = [time.perf_counter()]
    batch = torch.utils.data.default_collate([dataset[i] for i in indices])
    marks.append(time.perf_counter())
    out = task.depth_outputs(batch)
    marks.append(time.perf_counter())
    loss = task.losses(batch, out)["loss"]
    marks.append(time.perf_counter())
    loss.backward()
    marks.append(time.perf_counter())
    optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    marks.append(time.perf_counter())
    return {part: b - a for part, a, b in zip(PARTS, marks, marks[1:])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=8, help="repetitions of each mode (the first two warm up)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    args = parser.parse_args()
    if args.reps < 3:
        parser.error(f"--reps: expected at least 3 (the first two warm up), got {args.reps}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_teacher_modes_") as tmp:
        root = Path(tmp) / "street"
        generate_dataset(root, SynthSpec(sequences=4, frames=8, width=320, height=96, seed=0), workers=1,
                         progress=False)
        variants = {name: build(root, tmp, mode, args.backbone) for name, mode in MODES.items()}
        times: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        load_before = os.getloadavg()
        for rep in range(args.reps):
            for name, (task, optimiser, dataset) in variants.items():
                indices = [(rep % 2 * 4 + k) % len(dataset) for k in range(4)]  # two batches, cached after rep 1
                times[name].append(step(task, optimiser, dataset, indices))
        load_after = os.getloadavg()
    print(f"date {datetime.now(UTC).isoformat(timespec='seconds')}  machine {platform.node()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.threads} thread(s); MS-DPT {args.backbone} + resnet18 stem, 96x320, "
          f"batch 4, SGBM proxy; {args.reps - 2} counted repetitions, interleaved A/B")
    print(f"load average before / after (1 min): {load_before[0]:.2f} / {load_after[0]:.2f}")
    print(f"| mode | {' | '.join(PARTS)} | step |\n|---|{'---:|' * (len(PARTS) + 1)}")
    totals = {}
    for name, reps in times.items():
        counted = reps[2:]
        medians = {part: sorted(r[part] for r in counted)[len(counted) // 2] for part in PARTS}
        totals[name] = sorted(sum(r.values()) for r in counted)[len(counted) // 2]
        print(f"| {name} | {' | '.join(f'{medians[p]:.3f} s' for p in PARTS)} | **{totals[name]:.3f} s** |")
    a, b = totals.values()
    print(f"steps per second, B over A: {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

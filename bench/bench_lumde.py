"""LUMDE benchmark (not a test; a SHORT run by default): LUMDE student vs its teacher vs the method-1 student.

    .venv/bin/python bench/bench_lumde.py [--teacher-steps 60] [--student-steps 60] [--out runs/bench_lumde]

On a synthetic indoor world (`kd-depth synth --preset indoor`, held-out test sequences):
1. a teacher (`ms_dpt_teacher`, mono+stereo self-supervised: metric) is trained (or `--teacher PATH` is used);
2. the same student network is distilled twice from it, with the same steps and data:
   method 1 (`kd_ms_dpt`, MC-dropout ensemble targets) and LUMDE (`lumde`, pixel-wise + pair-wise +
   adversarial, photometric loss through the student module's pose net);
3. all three are scored on the test split under the NYUv2 protocol (Eigen crop scaled to the image,
   10 m cap, per-image median scaling as for self-supervised models; the metric AbsRel without
   scaling is listed too), and their parameters, GFLOPs (batch 1, training size) and CPU latency
   (eager PyTorch, batch 1, median of `--iters`) are measured.
Writes bench.md / bench.json to --out. Short runs give under-trained networks: compare the methods
with each other at equal steps, not with published numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from kd_depth_core.config import TrainConfig, config_from_dict
from kd_depth_core.data.benchmarks.sequences import SequenceBenchmarkReader
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset
from kd_depth_core.distill import lumde as _lumde  # noqa: F401  (registers task 'lumde')
from kd_depth_core.eval.evaluate import evaluate
from kd_depth_core.eval.protocols import get_protocol
from kd_depth_core.inference.predictor import DepthPredictor
from kd_depth_core.models.flops import count_parameters, model_flops
from kd_depth_core.models.io import load_model
from kd_depth_core.train.tasks import create_task
from kd_depth_core.train.train_cli import build_datasets
from kd_depth_core.train.trainer import Trainer
from kd_depth_core.utils.atomic import write_text_atomic


def train(cfg_data: dict[str, Any], name: str) -> tuple[Path, float]:
    """Train one config (no validation, no checkpoints but the last); (released model path, seconds)."""
    cfg: TrainConfig = config_from_dict(TrainConfig, cfg_data, f"bench_lumde:{name}")
    torch.manual_seed(cfg.train.seed)
    task = create_task(cfg.task.name, cfg)
    train_set, _ = build_datasets(cfg, task)
    start = time.perf_counter()
    result = Trainer(cfg, task, train_set).fit()
    seconds = time.perf_counter() - start
    last = result.history[-1] if result.history else {}
    print(f"[{name}] {result.step} steps in {seconds:.0f} s; last losses: "
          + ", ".join(f"{k}={v:.3g}" for k, v in last.items() if k.endswith(("loss", "distill", "pairwise",
                                                                               "photometric", "adversarial"))))
    return Path(result.model_path), seconds


def common(args: argparse.Namespace, root: Path, steps: int, out_dir: Path, stereo: bool) -> dict[str, Any]:
    return {
        "data": {"root": str(root), "size": list(args.size), "offsets": [-1, 1], "stereo": stereo,
                 "batch_size": args.batch, "num_workers": 0, "augment": True, "val_split": ""},
        "optim": {"name": "adamw", "lr": args.lr, "scheduler": "none"},
        "train": {"max_steps": steps, "log_every": max(steps // 5, 1), "val_every": 0, "image_every": 0,
                  "ckpt_every": 0, "keep_checkpoints": 1, "out_dir": str(out_dir), "progress": False,
                  "seed": args.seed, "device": "cpu"},
    }


@torch.inference_mode()
def cpu_latency_ms(model: torch.nn.Module, size: tuple[int, int], iters: int) -> float:
    """Median wall time (ms) of an eager batch-1 forward on the CPU."""
    model = model.eval().cpu()
    x = torch.rand(1, 3, *size)
    for _ in range(3):
        model(x)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        model(x)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def score(label: str, path: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    samples = SequenceBenchmarkReader(root, "test")
    predictor = DepthPredictor(path, device="cpu", scale_mode="none")
    row: dict[str, Any] = {"model": label}
    for key, protocol in (("", get_protocol("nyu")), ("metric_", get_protocol("nyu", median_scaling=False))):
        result = evaluate(lambda image: predictor.predict(image), samples, protocol, label=label, progress=False)
        row.update({f"{key}{k}": result.mean[k] for k in ("a1", "abs_rel", "rmse")})
    row["test_images"] = len(samples)
    model, meta = load_model(path)
    flops, _ = model_flops(model, *args.size)
    row.update(params_m=count_parameters(model) / 1e6, gflops=flops / 1e9,
               cpu_ms=cpu_latency_ms(model, tuple(args.size), args.iters), name=meta.model_name)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_lumde"))
    parser.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    parser.add_argument("--sequences", type=int, default=8, help="indoor sequences (~15 %% held out as test)")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--teacher", type=Path, default=None, help="use this released teacher instead of training one")
    parser.add_argument("--teacher-backbone", default="vit_small_patch16_224")
    parser.add_argument("--teacher-patch", type=int, default=0,
                        help="override the ViT's patch size (e.g. 8: a 16x12 token grid at 128x96); 0 = the backbone's")
    parser.add_argument("--student", default="student_mobilenetv3")
    parser.add_argument("--teacher-steps", type=int, default=60)
    parser.add_argument("--student-steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--iters", type=int, default=20, help="latency iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for training and latency (default 1: on a shared CPU more threads "
                             "spin-wait)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    height, width = args.size

    root = args.out / "indoor"
    if not root.exists():
        start = time.perf_counter()
        generate_dataset(root, SynthSpec(preset="indoor", sequences=args.sequences, frames=args.frames, width=width,
                                         height=height, seed=args.seed), workers=1, progress=False)
        print(f"[data] {args.sequences} indoor sequences x {args.frames} frames in {time.perf_counter() - start:.0f} s")

    seconds: dict[str, float] = {}
    teacher_path = args.teacher
    if teacher_path is None:
        cfg = common(args, root, args.teacher_steps, args.out / "teacher", stereo=True)
        cfg["model"] = {"name": "ms_dpt_teacher", "kwargs": {"backbone": args.teacher_backbone,
                                                             "img_size": [height, width], "dropout": 0.1}}
        if args.teacher_patch:
            cfg["model"]["kwargs"]["patch_size"] = args.teacher_patch
        # min_depth 0.5 m: an untrained stereo net then starts at ~9 px disparity at 128 px width, not 45
        cfg["task"] = {"name": "self_supervised", "kwargs": {"mode": "mono_stereo", "min_depth": 0.5,
                                                             "max_depth": 10.0}}
        teacher_path, seconds["teacher"] = train(cfg, "teacher")

    distill = {"teacher_path": str(teacher_path), "distill_loss": "silog", "photometric_weight": 1.0}
    cfg = common(args, root, args.student_steps, args.out / "kd_ms_dpt", stereo=False)
    cfg["model"] = {"name": args.student, "kwargs": {}}
    cfg["task"] = {"name": "kd_ms_dpt", "kwargs": {**distill, "num_samples": 4,
                                                   "cache_dir": str(args.out / "cache_kd_ms_dpt")}}
    kd_path, seconds["kd_ms_dpt"] = train(cfg, "kd_ms_dpt")

    ramp = max(args.student_steps // 5, 1)
    cfg = common(args, root, args.student_steps, args.out / "lumde", stereo=False)
    cfg["model"] = {"name": args.student, "kwargs": {}}
    cfg["task"] = {"name": "lumde", "kwargs": {
        **distill, "num_samples": 1, "confidence": "none", "cache_dir": str(args.out / "cache_lumde"),
        "pairwise_weight": 1.0, "pairwise_grid": 8, "pairwise_patch": 4, "adversarial_weight": 0.05,
        "adversarial_start_step": ramp, "adversarial_warmup_steps": ramp,
        "discriminator_kwargs": {"input_size": [48, 64], "patch_size": 8, "embed_dim": 64, "depth": 2}}}
    lumde_path, seconds["lumde"] = train(cfg, "lumde")

    rows = [score("teacher (ms_dpt)", teacher_path, root, args), score("method 1 student (kd_ms_dpt)", kd_path, root, args),
            score("LUMDE student (lumde)", lumde_path, root, args)]
    teacher, lumde_row = rows[0], rows[2]
    lines = [f"NYUv2 protocol on {rows[0]['test_images']} held-out synthetic indoor frames, {width}x{height}; "
             f"teacher {args.teacher_steps if args.teacher is None else 'given'} steps, students "
             f"{args.student_steps} steps each (batch {args.batch}); CPU latency: eager, batch 1, "
             f"{torch.get_num_threads()} threads",
             "",
             "| model | δ1 | AbsRel | RMSE | AbsRel (metric) | params (M) | GFLOPs | CPU ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} ({r['name']}) | {r['a1']:.3f} | {r['abs_rel']:.3f} | {r['rmse']:.3f} | "
                     f"{r['metric_abs_rel']:.3f} | {r['params_m']:.2f} | {r['gflops']:.3f} | {r['cpu_ms']:.1f} |")
    lines += ["", f"LUMDE student vs teacher: δ1 {100 * (lumde_row['a1'] - teacher['a1']):+.1f} points, "
              f"compute {100 * lumde_row['gflops'] / teacher['gflops']:.1f} %, size "
              f"{100 * lumde_row['params_m'] / teacher['params_m']:.1f} %, "
              f"{teacher['cpu_ms'] / lumde_row['cpu_ms']:.1f}x faster on the CPU "
              "(paper: δ1 -2.6 %, 4.8 % compute, 22.8 % size, 5.3x faster)",
              "training wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())]
    report = "\n".join(lines) + "\n"
    print(report)
    write_text_atomic(args.out / "bench.md", report)
    write_text_atomic(args.out / "bench.json", json.dumps({"rows": rows, "train_seconds": seconds,
                                                           "args": {k: str(v) for k, v in vars(args).items()}},
                                                          indent=2))


if __name__ == "__main__":
    main()

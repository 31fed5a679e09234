"""Benchmark of method 1 (task 'kd_ms_dpt') on the synthetic street world.

Trains, with the real training code path (`train.train_cli.train_from_config`), on the same data:
1. an MS-DPT teacher, self-supervised mono+stereo (metric) — released as a model file;
2. the KD student: `kd_ms_dpt` (MC-dropout ensemble of the teacher, cached) + the same photometric loss;
3. the same student with the photometric loss only (`self_supervised`, same steps);
4. the Monodepth2 baseline `resnet18_md2` (`self_supervised`, same steps);
then scores all on the held-out test sequences (AbsRel, RMSE, delta1 with metric depth and with
per-image median scaling; `eval.metrics`), and measures params, GFLOPs and CPU latency at
640x192 (batch 1), and one epoch of distillation with the teacher online vs from the warm
pseudo-label cache (goal: cached >= 3x faster).

    python bench/bench_distill_ms_dpt.py                        # SHORT (2 shared CPU cores: 15-40 min with load)
    python bench/bench_distill_ms_dpt.py --size 640x192 --teacher-backbone vit_small_patch16_224 \
        --teacher-steps 20000 --student-steps 20000 --sequences 20 --frames 100 --batch-size 8 --lr 1e-4 --threads 8

Accuracy after a few hundred CPU steps says little about the method; it checks that the pipeline
runs and which way the numbers go. Timings on a shared machine depend on the load (printed).
Results: <work>/results.json and a table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kd_depth_core import geometry  # noqa: E402
from kd_depth_core.config import TrainConfig, config_from_dict  # noqa: E402
from kd_depth_core.data.dataset import SequenceDataset  # noqa: E402
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset  # noqa: E402
from kd_depth_core.distill import TeacherWrapper  # noqa: E402
from kd_depth_core.eval.metrics import DepthMetricsAccumulator  # noqa: E402
from kd_depth_core.models import DEFAULT_STUDENT, count_parameters, create_model  # noqa: E402
from kd_depth_core.models.flops import model_flops  # noqa: E402
from kd_depth_core.models.io import ModelMetadata, load_model, save_model  # noqa: E402
from kd_depth_core.train.tasks import create_task  # noqa: E402
from kd_depth_core.train.train_cli import train_from_config  # noqa: E402

LATENCY_SIZE = (192, 640)
EVAL_CAP = 80.0  # metres, KITTI-style cap


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return height, width


def base_config(args: argparse.Namespace, root: Path, out_dir: Path, steps: int) -> dict[str, Any]:
    height, width = args.size
    return {
        "data": {"root": str(root), "size": [height, width], "offsets": [-1, 1], "stereo": True, "augment": True,
                 "batch_size": args.batch_size, "num_workers": 0, "val_split": ""},
        "optim": {"name": "adamw", "lr": args.lr, "weight_decay": 1e-2, "scheduler": "cosine", "warmup_steps": 20},
        "train": {"max_steps": steps, "log_every": max(steps // 10, 1), "image_every": 0, "val_every": 0,
                  "ckpt_every": 0, "out_dir": str(out_dir), "progress": False, "seed": args.seed,
                  "device": "cpu"},
    }


def teacher_model_cfg(args: argparse.Namespace) -> dict[str, Any]:
    height, width = args.size
    return {"name": "ms_dpt_teacher", "kwargs": {"backbone": args.teacher_backbone, "img_size": [height, width],
                                                 "features": 64, "dropout": 0.1}}


def train(name: str, data: dict[str, Any]) -> tuple[Path, float, dict[str, float]]:
    """Train one config (skipped when its model file exists): (model path, seconds, last logged losses)."""
    out = Path(data["train"]["out_dir"])
    model_path = out / "model.safetensors"
    if model_path.is_file():
        print(f"[{name}] reusing {model_path}", flush=True)
        return model_path, float("nan"), {}
    cfg = config_from_dict(TrainConfig, data, f"bench:{name}")
    print(f"[{name}] training {cfg.train.max_steps} steps ...", flush=True)
    t0 = time.perf_counter()
    result = train_from_config(cfg)
    seconds = time.perf_counter() - t0
    last = result.history[-1] if result.history else {}
    print(f"[{name}] {seconds:.0f} s, last losses: "
          + ", ".join(f"{k}={v:.4f}" for k, v in last.items() if isinstance(v, float) and "lr" not in k), flush=True)
    return result.model_path, seconds, last


@torch.no_grad()
def score(predict, test: SequenceDataset, batch_size: int) -> dict[str, dict[str, float]]:
    """Metric and median-scaled AbsRel / RMSE / delta1 on the test split."""
    results = {}
    for mode, median in (("metric", False), ("median", True)):
        accumulator = DepthMetricsAccumulator()
        for batch in torch.utils.data.DataLoader(test, batch_size=batch_size):
            depth = predict(batch)
            accumulator.update(batch["depth_gt"], depth, min_depth=1e-3, max_depth=EVAL_CAP, median_scaling=median,
                               names=batch["frame_key"], skip_empty=True)
        mean = accumulator.mean()
        results[mode] = {"abs_rel": mean["abs_rel"], "rmse": mean["rmse"], "a1": mean["a1"],
                         "images": mean["num_images"]}
    return results


def student_predictor(path: Path):
    model, meta = load_model(path)

    def predict(batch: dict[str, Any]) -> torch.Tensor:
        return geometry.disp_to_depth(model(batch["image"])["disp"][0], meta.min_depth, meta.max_depth)[1]

    return predict, model


@torch.no_grad()
def latency_ms(model: torch.nn.Module, repeats: int) -> float:
    """Median wall time (ms) of one eval forward at 640x192, batch 1, after 2 warm-up runs."""
    model.eval()
    image = torch.rand(1, 3, *LATENCY_SIZE)
    for _ in range(2):
        model(image)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(image)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def cost(model: torch.nn.Module, repeats: int) -> dict[str, float]:
    flops, size = model_flops(model, *LATENCY_SIZE)
    return {"params_m": count_parameters(model) / 1e6, "gflops": flops / 1e9, "flops_size": list(size),
            "latency_ms": latency_ms(model, repeats)}


def default_teacher_file(args: argparse.Namespace, work: Path) -> Path:
    """The recipe's teacher architecture (ms_dpt_teacher defaults, ViT-S/16) at the timing size, untrained:
    the teacher's cost, not its accuracy, sets the online/cached ratio."""
    height, width = args.timing_size
    path = work / f"timing_teacher_default_{width}x{height}.safetensors"
    if not path.is_file():
        model = create_model("ms_dpt_teacher", img_size=(height, width))
        save_model(path, model, ModelMetadata.from_model(model, input_height=height, input_width=width, min_depth=0.1,
                                                         max_depth=100.0, scale_kind="metric", focal_length_px=None))
    return path


def epoch_time(args: argparse.Namespace, root: Path, teacher_path: Path, work: Path) -> dict[str, dict[str, float]]:
    """Seconds per training batch of kd_ms_dpt at the timing size with the teacher online vs from the warm cache,
    for the full recipe (with the photometric term) and for distillation alone (photometric_weight 0).

    A teacher of another input size runs at its own size (TeacherWrapper resizes)."""
    size, batch_size = args.timing_size, args.timing_batch_size
    dataset = SequenceDataset(root, "train", offsets=(-1, 1), size=size, stereo=True)
    subset = torch.utils.data.Subset(dataset, range(min(len(dataset), args.epoch_batches * batch_size)))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, drop_last=True)
    results: dict[str, dict[str, float]] = {}
    for recipe, photometric_weight in (("with_photometric", 1.0), ("distillation_only", 0.0)):
        timings: dict[str, float] = {}
        for label, cache_dir in (("online", ""), ("cached", str(work / f"epoch_cache_{size[1]}x{size[0]}"))):
            data = base_config(args, root, work / f"epoch_{label}", 1)
            data["data"].update(size=list(size), batch_size=batch_size)
            data["model"] = {"name": DEFAULT_STUDENT, "kwargs": {"uncertainty": True}}
            data["task"] = {"name": "kd_ms_dpt", "kwargs": {
                "teacher_path": str(teacher_path), "num_samples": args.num_samples, "cache_dir": cache_dir,
                "mode": "mono_stereo", "photometric_weight": photometric_weight}}
            cfg = config_from_dict(TrainConfig, data, f"bench:epoch_{label}")
            torch.manual_seed(0)
            task = create_task("kd_ms_dpt", cfg)
            optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
            passes = 2 if cache_dir else 1  # the cached run fills the cache (or finds it warm), then is timed
            for epoch in range(passes):
                t0 = time.perf_counter()
                for batch in loader:
                    optimizer.zero_grad()
                    task(batch)["loss"].backward()
                    optimizer.step()
                seconds = time.perf_counter() - t0
                if cache_dir and epoch == 0:
                    timings["first_pass_s_per_batch"] = seconds / len(loader)
            timings[f"{label}_s_per_batch"] = seconds / len(loader)
            if task.cache is not None:
                timings["cache_hits"], timings["cache_misses"] = task.cache.stats.hits, task.cache.stats.misses
        timings["speedup"] = timings["online_s_per_batch"] / timings["cached_s_per_batch"]
        results[recipe] = timings
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench_distill_ms_dpt"), help="work folder (reused)")
    parser.add_argument("--sequences", type=int, default=5)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=parse_size, default=(64, 192), metavar="WxH", help="training size (192x64)")
    parser.add_argument("--teacher-backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--teacher-steps", type=int, default=80)
    parser.add_argument("--student-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--min-depth", type=float, default=0.1,
                        help="min_depth (m) of the self-supervised runs; the KD student takes the teacher's")
    parser.add_argument("--num-samples", type=int, default=8, help="MC-dropout passes of the teacher")
    parser.add_argument("--epoch-batches", type=int, default=3, help="batches in the online/cached epoch timing")
    parser.add_argument("--timing-size", type=parse_size, default=LATENCY_SIZE, metavar="WxH",
                        help="image size of the online/cached epoch timing (640x192; data is resized)")
    parser.add_argument("--timing-batch-size", type=int, default=2)
    parser.add_argument("--timing-teacher", choices=("default", "trained"), default="default",
                        help="teacher of the epoch timing: the recipe's ViT-S/16 MS-DPT (default) or the bench's")
    parser.add_argument("--latency-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                          "threads": args.threads, "load_start": os.getloadavg()},
                              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    t_start = time.perf_counter()

    root = work / "street"
    if not root.is_dir():
        height, width = args.size
        generate_dataset(root, SynthSpec(preset="street", sequences=args.sequences, frames=args.frames, width=width,
                                         height=height, seed=args.seed), workers=2, progress=False)

    # ---- training
    runs: dict[str, dict[str, Any]] = {}
    teacher_data = base_config(args, root, work / "teacher", args.teacher_steps)
    teacher_data["model"] = teacher_model_cfg(args)
    teacher_data["task"] = {"name": "self_supervised", "kwargs": {"mode": "mono_stereo", "min_depth": args.min_depth}}
    teacher_path, seconds, last = train("teacher", teacher_data)
    runs["teacher"] = {"train_s": seconds, "last": last}

    kd_data = base_config(args, root, work / "kd_student", args.student_steps)
    kd_data["model"] = {"name": DEFAULT_STUDENT, "kwargs": {"uncertainty": True}}
    kd_data["task"] = {"name": "kd_ms_dpt", "kwargs": {
        "teacher_path": str(teacher_path), "num_samples": args.num_samples, "cache_dir": str(work / "cache"),
        "mode": "mono_stereo"}}
    kd_path, seconds, last = train("kd_student", kd_data)
    runs["kd_student"] = {"train_s": seconds, "last": last}

    ss_data = base_config(args, root, work / "ss_student", args.student_steps)
    ss_data["model"] = {"name": DEFAULT_STUDENT, "kwargs": {"uncertainty": False}}
    ss_data["task"] = {"name": "self_supervised", "kwargs": {"mode": "mono_stereo", "min_depth": args.min_depth}}
    ss_path, seconds, last = train("ss_student", ss_data)
    runs["ss_student"] = {"train_s": seconds, "last": last}

    md2_data = base_config(args, root, work / "resnet18_md2", args.student_steps)
    md2_data["model"] = {"name": "resnet18_md2", "kwargs": {}}
    md2_data["task"] = {"name": "self_supervised", "kwargs": {"mode": "mono_stereo", "min_depth": args.min_depth}}
    md2_path, seconds, last = train("resnet18_md2", md2_data)
    runs["resnet18_md2"] = {"train_s": seconds, "last": last}
    report["training"] = runs

    # ---- accuracy on the held-out test sequences
    test = SequenceDataset(root, "test", offsets=(), size=args.size, load_depth=True)
    teacher = TeacherWrapper(teacher_path, num_samples=args.num_samples)
    single = TeacherWrapper(teacher_path, num_samples=1)
    rows: dict[str, dict[str, Any]] = {
        f"teacher (MC mean of {args.num_samples})": {
            "scores": score(lambda b: teacher.predict(b["image"], b["K"])["depth"], test, args.batch_size),
            "model": teacher.model},
        "teacher (one eval pass)": {
            "scores": score(lambda b: single.predict(b["image"], b["K"])["depth"], test, args.batch_size),
            "model": None}}
    for name, path in (("KD student (kd_ms_dpt)", kd_path), ("student, self-supervised only", ss_path),
                       ("resnet18_md2, self-supervised", md2_path)):
        predict, model = student_predictor(path)
        rows[name] = {"scores": score(predict, test, args.batch_size), "model": model}

    # ---- cost at 640x192
    for row in rows.values():
        if row["model"] is not None:
            row["cost"] = cost(row.pop("model"), args.latency_repeats)
        else:
            row.pop("model")
    rows["ms_dpt_teacher default (vit_small), architecture only"] = {
        "cost": cost(create_model("ms_dpt_teacher"), args.latency_repeats)}
    report["models"] = rows

    # ---- epoch time, teacher online vs cached
    timing_teacher = teacher_path if args.timing_teacher == "trained" else default_teacher_file(args, work)
    report["epoch_time"] = {"teacher": args.timing_teacher, **epoch_time(args, root, timing_teacher, work)}
    report["machine"]["load_end"] = os.getloadavg()
    report["total_s"] = time.perf_counter() - t_start
    (work / "results.json").write_text(json.dumps(report, indent=1))

    # ---- table
    print(f"\ntest split: {len(test)} frames at {args.size[1]}x{args.size[0]}; cost at "
          f"{LATENCY_SIZE[1]}x{LATENCY_SIZE[0]}, batch 1, {args.threads} CPU thread(s); load "
          f"{report['machine']['load_start'][0]:.1f} -> {report['machine']['load_end'][0]:.1f}")
    print("| model | AbsRel | RMSE | δ1 | AbsRel (median-scaled) | δ1 (median-scaled) | params (M) | GFLOPs | "
          "CPU latency (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        s, c = row.get("scores"), row.get("cost")
        metric = f"{s['metric']['abs_rel']:.3f} | {s['metric']['rmse']:.2f} | {s['metric']['a1']:.3f} | " \
                 f"{s['median']['abs_rel']:.3f} | {s['median']['a1']:.3f}" if s else "– | – | – | – | –"
        costs = f"{c['params_m']:.2f} | {c['gflops']:.2f} | {c['latency_ms']:.0f}" if c else "– | – | –"
        print(f"| {name} | {metric} | {costs} |")
    e = report["epoch_time"]
    print(f"\nkd_ms_dpt epoch at {args.timing_size[1]}x{args.timing_size[0]} ({args.epoch_batches} batches of "
          f"{args.timing_batch_size}, {e['teacher']} teacher, {args.num_samples} MC samples), goal cached >= 3x faster:")
    for recipe in ("with_photometric", "distillation_only"):
        t = e[recipe]
        print(f"  {recipe}: online {t['online_s_per_batch']:.2f} s/batch, cached {t['cached_s_per_batch']:.2f} "
              f"s/batch -> {t['speedup']:.1f}x")
    print(f"results: {work / 'results.json'} ({report['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

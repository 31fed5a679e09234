"""Benchmark: X-Distill student vs self-supervised-only student (same network, steps, data and seed).

On a generated synthetic street dataset: trains the segmentation teacher on the training split's
labels (task 'segmentation'), then two students — 'self_supervised' and 'xdistill' (the same
photometric loss + lambda x cross-task CE) — and scores both on the held-out test sequences
(scenes never seen in training): AbsRel overall and AbsRel within `--radius` px of object
boundaries. Boundary pixels: a change of depth group (the teacher grouping applied to the
ground-truth classes, so road paint is not a boundary) or a depth jump of more than `--jump`
(relative) between neighbouring pixels, dilated by the radius. Protocol 'sequence' (gt < 80 m,
median scaling for mono training). Students train in `--mode stereo` (metric, no pose network)
with depth range `--min-depth` 2 m (the nearest ground is ~5 m; at 192 px wide, 0.1 m would start
the untrained network at a disparity far beyond the image and it collapses).

    python bench/bench_xdistill.py                          # the short version (a few CPU minutes)
    python bench/bench_xdistill.py --steps 3000 --teacher-steps 2000 --sequences 20 --frames 60 --size 96x320

Paired fine-tunes (`--init-from`): both students of a seed start from one trained student (a released
model file, `train.init_from`) and see the same batches, so the pair differs only in the cross-task
term and the paired difference is not drowned by where two from-scratch runs happen to end:

    python bench/bench_xdistill.py --data data/street44 --init-from runs/base/model.safetensors \
        --segmentation-teacher runs/seg/model.safetensors --student student_mobilenetv4 \
        --student-backbone mobilenetv4_conv_small --size 96x320 --steps 1000 --lr 1e-4 \
        --proxy-weight 1 --proxy-upsample 2 --seeds 0 1 2 3 4

A few hundred CPU steps say little about the method at scale: this checks the pipeline and which
way the numbers go. Other processes on a shared machine slow training down (never the scores):
the load average and CPU time are printed so the timings can be judged.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import kd_depth_core.distill.xdistill  # noqa: E402,F401  (registers task 'xdistill')
import kd_depth_core.train.segmentation_task  # noqa: E402,F401  (registers task 'segmentation')
from kd_depth_core import geometry  # noqa: E402
from kd_depth_core.config import TrainConfig, config_from_dict  # noqa: E402
from kd_depth_core.data.dataset import SequenceDataset  # noqa: E402
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset  # noqa: E402
from kd_depth_core.distill.grouping import ClassGrouping, load_grouping  # noqa: E402
from kd_depth_core.eval.metrics import compute_depth_metrics  # noqa: E402
from kd_depth_core.eval.protocols import get_protocol  # noqa: E402
from kd_depth_core.eval.stats import paired_difference  # noqa: E402
from kd_depth_core.models.io import load_model  # noqa: E402
from kd_depth_core.train.train_cli import train_from_config  # noqa: E402


def boundary_band(groups: np.ndarray, depth: np.ndarray, radius: int, jump: float) -> np.ndarray:
    """(H,W) bool: pixels within `radius` px (Chebyshev) of a group change or a relative depth jump > `jump`.

    groups (H,W) int group ids (255 = unknown, never a boundary by itself); depth (H,W) metres, 0 = invalid.
    """
    edges = np.zeros(groups.shape, dtype=bool)
    log_depth = np.log(np.where(depth > 0, depth, 1.0))
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        ga, gb = groups[tuple(a)], groups[tuple(b)]
        semantic = (ga != gb) & (ga != 255) & (gb != 255)
        valid = (depth[tuple(a)] > 0) & (depth[tuple(b)] > 0)
        discontinuity = valid & (np.abs(log_depth[tuple(a)] - log_depth[tuple(b)]) > np.log1p(jump))
        edge = semantic | discontinuity
        edges[tuple(a)] |= edge
        edges[tuple(b)] |= edge
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(edges.astype(np.uint8), kernel) > 0


def base_config(args: argparse.Namespace, root: Path, out: Path, name: str) -> dict:
    height, width = args.size
    return {
        "data": {"root": str(root), "split": "train", "val_split": "", "size": [height, width],
                 "offsets": [] if args.mode == "stereo" else [-1, 1],  # stereo mode needs no temporal sources
                 "stereo": args.mode != "mono", "augment": True, "batch_size": args.batch_size, "num_workers": 0},
        "model": {"name": args.student, "kwargs": {"backbone": args.student_backbone}},
        "optim": {"name": "adam", "lr": args.lr, "scheduler": "none"},
        "train": {"max_steps": args.steps, "log_every": max(args.steps // 10, 1), "val_every": 0, "image_every": 0,
                  "ckpt_every": 0, "device": "cpu", "seed": args.seed, "out_dir": str(out / name),
                  "progress": False, "init_from": str(args.init_from or "")},
    }


def train(cfg: dict, name: str) -> tuple[Path, float]:
    """Train one config, or reuse its model file from an earlier run in the same folder: (model, wall s/step)."""
    config = config_from_dict(TrainConfig, cfg, f"bench:{name}")
    existing = Path(config.train.out_dir) / "model.safetensors"
    if existing.is_file():
        print(f"  {name}: reusing {existing}")
        return existing, float("nan")
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_from_config(config)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    last = result.history[-1] if result.history else {}
    print(f"  {name}: {config.train.max_steps} steps in {wall:.0f} s wall ({wall / config.train.max_steps:.2f} s/step), "
          f"CPU {cpu:.0f} s; last: " + ", ".join(f"{k}={v:.3f}" for k, v in last.items()
                                                   if k in ("loss", "photometric", "cross_task", "cross_entropy",
                                                            "pixel_accuracy", "translator_accuracy")))
    return result.model_path, wall / config.train.max_steps


@torch.no_grad()
def score_student(path: Path, test: SequenceDataset, grouping: ClassGrouping, args: argparse.Namespace) -> dict:
    """AbsRel/δ1 overall and in the boundary band, per-image means over the test frames."""
    model, meta = load_model(path)
    protocol = get_protocol("sequence", median_scaling=meta.scale_kind != "metric")
    overall, band_metrics, band_fraction = [], [], []
    for index in range(len(test)):
        sample = test[index]
        disp = model(sample["image"][None])["disp"][0]
        pred = geometry.disp_to_depth(disp, meta.min_depth, meta.max_depth)[1][0, 0].numpy()
        gt = sample["depth_gt"][0].numpy()
        band = boundary_band(grouping.group_labels(sample["semantic"].numpy()), gt, args.radius, args.jump)
        overall.append(compute_depth_metrics(gt, pred, **protocol.metric_kwargs()))
        band_metrics.append(compute_depth_metrics(gt, pred, **protocol.metric_kwargs(), mask=band, skip_empty=True))
        band_fraction.append(float((band & (gt > 0)).sum() / max((gt > 0).sum(), 1)))
    band_metrics = [m for m in band_metrics if m["num_images"]]

    def mean(rows: list[dict], key: str) -> float:
        return float(np.mean([r[key] for r in rows])) if rows else float("nan")

    return {"abs_rel": mean(overall, "abs_rel"), "a1": mean(overall, "a1"), "rmse": mean(overall, "rmse"),
            "abs_rel_boundary": mean(band_metrics, "abs_rel"), "a1_boundary": mean(band_metrics, "a1"),
            "boundary_fraction": float(np.mean(band_fraction)), "images": len(overall)}


@torch.no_grad()
def score_teacher(path: Path, test: SequenceDataset, grouping: ClassGrouping) -> dict:
    """Pixel accuracy of the teacher's classes and of its grouped labels on the test frames."""
    from kd_depth_core.distill.xdistill import SegmentationTeacher

    model, meta = load_model(path)
    teacher = SegmentationTeacher(model, grouping, (meta.input_height, meta.input_width))
    class_hits = group_hits = total = 0
    for index in range(len(test)):
        sample = test[index]
        labels = sample["semantic"]
        valid = labels != 255
        classes = model(sample["image"][None])["logits"][0].argmax(0)
        groups, _ = teacher.predict(sample["image"][None])
        class_hits += int(((classes == labels) & valid).sum())
        group_hits += int(((groups[0] == grouping.group_labels(labels)) & valid).sum())
        total += int(valid.sum())
    return {"class_accuracy": class_hits / max(total, 1), "group_accuracy": group_hits / max(total, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=10, help="street sequences (last ~15 %% are the test split)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="64x192", help="HEIGHTxWIDTH in pixels, multiples of 32")
    parser.add_argument("--steps", type=int, default=200, help="training steps of each student")
    parser.add_argument("--teacher-steps", type=int, default=150, help="training steps of the segmentation teacher")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--mode", default="stereo", choices=["mono", "stereo", "mono_stereo"],
                        help="photometric sources of both students (stereo: no pose network, the fastest)")
    parser.add_argument("--min-depth", type=float, default=2.0,
                        help="students' depth range (m); stereo at 192 px wide: min 0.1 m would start at a "
                             "disparity far beyond the image (the nearest ground here is ~5 m)")
    parser.add_argument("--max-depth", type=float, default=100.0)
    parser.add_argument("--lambda", dest="weight", type=float, default=0.02, help="cross_task_weight of xdistill")
    parser.add_argument("--translator-scales", type=int, default=4,
                        help="disparity scales the translator sees (1 = full resolution only: local evidence)")
    parser.add_argument("--translator-warmup", type=int, default=0,
                        help="steps the translator trains on detached depth first (task.kwargs.translator_warmup_steps)")
    parser.add_argument("--cross-task-guard", action="store_true",
                        help="per pixel, the cross-task gradient reaches the depth only where it agrees in sign with "
                             "the self-supervised gradient (task.kwargs.cross_task_guard)")
    parser.add_argument("--student", default="student_lcnet", help="registered student model of both students")
    parser.add_argument("--student-backbone", default="lcnet_050")
    parser.add_argument("--teacher-backbone", default="resnet18")
    parser.add_argument("--radius", type=int, default=3, help="boundary band half-width in pixels")
    parser.add_argument("--jump", type=float, default=0.1, help="relative depth jump that counts as a boundary")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the segmentation teacher")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="train.seed of each plain/X-Distill student pair (default: --seed); with 2 or more "
                             "the paired differences and their 95 %% confidence intervals are printed")
    parser.add_argument("--proxy-weight", type=float, default=0.0,
                        help="SGBM proxy supervision of both students (task.kwargs.proxy_weight; needs a stereo "
                             "--mode): the improved self-supervised student of issue 18")
    parser.add_argument("--proxy-upsample", type=int, default=1, help="the proxy's SGBM upsample setting "
                        "(task.kwargs.proxy_sgbm.upsample; match the run given to --init-from)")
    parser.add_argument("--proxy-cache", type=Path, default=None,
                        help="SGBM proxy cache folder (default <out>/proxy_cache; an earlier run's is reused as is)")
    parser.add_argument("--data", type=Path, default=None,
                        help="an existing dataset with train/test splits and semantic labels (default: generate "
                             "--sequences x --frames street sequences)")
    parser.add_argument("--stride", type=int, default=1, help="every n-th frame of each test sequence")
    parser.add_argument("--limit", type=int, default=0, help="score the first N test frames only (0 = all)")
    parser.add_argument("--segmentation-teacher", type=Path, default=None,
                        help="a trained segmentation teacher (released model) instead of training one")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="both students start from this released student, or a training checkpoint (.pt: also "
                             "its pose network, for --mode mono) (paired fine-tunes; its depth range must equal "
                             "--min-depth/--max-depth)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--out", default=None,
                        help="keep data, runs and results.json here (default: a temp folder); data and models "
                             "already there are reused, so e.g. only a new --lambda trains again")
    args = parser.parse_args()
    try:
        args.size = tuple(int(v) for v in args.size.lower().split("x"))
        if len(args.size) != 2 or args.size[0] % 32 or args.size[1] % 32:
            raise ValueError
    except ValueError:
        parser.error(f"--size: expected HEIGHTxWIDTH in multiples of 32, got {args.size!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_xdistill_"))
    load_before = os.getloadavg()
    print(f"date {datetime.now(UTC).isoformat(timespec='seconds')}  machine {platform.node()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average before (1/5/15 min): {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}")

    for name in ("data", "segmentation_teacher", "init_from"):
        path = getattr(args, name)
        if path is not None and not path.exists():
            parser.error(f"--{name.replace('_', '-')}: {path} not found")
    height, width = args.size
    root = args.data or out / "street"
    t0 = time.perf_counter()
    if args.data is None and not (root / "splits" / "test.txt").is_file():
        generate_dataset(root, SynthSpec("street", args.sequences, args.frames, width, height, args.seed),
                         workers=1, overwrite=True, progress=False)
    print(f"data: {root}" + (f", {args.sequences} street sequences x {args.frames} frames at {width}x{height} "
                             f"({time.perf_counter() - t0:.0f} s)" if args.data is None else ""))
    grouping = load_grouping("synthetic")

    teacher_cfg = base_config(args, root, out, "teacher")
    teacher_cfg["data"].update(offsets=[], stereo=False)
    teacher_cfg["model"] = {"name": "segmentation_teacher",
                            "kwargs": {"backbone": args.teacher_backbone, "decoder_channels": 32}}
    teacher_cfg["task"] = {"name": "segmentation", "kwargs": {}}
    teacher_cfg["optim"]["lr"] = 1e-3
    teacher_cfg["train"]["max_steps"] = args.teacher_steps
    teacher_cfg["train"]["init_from"] = ""  # --init-from starts the depth students, not the segmentation teacher
    teacher_cfg["train"]["log_every"] = max(args.teacher_steps // 10, 1)
    print("training:")
    teacher_path = args.segmentation_teacher or train(teacher_cfg, "segmentation teacher")[0]

    photometric = {"mode": args.mode, "pose_kwargs": {"backbone": args.student_backbone},
                   "min_depth": args.min_depth, "max_depth": args.max_depth}
    if args.proxy_weight > 0:
        photometric.update(proxy_weight=args.proxy_weight, proxy_cache_dir=str(args.proxy_cache or out / "proxy_cache"),
                           proxy_sgbm={"upsample": args.proxy_upsample})
    proxy = f"_proxy{args.proxy_weight:g}" if args.proxy_weight > 0 else ""
    suffix = "" if args.translator_scales == 4 else f"_scales{args.translator_scales}"
    suffix += f"_warmup{args.translator_warmup}" if args.translator_warmup else ""
    suffix += "_guard" if args.cross_task_guard else ""
    # fine-tunes are named after their start (the run folder holding it), so another --init-from never reuses them
    if args.init_from:
        start = args.init_from.resolve().parent
        proxy += f"_finetune-{(start.parent if start.name == 'checkpoints' else start).name}"
    test = SequenceDataset(root, "test", offsets=(), size=args.size, load_depth=True, load_semantic=True,
                           stride=args.stride)
    if args.limit:
        test = torch.utils.data.Subset(test, range(min(args.limit, len(test))))
    seeds = args.seeds if args.seeds else [args.seed]
    per_seed = []
    for seed in seeds:
        tag = proxy + ("" if seed == args.seed and not args.seeds else f"_seed{seed}")
        plain_cfg = base_config(args, root, out, f"self_supervised{tag}")
        plain_cfg["task"] = {"name": "self_supervised", "kwargs": photometric}
        plain_cfg["train"]["seed"] = seed
        plain_path, plain_step_s = train(plain_cfg, f"self_supervised{tag}")
        xd_cfg = base_config(args, root, out, f"xdistill_lambda{args.weight:g}{suffix}{tag}")
        xd_cfg["task"] = {"name": "xdistill", "kwargs": {**photometric, "teacher_path": str(teacher_path),
                                                          "grouping": "synthetic", "cross_task_weight": args.weight,
                                                          "translator_scales": args.translator_scales,
                                                          "translator_warmup_steps": args.translator_warmup,
                                                          "cross_task_guard": args.cross_task_guard}}
        xd_cfg["train"]["seed"] = seed
        xd_path, xd_step_s = train(xd_cfg, f"xdistill (lambda {args.weight:g}{', guard' if args.cross_task_guard else ''})"
                                           f"{tag}")
        per_seed.append({"seed": seed, "self_supervised": score_student(plain_path, test, grouping, args),
                         "xdistill": score_student(xd_path, test, grouping, args),
                         "step_s": {"self_supervised": plain_step_s, "xdistill": xd_step_s}})

    teacher_scores = score_teacher(teacher_path, test, grouping)
    load_after = os.getloadavg()
    print(f"\nheld-out test: {len(test)} frames; teacher pixel accuracy {teacher_scores['class_accuracy']:.3f} "
          f"(classes), {teacher_scores['group_accuracy']:.3f} (groups); boundary band = "
          f"{per_seed[0]['xdistill']['boundary_fraction']:.0%} of valid pixels (radius {args.radius} px)")
    print(f"{'student':<18}{'seed':>5}{'AbsRel':>9}{'AbsRel@bnd':>12}{'d1':>8}{'d1@bnd':>9}{'RMSE':>8}"
          f"{'train s/step':>14}")
    for row in per_seed:
        for name in ("self_supervised", "xdistill"):
            r = row[name]
            print(f"{name:<18}{row['seed']:>5}{r['abs_rel']:>9.4f}{r['abs_rel_boundary']:>12.4f}{r['a1']:>8.3f}"
                  f"{r['a1_boundary']:>9.3f}{r['rmse']:>8.3f}{row['step_s'][name]:>14.2f}")
    paired = {}
    if len(per_seed) >= 2:
        print(f"paired X-Distill - plain over {len(per_seed)} seeds: mean [95 % confidence interval]")
        for key in ("abs_rel", "abs_rel_boundary", "rmse"):
            paired[key] = paired_difference([r["xdistill"][key] for r in per_seed],
                                            [r["self_supervised"][key] for r in per_seed])
            d = paired[key]
            print(f"  {key:<18}{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
                  f"  ({'below 0' if d['ci_high'] < 0 else 'above 0' if d['ci_low'] > 0 else 'contains 0'})")
    print(f"load average after (1/5/15 min): {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f}")
    results = {"self_supervised": per_seed[0]["self_supervised"], "xdistill": per_seed[0]["xdistill"]}
    report = {"args": {k: v for k, v in vars(args).items()}, "teacher": teacher_scores, "students": results,
              "per_seed": per_seed, "paired": paired,
              "load_before": load_before, "load_after": load_after}
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

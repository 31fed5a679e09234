"""Benchmark of ADU-Depth (task 'adu_depth') against method 1 and self-supervision alone.

On a generated synthetic street world, with the real training code path
(`train.train_cli.train_from_config`), trains:
1. a stereo teacher (`stereo_teacher`, self-supervised with the right image: metric) — ADU's teacher;
2. an MS-DPT teacher (`ms_dpt_teacher` with MC dropout, the same photometric training and steps) —
   method 1's teacher;
3. three students of the same architecture (student_lcnet with the log_sigma head), the same
   steps, photometric loss, optimiser, data and seed: 'adu_depth', 'kd_ms_dpt' (method 1) and
   'self_supervised' only;
then scores all on the held-out test sequences with METRIC depth (no median scaling; gt < 80 m,
`eval.metrics`), and reports the per-image median scale ratio median(gt)/median(pred) (1 = the
scale is right) and, for reference, median-scaled AbsRel.

    python bench/bench_adu.py                          # the SHORT version (a few CPU minutes)
    python bench/bench_adu.py --teacher-steps 3000 --student-steps 3000 --sequences 20 --frames 60 --size 320x96

A few hundred CPU steps say little about the methods; the short run checks that the pipeline runs
and which way the numbers go. The load average is printed: timings on a shared machine depend on it.
Results: <work>/results.json and a table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import kd_depth_core.distill.adu_depth  # noqa: E402,F401  (registers task 'adu_depth')
import kd_depth_core.distill.kd_ms_dpt  # noqa: E402,F401  (registers task 'kd_ms_dpt')
from kd_depth_core import geometry  # noqa: E402
from kd_depth_core.config import TrainConfig, config_from_dict  # noqa: E402
from kd_depth_core.data.dataset import SequenceDataset  # noqa: E402
from kd_depth_core.data.synthetic.generate import SynthSpec, generate_dataset  # noqa: E402
from kd_depth_core.eval.metrics import DepthMetricsAccumulator, scale_ratio_summary  # noqa: E402
from kd_depth_core.eval.protocols import get_protocol  # noqa: E402
from kd_depth_core.models.io import load_model  # noqa: E402
from kd_depth_core.train.train_cli import train_from_config  # noqa: E402
from kd_depth_core.utils.atomic import write_text_atomic  # noqa: E402

EVAL_CAP = 80.0  # metres


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (height, width), multiples of 32."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 192x64, got {text!r}") from None
    if width % 32 or height % 32:
        raise argparse.ArgumentTypeError(f"expected multiples of 32, got {text!r}")
    return height, width


def base_config(args: argparse.Namespace, root: Path, out_dir: Path, steps: int) -> dict[str, Any]:
    height, width = args.size
    return {
        "data": {"root": str(root), "size": [height, width], "offsets": [-1, 1], "stereo": True, "augment": True,
                 "batch_size": args.batch_size, "num_workers": 0, "val_split": ""},
        "optim": {"name": "adamw", "lr": args.lr, "weight_decay": 1e-2, "scheduler": "none"},
        "train": {"max_steps": steps, "log_every": max(steps // 5, 1), "image_every": 0, "val_every": 0,
                  "ckpt_every": 0, "out_dir": str(out_dir), "progress": False, "seed": args.seed, "device": "cpu"},
    }


def train(name: str, data: dict[str, Any]) -> tuple[Path, float, dict[str, float]]:
    """Train one config (skipped when its model file exists): (model path, wall s, last logged losses)."""
    model_path = Path(data["train"]["out_dir"]) / "model.safetensors"
    if model_path.is_file():
        print(f"[{name}] reusing {model_path}", flush=True)
        return model_path, float("nan"), {}
    cfg = config_from_dict(TrainConfig, data, f"bench:{name}")
    t0 = time.perf_counter()
    result = train_from_config(cfg)
    seconds = time.perf_counter() - t0
    last = result.history[-1] if result.history else {}
    shown = ("loss", "photometric", "response", "feature", "distill", "uncertainty_nll")
    print(f"[{name}] {cfg.train.max_steps} steps in {seconds:.0f} s ({seconds / cfg.train.max_steps:.2f} s/step); "
          "last: " + ", ".join(f"{k}={last[k]:.4f}" for k in shown if k in last), flush=True)
    return result.model_path, seconds, last


@torch.no_grad()
def score(predict, test: SequenceDataset, batch_size: int) -> dict[str, Any]:
    """Metric AbsRel/RMSE/δ1 (no scaling), the median scale ratio and median-scaled AbsRel/δ1, per-image means."""
    protocol = get_protocol("sequence", max_depth=EVAL_CAP)
    metric, scaled = DepthMetricsAccumulator(), DepthMetricsAccumulator()
    for batch in torch.utils.data.DataLoader(test, batch_size=batch_size):
        depth = predict(batch)
        for accumulator, median in ((metric, False), (scaled, True)):
            kwargs = {**protocol.metric_kwargs(), "median_scaling": median}
            accumulator.update(batch["depth_gt"], depth, names=batch["frame_key"], skip_empty=True, **kwargs)
    m, s = metric.mean(), scaled.mean()
    return {"abs_rel": m["abs_rel"], "rmse": m["rmse"], "a1": m["a1"], "images": m["num_images"],
            "scale_ratio": scale_ratio_summary(scaled.scale_ratios),
            "median_scaled": {"abs_rel": s["abs_rel"], "a1": s["a1"]}}


def student_predictor(path: Path):
    model, meta = load_model(path)
    assert not meta.stereo

    def predict(batch: dict[str, Any]) -> torch.Tensor:
        return geometry.disp_to_depth(model(batch["image"])["disp"][0], meta.min_depth, meta.max_depth)[1]

    return predict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="work folder, reused (default: a new temp folder)")
    parser.add_argument("--sequences", type=int, default=8, help="street sequences (the last ~15 %% are the test split)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=parse_size, default=(64, 192), metavar="WxH", help="training size (192x64)")
    parser.add_argument("--teacher-steps", type=int, default=200, help="steps of each teacher")
    parser.add_argument("--student-steps", type=int, default=150, help="steps of each student")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--mode", default="stereo", choices=["mono", "stereo", "mono_stereo"],
                        help="photometric sources of teachers and students (stereo: no pose network, the fastest)")
    parser.add_argument("--student-backbone", default="lcnet_050")
    parser.add_argument("--stereo-backbone", default="resnet18")
    parser.add_argument("--max-disparity", type=int, default=48, help="stereo teacher search range (full-res px)")
    parser.add_argument("--vit-backbone", default="vit_tiny_patch16_224", help="MS-DPT teacher backbone")
    parser.add_argument("--num-samples", type=int, default=4, help="MC-dropout passes of the method-1 teacher")
    parser.add_argument("--feature-weight", type=float, default=1.0, help="adu_depth feature_weight")
    parser.add_argument("--response-weight", type=float, default=1.0, help="adu_depth response_weight")
    parser.add_argument("--min-depth", type=float, default=3.0,
                        help="teachers' and the plain student's min depth, metres (about fx*B / (0.1 * width): "
                             "an untrained network starts near 10 px of disparity)")
    parser.add_argument("--max-depth", type=float, default=80.0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_adu_"))
    work.mkdir(parents=True, exist_ok=True)
    height, width = args.size
    report: dict[str, Any] = {"machine": {"platform": platform.platform(), "node": platform.node(),
                                          "cpus": os.cpu_count(), "threads": args.threads,
                                          "torch": torch.__version__, "load_start": os.getloadavg()},
                              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    print(f"machine {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s); "
          f"load average {report['machine']['load_start'][0]:.1f}", flush=True)
    t_start = time.perf_counter()

    root = work / "street"
    if not root.is_dir():
        generate_dataset(root, SynthSpec(preset="street", sequences=args.sequences, frames=args.frames, width=width,
                                         height=height, seed=args.seed), workers=1, progress=False)
    photometric = {"mode": args.mode, "pose_kwargs": {"backbone": args.student_backbone}}
    depth_range = {"min_depth": args.min_depth, "max_depth": args.max_depth}  # distilled students: the teacher's

    # ---- teachers (same photometric training, same steps)
    runs: dict[str, dict[str, Any]] = {}
    stereo_data = base_config(args, root, work / "stereo_teacher", args.teacher_steps)
    stereo_data["model"] = {"name": "stereo_teacher", "kwargs": {
        "backbone": args.stereo_backbone, "max_disparity": args.max_disparity, "uncertainty": True}}
    stereo_data["task"] = {"name": "self_supervised", "kwargs": {
        **photometric, **depth_range, "mode": "stereo" if args.mode == "mono" else args.mode}}
    stereo_path, seconds, last = train("stereo teacher", stereo_data)
    runs["stereo_teacher"] = {"train_s": seconds, "last": last}
    vit_data = base_config(args, root, work / "ms_dpt_teacher", args.teacher_steps)
    vit_data["model"] = {"name": "ms_dpt_teacher", "kwargs": {"backbone": args.vit_backbone, "img_size": [height, width],
                                                              "features": 32, "dropout": 0.1}}
    vit_data["task"] = {"name": "self_supervised", "kwargs": dict(stereo_data["task"]["kwargs"])}
    vit_path, seconds, last = train("MS-DPT teacher", vit_data)
    runs["ms_dpt_teacher"] = {"train_s": seconds, "last": last}

    # ---- students: same network, steps, photometric loss and seed
    student_model = {"name": "student_lcnet", "kwargs": {"backbone": args.student_backbone, "uncertainty": True}}
    students = {
        "adu_depth": {"name": "adu_depth", "kwargs": {**photometric, "teacher_path": str(stereo_path),
                                                      "feature_weight": args.feature_weight,
                                                      "response_weight": args.response_weight}},
        "kd_ms_dpt (method 1)": {"name": "kd_ms_dpt", "kwargs": {**photometric, "teacher_path": str(vit_path),
                                                                 "num_samples": args.num_samples,
                                                                 "cache_dir": str(work / "kd_cache")}},
        "self_supervised only": {"name": "self_supervised", "kwargs": {**photometric, **depth_range}},
    }
    paths: dict[str, Path] = {}
    for label, task in students.items():
        data = base_config(args, root, work / task["name"], args.student_steps)
        data["model"] = student_model
        data["task"] = task
        paths[label], seconds, last = train(label, data)
        runs[label] = {"train_s": seconds, "last": last}
    report["training"] = runs

    # ---- metric scores on the held-out test sequences
    test = SequenceDataset(root, "test", offsets=(), size=args.size, stereo=True, load_depth=True)
    stereo_model, stereo_meta = load_model(stereo_path)
    vit_model, vit_meta = load_model(vit_path)
    rows = {label: score(student_predictor(path), test, args.batch_size) for label, path in paths.items()}
    rows["stereo teacher (sees the pair)"] = score(
        lambda b: geometry.disp_to_depth(stereo_model(b["image"], b["image_right"])["disp"][0],
                                         stereo_meta.min_depth, stereo_meta.max_depth)[1], test, args.batch_size)
    rows["MS-DPT teacher (one eval pass)"] = score(
        lambda b: geometry.disp_to_depth(vit_model(b["image"])["disp"][0], vit_meta.min_depth,
                                         vit_meta.max_depth)[1], test, args.batch_size)
    report["scores"] = rows
    report["machine"]["load_end"] = os.getloadavg()
    report["total_s"] = time.perf_counter() - t_start
    write_text_atomic(work / "results.json", json.dumps(report, indent=1, default=str))

    print(f"\nheld-out test split: {len(test)} frames at {width}x{height}; metric depth, gt < {EVAL_CAP:.0f} m; "
          f"students {args.student_steps} steps, teachers {args.teacher_steps} steps, photometric mode {args.mode}")
    print("| model | AbsRel | RMSE (m) | δ1 | scale ratio median (std) | AbsRel, median-scaled | train s |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        train_s = runs.get(label, {}).get("train_s", float("nan"))
        print(f"| {label} | {r['abs_rel']:.3f} | {r['rmse']:.2f} | {r['a1']:.3f} | {r['scale_ratio']['median']:.3f} "
              f"({r['scale_ratio']['std']:.3f}) | {r['median_scaled']['abs_rel']:.3f} | {train_s:.0f} |")
    load = report["machine"]
    print(f"load average {load['load_start'][0]:.1f} -> {load['load_end'][0]:.1f}; total {report['total_s']:.0f} s; "
          f"results: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Teachers against the classical and trivial floors, on the same held-out frames, in one table.

Rows: OpenCV SGBM (no learning), the per-pixel mean layout of the test frames (a trivial floor),
and every model given, as a released file (`--model`) or as a training run's checkpoints
(`--run DIR --steps 150,300`: each checkpoint is exported next to it as `model_step<N>.safetensors`
with the run's own metadata). Every row uses `kd-depth evaluate`'s code path and protocol
(`sequence`, metric, no median scaling, 80 m cap, every `--stride`-th frame of `--split`, default test); the last two columns
are the same frames median-scaled, with the median of the per-image ratios median(gt)/median(pred)
(1 = metric scale exactly) and their spread. `--mc-samples N` adds, for every monocular model with
dropout sites, a row for its MC-dropout ensemble mean of N passes: the labels method 1 distils
(`distill.teacher.TeacherWrapper`, the same code the distillation runs).

    python bench/bench_teachers.py --data demo_output/synth/street --run runs/teacher_stereo --steps 300,450
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def export_checkpoint(run: Path, step: int, model_kwargs: dict | None = None) -> Path:
    """`<run>/model_step<step>.safetensors` from `<run>/checkpoints/step_<step>.pt` (built once)."""
    import torch

    from kd_depth_core.config import TrainConfig, config_from_dict
    from kd_depth_core.models.io import save_model
    from kd_depth_core.train.checkpoint import checkpoint_path, load_checkpoint, load_task_state
    from kd_depth_core.train.tasks import create_task

    out = run / f"model_step{step}.safetensors"
    if out.is_file():
        return out
    state = load_checkpoint(checkpoint_path(run, step))
    config = state["config"]
    config["model"]["kwargs"].update(model_kwargs or {})
    cfg = config_from_dict(TrainConfig, config, str(run / "config.yaml"))
    task = create_task(cfg.task.name, cfg)
    load_task_state(task, state["task"], str(checkpoint_path(run, step)))  # a frozen teacher is not saved
    from kd_depth_core.data.sequence import Sequence, read_split

    first = Sequence(Path(cfg.data.root) / read_split(cfg.data.root, cfg.data.split)[0])
    focal = float(first.camera.scaled(cfg.data.size[1], cfg.data.size[0]).K[0, 0])
    with torch.no_grad():
        save_model(out, task.deploy_model().eval(), task.deploy_metadata(focal_length_px=focal))
    return out


def mean_layout_row(samples) -> tuple[str, dict]:
    """The per-pixel mean inverse depth of the test frames, predicted for every frame."""
    from kd_depth_core.eval.evaluate import evaluate
    from kd_depth_core.eval.protocols import get_protocol

    inverse = [np.where(s[1] > 0, 1.0 / np.maximum(s[1], 1e-3), np.nan) for s in samples]
    layout = 1.0 / np.nan_to_num(np.nanmean(np.stack(inverse), 0), nan=1.0 / 80.0)
    result = evaluate(lambda image: layout, samples, get_protocol("sequence", median_scaling=False, max_depth=80.0),
                      label="mean layout", progress=False)
    return "mean layout (trivial floor)", result.mean


def mc_mean_predict_fn(path: Path, num_samples: int):
    """``predict_fn(image, K)`` of the teacher's MC-dropout ensemble mean (None: a stereo model or no dropout)."""
    import torch

    from kd_depth_core.distill.teacher import TeacherWrapper
    from kd_depth_core.models.mc_dropout import dropout_sites

    teacher = TeacherWrapper(path, num_samples=num_samples)
    if getattr(teacher.metadata, "stereo", False) or not dropout_sites(teacher.model):
        return None

    def predict_fn(image, K=None):
        torch.manual_seed(0)  # the same dropout masks for every model: rows stay comparable
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div(255.0)[None]
        k = None if K is None else torch.as_tensor(np.asarray(K), dtype=torch.float32)[None]
        with torch.no_grad():
            out = teacher.predict(x, k)
        return out["depth"][0, 0].numpy(), out["uncertainty"][0, 0].numpy()

    return predict_fn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", action="append", type=Path, default=[])
    parser.add_argument("--run", action="append", type=Path, default=[])
    parser.add_argument("--steps", action="append", default=[], help="checkpoint steps per --run, e.g. 150,300")
    parser.add_argument("--model-kwarg", action="append", default=[],
                        help="key=int for checkpoints of runs made before a model option existed")
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--split", default="test", help="'train' scores the frames the models learned from "
                        "(a generalisation check: e.g. --split train --stride 15)")
    parser.add_argument("--limit", type=int, default=120)
    parser.add_argument("--mc-samples", type=int, default=0,
                        help="also score each MC-dropout model as its ensemble mean of N passes (0 = off)")
    args = parser.parse_args()

    from kd_depth_core.data.benchmarks import open_benchmark
    from kd_depth_core.eval.evaluate import accepts_keyword, evaluate
    from kd_depth_core.eval.evaluate_cli import SGBM_LABEL, load_predict_fn
    from kd_depth_core.eval.protocols import get_protocol

    print(f"load average {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}", file=sys.stderr)
    models: list[tuple[str, Path]] = [(SGBM_LABEL, Path("sgbm"))] + [(m.stem, m) for m in args.model]
    for run, steps in zip(args.run, args.steps + [""] * len(args.run)):
        for step in [int(s) for s in steps.split(",") if s]:
            extra = {k: int(v) for k, v in (item.split("=", 1) for item in args.model_kwarg)}
            models.append((f"{run.name} step {step}", export_checkpoint(run, step, extra)))
        if (run / "model.safetensors").is_file():
            models.append((f"{run.name} final", run / "model.safetensors"))
    mono = open_benchmark("sequence", args.data, split=args.split, stride=args.stride, limit=args.limit)
    stereo = open_benchmark("sequence", args.data, split=args.split, stride=args.stride, limit=args.limit,
                            right=True)
    protocol = get_protocol("sequence", median_scaling=False, max_depth=80.0)
    options = argparse.Namespace(device="cpu", scale_mode="auto", sgbm_min_depth=2.0, max_depth=80.0)
    scaled = get_protocol("sequence", median_scaling=True, max_depth=80.0)
    rows = [(*mean_layout_row(list(mono)), None, None)]
    for label, path in models:
        predict_fn, _ = load_predict_fn(path, options)
        samples = stereo if accepts_keyword(predict_fn, "right") else mono
        result = evaluate(predict_fn, samples, protocol, label=label, progress=False)
        median_scaled = evaluate(predict_fn, samples, scaled, label=label, progress=False)
        rows.append((label, result.mean, median_scaled.mean, median_scaled.scale_ratio))
        mc_fn = mc_mean_predict_fn(path, args.mc_samples) if args.mc_samples > 0 and path.suffix else None
        if mc_fn is not None:
            mc_label = f"{label}, MC-dropout mean of {args.mc_samples}"
            result = evaluate(mc_fn, mono, protocol, label=mc_label, progress=False)
            median_scaled = evaluate(mc_fn, mono, scaled, label=mc_label, progress=False)
            rows.append((mc_label, result.mean, median_scaled.mean, median_scaled.scale_ratio))
    print("| model | AbsRel | RMSE (m) | δ1 | images | median-scaled AbsRel | scale ratio (std) |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for label, mean, median_scaled, ratio in rows:
        extra = (f"{median_scaled['abs_rel']:.3f} | {ratio['median']:.3f} ({ratio['std']:.3f})"
                 if median_scaled is not None else "— | —")
        print(f"| {label} | {mean['abs_rel']:.3f} | {mean['rmse']:.2f} | {mean['a1']:.3f} | {int(mean['num_images'])} "
              f"| {extra} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Teachers against the classical and trivial floors, on the same held-out frames, in one table.

Rows: OpenCV SGBM (no learning), the per-pixel mean layout of the test frames (a trivial floor),
and every model given, as a released file (`--model`) or as a training run's checkpoints
(`--run DIR --steps 150,300`: each checkpoint is exported next to it as `model_step<N>.safetensors`
with the run's own metadata). Every row uses `kd-depth evaluate`'s code path and protocol
(`sequence`, metric, no median scaling, 80 m cap, every `--stride`-th frame of every sequence of `--split`, default
test: on the street world all four held-out streets, 30 frames each at stride 3); the last two columns
are the same frames median-scaled, with the median of the per-image ratios median(gt)/median(pred)
(1 = metric scale exactly) and their spread. `--mc-samples N` adds, for every monocular model with
dropout sites, a row for its MC-dropout ensemble mean of N passes: the labels method 1 distils
(`distill.teacher.TeacherWrapper`, the same code the distillation runs). `--depth-bins 0,5,10,20,40,80` adds a
second table: each row's per-pixel AbsRel by true depth (where a model wins or loses against SGBM), and
`--by-confidence` one split by SGBM's own pixels: those its left-right check keeps and the holes it fills.
`--per-sequence` adds each row's AbsRel and median scale ratio per held-out sequence (a model that wins on
average can still lose a whole street), and `--paired` each model's per-frame AbsRel minus SGBM's on the same
frames, with its 95 % confidence interval (`eval.stats.paired_difference`); `--paired-with MODEL` the same
against one of the given models (a retrained model against the one it replaces).

    python bench/bench_teachers.py --data demo_output/synth/street --run runs/teacher_stereo --steps 300,450
    python bench/bench_teachers.py --data demo_output/synth/street --model runs/teacher/model.safetensors \
        --per-sequence --paired

Until 2026-12-07 the defaults were `--stride 2 --limit 120`: the first 120 frames at stride 2, i.e. street_020,
street_021 and a third of street_022, never street_023 (docs/benchmarks.md, "Protocol fix"). `--stride 2
--limit 120` reproduces the old numbers.
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


def pixel_errors(predict_fn, samples, max_depth: float):
    """Per frame: (per-pixel AbsRel (H,W), true depth (H,W) m), predictions clipped to [1e-3, max_depth] m like the
    protocol's cap; AbsRel is NaN where there is no true depth."""
    from kd_depth_core.eval.evaluate import unpack_prediction

    for sample in samples:
        image, gt, name, meta = sample  # the sequence reader's (image, depth m, name, meta)
        given = {k: meta[k] for k in ("right", "baseline") if k in meta}
        depth, _ = unpack_prediction(predict_fn(image, K=meta.get("K"), **given), name)
        pred = np.clip(np.asarray(depth, dtype=np.float64), 1e-3, max_depth)
        with np.errstate(divide="ignore", invalid="ignore"):
            yield np.where(gt > 1e-3, np.abs(pred - gt) / gt, np.nan), gt


def depth_bin_errors(predict_fn, samples, edges: list[float]) -> list[tuple[float, int]]:
    """Per-pixel mean AbsRel and pixel count in each true-depth bin [edges[i], edges[i+1]) m, over `samples`."""
    sums, counts = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1, dtype=np.int64)
    for error, gt in pixel_errors(predict_fn, samples, edges[-1]):
        for i, (low, high) in enumerate(zip(edges, edges[1:])):
            inside = (gt > 1e-3) & (gt >= low) & (gt < high)
            sums[i] += error[inside].sum()
            counts[i] += int(inside.sum())
    return [(s / c if c else float("nan"), int(c)) for s, c in zip(sums, counts)]


def sgbm_confident_masks(stereo_samples, min_depth: float) -> list[np.ndarray]:
    """Per frame, the pixels (H,W) bool OpenCV SGBM keeps after its left-right check (the SGBM row's settings);
    the others are the holes its row-wise filling guesses."""
    from kd_depth_core.classical.sgbm import SGBMSettings, sgbm_disparity

    settings = SGBMSettings(min_depth=min_depth)
    return [sgbm_disparity(image, meta["right"], settings, fx=float(np.asarray(meta["K"])[0, 0]),
                           baseline=float(meta["baseline"]))[1] for image, _, _, meta in stereo_samples]


def confidence_split_errors(predict_fn, samples, masks: list[np.ndarray],
                            max_depth: float) -> list[tuple[float, int]]:
    """Per-pixel mean AbsRel and pixel count on SGBM's confident pixels, then on its holes (true depth <= max_depth)."""
    sums, counts = np.zeros(2), np.zeros(2, dtype=np.int64)
    for (error, gt), confident in zip(pixel_errors(predict_fn, samples, max_depth), masks, strict=True):
        valid = (gt > 1e-3) & (gt <= max_depth)
        for i, part in enumerate((valid & confident, valid & ~confident)):
            sums[i] += error[part].sum()
            counts[i] += int(part.sum())
    return [(s / c if c else float("nan"), int(c)) for s, c in zip(sums, counts)]


def model_label(path: Path) -> str:
    """A row label: the file's stem, with its run folder's name for a run's `model*.safetensors`."""
    if path.stem == "model" and path.parent.name:
        return path.parent.name
    return f"{path.parent.name}/{path.stem}" if path.stem.startswith("model") and path.parent.name else path.stem


def per_sequence(per_image: list[dict], scaled: list[dict]) -> dict[str, tuple[float, float]]:
    """{sequence: (mean AbsRel, median scale ratio)} from the per-image rows of one metric and one median-scaled
    evaluation of the same frames (names 'sequence/frame')."""
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for metric, median in zip(per_image, scaled):
        errors, ratios = groups.setdefault(str(metric["name"]).split("/")[0], ([], []))
        errors.append(metric["abs_rel"])
        ratios.append(median["scale_ratio"])
    return {name: (float(np.mean(e)), float(np.median(r))) for name, (e, r) in groups.items()}


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


def print_paired(frames, reference, name: str) -> None:
    """A table of each row's per-frame AbsRel minus `reference`'s on the same frames, with its 95 % CI."""
    from kd_depth_core.eval.stats import paired_difference

    base = [r["abs_rel"] for r in reference[1].per_image]
    print(f"\n| per frame, model − {name} ({len(base)} frames) | AbsRel | difference | 95 % CI |\n|---|---:|---:|---:|")
    for label, metric, _ in frames:
        if [r["name"] for r in metric.per_image] != [r["name"] for r in reference[1].per_image]:
            raise SystemExit(f"paired: {label} was scored on other frames than {name}; cannot pair them")
        d = paired_difference([r["abs_rel"] for r in metric.per_image], base)
        print(f"| {label} | {metric.mean['abs_rel']:.4f} | {d['mean']:+.4f} | [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", action="append", type=Path, default=[])
    parser.add_argument("--run", action="append", type=Path, default=[])
    parser.add_argument("--steps", action="append", default=[], help="checkpoint steps per --run, e.g. 150,300")
    parser.add_argument("--model-kwarg", action="append", default=[],
                        help="key=int for checkpoints of runs made before a model option existed")
    parser.add_argument("--stride", type=int, default=3, help="every n-th frame of each sequence")
    parser.add_argument("--split", default="test", help="'train' scores the frames the models learned from "
                        "(a generalisation check: e.g. --split train --stride 15)")
    parser.add_argument("--limit", type=int, default=0, help="the first N frames only (0 = all; a limit that "
                        "cuts the split short leaves whole sequences out)")
    parser.add_argument("--mc-samples", type=int, default=0,
                        help="also score each MC-dropout model as its ensemble mean of N passes (0 = off)")
    parser.add_argument("--depth-bins", default="", help="also per-pixel AbsRel by true depth, bin edges in m, "
                        "e.g. 0,5,10,20,40,80")
    parser.add_argument("--by-confidence", action="store_true",
                        help="also per-pixel AbsRel on the pixels SGBM's left-right check keeps and on its filled holes")
    parser.add_argument("--per-sequence", action="store_true",
                        help="also AbsRel and median scale ratio per held-out sequence")
    parser.add_argument("--paired", action="store_true",
                        help="also each model's per-frame AbsRel minus SGBM's, with its 95 %% confidence interval")
    parser.add_argument("--paired-with", type=Path, default=None, metavar="MODEL",
                        help="also each model's per-frame AbsRel minus this one's (one of the --model files), e.g. a "
                        "retrained model against the one it replaces")
    args = parser.parse_args()
    if args.paired_with is not None and args.paired_with not in args.model:
        parser.error(f"--paired-with: {args.paired_with} is not one of the --model files; pass it as --model too")
    try:
        edges = [float(v) for v in args.depth_bins.split(",") if v]
    except ValueError:
        parser.error(f"--depth-bins: expected increasing depths in m separated by commas, got {args.depth_bins!r}")
    if edges and (len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0):
        parser.error(f"--depth-bins: expected at least two increasing depths >= 0 m, got {args.depth_bins!r}")

    from kd_depth_core.data.benchmarks import open_benchmark
    from kd_depth_core.eval.evaluate import EvaluationResult, accepts_keyword, evaluate
    from kd_depth_core.eval.evaluate_cli import SGBM_LABEL, load_predict_fn
    from kd_depth_core.eval.protocols import get_protocol
    print(f"load average {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}", file=sys.stderr)
    models: list[tuple[str, Path]] = [(SGBM_LABEL, Path("sgbm"))] + [(model_label(m), m) for m in args.model]
    for run, steps in zip(args.run, args.steps + [""] * len(args.run)):
        for step in [int(s) for s in steps.split(",") if s]:
            extra = {k: int(v) for k, v in (item.split("=", 1) for item in args.model_kwarg)}
            models.append((f"{run.name} step {step}", export_checkpoint(run, step, extra)))
        if (run / "model.safetensors").is_file():
            models.append((f"{run.name} final", run / "model.safetensors"))
    mono = open_benchmark("sequence", args.data, split=args.split, stride=args.stride, limit=args.limit or None)
    stereo = open_benchmark("sequence", args.data, split=args.split, stride=args.stride, limit=args.limit or None,
                            right=True)
    protocol = get_protocol("sequence", median_scaling=False, max_depth=80.0)
    options = argparse.Namespace(device="cpu", scale_mode="auto", sgbm_min_depth=2.0, max_depth=80.0)
    scaled = get_protocol("sequence", median_scaling=True, max_depth=80.0)
    rows = [(*mean_layout_row(list(mono)), None, None)]
    bins: list[tuple[str, list[tuple[float, int]]]] = []
    masks = sgbm_confident_masks(stereo, options.sgbm_min_depth) if args.by_confidence else []
    split: list[tuple[str, list[tuple[float, int]]]] = []
    frames: list[tuple[str, EvaluationResult, EvaluationResult]] = []  # (label, metric, median-scaled), as `rows`
    for label, path in models:
        predict_fn, _ = load_predict_fn(path, options)
        samples = stereo if accepts_keyword(predict_fn, "right") else mono
        if edges:
            bins.append((label, depth_bin_errors(predict_fn, samples, edges)))
        if masks:
            split.append((label, confidence_split_errors(predict_fn, samples, masks, options.max_depth)))
        result = evaluate(predict_fn, samples, protocol, label=label, progress=False)
        median_scaled = evaluate(predict_fn, samples, scaled, label=label, progress=False)
        rows.append((label, result.mean, median_scaled.mean, median_scaled.scale_ratio))
        frames.append((label, result, median_scaled))
        mc_fn = mc_mean_predict_fn(path, args.mc_samples) if args.mc_samples > 0 and path.suffix else None
        if mc_fn is not None:
            mc_label = f"{label}, MC-dropout mean of {args.mc_samples}"
            result = evaluate(mc_fn, mono, protocol, label=mc_label, progress=False)
            median_scaled = evaluate(mc_fn, mono, scaled, label=mc_label, progress=False)
            rows.append((mc_label, result.mean, median_scaled.mean, median_scaled.scale_ratio))
            frames.append((mc_label, result, median_scaled))
    print("| model | AbsRel | RMSE (m) | δ1 | images | median-scaled AbsRel | scale ratio (std) |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for label, mean, median_scaled, ratio in rows:
        extra = (f"{median_scaled['abs_rel']:.3f} | {ratio['median']:.3f} ({ratio['std']:.3f})"
                 if median_scaled is not None else "— | —")
        print(f"| {label} | {mean['abs_rel']:.3f} | {mean['rmse']:.2f} | {mean['a1']:.3f} | {int(mean['num_images'])} "
              f"| {extra} |")
    if bins:
        names = [f"{a:g}–{b:g} m" for a, b in zip(edges, edges[1:])]
        print(f"\n| per-pixel AbsRel by true depth | {' | '.join(names)} |\n|---|{'---:|' * len(names)}")
        print(f"| pixels | {' | '.join(f'{count:,}' for _, count in bins[0][1])} |")
        for label, cells in bins:
            print(f"| {label} | {' | '.join(f'{error:.3f}' for error, _ in cells)} |")
    if split:
        (_, kept), (_, holes) = split[0][1]
        share = kept / max(kept + holes, 1)
        print(f"\n| per-pixel AbsRel | SGBM left-right checked ({share:.0%} of pixels) | SGBM holes, filled |\n"
              f"|---|---:|---:|\n| pixels | {kept:,} | {holes:,} |")
        for label, ((on_kept, _), (on_holes, _)) in split:
            print(f"| {label} | {on_kept:.4f} | {on_holes:.4f} |")
    if args.per_sequence:
        names = list(per_sequence(frames[0][1].per_image, frames[0][2].per_image))
        print(f"\n| AbsRel (median scale ratio) | {' | '.join(names)} | all |\n|---|{'---:|' * (len(names) + 1)}")
        for label, metric, median_scaled in frames:
            cells = [*per_sequence(metric.per_image, median_scaled.per_image).values(),
                     (metric.mean["abs_rel"], median_scaled.scale_ratio["median"])]
            print(f"| {label} | " + " | ".join(f"{e:.4f} ({r:.3f})" for e, r in cells) + " |")
    if args.paired:
        print_paired(frames[1:], frames[0], "SGBM")  # the first row is SGBM's
    if args.paired_with is not None:
        reference = next(f for f in frames if f[0] == model_label(args.paired_with))
        print_paired([f for f in frames[1:] if f is not reference], reference, reference[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())

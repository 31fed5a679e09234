"""The demo's report folder: README-style Markdown with the tables, depth panels and training curves."""
from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from kd_depth_core.demo.context import DemoContext
from kd_depth_core.eval.protocols import KITTI_TABLE as TABLE_METRICS
from kd_depth_core.utils.atomic import write_text_atomic

CURVE_TAGS = ("loss", "photometric", "distill", "val/abs_rel")


def read_log(path: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """Scalar series {tag: (steps, values)} of a trainer's log.jsonl."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    path = Path(path)
    if not path.is_file():
        return series
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = record.get("step")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))
    return series


def _curves(ctx: DemoContext, folder: Path) -> Path | None:
    from kd_depth_core.eval import plots

    series = {}
    for stage, label in (("teacher", "teacher"), ("student", "student"), ("baseline", "baseline")):
        log = read_log(ctx.results[stage]["log"])
        for tag in CURVE_TAGS:
            if tag in log:
                series[f"{label}: {tag}"] = log[tag]
    if not series:
        return None
    return plots.save_figure(plots.training_curves_figure(series, "training curves"), folder / "training_curves.png")


def write_report(ctx: DemoContext, folder: Path) -> Path:
    """Write ``report.md`` (+ figures) into ``folder``; returns its path."""
    from kd_depth_core.eval.report import format_table

    evaluation = ctx.results["evaluate"]["models"]
    rows = [(row["label"], row["mean"]) for row in evaluation.values()]
    table = format_table(rows, TABLE_METRICS, style="markdown")
    size_rows = ["| model | params (M) | GFLOPs @ 640×192 | CPU predict (ms/img, demo size) | scale |",
                 "|---|---:|---:|---:|---|"]
    for row in evaluation.values():
        scale = "metric" if row["metric"] else "relative (median-scaled)"
        if row.get("params_m") is None:  # the classical baseline: no network
            size_rows.append(f"| {row['label']} | — | — | {row['predict_ms']:.1f} | {scale} |")
            continue
        size_rows.append(f"| {row['label']} | {row['params_m']:.2f} | {row['gflops_640x192']:.2f} | "
                         f"{row['predict_ms']:.1f} | {scale} |")
    figures = []
    comparison = ctx.results["evaluate"].get("comparison")
    if comparison:
        shutil.copy(comparison, folder / "comparison.png")
        figures.append(("Depth panels (RGB | ground truth | teacher | student | baseline)", "comparison.png"))
    curves = _curves(ctx, folder)
    if curves:
        figures.append(("Training curves", curves.name))
    stages = "\n".join(f"| {name} | {record.get('seconds', 0):.0f} |" for name, record in ctx.results.items()
                       if name != "report")
    export = ctx.results.get("export", {})
    lines = [
        "# kd-depth demo report", "",
        f"Preset `{ctx.preset_name}`, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()} "
        f"({platform.processor() or platform.machine()}), device `{ctx.device}`.",
        "Everything below was trained from scratch on the built-in synthetic street world "
        f"({ctx.results['synth'].get('frames', '?')} stereo frames) and evaluated on its held-out test sequences.",
        "", "## Accuracy (held-out synthetic test sequences)", "", table, "",
        "## Size and speed", "", *size_rows, "",
    ]
    if export:
        check = export.get("check", {})
        lines += ["## Export", "", f"ONNX model: `{export.get('onnx')}`; largest difference from PyTorch: "
                  + ", ".join(f"{k} = {v:.2e}" for k, v in check.items() if isinstance(v, float)), ""]
    ros: dict[str, Any] = ctx.results.get("ros") or {}
    if ros:
        lines += ["## ROS 2 node (real rclpy, separate processes)", "",
                  "| frames sent | depth received | uncertainty received | points received | output rate (Hz) "
                  "| latency p50 (ms) | latency p95 (ms) |", "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {ros.get('sent', 0)} | {ros.get('depth', 0)} | {ros.get('uncertainty', 0)} | "
                  f"{ros.get('points', 0)} | {ros.get('rate_hz', 0):.1f} | {ros.get('latency_p50_ms', 0):.1f} | "
                  f"{ros.get('latency_p95_ms', 0):.1f} |", ""]
    for title, name in figures:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    lines += ["## Stage times (s)", "", "| stage | seconds |", "|---|---:|", stages, "",
              "## Next steps", "",
              "- Train on your own robot: `kd-depth convert-bag my_bag --out data/my_robot`, then "
              "`kd-depth train --config config/train/teacher_ms_dpt.yaml data.root=data/my_robot` (see README).",
              f"- Run the student in ROS 2: `ros2 launch kd_depth_ros mono_depth.launch.py "
              f"model_path:={ctx.results['student']['model']}`.", ""]
    path = folder / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path

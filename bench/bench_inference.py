"""Inference benchmark (not a test): CPU, 640x192, batch 1 — default student vs the Monodepth2 ResNet18
baseline (latency, parameters, FLOPs), and ONNX Runtime vs eager PyTorch for the student.

    .venv/bin/python bench/bench_inference.py [--iters 30] [--threads N] [--device cpu] [--out runs/bench_inference]

Randomly initialised models (latency does not depend on the weights). Prints a Markdown table and
the two ratios; writes bench.md / bench.json / bench.png to --out. For a wider sweep use `kd-depth bench`.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from kd_depth_core.inference.bench_cli import markdown_table, plot, run_benchmark
from kd_depth_core.models import DEFAULT_STUDENT
from kd_depth_core.utils.atomic import write_text_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch and ONNX Runtime (default: theirs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/bench_inference")
    args = parser.parse_args()
    rows = run_benchmark([DEFAULT_STUDENT, "resnet18_md2"], ["torch", "onnxruntime"], [(192, 640)], [1],
                         device=args.device, warmup=args.warmup, iters=args.iters, cpu_threads=args.threads)
    table = markdown_table(rows)
    by_key = {(r.model, r.backend): r for r in rows if not r.error}
    lines = [table, f"CPU threads: {args.threads or 'library defaults'} (torch uses {torch.get_num_threads()})"]
    student, baseline = by_key.get((DEFAULT_STUDENT, "torch")), by_key.get(("resnet18_md2", "torch"))
    if student and baseline:
        lines.append(f"{DEFAULT_STUDENT} vs resnet18_md2 (eager): {baseline.p50_ms / student.p50_ms:.2f}x faster "
                     f"(p50 {student.p50_ms:.1f} vs {baseline.p50_ms:.1f} ms), "
                     f"{student.params_m:.2f} M vs {baseline.params_m:.2f} M params, "
                     f"{student.gflops:.2f} vs {baseline.gflops:.2f} GFLOPs")
    ort_student = by_key.get((DEFAULT_STUDENT, "onnxruntime"))
    if student and ort_student:
        lines.append(f"{DEFAULT_STUDENT} ONNX Runtime vs eager: p50 {ort_student.p50_ms:.1f} vs "
                     f"{student.p50_ms:.1f} ms ({student.p50_ms / ort_student.p50_ms:.2f}x)")
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "bench.md", report)
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
               for r in rows]
    write_text_atomic(out / "bench.json", json.dumps(records, indent=2))
    plot(rows, out / "bench.png")


if __name__ == "__main__":
    main()

"""`kd-depth compare`: several models (and/or saved results.json files) in one table and one figure.

Every ``--model`` is evaluated on the same samples under the same protocol. With ``--out``:
compare.json, compare.md, compare.png (RGB | GT | each model's prediction for a few images, one
colour bar per row), compare_metrics.png (bars) and, if any model predicts uncertainty,
sparsification/calibration plots.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kd_depth_core.eval.evaluate_cli import (
    add_data_arguments,
    build_protocol,
    default_label,
    load_predict_fn,
    open_samples,
    protocol_for_model,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", type=Path, default=[],
                        help="released model file; repeat for each model")
    parser.add_argument("--label", action="append", default=[],
                        help="table name of each --model, in the same order (default: file stems)")
    parser.add_argument("--results", action="append", type=Path, default=[],
                        help="results.json of an earlier `kd-depth evaluate --out`; repeatable")
    add_data_arguments(parser)
    parser.add_argument("--panels", type=int, default=3, help="images in compare.png")


def _labels(args: argparse.Namespace) -> list[str]:
    if args.label and len(args.label) != len(args.model):
        raise ValueError(f"--label: given {len(args.label)} label(s) for {len(args.model)} --model(s); "
                         f"give one per model or none")
    labels = list(args.label) or [default_label(m) for m in args.model]
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


def run(args: argparse.Namespace) -> int:
    from kd_depth_core.eval.evaluate import accepts_keyword, evaluate
    from kd_depth_core.eval.report import comparison_report, comparison_rows, load_result, table_metrics, write_json
    from kd_depth_core.utils.atomic import write_text_atomic

    if not args.model and not args.results:
        print("kd-depth compare: give at least one --model or --results", file=sys.stderr)
        return 2
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():  # before the long run
        print(f"kd-depth compare: --out {args.out} is a file; name a folder for the results", file=sys.stderr)
        return 2
    try:
        results = [load_result(path) for path in args.results]
        evaluated = []
        if args.model:
            labels = _labels(args)
            build_protocol(args)  # option errors before any model loads
            samples = open_samples(args)
            for model, label in zip(args.model, labels):
                predict_fn, metric = load_predict_fn(model, args)
                stereo = accepts_keyword(predict_fn, "right")  # the same frames, with their right images
                result = evaluate(predict_fn, open_samples(args, right=True) if stereo else samples,
                                  protocol_for_model(args, metric), label=label,
                                  num_visuals=args.panels if args.out is not None else 0,
                                  progress=not args.no_progress)
                evaluated.append(result)
                data = result.to_dict()
                data["model"] = str(model)
                results.append(data)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"kd-depth compare: {exc}", file=sys.stderr)
        return 2
    print(comparison_report(results))
    if args.out is not None:
        from kd_depth_core.eval import plots

        out = Path(args.out)
        written = [write_json(out / "compare.json", {"results": results})]
        write_text_atomic(out / "compare.md", comparison_report(results, style="markdown"))
        written.append(out / "compare.md")
        written.append(plots.save_figure(plots.metrics_bar_figure(comparison_rows(results), table_metrics(results[0])),
                                         out / "compare_metrics.png"))
        if evaluated and evaluated[0].visuals:
            rows = [{r.label: r.visuals[i] for r in evaluated} for i in range(len(evaluated[0].visuals))]
            written.append(plots.save_figure(plots.comparison_figure(rows), out / "compare.png"))
        summaries = {r["label"]: r["uncertainty"] for r in results if r.get("uncertainty")}
        if summaries:
            written.append(plots.save_figure(plots.sparsification_figure(summaries), out / "sparsification.png"))
            written.append(plots.save_figure(plots.calibration_figure(summaries), out / "calibration.png"))
        print(f"wrote {len(written)} files to {out}")
    return 0

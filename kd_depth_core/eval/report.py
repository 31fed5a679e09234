"""Result tables (console, Markdown) and JSON files.

Functions take the JSON form of a result (``EvaluationResult.to_dict()`` or a loaded
``results.json``), so fresh and saved results print the same way.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kd_depth_core.eval.metrics import LOWER_IS_BETTER, METRIC_NAMES
from kd_depth_core.utils.atomic import write_text_atomic

METRIC_LABELS = {"abs_rel": "AbsRel", "sq_rel": "SqRel", "rmse": "RMSE", "rmse_log": "RMSElog",
                 "log10": "log10", "silog": "SILog", "a1": "δ<1.25", "a2": "δ<1.25²", "a3": "δ<1.25³"}
DEFAULT_TABLE = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf floats by None and numpy scalars by Python numbers (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as strict, indented JSON (NaN -> null), atomically."""
    path = Path(path)
    write_text_atomic(path, json.dumps(_json_safe(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def read_json(path: str | os.PathLike) -> Any:
    """Load a JSON file with a clear error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: results file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """A saved ``results.json``; checks that it holds a result (label, protocol, mean)."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("mean"), dict):
        raise ValueError(f"{path}: not a kd-depth results file (expected a JSON object with 'mean', "
                         f"'protocol' and 'label', as written by `kd-depth evaluate --out`)")
    data.setdefault("label", Path(path).parent.name or Path(path).stem)
    return data


def _format_value(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def format_table(rows: Sequence[tuple[str, dict[str, Any]]], metrics: Sequence[str] = DEFAULT_TABLE, *,
                 style: str = "console", digits: int = 3, mark_best: bool = True) -> str:
    """A table with one row per (label, metrics dict); ``style`` "console" or "markdown".

    With several rows, ``mark_best`` bolds (Markdown) or stars (console) the best value per column.
    """
    if style not in ("console", "markdown"):
        raise ValueError(f"style: expected 'console' or 'markdown', got {style!r}")
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"metrics: unknown {unknown}; valid: {METRIC_NAMES}")
    best: dict[str, float] = {}
    if mark_best and len(rows) > 1:
        for metric in metrics:
            values = [r[metric] for _, r in rows if isinstance(r.get(metric), (int, float))
                      and math.isfinite(r[metric])]
            if values:
                best[metric] = min(values) if LOWER_IS_BETTER[metric] else max(values)
    header = ["model"] + [METRIC_LABELS[m] + ("↓" if LOWER_IS_BETTER[m] else "↑") for m in metrics]
    body = []
    for label, values in rows:
        cells = [label]
        for metric in metrics:
            text = _format_value(values.get(metric), digits)
            if metric in best and values.get(metric) == best[metric]:
                text = f"**{text}**" if style == "markdown" else f"{text}*"
            cells.append(text)
        body.append(cells)
    if style == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(metrics)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                       for i, cell in enumerate(row)) for row in [header] + body]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def table_metrics(result: dict[str, Any]) -> list[str]:
    """The protocol's table metrics of a result dict (the KITTI set if unknown)."""
    return list((result.get("protocol") or {}).get("table_metrics") or DEFAULT_TABLE)


def _extras(result: dict[str, Any], markdown: bool) -> list[str]:
    lines = []
    ratio = result.get("scale_ratio")
    if ratio:
        lines.append(f"Median scaling ratios: median {ratio['median']:.3f}, std {ratio['std']:.3f} "
                     f"(std of ratio/median, as Monodepth2 reports it)")
    uncertainty = result.get("uncertainty")
    if uncertainty:
        ause = ", ".join(f"{METRIC_LABELS.get(k, k)} {v:.4f}" for k, v in uncertainty["ause"].items())
        lines.append(f"AUSE: {ause}; calibration error (mean |observed − expected| within k·σ): "
                     f"{uncertainty['calibration']['error']:.3f}")
    if result.get("predict_ms") is not None:
        lines.append(f"Mean prediction time: {result['predict_ms']:.1f} ms/image (includes pre/post-processing)")
    return [f"- {line}" for line in lines] if markdown else lines


def console_report(result: dict[str, Any]) -> str:
    """The standard table of one result plus scale-ratio, AUSE and timing lines."""
    protocol = result.get("protocol") or {}
    lines = [f"{result.get('label', 'model')} on {protocol.get('name', '?')}: {result.get('num_images', '?')} images"
             + ("" if protocol.get("median_scaling", True) else " (no median scaling)"),
             format_table([(result.get("label", "model"), result["mean"])], table_metrics(result))]
    return "\n".join(lines + _extras(result, markdown=False))


def markdown_report(result: dict[str, Any], worst: int = 5) -> str:
    """Markdown page: protocol, table, extras and the ``worst`` images by AbsRel."""
    protocol = result.get("protocol") or {}
    lines = [f"# {result.get('label', 'model')} — {protocol.get('name', '?')}", "",
             protocol.get("description", ""), "",
             f"Images: {result.get('num_images')}; median scaling: {protocol.get('median_scaling')}; "
             f"depth range [{protocol.get('min_depth')}, {protocol.get('max_depth')}] m; crop: {protocol.get('crop')}.",
             "", format_table([(result.get("label", "model"), result["mean"])], table_metrics(result),
                              style="markdown"), ""]
    lines += _extras(result, markdown=True)
    per_image = [r for r in result.get("per_image") or [] if r.get("abs_rel") is not None]
    if per_image and worst > 0:
        lines += ["", f"## Worst {min(worst, len(per_image))} images by AbsRel", "",
                  "| image | AbsRel | RMSE | δ<1.25 |", "|---|---:|---:|---:|"]
        for row in sorted(per_image, key=lambda r: r["abs_rel"], reverse=True)[:worst]:
            lines.append(f"| {row['name']} | {row['abs_rel']:.3f} | {row['rmse']:.3f} | {row['a1']:.3f} |")
    return "\n".join(lines) + "\n"


def comparison_rows(results: Sequence[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(r.get("label", f"model {i}"), r["mean"]) for i, r in enumerate(results)]


def comparison_report(results: Sequence[dict[str, Any]], style: str = "console") -> str:
    """One table for several results (same protocol expected; a note if they differ)."""
    if not results:
        raise ValueError("comparison_report: no results")
    names = sorted({(r.get("protocol") or {}).get("name", "?") for r in results})
    counts = sorted({r.get("num_images") for r in results}, key=str)
    lines = []
    if len(names) > 1 or len(counts) > 1:
        lines.append(f"note: results differ in protocol {names} or image count {counts}; not directly comparable")
    heading = f"Comparison on {names[0]} ({counts[0]} images)" if len(names) == 1 else "Comparison"
    lines.append(f"## {heading}\n" if style == "markdown" else heading)
    lines.append(format_table(comparison_rows(results), table_metrics(results[0]), style=style))
    for result in results:
        extra = _extras(result, markdown=style == "markdown")
        if extra:
            lines.append(("\n" if style == "markdown" else "") + f"{result.get('label')}:")
            lines += extra
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | os.PathLike, result: dict[str, Any]) -> dict[str, Path]:
    """``results.json`` and ``results.md`` under ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = {"json": write_json(out_dir / "results.json", result), "markdown": out_dir / "results.md"}
    write_text_atomic(paths["markdown"], markdown_report(result))
    return paths

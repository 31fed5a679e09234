"""Figures (matplotlib ``Figure`` objects rendered by Agg; no pyplot, no global backend change): depth panels, error maps, sparsification,
calibration and training curves. Every ``save_*`` writes a PNG atomically and returns its path.

Depth colour map: ``magma_r`` (near = bright); ground truth and predictions of one figure share
one colour scale and one colour bar. Sparse ground truth (LiDAR) is dilated for display only.
"""
from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.figure import Figure

from kd_depth_core.eval.evaluate import VisualSample
from kd_depth_core.utils.atomic import write_bytes_atomic

DEPTH_CMAP, ERROR_CMAP, SIGMA_CMAP = "magma_r", "inferno", "viridis"


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Render ``fig`` to PNG and write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    path = Path(path)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def display_map(values: np.ndarray, valid: np.ndarray | None = None) -> np.ma.MaskedArray:
    """Masked array for imshow; sparse maps (< 30 % valid) are dilated 5x5 so points are visible."""
    values = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(values) & (values > 0) if valid is None else (valid & np.isfinite(values))
    if valid.mean() < 0.3 and valid.any():
        filled = np.where(valid, values, 0.0).astype(np.float32)
        dilated = cv2.dilate(filled, np.ones((5, 5), np.uint8))
        grown = cv2.dilate(valid.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        values = np.where(valid, values, dilated)
        valid = grown
    return np.ma.masked_array(values, mask=~valid)


def depth_range(*maps: np.ndarray) -> tuple[float, float]:
    """Shared colour range: 1st–99th percentile of the valid ground truth (first map) or all maps."""
    for candidate in maps:
        data = np.asarray(candidate, dtype=np.float64)
        data = data[np.isfinite(data) & (data > 0)]
        if data.size:
            low, high = np.percentile(data, [1, 99])
            return float(low), float(max(high, low + 1e-6))
    return 0.0, 1.0


def _panel_layout(height: int, width: int, count: int) -> tuple[int, int, tuple[float, float]]:
    """(rows, cols, figsize): wide images stack vertically, others side by side."""
    aspect = width / max(height, 1)
    if aspect > 2.0:
        return count, 1, (9.0, 9.0 / aspect * count * 1.15)
    return 1, count, (3.6 * count, 3.6 / aspect + 0.6)


def depth_panel_figure(visual: VisualSample, title: str | None = None, max_error: float = 0.5) -> Figure:
    """RGB | ground truth | prediction | AbsRel error | uncertainty (if any); GT and prediction share a colour bar."""
    panels = ["image", "gt", "pred", "error"] + (["sigma"] if visual.uncertainty is not None else [])
    gt_h, gt_w = visual.gt.shape
    rows, cols, size = _panel_layout(gt_h, gt_w, len(panels))
    fig = Figure(figsize=size)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    vmin, vmax = depth_range(visual.gt, visual.pred)
    image = cv2.resize(visual.image, (gt_w, gt_h), interpolation=cv2.INTER_AREA) \
        if visual.image.shape[:2] != (gt_h, gt_w) else visual.image
    axes[0].imshow(image)
    axes[0].set_title(visual.name if len(visual.name) < 60 else visual.name[-60:], fontsize=8)
    gt_im = axes[1].imshow(display_map(visual.gt), cmap=DEPTH_CMAP, vmin=vmin, vmax=vmax)
    axes[1].set_title("ground truth (m)", fontsize=8)
    axes[2].imshow(display_map(visual.pred), cmap=DEPTH_CMAP, vmin=vmin, vmax=vmax)
    axes[2].set_title("prediction (m)", fontsize=8)
    fig.colorbar(gt_im, ax=[axes[1], axes[2]], fraction=0.03, pad=0.02)
    err_im = axes[3].imshow(display_map(visual.error, np.isfinite(visual.error)), cmap=ERROR_CMAP, vmin=0,
                            vmax=max_error)
    axes[3].set_title("|pred − gt| / gt", fontsize=8)
    fig.colorbar(err_im, ax=axes[3], fraction=0.03, pad=0.02)
    if visual.uncertainty is not None:
        sigma = np.asarray(visual.uncertainty, dtype=np.float64)
        s_low, s_high = depth_range(sigma)
        sig_im = axes[4].imshow(sigma, cmap=SIGMA_CMAP, vmin=s_low, vmax=s_high)
        axes[4].set_title("uncertainty σ (m)", fontsize=8)
        fig.colorbar(sig_im, ax=axes[4], fraction=0.03, pad=0.02)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_depth_panel(visual: VisualSample, path: str | os.PathLike, title: str | None = None) -> Path:
    return save_figure(depth_panel_figure(visual, title), path)


def comparison_figure(rows: Sequence[Mapping[str, VisualSample]]) -> Figure:
    """One row per image: RGB | ground truth | each model's prediction, one shared colour bar per row.

    ``rows``: for each image, {model label: that model's VisualSample of the image}.
    """
    if not rows:
        raise ValueError("comparison_figure: no images")
    labels = list(rows[0])
    cols = 2 + len(labels)
    gt_h, gt_w = next(iter(rows[0].values())).gt.shape
    aspect = gt_w / max(gt_h, 1)
    width = 3.2 * cols
    fig = Figure(figsize=(width, len(rows) * (3.2 / aspect + 0.5)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, row in enumerate(rows):
        first = next(iter(row.values()))
        vmin, vmax = depth_range(first.gt, *(v.pred for v in row.values()))
        image = cv2.resize(first.image, first.gt.shape[::-1], interpolation=cv2.INTER_AREA) \
            if first.image.shape[:2] != first.gt.shape else first.image
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(first.name[-40:], fontsize=7)
        im = axes[r, 1].imshow(display_map(first.gt), cmap=DEPTH_CMAP, vmin=vmin, vmax=vmax)
        axes[r, 1].set_title("ground truth", fontsize=8)
        for c, label in enumerate(labels, start=2):
            axes[r, c].imshow(display_map(row[label].pred), cmap=DEPTH_CMAP, vmin=vmin, vmax=vmax)
            axes[r, c].set_title(label, fontsize=8)
        fig.colorbar(im, ax=list(axes[r, 1:]), fraction=0.02, pad=0.01, label="m")
        for ax in axes[r]:
            ax.set_axis_off()
    return fig


def sparsification_figure(summaries: Mapping[str, dict[str, Any]], metrics: Sequence[str] | None = None) -> Figure:
    """Sparsification curves (solid) and oracles (dashed), one subplot per metric, one colour per model.

    ``summaries``: {model label: UncertaintyAccumulator.summary()}; AUSE in the legend.
    """
    if not summaries:
        raise ValueError("sparsification_figure: no uncertainty summaries")
    metrics = list(metrics or next(iter(summaries.values()))["ause"])
    fig = Figure(figsize=(4.6 * len(metrics), 3.8))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for index, (label, summary) in enumerate(summaries.items()):
            color = f"C{index}"
            fractions = summary["fractions"]
            ax.plot(fractions, summary["curves"][metric], color=color,
                    label=f"{label} (AUSE {summary['ause'][metric]:.4f})")
            ax.plot(fractions, summary["oracle"][metric], color=color, linestyle="--", label=f"{label} oracle")
        ax.set_xlabel("fraction removed (most uncertain first)", fontsize=8)
        ax.set_ylabel({"a1": "1 − δ<1.25"}.get(metric, metric), fontsize=8)
        ax.set_title(f"Sparsification ({metric})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def calibration_figure(summaries: Mapping[str, dict[str, Any]]) -> Figure:
    """Observed vs expected fraction within k·σ (Gaussian), one line per model, ideal diagonal."""
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="ideal")
    for index, (label, summary) in enumerate(summaries.items()):
        calibration = summary["calibration"]
        ax.plot(calibration["expected"], calibration["observed"], marker=".", color=f"C{index}",
                label=f"{label} (error {calibration['error']:.3f})")
    ax.set_xlabel("expected fraction within k·σ (Gaussian)")
    ax.set_ylabel("observed fraction")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def metrics_bar_figure(rows: Sequence[tuple[str, Mapping[str, float]]], metrics: Sequence[str]) -> Figure:
    """Grouped bars: one group per metric, one bar per model."""
    fig = Figure(figsize=(1.2 + 1.1 * len(metrics) * max(1, len(rows)) / 2, 3.6))
    ax = fig.subplots()
    width = 0.8 / max(len(rows), 1)
    positions = np.arange(len(metrics))
    for index, (label, values) in enumerate(rows):
        heights = [values.get(m) if values.get(m) is not None else np.nan for m in metrics]
        ax.bar(positions + index * width, heights, width, label=label)
    ax.set_xticks(positions + width * (len(rows) - 1) / 2, list(metrics))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def training_curves_figure(series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                           title: str | None = None) -> Figure:
    """One subplot per scalar tag: {tag: (steps, values)}."""
    if not series:
        raise ValueError("training_curves_figure: no scalar series")
    count = len(series)
    cols = min(count, 3)
    rows = (count + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (tag, (steps, values)) in zip(axes, series.items()):
        ax.plot(steps, values, linewidth=1.0)
        ax.set_title(tag, fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[count:]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def read_tensorboard_scalars(logdir: str | os.PathLike, tags: Sequence[str] | None = None
                             ) -> dict[str, tuple[list[int], list[float]]]:
    """{tag: (steps, values)} of the scalars in a TensorBoard log folder (all tags unless ``tags``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = Path(logdir)
    if not logdir.is_dir():
        raise FileNotFoundError(f"{logdir}: TensorBoard log folder not found")
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    accumulator.Reload()
    available = accumulator.Tags().get("scalars", [])
    wanted = list(tags) if tags is not None else sorted(available)
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise ValueError(f"{logdir}: no scalar tag(s) {unknown}; available: {sorted(available)}")
    return {tag: ([e.step for e in accumulator.Scalars(tag)], [float(e.value) for e in accumulator.Scalars(tag)])
            for tag in wanted}

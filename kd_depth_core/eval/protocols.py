"""Evaluation protocols: which pixels count, caps, crops, scaling and the table each benchmark reports.

A :class:`Protocol` holds every setting of :func:`kd_depth_core.eval.metrics.score_image` plus
what happens before scoring (a centred input crop for Make3D, how the prediction is resized to
the ground truth). ``get_protocol(name, **overrides)`` returns one; ``median_scaling`` (and any
other field) can be overridden, e.g. off for metric models.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from kd_depth_core.eval.metrics import METRIC_NAMES, ImageScore, score_image

KITTI_TABLE = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
RESIZE_MODES = ("linear_disparity", "nearest")


@dataclass(frozen=True)
class Protocol:
    """Settings of one benchmark protocol (depths in metres)."""

    name: str
    description: str
    min_depth: float = 1e-3  # predictions are clipped to [min_depth, max_depth]
    max_depth: float = 80.0
    gt_min: float | None = None  # ground truth scored if gt_min < gt < gt_max; None -> min_depth / max_depth
    gt_max: float | None = None  # math.inf: no upper bound
    crop: str | tuple[float, float, float, float] | None = None  # see metrics.crop_box
    median_scaling: bool = True  # per-image median scaling (self-supervised mono models); off for metric models
    rmse_log_base: float = math.e
    center_crop_aspect: float | None = None  # width/height of a centred crop of image and GT before predicting
    resize: str = "linear_disparity"  # how the prediction is resized to the ground truth's size
    table_metrics: tuple[str, ...] = KITTI_TABLE
    expected_images: int | None = None  # size of the official test set (a warning if it differs)
    reference: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"protocol {self.name}: expected 0 < min_depth < max_depth, "
                             f"got {self.min_depth}, {self.max_depth}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"protocol {self.name}: resize: expected one of {RESIZE_MODES}, got {self.resize!r}")
        unknown = [m for m in self.table_metrics if m not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"protocol {self.name}: table_metrics: unknown {unknown}; valid: {METRIC_NAMES}")

    def metric_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`score_image` / :func:`compute_depth_metrics` for this protocol."""
        return {"min_depth": self.min_depth, "max_depth": self.max_depth, "gt_min": self.gt_min,
                "gt_max": self.gt_max, "crop": self.crop, "median_scaling": self.median_scaling,
                "rmse_log_base": self.rmse_log_base}

    def score(self, gt: np.ndarray, pred: np.ndarray, name: str = "image", mask: np.ndarray | None = None
              ) -> ImageScore:
        """Score one prediction already at the ground truth's size."""
        return score_image(gt, pred, name=name, mask=mask, **self.metric_kwargs())

    def replace(self, **overrides: Any) -> Protocol:
        """A copy with some fields changed (unknown field names raise a clear error)."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"protocol {self.name}: unknown setting(s) {unknown}; valid: {sorted(fields)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["crop"] = list(self.crop) if isinstance(self.crop, tuple) else self.crop
        data["table_metrics"] = list(self.table_metrics)
        data["gt_max"] = None if self.gt_max is None else (str(self.gt_max) if math.isinf(self.gt_max)
                                                          else self.gt_max)
        data["rmse_log_base"] = "e" if self.rmse_log_base == math.e else self.rmse_log_base
        return data


PROTOCOLS: dict[str, Protocol] = {
    p.name: p for p in (
        Protocol(
            name="kitti_eigen",
            description="KITTI raw, Eigen test split (697 images), projected Velodyne ground truth; "
                        "1e-3 < gt < 80 m, Garg crop, prediction clipped to [1e-3, 80] m",
            crop="garg", expected_images=697,
            reference="Eigen et al. NIPS 2014; Garg et al. ECCV 2016; Monodepth2 evaluate_depth.py"),
        Protocol(
            name="kitti_eigen_benchmark",
            description="KITTI Eigen test images with improved (accumulated) ground truth (652 images); "
                        "every gt > 0 scored, no crop, prediction clipped to [1e-3, 80] m (Monodepth2's "
                        "eigen_benchmark convention)",
            gt_min=0.0, gt_max=math.inf, crop=None, expected_images=652,
            reference="Uhrig et al. 3DV 2017 (improved GT); Monodepth2 evaluate_depth.py"),
        Protocol(
            name="nyu",
            description="NYUv2 official test split (654 images); Eigen crop rows 45:471 cols 41:601 at 480x640, "
                        "1e-3 < gt < 10 m",
            max_depth=10.0, crop="nyu", expected_images=654,
            table_metrics=("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "a1", "a2", "a3"),
            reference="Eigen et al. NIPS 2014; Silberman et al. ECCV 2012"),
        Protocol(
            name="make3d",
            description="Make3D Test134; centred 2:1 crop of image and ground truth, C1 (only gt < 70 m "
                        "scored), prediction resized nearest to the 305x55 laser grid, RMSE(log) in log10",
            max_depth=70.0, center_crop_aspect=2.0, resize="nearest", rmse_log_base=10.0,
            table_metrics=("abs_rel", "sq_rel", "rmse", "rmse_log"), expected_images=134,
            reference="Saxena et al. 2009; protocol of Godard et al. CVPR 2017 / Zhou et al. CVPR 2017"),
        Protocol(
            name="drivingstereo",
            description="DrivingStereo left images with projected LiDAR depth (png/256); 1e-3 < gt < 80 m, no crop",
            reference="Yang et al. CVPR 2019; caps as for KITTI (papers differ: compare like with like)"),
        Protocol(
            name="sequence",
            description="kd-depth training-sequence format with depth; cap configurable (default 80 m), no crop",
            table_metrics=("abs_rel", "sq_rel", "rmse", "rmse_log", "silog", "a1", "a2", "a3"),
            reference="docs/dataset_format.md"),
    )
}


def get_protocol(name: str, **overrides: Any) -> Protocol:
    """The protocol called ``name``, with optional field overrides (e.g. ``median_scaling=False``)."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol: unknown protocol {name!r}; choose from {sorted(PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    return protocol.replace(**overrides) if overrides else protocol


def center_crop(image: np.ndarray, gt: np.ndarray, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Centred crop of ``image`` to width/height = ``aspect`` and the same band of ``gt``.

    The image keeps ``int(W / aspect)`` rows (or ``int(H * aspect)`` columns when it is too wide);
    ``gt`` (any resolution covering the same view) keeps the same fraction of its rows (columns),
    rounded. Make3D: a 2272x1704 (rows x cols) image -> rows 710:1562; its 55x305 laser grid -> rows 17:38.
    """
    height, width = image.shape[:2]
    gt_h, gt_w = gt.shape[:2]
    keep_rows = int(width / aspect)
    if keep_rows <= height:
        top = (height - keep_rows) // 2
        gt_rows = round(gt_h * keep_rows / height)
        gt_top = (gt_h - gt_rows) // 2
        return image[top:top + keep_rows], gt[gt_top:gt_top + gt_rows]
    keep_cols = int(height * aspect)
    left = (width - keep_cols) // 2
    gt_cols = round(gt_w * keep_cols / width)
    gt_left = (gt_w - gt_cols) // 2
    return image[:, left:left + keep_cols], gt[:, gt_left:gt_left + gt_cols]


def resize_prediction(pred: np.ndarray, shape: tuple[int, int], mode: str = "linear_disparity") -> np.ndarray:
    """Resize a depth map (metres) to ``shape`` (H,W).

    ``linear_disparity`` interpolates 1/depth bilinearly (Monodepth2 resizes the disparity);
    ``nearest`` picks the nearest pixel. Non-positive depths stay non-positive-safe (clamped at 1e-6 m).
    """
    pred = np.asarray(pred, dtype=np.float64)
    if pred.shape == tuple(shape):
        return pred
    size = (int(shape[1]), int(shape[0]))
    if mode == "nearest":
        return cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST)
    if mode == "linear_disparity":
        disp = 1.0 / np.maximum(pred, 1e-6)
        return 1.0 / cv2.resize(disp, size, interpolation=cv2.INTER_LINEAR)
    raise ValueError(f"resize: expected one of {RESIZE_MODES}, got {mode!r}")

"""Depth metrics: the one implementation used by evaluation, training-time validation and reports.

Everything is numpy with float64 accumulation; torch tensors are accepted and converted
(detached, on the CPU) so the trainer calls the very same code.

Per image (the standard KITTI/NYU protocol, Eigen et al. 2014, as in Monodepth2):
1. valid = ``gt_min < gt < gt_max`` (``gt_max=math.inf``: no upper bound), finite, inside the crop,
   and inside an optional extra mask;
2. optional median scaling: ``ratio = median(gt[valid]) / median(pred[valid])``, ``pred *= ratio``;
3. prediction clipped to ``[min_depth, max_depth]``;
4. the errors below on the valid pixels. A dataset's result is the mean over images.

Metrics (gt, p in metres; e = ln p − ln gt):
- ``abs_rel`` mean(|gt − p| / gt); ``sq_rel`` mean((gt − p)² / gt); ``rmse`` sqrt(mean((gt − p)²)) m;
- ``rmse_log`` sqrt(mean((log gt − log p)²)), natural log (log10 with ``rmse_log_base=10``, Make3D);
- ``log10`` mean(|log10 gt − log10 p|); ``silog`` 100·sqrt(mean(e²) − mean(e)²);
- ``a1``, ``a2``, ``a3``: fraction with max(gt/p, p/gt) < 1.25, 1.25², 1.25³.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

METRIC_NAMES: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "a1", "a2", "a3")
"""Every metric :func:`depth_errors` returns, in table order."""
LOWER_IS_BETTER: dict[str, bool] = {name: name not in ("a1", "a2", "a3") for name in METRIC_NAMES}
"""True for errors, False for the δ accuracies."""

CROP_NAMES = ("garg", "eigen", "nyu")

# Fractions of (height, height, width, width): [top, bottom) rows, [left, right) columns.
_GARG_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # Garg et al. ECCV 2016 (KITTI)
_EIGEN_FRACTIONS = (0.3324324, 0.91351351, 0.0359477, 0.96405229)  # Eigen et al. NIPS 2014 (KITTI)
_NYU_BOX_480x640 = (45, 471, 41, 601)  # Eigen's NYUv2 crop, defined at 480x640


class EmptyMaskError(ValueError):
    """No ground-truth pixel of an image survives the validity mask and the crop."""


def to_numpy(array: Any, name: str = "array") -> np.ndarray:
    """numpy array (float64) from numpy or a torch tensor (detached, moved to the CPU)."""
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().to("cpu").double().numpy()
    try:
        return np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a numeric array or tensor, got {type(array).__name__} ({exc})") from None


def crop_box(crop: str | Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel bounds (bottom/right exclusive) of a named or fractional crop.

    ``garg`` and ``eigen`` use Monodepth2's truncation: ``int32(fraction * size)``, e.g. Garg at
    375x1242 is rows 153:371, cols 44:1197. ``nyu`` is rows 45:471, cols 41:601 at 480x640 and
    scales proportionally (rounded) at other sizes. A 4-tuple gives (top, bottom, left, right)
    fractions of (H, H, W, W).
    """
    if isinstance(crop, str):
        if crop == "garg":
            fractions: Sequence[float] = _GARG_FRACTIONS
        elif crop == "eigen":
            fractions = _EIGEN_FRACTIONS
        elif crop == "nyu":
            t, b, left, r = _NYU_BOX_480x640
            if (height, width) == (480, 640):
                return t, b, left, r
            return (round(t * height / 480), round(b * height / 480), round(left * width / 640),
                    round(r * width / 640))
        else:
            raise ValueError(f"crop: unknown crop {crop!r}; expected one of {CROP_NAMES}, None or 4 fractions")
    else:
        fractions = tuple(float(f) for f in crop)
        if len(fractions) != 4 or not all(0.0 <= f <= 1.0 for f in fractions):
            raise ValueError(f"crop: expected 4 fractions in [0, 1] (top, bottom, left, right), got {crop!r}")
    box = np.array([fractions[0] * height, fractions[1] * height, fractions[2] * width, fractions[3] * width])
    top, bottom, left, right = (int(v) for v in box.astype(np.int32))
    return top, bottom, left, right


def crop_mask(crop: str | Sequence[float] | None, height: int, width: int) -> np.ndarray:
    """Boolean (H,W) mask that is True inside the crop (everywhere when ``crop`` is None)."""
    mask = np.zeros((height, width), dtype=bool)
    if crop is None:
        mask[:] = True
        return mask
    top, bottom, left, right = crop_box(crop, height, width)
    mask[top:bottom, left:right] = True
    return mask


def valid_mask(gt: np.ndarray, *, gt_min: float, gt_max: float,
               crop: str | Sequence[float] | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """Pixels that are scored: finite ``gt_min < gt < gt_max`` (``math.inf``: no upper bound), in crop and mask."""
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise ValueError(f"gt: expected a (H,W) depth map, got shape {gt.shape}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(gt) & (gt > gt_min) & (gt < gt_max)
    valid &= crop_mask(crop, *gt.shape)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != gt.shape:
            raise ValueError(f"mask: expected shape {gt.shape} (the ground truth's), got {mask.shape}")
        valid &= mask
    return valid


def median_scale_ratio(gt_valid: np.ndarray, pred_valid: np.ndarray) -> float:
    """Per-image median scaling factor ``median(gt) / median(pred)`` over the valid pixels."""
    median_pred = float(np.median(pred_valid))
    if not median_pred > 0:
        raise ValueError(f"median scaling: the median prediction is {median_pred}; expected a positive depth")
    return float(np.median(gt_valid)) / median_pred


def depth_errors(gt: np.ndarray, pred: np.ndarray, rmse_log_base: float = math.e) -> dict[str, float]:
    """All :data:`METRIC_NAMES` for 1-D arrays of valid, positive depths (metres), in float64."""
    gt = np.asarray(gt, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"gt/pred: expected the same number of pixels, got {gt.size} and {pred.size}")
    if gt.size == 0:
        raise EmptyMaskError("depth_errors: no pixels to score")
    if np.any(gt <= 0) or np.any(pred <= 0):
        raise ValueError("depth_errors: depths must be positive (mask and clip them first)")
    diff = gt - pred
    log_diff = np.log(pred) - np.log(gt)  # e = ln p − ln gt
    ratio = np.maximum(gt / pred, pred / gt)
    rmse_log = np.sqrt(np.mean(log_diff ** 2))
    if rmse_log_base != math.e:
        rmse_log /= math.log(rmse_log_base)
    silog_var = float(np.var(log_diff))  # = mean(e²) − mean(e)², computed two-pass (no cancellation)
    return {
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff ** 2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff ** 2))),
        "rmse_log": float(rmse_log),
        "log10": float(np.mean(np.abs(log_diff)) / math.log(10.0)),
        "silog": 100.0 * math.sqrt(silog_var),
        "a1": float(np.mean(ratio < 1.25)),
        "a2": float(np.mean(ratio < 1.25 ** 2)),
        "a3": float(np.mean(ratio < 1.25 ** 3)),
    }


@dataclass
class ImageScore:
    """One image's result: metrics, the scale ratio, the scored mask and the aligned prediction."""

    name: str
    metrics: dict[str, float]
    scale_ratio: float  # 1.0 without median scaling
    mask: np.ndarray  # (H,W) bool, the scored pixels
    pred: np.ndarray  # (H,W) float64 prediction after scaling and clipping (metres)

    @property
    def num_pixels(self) -> int:
        return int(self.mask.sum())


def _as_image(array: Any, name: str) -> np.ndarray:
    image = to_numpy(array, name)
    while image.ndim > 2 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise ValueError(f"{name}: expected one (H,W) depth map, got shape {image.shape}")
    return image


def score_image(gt: Any, pred: Any, *, min_depth: float = 1e-3, max_depth: float = 80.0,
                gt_min: float | None = None, gt_max: float | None = None,
                crop: str | Sequence[float] | None = None, median_scaling: bool = False,
                rmse_log_base: float = math.e, mask: Any = None, name: str = "image") -> ImageScore:
    """Score one depth map against its ground truth (both (H,W) metres; see the module docstring).

    ``gt_min`` defaults to ``min_depth`` and ``gt_max`` to ``max_depth`` (``math.inf``: no upper
    bound). The prediction is clipped to [min_depth, max_depth] after median scaling.
    Raises :class:`EmptyMaskError` naming ``name`` when no pixel is valid.
    """
    gt = _as_image(gt, f"{name}: gt")
    pred = _as_image(pred, f"{name}: pred")
    if gt.shape != pred.shape:
        raise ValueError(f"{name}: pred shape {pred.shape} differs from gt shape {gt.shape} (resize it first)")
    if not 0 < min_depth < max_depth:
        raise ValueError(f"min_depth/max_depth: expected 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
    lower = min_depth if gt_min is None else gt_min
    upper = max_depth if gt_max is None else gt_max
    valid = valid_mask(gt, gt_min=lower, gt_max=upper, crop=crop,
                       mask=None if mask is None else _as_image(mask, f"{name}: mask") > 0)
    if not valid.any():
        bound = f"{lower} < gt < {upper}" if math.isfinite(upper) else f"gt > {lower}"
        raise EmptyMaskError(f"{name}: no valid ground-truth pixel ({bound} m, crop={crop!r}); "
                             f"cannot score this image")
    pred_valid = pred[valid]
    if not np.all(np.isfinite(pred_valid)):
        raise ValueError(f"{name}: the prediction has {int((~np.isfinite(pred_valid)).sum())} NaN/inf values "
                         f"at valid ground-truth pixels")
    ratio = 1.0
    if median_scaling:
        ratio = median_scale_ratio(gt[valid], pred_valid)
    aligned = np.clip(pred * ratio, min_depth, max_depth)
    metrics = depth_errors(gt[valid], aligned[valid], rmse_log_base=rmse_log_base)
    return ImageScore(name=name, metrics=metrics, scale_ratio=ratio, mask=valid, pred=aligned)


def _split_batch(array: Any, name: str) -> list[np.ndarray]:
    data = to_numpy(array, name)
    if data.ndim == 2:
        return [data]
    if data.ndim == 4 and data.shape[1] == 1:
        data = data[:, 0]
    if data.ndim != 3:
        raise ValueError(f"{name}: expected (H,W), (B,H,W) or (B,1,H,W), got shape {data.shape}")
    return list(data)


def compute_depth_metrics(gt: Any, pred: Any, *, min_depth: float = 1e-3, max_depth: float = 80.0,
                          gt_min: float | None = None, gt_max: float | None = None,
                          crop: str | Sequence[float] | None = None, median_scaling: bool = False,
                          rmse_log_base: float = math.e, mask: Any = None, names: Sequence[str] | None = None,
                          skip_empty: bool = False) -> dict[str, float]:
    """Metrics of one map (H,W) or the per-image mean of a batch (B,H,W) / (B,1,H,W); numpy or torch.

    Returns every metric of :data:`METRIC_NAMES` plus ``scale_ratio`` (mean over images; 1.0
    without median scaling) and ``num_images``. An image without a valid pixel raises
    :class:`EmptyMaskError` naming it, unless ``skip_empty`` (then it is left out; if all are
    empty the result has ``num_images`` 0 and NaN metrics).
    """
    gts, preds = _split_batch(gt, "gt"), _split_batch(pred, "pred")
    masks = _split_batch(mask, "mask") if mask is not None else [None] * len(gts)
    if not len(gts) == len(preds) == len(masks):
        raise ValueError(f"gt/pred/mask: batch sizes differ ({len(gts)}, {len(preds)}, {len(masks)})")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(gts))]
    accumulator = DepthMetricsAccumulator()
    for g, p, m, n in zip(gts, preds, masks, names):
        try:
            accumulator.add(score_image(g, p, min_depth=min_depth, max_depth=max_depth, gt_min=gt_min,
                                        gt_max=gt_max, crop=crop, median_scaling=median_scaling,
                                        rmse_log_base=rmse_log_base, mask=m, name=n))
        except EmptyMaskError:
            if not skip_empty:
                raise
    result = accumulator.mean()
    result["scale_ratio"] = (float(np.mean(accumulator.scale_ratios)) if accumulator.scale_ratios
                             else float("nan"))
    return result


def scale_ratio_summary(ratios: Sequence[float]) -> dict[str, float]:
    """Median scaling factors over a dataset: median, and std of ratio/median (Monodepth2's report)."""
    values = np.asarray(ratios, dtype=np.float64)
    if values.size == 0:
        raise ValueError("scale_ratio_summary: no ratios")
    median = float(np.median(values))
    return {"median": median, "std": float(np.std(values / median)), "mean": float(values.mean()),
            "min": float(values.min()), "max": float(values.max())}


class DepthMetricsAccumulator:
    """Collects per-image metrics (e.g. over validation batches) and averages them per image."""

    def __init__(self) -> None:
        self.per_image: list[dict[str, Any]] = []
        self.scale_ratios: list[float] = []

    def add(self, score: ImageScore) -> None:
        self.per_image.append({"name": score.name, **score.metrics, "scale_ratio": score.scale_ratio,
                               "num_pixels": score.num_pixels})
        self.scale_ratios.append(score.scale_ratio)

    def update(self, gt: Any, pred: Any, **kwargs: Any) -> None:
        """Score a map or a batch (same keywords as :func:`compute_depth_metrics`) and keep each image."""
        skip_empty = kwargs.pop("skip_empty", False)
        gts, preds = _split_batch(gt, "gt"), _split_batch(pred, "pred")
        mask = kwargs.pop("mask", None)
        masks = _split_batch(mask, "mask") if mask is not None else [None] * len(gts)
        names = kwargs.pop("names", None) or [f"image {len(self.per_image) + i}" for i in range(len(gts))]
        for g, p, m, n in zip(gts, preds, masks, names):
            try:
                self.add(score_image(g, p, mask=m, name=n, **kwargs))
            except EmptyMaskError:
                if not skip_empty:
                    raise

    def __len__(self) -> int:
        return len(self.per_image)

    def mean(self) -> dict[str, float]:
        """Per-image mean of every metric plus ``num_images`` (NaN metrics when empty)."""
        result = {name: (float(np.mean([row[name] for row in self.per_image], dtype=np.float64))
                         if self.per_image else float("nan")) for name in METRIC_NAMES}
        result["num_images"] = len(self.per_image)
        return result

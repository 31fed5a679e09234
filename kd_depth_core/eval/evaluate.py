"""The evaluation loop: any predictor, any benchmark reader, one protocol.

``predict_fn(image uint8 (H,W,3) RGB) -> (depth float32 (h,w) metres, uncertainty (h,w) metres or None)``;
an object with ``.depth`` / ``.uncertainty`` (the DepthPredictor's result) or a bare depth array is
accepted too. A ``predict_fn`` with a ``K`` keyword gets the sample's 3x3 intrinsics (``meta['K']``,
None when unknown or after a centre crop), e.g. ``lambda image, K=None: predictor.predict(image, K=K)``; one with a ``right`` keyword gets
the sample's right image (``meta['right']``, None when the reader has none): stereo models; one with a
``baseline`` keyword gets ``meta['baseline']`` (metres, None/0 when unknown). Per sample: the protocol's
centred input crop (Make3D), prediction, resize to the ground truth's size as the protocol says
(``Protocol.resize``: bilinear in disparity, or nearest), :func:`~kd_depth_core.eval.metrics.score_image`,
and with an uncertainty the sparsification/calibration statistics on the same pixels (σ resized
bilinearly, or nearest, and scaled by the same median ratio).

``predict_fn`` should return depth at the network's resolution (a DepthPredictor built with
``output='model'``, as ``kd-depth evaluate`` does) so the protocol's resize is the only one; a map
already at the ground truth's size is scored as it is.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from kd_depth_core.eval.metrics import DepthMetricsAccumulator, scale_ratio_summary
from kd_depth_core.eval.protocols import Protocol, center_crop, resize_prediction
from kd_depth_core.eval.uncertainty import SPARSIFICATION_METRICS, UncertaintyAccumulator
from kd_depth_core.inference.preprocess import resize_map

PredictFn = Callable[[np.ndarray], Any]


@dataclass
class VisualSample:
    """Arrays for one figure panel, all at the ground truth's size (metres; NaN = no value)."""

    name: str
    image: np.ndarray  # uint8 (H,W,3) RGB as fed to the predictor
    gt: np.ndarray  # float (h,w), 0 = invalid
    pred: np.ndarray  # float (h,w), after scaling and clipping
    error: np.ndarray  # float (h,w) |pred − gt| / gt at scored pixels, NaN elsewhere
    uncertainty: np.ndarray | None  # float (h,w) σ in metres (scaled like pred)


@dataclass
class EvaluationResult:
    """Per-image metrics, their per-image mean, scale ratios and uncertainty statistics."""

    protocol: Protocol
    label: str
    per_image: list[dict[str, Any]]
    mean: dict[str, float]
    scale_ratio: dict[str, float] | None  # summary over images (median scaling only)
    uncertainty: dict[str, Any] | None  # UncertaintyAccumulator.summary() when the predictor gives σ
    predict_ms: float  # mean wall time of predict_fn per image (informational)
    visuals: list[VisualSample] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (no image arrays)."""
        return {"label": self.label, "protocol": self.protocol.to_dict(), "num_images": len(self.per_image),
                "mean": self.mean, "scale_ratio": self.scale_ratio, "uncertainty": self.uncertainty,
                "predict_ms": self.predict_ms, "per_image": self.per_image}


def unpack_prediction(output: Any, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(depth, uncertainty or None) from a tuple, an object with ``.depth``/``.uncertainty`` or an array."""
    if isinstance(output, tuple):
        if len(output) != 2:
            raise ValueError(f"{name}: predict_fn returned a tuple of {len(output)}; expected (depth, uncertainty)")
        depth, uncertainty = output
    elif hasattr(output, "depth"):
        depth, uncertainty = output.depth, getattr(output, "uncertainty", None)
    else:
        depth, uncertainty = output, None
    depth = np.asarray(depth, dtype=np.float64)
    while depth.ndim > 2 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.ndim != 2:
        raise ValueError(f"{name}: predict_fn returned depth of shape {depth.shape}; expected (H,W)")
    if uncertainty is not None:
        uncertainty = np.asarray(uncertainty, dtype=np.float64).reshape(depth.shape)
    return depth, uncertainty


def _visual_indices(total: int | None, count: int) -> set[int]:
    if count <= 0:
        return set()
    if total is None:
        return set(range(count))
    return {int(i) for i in np.linspace(0, total - 1, min(count, total)).round()}


def _as_sample(sample: Any) -> tuple[np.ndarray, np.ndarray, str, dict[str, Any]]:
    image, depth, name = sample[0], sample[1], sample[2]
    meta = sample[3] if len(sample) > 3 and isinstance(sample[3], dict) else {}
    return np.asarray(image), np.asarray(depth, dtype=np.float64), str(name), meta


def accepts_keyword(predict_fn: PredictFn, name: str) -> bool:
    """Whether ``predict_fn`` takes the keyword ``name`` (``K``: intrinsics; ``right``: the right image)."""
    try:
        return name in inspect.signature(predict_fn).parameters
    except (TypeError, ValueError):
        return False


def evaluate(predict_fn: PredictFn, samples: Iterable[Any], protocol: Protocol, *, label: str = "model",
             num_visuals: int = 0, progress: bool = True,
             uncertainty_metrics: Sequence[str] = SPARSIFICATION_METRICS) -> EvaluationResult:
    """Evaluate ``predict_fn`` on ``samples`` ((image, depth, name[, meta]) tuples) under ``protocol``.

    ``num_visuals`` keeps arrays of that many evenly spaced samples for figures. An image without a
    valid ground-truth pixel raises :class:`~kd_depth_core.eval.metrics.EmptyMaskError` naming it.
    """
    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    keep = _visual_indices(total, num_visuals)
    metrics = DepthMetricsAccumulator()
    uncertainty = UncertaintyAccumulator(uncertainty_metrics)
    visuals: list[VisualSample] = []
    predict_seconds = 0.0
    keywords = [name for name in ("K", "right", "baseline") if accepts_keyword(predict_fn, name)]
    bar = tqdm(samples, total=total, desc=f"evaluate {label} [{protocol.name}]", unit="img", disable=not progress)
    for index, sample in enumerate(bar):
        image, gt, name, meta = _as_sample(sample)
        K = meta.get("K")
        if protocol.center_crop_aspect:
            image, gt = center_crop(image, gt, protocol.center_crop_aspect)
            image, K = np.ascontiguousarray(image), None
        start = time.perf_counter()
        given = {"K": K, "right": meta.get("right"), "baseline": meta.get("baseline")}
        output = predict_fn(image, **{name: given[name] for name in keywords})
        predict_seconds += time.perf_counter() - start
        pred, sigma = unpack_prediction(output, name)
        pred = resize_prediction(pred, gt.shape, protocol.resize)
        score = protocol.score(gt, pred, name=name)
        metrics.add(score)
        if sigma is not None:
            sigma = resize_map(np.asarray(sigma, np.float64), *gt.shape,
                               mode="nearest" if protocol.resize == "nearest" else "linear")
            sigma = sigma * score.scale_ratio
            metrics.per_image[-1].update({f"ause_{k}": v for k, v in uncertainty.add(
                gt[score.mask], score.pred[score.mask], sigma[score.mask]).items()})
        if index in keep:
            error = np.full(gt.shape, np.nan)
            error[score.mask] = np.abs(score.pred[score.mask] - gt[score.mask]) / gt[score.mask]
            visuals.append(VisualSample(name, image, gt, score.pred, error, sigma))
        if progress:
            bar.set_postfix(abs_rel=f"{metrics.per_image[-1]['abs_rel']:.3f}")
    if len(metrics) == 0:
        raise ValueError(f"evaluate: no samples to evaluate ({protocol.name})")
    return EvaluationResult(
        protocol=protocol, label=label, per_image=metrics.per_image, mean=metrics.mean(),
        scale_ratio=scale_ratio_summary(metrics.scale_ratios) if protocol.median_scaling else None,
        uncertainty=uncertainty.summary() if len(uncertainty) else None,
        predict_ms=1000.0 * predict_seconds / len(metrics), visuals=visuals)

"""Classical stereo: OpenCV semi-global matching with a left-right check (proxy labels and a baseline).

`sgbm_disparity(left, right, settings, fx=…, baseline=…)` runs `cv2.StereoSGBM` on a rectified
pair (right camera at +x, so a left pixel u sees right pixel u − d) and keeps only pixels that pass
a left-right consistency check: the right image's own disparity map, computed by matching the
mirrored pair, must agree within `lr_tolerance_px`. The result is sparse and confident: the
proxy that supervises the networks (docs/architecture.md, "Classical-stereo proxy supervision").

`fill_rows` fills the holes of a row with the smaller (farther, i.e. background) of the nearest
valid disparities to its left and right: the usual hole filling for occlusions, used when SGBM
runs as the "no learning" baseline (`SGBMPredictor`).

The matcher's settings scale with the rig: the number of disparities covers fx·B / min_depth
(rounded up to 16, OpenCV's rule) and the block size grows with the image width.

`upsample` > 1 matches the pair enlarged by that factor (bicubic) with the block size of the
original width, and brings the disparity back (area average of the confident pixels, / factor):
subpixel matching with less "pixel locking" and a finer block footprint, at about factor² the cost.
On the synthetic street world at 320×96 it takes SGBM from AbsRel 0.064 to 0.050
(docs/benchmarks.md); the baseline row keeps `upsample: 1`, SGBM as users know it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np

from kd_depth_core.geometry import disparity_to_depth

MODES = {"sgbm": cv2.STEREO_SGBM_MODE_SGBM, "sgbm_3way": cv2.STEREO_SGBM_MODE_SGBM_3WAY,
         "hh": cv2.STEREO_SGBM_MODE_HH}


@dataclass(frozen=True)
class SGBMSettings:
    """Settings of the matcher; 0 for `num_disparities` / `block_size` derives them from the rig and width."""

    min_depth: float = 2.0  # m: the nearest depth searched (sets num_disparities)
    num_disparities: int = 0  # px; 0 = fx·B / min_depth rounded up to a multiple of 16
    block_size: int = 0  # px, odd; 0 = about width / 64, in [3, 11]
    uniqueness_ratio: int = 10  # % margin of the best cost over the second best
    speckle_window: int = 0  # px; 0 = (width / 8)
    speckle_range: int = 2  # px
    lr_tolerance_px: float = 1.0  # left-right check: |d_left(u) − d_right(u − d_left(u))| <= this
    mode: str = "sgbm_3way"
    upsample: int = 1  # match the pair enlarged this many times (1 = as given)

    def __post_init__(self) -> None:
        if not self.min_depth > 0:
            raise ValueError(f"sgbm.min_depth: expected metres > 0, got {self.min_depth}")
        if self.num_disparities < 0 or self.num_disparities % 16:
            raise ValueError(f"sgbm.num_disparities: expected 0 (from the rig) or a positive multiple of 16, "
                             f"got {self.num_disparities}")
        if self.block_size < 0 or (self.block_size and self.block_size % 2 == 0):
            raise ValueError(f"sgbm.block_size: expected 0 (from the width) or an odd number of pixels, "
                             f"got {self.block_size}")
        if self.mode not in MODES:
            raise ValueError(f"sgbm.mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if not (isinstance(self.upsample, int) and 1 <= self.upsample <= 4):
            raise ValueError(f"sgbm.upsample: expected an integer factor 1..4, got {self.upsample!r}")
        if self.lr_tolerance_px < 0:
            raise ValueError(f"sgbm.lr_tolerance_px: expected >= 0, got {self.lr_tolerance_px}")

    def resolved(self, width: int, fx: float, baseline: float) -> dict[str, int]:
        """The concrete OpenCV parameters for an image `width` px wide and a rig fx (px), baseline (m)."""
        if not (fx > 0 and baseline > 0):
            raise ValueError(f"SGBM needs the rig: expected fx > 0 px and baseline > 0 m, got {fx}, {baseline}")
        num = self.num_disparities or 16 * max(1, int(np.ceil(fx * baseline / self.min_depth / 16.0)))
        block = self.block_size or int(np.clip(2 * round(width / 128) + 1, 3, 11))
        return {"num_disparities": int(num), "block_size": int(block),
                "speckle_window": int(self.speckle_window or max(10, width // 8))}

    def fingerprint(self) -> str:
        """Short digest of the settings (cache keys)."""
        return hashlib.blake2b(json.dumps(asdict(self), sort_keys=True).encode(), digest_size=8).hexdigest()


def _matcher(settings: SGBMSettings, num: int, block: int, speckle: int, channels: int) -> cv2.StereoSGBM:
    area = channels * block * block
    return cv2.StereoSGBM_create(
        minDisparity=0, numDisparities=num, blockSize=block, P1=8 * area, P2=32 * area, disp12MaxDiff=-1,
        uniquenessRatio=settings.uniqueness_ratio, speckleWindowSize=speckle, speckleRange=settings.speckle_range,
        preFilterCap=63, mode=MODES[settings.mode])


def _check_pair(left: np.ndarray, right: np.ndarray) -> None:
    if left.shape != right.shape or left.dtype != np.uint8 or left.ndim not in (2, 3):
        raise ValueError(f"SGBM: expected two uint8 images of equal shape (H,W[,3]), got "
                         f"{left.shape} {left.dtype} and {right.shape} {right.dtype}")


def sgbm_disparity(left: np.ndarray, right: np.ndarray, settings: SGBMSettings | None = None, *, fx: float,
                   baseline: float) -> tuple[np.ndarray, np.ndarray]:
    """Rectified uint8 pair (H,W[,3]) -> (disparity (H,W) float32 px, confident (H,W) bool).

    Confident = matched, inside the searched range, and passing the left-right check. Disparity is
    0 where not confident.
    """
    settings = settings or SGBMSettings()
    _check_pair(left, right)
    height, width = left.shape[:2]
    if settings.upsample > 1:
        return _sgbm_upsampled(left, right, settings, fx=fx, baseline=baseline)
    p = settings.resolved(width, fx, baseline)
    num = p["num_disparities"]
    # pad on the left so pixels near the left border can still search the whole range
    pad = num
    padded = [cv2.copyMakeBorder(np.ascontiguousarray(im), 0, 0, pad, 0, cv2.BORDER_REPLICATE) for im in (left, right)]
    channels = 1 if left.ndim == 2 else left.shape[2]
    matcher = _matcher(settings, num, p["block_size"], p["speckle_window"], channels)
    d_left = matcher.compute(padded[0], padded[1]).astype(np.float32)[:, pad:] / 16.0
    # the right view's disparity: match the mirrored pair (mirrored right as the "left" image)
    flipped = [cv2.copyMakeBorder(np.ascontiguousarray(im[:, ::-1]), 0, 0, pad, 0, cv2.BORDER_REPLICATE)
               for im in (right, left)]
    d_right = matcher.compute(flipped[0], flipped[1]).astype(np.float32)[:, pad:][:, ::-1] / 16.0
    confident = left_right_check(d_left, d_right, settings.lr_tolerance_px)
    return np.where(confident, d_left, 0.0).astype(np.float32), confident


def _sgbm_upsampled(left: np.ndarray, right: np.ndarray, settings: SGBMSettings, *, fx: float,
                    baseline: float) -> tuple[np.ndarray, np.ndarray]:
    """`sgbm_disparity` on the pair enlarged `settings.upsample` times, back at the input's size.

    A pixel is confident when at least 3/4 of its enlarged pixels are; its disparity is their mean / factor.
    """
    factor = settings.upsample
    height, width = left.shape[:2]
    block = settings.block_size or int(settings.resolved(width, fx, baseline)["block_size"])
    big = [cv2.resize(im, (width * factor, height * factor), interpolation=cv2.INTER_CUBIC) for im in (left, right)]
    inner = replace(settings, upsample=1, block_size=block)
    disparity, confident = sgbm_disparity(big[0], big[1], inner, fx=fx * factor, baseline=baseline)
    fraction = cv2.resize(confident.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    total = cv2.resize(disparity, (width, height), interpolation=cv2.INTER_AREA)
    keep = fraction >= 0.75
    return np.where(keep, total / np.maximum(fraction, 1e-6) / factor, 0.0).astype(np.float32), keep


def left_right_check(d_left: np.ndarray, d_right: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels (H,W) bool whose left disparity d agrees with the right view's at u − d within `tolerance` px.

    Unmatched pixels (d <= 0) and pixels whose match falls outside the right image fail.
    """
    height, width = d_left.shape
    target = np.rint(np.arange(width, dtype=np.float32)[None, :] - d_left).astype(np.int64)
    inside = (d_left > 0) & (target >= 0)
    rows = np.broadcast_to(np.arange(height)[:, None], (height, width))
    other = np.zeros_like(d_left)
    other[inside] = d_right[rows[inside], target[inside]]
    return inside & (other > 0) & (np.abs(other - d_left) <= tolerance)


def fill_rows(disparity: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid pixels of each row with the smaller of the nearest valid disparities left and right.

    A row end keeps the one neighbour it has; a row with no valid pixel stays 0. Vectorised.
    """
    height, width = disparity.shape
    index = np.arange(width)[None, :].repeat(height, 0)
    left_index = np.maximum.accumulate(np.where(valid, index, -1), axis=1)
    right_index = np.minimum.accumulate(np.where(valid, index, width)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(height)[:, None]
    left_value = np.where(left_index >= 0, disparity[rows, left_index.clip(0)], np.inf)
    right_value = np.where(right_index < width, disparity[rows, right_index.clip(max=width - 1)], np.inf)
    filled = np.minimum(left_value, right_value)
    filled = np.where(np.isfinite(filled), filled, 0.0)
    return np.where(valid, disparity, filled).astype(np.float32)


class SGBMPredictor:
    """The "no learning" baseline: SGBM + left-right check + row-wise hole filling -> dense metric depth.

    `predict(left, right, K, baseline) -> depth (H,W) m`, at the input's resolution; holes no row can
    fill get `max_depth`.
    """

    def __init__(self, settings: SGBMSettings | None = None, max_depth: float = 80.0) -> None:
        self.settings = settings or SGBMSettings()
        self.max_depth = float(max_depth)

    def describe(self) -> str:
        return f"OpenCV SGBM (no learning): {self.settings}"

    def predict(self, left: np.ndarray, right: np.ndarray, K: np.ndarray, baseline: float) -> np.ndarray:
        fx = float(np.asarray(K)[0, 0])
        disparity, valid = sgbm_disparity(left, right, self.settings, fx=fx, baseline=float(baseline))
        depth = disparity_to_depth(fill_rows(disparity, valid), fx, float(baseline))
        return np.where(depth > 0, np.minimum(depth, self.max_depth), self.max_depth).astype(np.float32)

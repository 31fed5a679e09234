"""Choosing the frames of a training sequence: keyframes by motion, splitting at gaps.

Used by :class:`kd_depth_ros.sequence_builder.SequenceBuilder` (bag converter and live recorder alike);
stamp matching is :mod:`kd_depth_ros.sync` (``NearestStampMatcher`` and ``Matched`` are re-exported here). Stamps are header stamps in integer
nanoseconds. Motion is the mean absolute difference of downscaled grayscale frames in grey
levels (0..255) against the last *kept* frame, so slow motion accumulates until it is enough.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import cv2
import numpy as np

from kd_depth_ros.stamps import NS_PER_S
from kd_depth_ros.sync import Matched, NearestStampMatcher

__all__ = ["NS_PER_S", "KeyframeSelector", "Matched", "NearestStampMatcher", "SegmentSplitter", "motion_score",
           "motion_thumbnail"]


def motion_thumbnail(rgb: np.ndarray, max_width: int = 80) -> np.ndarray:
    """RGB (or gray) uint8 image -> float32 grayscale (h, w) at most ``max_width`` wide (area-averaged)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    height, width = gray.shape[:2]
    if width > max_width:
        size = (max_width, max(1, round(height * max_width / width)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray.astype(np.float32)


def motion_score(thumb_a: np.ndarray, thumb_b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, grey levels (0..255)."""
    if thumb_a.shape != thumb_b.shape:
        return float("inf")  # a size change is as different as it gets
    return float(np.mean(np.abs(thumb_a - thumb_b)))


@dataclass
class KeyframeSelector:
    """Keep a frame when it differs from the last kept frame by at least ``min_motion`` grey levels.

    ``min_motion = 0`` keeps every frame. Call :meth:`reset` at a sequence start.
    """

    min_motion: float = 1.0
    thumb_width: int = 80
    _reference: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.min_motion < 0:
            raise ValueError(f"min_motion: expected >= 0 grey levels, got {self.min_motion}")

    def reset(self) -> None:
        self._reference = None

    def accept(self, rgb: np.ndarray) -> tuple[bool, float]:
        """(keep?, motion score vs the last kept frame; inf for the first frame). Keeping makes it the reference."""
        if self.min_motion <= 0:
            return True, float("inf")
        thumb = motion_thumbnail(rgb, self.thumb_width)
        score = float("inf") if self._reference is None else motion_score(self._reference, thumb)
        if score >= self.min_motion:
            self._reference = thumb
            return True, score
        return False, score


@dataclass
class SegmentSplitter:
    """Numbers segments: a new one starts at the first frame, after a stamp gap > ``max_gap_s`` between
    consecutive frames, or when the camera (any hashable key, e.g. its calibration) changes."""

    max_gap_s: float = 0.5
    segment: int = field(default=-1, init=False)
    _last_stamp: int | None = field(default=None, init=False, repr=False)
    _last_key: Hashable = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.max_gap_s > 0:
            raise ValueError(f"max_gap_s: expected > 0 seconds, got {self.max_gap_s}")

    def update(self, stamp_ns: int, camera_key: Hashable = None) -> tuple[int, bool]:
        """(segment index of this frame, True when it starts a new segment). Stamps must increase."""
        new = (self._last_stamp is None or stamp_ns - self._last_stamp > self.max_gap_s * NS_PER_S
               or camera_key != self._last_key)
        if new:
            self.segment += 1
        self._last_stamp, self._last_key = stamp_ns, camera_key
        return self.segment, new

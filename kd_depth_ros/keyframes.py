"""Choosing the frames of a training sequence: stamp matching, keyframes by motion, splitting at gaps.

Used by the bag converter and the live recorder alike. Stamps are header stamps in integer
nanoseconds. Motion is the mean absolute difference of downscaled grayscale frames in grey
levels (0..255) against the last *kept* frame, so slow motion accumulates until it is enough.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

NS_PER_S = 1_000_000_000


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


@dataclass
class Matched:
    """A primary item with its matched partners (None where no partner came within the tolerance)."""

    stamp_ns: int
    item: Any
    partners: dict[str, Any]


class NearestStampMatcher:
    """Match each primary item (e.g. a left image) to the nearest-stamped item of each partner stream.

    ``tolerances_s[name]`` bounds |stamp difference| for stream ``name`` (``inf``: any distance).
    Streams in ``before_only`` match the latest item stamped at or before the primary instead
    (e.g. "the latest camera_info"). Items may arrive interleaved across streams, each stream in
    increasing stamps. A primary is released by :meth:`ready` once its matches are final: every
    partner stream has seen a stamp at or beyond ``stamp + tolerance`` (``stamp`` for unbounded
    ones), or the primary stream has moved ``max_wait_s`` past it (a partner that stopped must not
    hold frames forever). :meth:`finish` releases the rest. Primaries are released in arrival
    order and should have increasing stamps. Memory stays bounded by the tolerance and wait windows.
    """

    def __init__(self, tolerances_s: dict[str, float], max_wait_s: float = 1.0,
                 before_only: set[str] | frozenset = frozenset()) -> None:
        self.tolerances: dict[str, int | None] = {}
        for name, tol in tolerances_s.items():
            if not tol >= 0:
                raise ValueError(f"tolerance for {name!r}: expected >= 0 seconds, got {tol}")
            self.tolerances[name] = None if tol == float("inf") or name in before_only else int(round(tol * NS_PER_S))
        unknown = set(before_only) - set(tolerances_s)
        if unknown:
            raise ValueError(f"before_only: unknown stream(s) {sorted(unknown)}")
        self.before_only = frozenset(before_only)
        self.max_wait = int(round(max_wait_s * NS_PER_S))
        self._pending: deque[tuple[int, Any]] = deque()
        self._partners: dict[str, deque[tuple[int, Any]]] = {name: deque() for name in self.tolerances}
        self._latest: dict[str, int] = {}
        self._latest_primary: int | None = None

    def add_primary(self, stamp_ns: int, item: Any) -> None:
        self._pending.append((stamp_ns, item))
        self._latest_primary = stamp_ns if self._latest_primary is None else max(self._latest_primary, stamp_ns)

    def add(self, name: str, stamp_ns: int, item: Any) -> None:
        """Add a partner item of stream ``name``."""
        queue = self._partners[name]
        queue.append((stamp_ns, item))
        self._latest[name] = max(self._latest.get(name, stamp_ns), stamp_ns)
        # bound memory: keep what a pending (or, without one, a not-yet-stale future) primary may need
        keep_from = min(s for s, _ in self._pending) if self._pending else self._latest[name] - self.max_wait
        self._prune(name, keep_from)

    def _prune(self, name: str, stamp_ns: int) -> None:
        """Forget partners that can match no primary stamped ``stamp_ns`` or later."""
        queue, tol = self._partners[name], self.tolerances[name]
        while len(queue) >= 2 and queue[1][0] <= stamp_ns:  # only the last one at or before the stamp can win
            queue.popleft()
        if tol is not None:
            while queue and queue[0][0] < stamp_ns - tol:
                queue.popleft()

    def _final(self, stamp_ns: int) -> bool:
        if self._latest_primary is not None and self._latest_primary - stamp_ns > self.max_wait:
            return True
        return all(self._latest.get(name, -1) >= stamp_ns + (tol or 0) for name, tol in self.tolerances.items())

    def _match(self, stamp_ns: int) -> dict[str, Any]:
        partners = {}
        for name, queue in self._partners.items():
            self._prune(name, stamp_ns)
            tol = self.tolerances[name]
            best, best_dt = None, None
            for stamp, item in queue:
                if name in self.before_only:
                    if stamp <= stamp_ns:
                        best = item
                    continue
                dt = abs(stamp - stamp_ns)
                if (tol is None or dt <= tol) and (best_dt is None or dt < best_dt):
                    best, best_dt = item, dt
            partners[name] = best
        return partners

    def ready(self) -> Iterator[Matched]:
        """Release primaries whose matches can no longer change, oldest first."""
        while self._pending and self._final(self._pending[0][0]):
            stamp, item = self._pending.popleft()
            yield Matched(stamp, item, self._match(stamp))

    def finish(self) -> Iterator[Matched]:
        """Release every pending primary (end of input)."""
        while self._pending:
            stamp, item = self._pending.popleft()
            yield Matched(stamp, item, self._match(stamp))

    def __len__(self) -> int:
        return len(self._pending)

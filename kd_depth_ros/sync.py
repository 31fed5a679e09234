"""Pair messages from several streams by header stamp (a small ApproximateTimeSynchronizer), and an
image with its camera_info (:class:`CameraInfoMatcher`).

``message_filters`` is not installable everywhere we run, and its approximate policy is more
than stereo pairing needs. :class:`StampSynchronizer` keeps a bounded queue per stream; when a
message arrives it looks, in every other stream, for the message closest in stamp; if all of
them lie within ``slop`` of each other the set is emitted. Messages older than an emitted set
(they can no longer pair), messages pushed out of a full queue and messages older than the last
emitted set are dropped and counted per stream. Not thread-safe: call from one callback group.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class StampSynchronizer:
    """N-way stamp pairing with a slop (seconds) and a bounded queue per stream.

    ``add(stream, stamp_ns, message)`` returns the matched tuple (one message per stream, in
    stream order) or None. ``dropped[i]`` counts messages of stream ``i`` discarded unmatched.
    """

    def __init__(self, n_streams: int, slop_s: float, queue_size: int = 10,
                 callback: Callable[..., Any] | None = None):
        if n_streams < 2:
            raise ValueError(f"n_streams: expected >= 2, got {n_streams}")
        if not slop_s >= 0:
            raise ValueError(f"slop: expected seconds >= 0, got {slop_s}")
        if queue_size < 1:
            raise ValueError(f"queue_size: expected >= 1, got {queue_size}")
        self.slop_ns = int(round(slop_s * 1e9))
        self.queue_size = int(queue_size)
        self.callback = callback
        self._stamps: list[list[int]] = [[] for _ in range(n_streams)]  # sorted per stream
        self._messages: list[list[Any]] = [[] for _ in range(n_streams)]
        self._last_emitted_ns: int | None = None
        self.dropped = [0] * n_streams
        self.matched = 0

    @property
    def n_streams(self) -> int:
        return len(self._stamps)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped)

    def queued(self, stream: int) -> int:
        return len(self._stamps[stream])

    def add(self, stream: int, stamp_ns: int, message: Any) -> tuple | None:
        if not 0 <= stream < self.n_streams:
            raise ValueError(f"stream: expected 0..{self.n_streams - 1}, got {stream}")
        if self._last_emitted_ns is not None and stamp_ns <= self._last_emitted_ns - self.slop_ns:
            self.dropped[stream] += 1  # too old to pair with anything still to come
            return None
        stamps, messages = self._stamps[stream], self._messages[stream]
        index = bisect.bisect_right(stamps, stamp_ns)
        stamps.insert(index, stamp_ns)
        messages.insert(index, message)
        if len(stamps) > self.queue_size:
            del stamps[0], messages[0]
            self.dropped[stream] += 1
        match = self._match(stream, stamp_ns)
        if match is None:
            return None
        self._emit(match)
        result = tuple(self._messages[s][i] for s, i in enumerate(match))
        self._remove_through(match)
        if self.callback is not None:
            self.callback(*result)
        return result

    def _match(self, stream: int, stamp_ns: int) -> list[int] | None:
        """Indices (one per stream) of the messages closest to ``stamp_ns``, if all within slop of each other."""
        chosen = []
        for s, stamps in enumerate(self._stamps):
            if s == stream:
                chosen.append(bisect.bisect_left(stamps, stamp_ns))
                continue
            if not stamps:
                return None
            i = bisect.bisect_left(stamps, stamp_ns)
            candidates = [j for j in (i - 1, i) if 0 <= j < len(stamps)]
            best = min(candidates, key=lambda j: abs(stamps[j] - stamp_ns))
            chosen.append(best)
        picked = [self._stamps[s][i] for s, i in enumerate(chosen)]
        if max(picked) - min(picked) > self.slop_ns:
            return None
        return chosen

    def _emit(self, match: list[int]) -> None:
        self._last_emitted_ns = max(self._stamps[s][i] for s, i in enumerate(match))
        self.matched += 1

    def _remove_through(self, match: list[int]) -> None:
        """Remove the matched messages and every older one (they can no longer pair); count the older ones."""
        for s, i in enumerate(match):
            self.dropped[s] += i
            del self._stamps[s][: i + 1], self._messages[s][: i + 1]

    def reset(self) -> None:
        for s in range(self.n_streams):
            self._stamps[s].clear()
            self._messages[s].clear()
        self._last_emitted_ns = None


class CameraInfoMatcher:
    """The camera_info for an image stamp: the one whose stamp is within a tolerance of the image's, or else
    (for drivers that publish it rarely) the latest one older than the image by at most a maximum age.

    Keeps the last ``history`` camera_infos by stamp. ``add`` and ``match`` may be called from different
    threads (subscription callback, inference thread); matching on the inference thread gives a
    camera_info that arrives just after its image the time the frame waits.
    """

    def __init__(self, history: int = 32):
        self._items: deque[tuple[int, Any]] = deque(maxlen=max(1, int(history)))
        self._lock = threading.Lock()
        self.received = 0

    def add(self, stamp_ns: int, info: Any) -> None:
        with self._lock:
            self._items.append((int(stamp_ns), info))
            self.received += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def match(self, stamp_ns: int, tolerance_s: float, max_age_s: float) -> tuple[Any | None, str]:
        """(camera_info, '') or (None, why none fits) for an image stamped ``stamp_ns``."""
        with self._lock:
            items = list(self._items)
        if not items:
            return None, "none received yet for this camera (publish a CameraInfo with each image)"
        nearest_ns, nearest = min(items, key=lambda item: abs(item[0] - stamp_ns))
        if abs(nearest_ns - stamp_ns) <= tolerance_s * 1e9:
            return nearest, ""
        older = [item for item in items if item[0] <= stamp_ns]
        if older:
            latest_ns, latest = max(older, key=lambda item: item[0])
            if stamp_ns - latest_ns <= max_age_s * 1e9:
                return latest, ""
        return None, (f"none matches the image stamp {stamp_ns / 1e9:.3f} s (nearest: "
                      f"{(nearest_ns - stamp_ns) / 1e9:+.3f} s; camera_info_tolerance_s = {tolerance_s:g}, "
                      f"camera_info_max_age_s = {max_age_s:g})")

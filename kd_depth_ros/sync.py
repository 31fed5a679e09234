"""Matching messages by header stamp: the one place for it (bag converter, recorder, depth nodes).

Every matcher here is built on :class:`StampQueue`, a stamp-sorted queue per stream with the
nearest / latest-at-or-before lookups, so the search and tie rules (the earlier stamp wins a tie)
exist once. Three policies use it:

* :class:`StampSynchronizer` — live N-way pairing with a slop and a bounded queue per stream (a small
  ApproximateTimeSynchronizer: ``message_filters`` is not installable everywhere we run); a set is
  emitted as soon as its messages lie within the slop, older ones are dropped and counted.
* :class:`NearestStampMatcher` — offline (a bag in log-time order): each primary item gets the
  nearest partner within a tolerance, or the latest at or before it, released once final.
* :class:`CameraInfoMatcher` — an image's camera_info: nearest within a tolerance, else the latest
  older one not older than a maximum age (drivers that publish it rarely).

Stamps are integer nanoseconds (:func:`kd_depth_ros.stamps.stamp_ns`).
"""
from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kd_depth_ros.stamps import NS_PER_S


class StampQueue:
    """Items of one stream sorted by stamp (ns); at most ``maxlen`` (the oldest stamp is pushed out first)."""

    def __init__(self, maxlen: int | None = None) -> None:
        self.stamps: list[int] = []
        self.items: list[Any] = []
        self.maxlen = maxlen

    def __len__(self) -> int:
        return len(self.stamps)

    def push(self, stamp_ns: int, item: Any) -> int:
        """Insert in stamp order (after equal stamps); returns how many old items were pushed out (0 or 1)."""
        index = bisect.bisect_right(self.stamps, stamp_ns)
        self.stamps.insert(index, int(stamp_ns))
        self.items.insert(index, item)
        if self.maxlen is not None and len(self.stamps) > self.maxlen:
            return self.drop_through(0)
        return 0

    def nearest(self, stamp_ns: int, tolerance_ns: int | None = None) -> int | None:
        """Index of the item nearest ``stamp_ns`` (the earlier on a tie), if within ``tolerance_ns`` (None: any)."""
        i = bisect.bisect_left(self.stamps, stamp_ns)
        candidates = [j for j in (i - 1, i) if 0 <= j < len(self.stamps)]
        if not candidates:
            return None
        best = min(candidates, key=lambda j: abs(self.stamps[j] - stamp_ns))
        return best if tolerance_ns is None or abs(self.stamps[best] - stamp_ns) <= tolerance_ns else None

    def at_or_before(self, stamp_ns: int) -> int | None:
        """Index of the latest item stamped at or before ``stamp_ns``."""
        i = bisect.bisect_right(self.stamps, stamp_ns) - 1
        return i if i >= 0 else None

    def drop_through(self, index: int) -> int:
        """Remove items 0..index; returns how many."""
        del self.stamps[: index + 1], self.items[: index + 1]
        return index + 1

    def drop_older(self, stamp_ns: int) -> int:
        """Remove items stamped before ``stamp_ns``; returns how many."""
        n = bisect.bisect_left(self.stamps, stamp_ns)
        return self.drop_through(n - 1) if n else 0

    def clear(self) -> None:
        self.stamps.clear()
        self.items.clear()


def seconds_to_ns(seconds: float) -> int | None:
    """Seconds -> integer ns; ``inf`` -> None (unbounded)."""
    return None if seconds == float("inf") else int(round(seconds * NS_PER_S))


class StampSynchronizer:
    """N-way stamp pairing with a slop (seconds) and a bounded queue per stream.

    ``add(stream, stamp_ns, message)`` returns the matched tuple (one message per stream, in
    stream order) or None. ``dropped[i]`` counts messages of stream ``i`` discarded unmatched: older
    than an emitted set (they can no longer pair), pushed out of a full queue, or arriving after a
    newer set was emitted. Not thread-safe: call from one callback group.
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
        self._queues = [StampQueue(self.queue_size) for _ in range(n_streams)]
        self._last_emitted_ns: int | None = None
        self.dropped = [0] * n_streams
        self.matched = 0

    @property
    def n_streams(self) -> int:
        return len(self._queues)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped)

    def queued(self, stream: int) -> int:
        return len(self._queues[stream])

    def add(self, stream: int, stamp_ns: int, message: Any) -> tuple | None:
        if not 0 <= stream < self.n_streams:
            raise ValueError(f"stream: expected 0..{self.n_streams - 1}, got {stream}")
        if self._last_emitted_ns is not None and stamp_ns <= self._last_emitted_ns - self.slop_ns:
            self.dropped[stream] += 1  # too old to pair with anything still to come
            return None
        self.dropped[stream] += self._queues[stream].push(stamp_ns, message)
        own = self._queues[stream]
        chosen = []
        for s, q in enumerate(self._queues):
            index = bisect.bisect_left(own.stamps, stamp_ns) if s == stream else q.nearest(stamp_ns)
            if index is None:
                return None
            chosen.append(index)
        picked = [q.stamps[i] for q, i in zip(self._queues, chosen)]
        if max(picked) - min(picked) > self.slop_ns:
            return None
        self._last_emitted_ns = max(picked)
        self.matched += 1
        result = tuple(q.items[i] for q, i in zip(self._queues, chosen))
        for s, (q, i) in enumerate(zip(self._queues, chosen)):
            self.dropped[s] += q.drop_through(i) - 1  # the matched one and every older one (counted)
        if self.callback is not None:
            self.callback(*result)
        return result

    def reset(self) -> None:
        for q in self._queues:
            q.clear()
        self._last_emitted_ns = None


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
    (e.g. "the latest camera_info"). Items may arrive interleaved across streams. A primary is released
    by :meth:`ready` once its matches are final: every partner stream has seen a stamp at or beyond
    ``stamp + tolerance`` (``stamp`` for unbounded ones), or the primary stream has moved ``max_wait_s``
    past it (a partner that stopped must not hold frames forever). :meth:`finish` releases the rest.
    Primaries are released in arrival order and should have increasing stamps. Memory stays bounded by
    the tolerance and wait windows.
    """

    def __init__(self, tolerances_s: dict[str, float], max_wait_s: float = 1.0,
                 before_only: set[str] | frozenset = frozenset()) -> None:
        self.tolerances: dict[str, int | None] = {}
        for name, tol in tolerances_s.items():
            if not tol >= 0:
                raise ValueError(f"tolerance for {name!r}: expected >= 0 seconds, got {tol}")
            self.tolerances[name] = None if name in before_only else seconds_to_ns(tol)
        unknown = set(before_only) - set(tolerances_s)
        if unknown:
            raise ValueError(f"before_only: unknown stream(s) {sorted(unknown)}")
        self.before_only = frozenset(before_only)
        self.max_wait = int(round(max_wait_s * NS_PER_S))
        self._pending: list[tuple[int, Any]] = []
        self._partners = {name: StampQueue() for name in self.tolerances}
        self._latest: dict[str, int] = {}
        self._latest_primary: int | None = None

    def add_primary(self, stamp_ns: int, item: Any) -> None:
        self._pending.append((stamp_ns, item))
        self._latest_primary = stamp_ns if self._latest_primary is None else max(self._latest_primary, stamp_ns)

    def add(self, name: str, stamp_ns: int, item: Any) -> None:
        """Add a partner item of stream ``name``."""
        self._partners[name].push(stamp_ns, item)
        self._latest[name] = max(self._latest.get(name, stamp_ns), stamp_ns)
        # bound memory: keep what a pending (or, without one, a not-yet-stale future) primary may need
        keep_from = min(s for s, _ in self._pending) if self._pending else self._latest[name] - self.max_wait
        self._prune(name, keep_from)

    def _prune(self, name: str, stamp_ns: int) -> None:
        """Forget partners that can match no primary stamped ``stamp_ns`` or later."""
        queue, tol = self._partners[name], self.tolerances[name]
        last_before = queue.at_or_before(stamp_ns)
        if last_before:  # only the last one at or before the stamp can still win
            queue.drop_through(last_before - 1)
        if tol is not None:
            queue.drop_older(stamp_ns - tol)

    def _final(self, stamp_ns: int) -> bool:
        if self._latest_primary is not None and self._latest_primary - stamp_ns > self.max_wait:
            return True
        return all(self._latest.get(name, -1) >= stamp_ns + (tol or 0) for name, tol in self.tolerances.items())

    def _match(self, stamp_ns: int) -> dict[str, Any]:
        partners = {}
        for name, queue in self._partners.items():
            self._prune(name, stamp_ns)
            index = (queue.at_or_before(stamp_ns) if name in self.before_only
                     else queue.nearest(stamp_ns, self.tolerances[name]))
            partners[name] = None if index is None else queue.items[index]
        return partners

    def ready(self) -> Iterator[Matched]:
        """Release primaries whose matches can no longer change, oldest first."""
        while self._pending and self._final(self._pending[0][0]):
            stamp, item = self._pending.pop(0)
            yield Matched(stamp, item, self._match(stamp))

    def finish(self) -> Iterator[Matched]:
        """Release every pending primary (end of input)."""
        while self._pending:
            stamp, item = self._pending.pop(0)
            yield Matched(stamp, item, self._match(stamp))

    def __len__(self) -> int:
        return len(self._pending)


class CameraInfoMatcher:
    """The camera_info for an image stamp: the one whose stamp is within a tolerance of the image's, or else
    (for drivers that publish it rarely) the latest one older than the image by at most a maximum age.

    Keeps the last ``history`` camera_infos by stamp. ``add`` and ``match`` may be called from different
    threads (subscription callback, inference thread); matching on the inference thread gives a
    camera_info that arrives just after its image the time the frame waits.
    """

    def __init__(self, history: int = 32):
        self._items = StampQueue(max(1, int(history)))
        self._lock = threading.Lock()
        self.received = 0

    def add(self, stamp_ns: int, info: Any) -> None:
        with self._lock:
            self._items.push(int(stamp_ns), info)
            self.received += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def match(self, stamp_ns: int, tolerance_s: float, max_age_s: float) -> tuple[Any | None, str]:
        """(camera_info, '') or (None, why none fits) for an image stamped ``stamp_ns``."""
        with self._lock:
            items = self._items
            if not len(items):
                return None, "none received yet for this camera (publish a CameraInfo with each image)"
            nearest = items.nearest(stamp_ns)
            if abs(items.stamps[nearest] - stamp_ns) <= tolerance_s * 1e9:
                return items.items[nearest], ""
            latest = items.at_or_before(stamp_ns)
            if latest is not None and stamp_ns - items.stamps[latest] <= max_age_s * 1e9:
                return items.items[latest], ""
            nearest_ns = items.stamps[nearest]
        return None, (f"none matches the image stamp {stamp_ns / 1e9:.3f} s (nearest: "
                      f"{(nearest_ns - stamp_ns) / 1e9:+.3f} s; camera_info_tolerance_s = {tolerance_s:g}, "
                      f"camera_info_max_age_s = {max_age_s:g})")

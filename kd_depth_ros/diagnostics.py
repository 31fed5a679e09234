"""Rates, latencies and drop counts, reported as ``diagnostic_msgs/DiagnosticArray`` on ``/diagnostics``.

A small stand-in for ``diagnostic_updater`` (not installable everywhere): :class:`RateMeter` and
:class:`LatencyWindow` collect numbers (thread-safe: the inference thread writes, a timer reads),
:class:`DepthNodeStatus` turns them into one ``DiagnosticStatus`` with a level:
ERROR when the model is not loaded, the inference thread is not running, or frames arrive but every
one failed for ``failure_error_s``; WARN when no input arrived for ``stale_after_s``, a frame failed
within the last ``failure_window_s`` (failures are counted by kind: ``bad_encoding``,
``bad_camera_info``, ``backend_error``, ...) or frames are being dropped; OK otherwise.
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


class RateMeter:
    """Events per second over a sliding window of ``window_s`` seconds (monotonic clock)."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = float(window_s)
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.count = 0
        self.last_time: float | None = None

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self.count += 1
            self.last_time = now
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        """Hz over the window: (events - 1) / span of their times; 0 with fewer than two events."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0

    def seconds_since_last(self, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        return None if self.last_time is None else now - self.last_time


class LatencyWindow:
    """The last ``size`` durations (seconds) with percentiles."""

    def __init__(self, size: int = 200):
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(float(seconds))

    def percentile(self, q: float) -> float:
        """q in [0, 100]; NaN when empty."""
        with self._lock:
            values = np.array(self._values)
        return float(np.percentile(values, q)) if values.size else float("nan")

    def __len__(self) -> int:
        return len(self._values)


class DepthNodeStatus:
    """Everything a depth node reports; ``to_msg(stamp)`` builds the DiagnosticArray."""

    def __init__(self, name: str, stale_after_s: float = 5.0, failure_window_s: float = 5.0,
                 failure_error_s: float = 5.0):
        self.name = name
        self.stale_after_s = stale_after_s
        self.failure_window_s = failure_window_s
        self.failure_error_s = failure_error_s
        self.input_rate = RateMeter()
        self.output_rate = RateMeter()
        self.inference = LatencyWindow()
        self.latency = LatencyWindow()  # receive -> publish, seconds
        self.queue_wait = LatencyWindow()  # receive -> the inference thread picks the frame up, seconds
        self.device = "unknown"
        self.model = ""
        self.model_loaded = False
        self.worker_alive = True
        self.worker_restarts = 0
        self.extra: dict[str, str] = {}
        self.failures: dict[str, int] = {}  # kind -> frames failed since start
        self.dropped_frames = 0
        self.dropped_pairs = 0
        self._dropped_reported = 0
        self._recent: deque[tuple[float, str]] = deque()  # (time, kind) within failure_window_s
        self._failing_since: float | None = None  # first failure after the last published frame
        self._lock = threading.Lock()

    @property
    def invalid_messages(self) -> int:
        """Frames that failed, all kinds together."""
        return sum(self.failure_counts().values())

    def failure_counts(self) -> dict[str, int]:
        """kind -> frames failed since start (a copy)."""
        with self._lock:
            return dict(self.failures)

    def frame_failed(self, kind: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.failures[kind] = self.failures.get(kind, 0) + 1
            self._recent.append((now, kind))
            if self._failing_since is None:
                self._failing_since = now

    def frame_ok(self) -> None:
        """A frame was published: ends a run of failures."""
        with self._lock:
            self._failing_since = None

    def recent_failures(self, now: float | None = None) -> dict[str, int]:
        """kind -> failures within the last ``failure_window_s``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._recent and self._recent[0][0] < now - self.failure_window_s:
                self._recent.popleft()
            counts: dict[str, int] = {}
            for _, kind in self._recent:
                counts[kind] = counts.get(kind, 0) + 1
            return counts

    def level_and_message(self, now: float | None = None) -> tuple[int, str]:
        now = time.monotonic() if now is None else now
        if not self.model_loaded:
            return DiagnosticStatus.ERROR, "model not loaded (node not configured)"
        if not self.worker_alive:
            return DiagnosticStatus.ERROR, "the inference thread is not running (being restarted)"
        since = self.input_rate.seconds_since_last(now)
        if since is None:
            return DiagnosticStatus.WARN, "no input received yet"
        if since > self.stale_after_s:
            return DiagnosticStatus.WARN, f"no input for {since:.1f} s"
        recent = self.recent_failures(now)
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(recent.items()))
        failing_since = self._failing_since
        if failing_since is not None and now - failing_since >= self.failure_error_s:
            return DiagnosticStatus.ERROR, f"no frame published for {now - failing_since:.1f} s: every frame " \
                                           f"failed ({kinds or 'see the log'})"
        if recent:
            return DiagnosticStatus.WARN, f"{sum(recent.values())} frame(s) failed in the last " \
                                          f"{self.failure_window_s:g} s ({kinds})"
        if self.dropped_frames > self._dropped_reported:
            self._dropped_reported = self.dropped_frames
            return DiagnosticStatus.WARN, "dropping frames: the model is slower than the input rate"
        return DiagnosticStatus.OK, "running"

    def to_msg(self, stamp, now: float | None = None) -> DiagnosticArray:
        """``stamp`` is a builtin_interfaces Time (the node clock's now)."""
        level, message = self.level_and_message(now)
        failures = self.failure_counts()
        values = {
            "input rate (Hz)": f"{self.input_rate.rate(now):.2f}",
            "output rate (Hz)": f"{self.output_rate.rate(now):.2f}",
            "inference p50 (ms)": f"{1e3 * self.inference.percentile(50):.1f}",
            "inference p95 (ms)": f"{1e3 * self.inference.percentile(95):.1f}",
            "latency p50 (ms)": f"{1e3 * self.latency.percentile(50):.1f}",
            "queue wait p50 (ms)": f"{1e3 * self.queue_wait.percentile(50):.1f}",
            "frames received": str(self.input_rate.count),
            "frames published": str(self.output_rate.count),
            "frames dropped": str(self.dropped_frames),
            "stereo pairs dropped": str(self.dropped_pairs),
            "invalid messages": str(sum(failures.values())),
            **{f"failed: {kind}": str(n) for kind, n in sorted(failures.items())},
            "inference thread restarts": str(self.worker_restarts),
            "device": self.device,
            "model": self.model,
            **self.extra,
        }
        status = DiagnosticStatus(level=level, name=self.name, message=message, hardware_id=self.device,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = stamp
        return array


def status_values(array: DiagnosticArray) -> dict[str, str]:
    """Key/values of the first status in a DiagnosticArray (for tests and tools)."""
    return {kv.key: kv.value for kv in array.status[0].values} if array.status else {}

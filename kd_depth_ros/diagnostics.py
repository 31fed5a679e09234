"""Rates, latencies and drop counts, reported as ``diagnostic_msgs/DiagnosticArray`` on ``/diagnostics``.

A small stand-in for ``diagnostic_updater`` (not installable everywhere): :class:`RateMeter` and
:class:`LatencyWindow` collect numbers (thread-safe: the inference thread writes, a timer reads),
:class:`DepthNodeStatus` turns them into one ``DiagnosticStatus`` with a level:
OK; WARN when no input arrived for ``stale_after_s`` or frames are being dropped; ERROR when the
model is not loaded.
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

    def __init__(self, name: str, stale_after_s: float = 5.0):
        self.name = name
        self.stale_after_s = stale_after_s
        self.input_rate = RateMeter()
        self.output_rate = RateMeter()
        self.inference = LatencyWindow()
        self.latency = LatencyWindow()  # receive -> publish, seconds
        self.queue_wait = LatencyWindow()  # receive -> the inference thread picks the frame up, seconds
        self.device = "unknown"
        self.model = ""
        self.model_loaded = False
        self.extra: dict[str, str] = {}
        self.invalid_messages = 0
        self.dropped_frames = 0
        self.dropped_pairs = 0
        self._dropped_reported = 0

    def level_and_message(self, now: float | None = None) -> tuple[int, str]:
        if not self.model_loaded:
            return DiagnosticStatus.ERROR, "model not loaded (node not configured)"
        since = self.input_rate.seconds_since_last(now)
        if since is None:
            return DiagnosticStatus.WARN, "no input received yet"
        if since > self.stale_after_s:
            return DiagnosticStatus.WARN, f"no input for {since:.1f} s"
        if self.dropped_frames > self._dropped_reported:
            self._dropped_reported = self.dropped_frames
            return DiagnosticStatus.WARN, "dropping frames: the model is slower than the input rate"
        return DiagnosticStatus.OK, "running"

    def to_msg(self, stamp, now: float | None = None) -> DiagnosticArray:
        """``stamp`` is a builtin_interfaces Time (the node clock's now)."""
        level, message = self.level_and_message(now)
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
            "invalid messages": str(self.invalid_messages),
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

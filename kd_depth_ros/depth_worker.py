"""The depth nodes' inference thread and what it does with a frame that fails, without a node.

- :class:`LatestFrameWorker`: subscription callbacks only ``submit()`` (cheap: no decoding); the
  thread takes the oldest pending item and runs ``process(item)`` (decode, predict, publish). While
  the thread keeps up (the median ``process`` time of the last 8 is below the mean interval between
  the last 9 submits: a rate, so a burst of frames delivered together after a stall does not count
  as overload), up to ``queue_size`` items wait (the nodes use 2, parameter ``frame_queue_size``):
  frames that arrive while the thread is briefly late (a scheduling hiccup, one slow frame) are all
  still answered. When it does not keep up (a model slower than the camera) only the newest item
  waits ("newest frame wins"), so a slow model never builds a queue of stale frames and latency stays
  about one to two inference times. An item pushed out of the queue counts as dropped. An exception
  from ``process`` goes to ``on_error`` and the thread carries on; a thread that ends anyway is
  restarted by :meth:`LatestFrameWorker.supervise` (the node calls it from its diagnostics timer).
- Failures: :data:`FAILURE_KINDS`, :class:`FrameError` (a frame that cannot be processed, by kind) and
  :func:`failure_kind` (the kind of a bad-input reason from the field it names).
- :class:`ThrottledLog`: at most one line per key and period, one rclpy call site per severity.

The node that wires these (lifecycle, publishers, diagnostics) is :mod:`kd_depth_ros.node_base`.
"""
from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

PACE_WINDOW = 8
"""Process durations (median) and submit intervals (mean) that decide whether the thread keeps up."""


# --------------------------------------------------------------------------- the inference thread
class LatestFrameWorker:
    """One background thread processing the most recently submitted items, oldest of them first.

    At most :attr:`capacity` items wait: ``queue_size`` while the thread keeps up (:meth:`keeping_up`), 1 while
    it does not; a submit to a full queue drops the oldest waiting item (counted in ``dropped``). ``queue_size``
    1 is plain "newest item wins". An exception from ``process`` goes to ``on_error`` and the thread carries on;
    should the thread end anyway (a ``BaseException``, a failing ``on_error``), :meth:`supervise` restarts it.
    """

    def __init__(self, process: Callable[[Any], None], on_error: Callable[[BaseException], None] | None = None,
                 name: str = "depth-inference", queue_size: int = 1):
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size: expected an integer >= 1, got {queue_size!r}")
        self._process = process
        self._on_error = on_error
        self._name = name
        self.queue_size = queue_size
        self._cond = threading.Condition()
        self._pending: deque[Any] = deque()
        self._durations: deque[float] = deque(maxlen=PACE_WINDOW)  # seconds per process() call
        self._submits: deque[float] = deque(maxlen=PACE_WINDOW + 1)  # monotonic times of the last submits
        self._stop = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.processed = 0
        self.restarts = 0
        self.exit_error: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._cond:
            self._stop = False
        self.exit_error = None
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the thread runs or was never started / was stopped (nothing to restart)."""
        thread = self._thread
        return thread is None or self._stop or thread.is_alive()

    def supervise(self) -> BaseException | None:
        """Restart the thread if it ended without :meth:`stop`; returns what ended it (None: nothing to do)."""
        if self.alive:
            return None
        error = self.exit_error or RuntimeError("the thread ended")
        self.restarts += 1
        self.start()
        return error

    def _keeping_up(self) -> bool:  # with self._cond held
        if len(self._durations) < 3 or len(self._submits) < 4:
            return True
        mean_interval = (self._submits[-1] - self._submits[0]) / (len(self._submits) - 1)
        return statistics.median(self._durations) < mean_interval

    def keeping_up(self) -> bool:
        """True while ``process`` takes less time than passes between submits: the median of the last
        :data:`PACE_WINDOW` process times against the mean interval of the last submits (the input rate, which
        a burst of frames delivered together after a stall does not change); True until three of each are known."""
        with self._cond:
            return self._keeping_up()

    @property
    def capacity(self) -> int:
        """Items that may wait now: ``queue_size`` while the thread keeps up, else 1."""
        with self._cond:
            return self.queue_size if self._keeping_up() else 1

    def submit(self, item: Any) -> bool:
        """Queue ``item``; with :attr:`capacity` items already waiting the oldest go (counted in ``dropped``).
        Returns True if one was dropped."""
        with self._cond:
            self._submits.append(time.monotonic())
            capacity = self.queue_size if self._keeping_up() else 1
            dropped = 0
            while len(self._pending) >= capacity:
                self._pending.popleft()
                dropped += 1
            self.dropped += dropped
            self._pending.append(item)
            self._cond.notify_all()
        return dropped > 0

    @property
    def pending(self) -> int:
        """Items waiting (not counting the one being processed)."""
        with self._cond:
            return len(self._pending)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the item in progress; pending items are discarded (not counted as dropped)."""
        with self._cond:
            self._stop = True
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is pending or running. Returns False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # recorded for supervise(); the thread ends
            self.exit_error = exc

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stop)
                if self._stop:
                    return
                item = self._pending.popleft()
                self._busy = True
            start = time.monotonic()
            try:
                self._process(item)
            except Exception as exc:  # a bad frame must never kill the thread
                if self._on_error is not None:
                    self._on_error(exc)
            finally:
                with self._cond:
                    self._durations.append(time.monotonic() - start)
                    self._busy = False
                    self.processed += 1
                    self._cond.notify_all()


# --------------------------------------------------------------------------- failures and logging
FAILURE_KINDS = {
    "bad_encoding": "an image encoding or compressed format the node cannot decode",
    "bad_image": "a malformed image (step, data size, shape, undecodable bytes)",
    "no_camera_info": "no camera_info matches the image (stamp tolerance / maximum age)",
    "bad_camera_info": "a camera_info that fails validation (K not finite, fx/fy <= 0, principal point, size)",
    "backend_error": "the model backend raised",
    "out_of_memory": "the model backend ran out of (GPU) memory",
    "internal_error": "anything else raised while processing a frame",
    "worker_restart": "the inference thread ended and was restarted",
}
"""Kinds of per-frame failure, counted in ``/diagnostics`` as ``failed: <kind>``."""


class FrameError(Exception):
    """A frame that cannot be processed: ``kind`` (a key of :data:`FAILURE_KINDS`), the topic, the reason."""

    def __init__(self, kind: str, topic: str, reason: str):
        super().__init__(reason)
        self.kind, self.topic = kind, topic


def failure_kind(reason: str) -> str:
    """Kind of a bad-input reason from its leading field name (``encoding: ...`` -> ``bad_encoding``)."""
    field_name = reason.split(":", 1)[0].strip()
    if field_name in ("encoding", "format"):
        return "bad_encoding"
    if field_name.startswith("camera_info") or field_name in ("k", "p", "width/height", "binning"):
        return "bad_camera_info"
    return "bad_image"


class ThrottledLog:
    """Log at most one message per key and period; each severity is its own rclpy call site.

    rclpy remembers the severity (and filters) of every call site and raises ``ValueError: Logger severity
    cannot be changed between calls`` when one line logs at another severity, so the three severities
    below are three separate calls, and throttling is done here rather than with ``throttle_duration_sec``.
    Messages suppressed in the meantime are counted in the next one.
    """

    def __init__(self, logger):
        self._logger = logger
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, text: str, level: str = "warning", period_s: float = 5.0,
                 count_suppressed: bool = True) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -math.inf) < period_s:
                if count_suppressed:
                    self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            text += f" ({suppressed} more like this since the last message)"
        if level == "error":
            self._logger.error(text)
        elif level == "info":
            self._logger.info(text)
        else:
            self._logger.warning(text)
        return True

"""The depth nodes' inference thread and what it does with a frame that fails, without a node.

- :class:`LatestFrameWorker`: subscription callbacks only ``submit()`` (cheap: no decoding); the
  thread takes the newest pending item and runs ``process(item)`` (decode, predict, publish). A
  frame replaced before the thread reaches it counts as dropped, so a slow model never builds a
  queue of stale frames and latency stays bounded by about one inference time. An exception from
  ``process`` goes to ``on_error`` and the thread carries on; a thread that ends anyway is restarted
  by :meth:`LatestFrameWorker.supervise` (the node calls it from its diagnostics timer).
- Failures: :data:`FAILURE_KINDS`, :class:`FrameError` (a frame that cannot be processed, by kind) and
  :func:`failure_kind` (the kind of a bad-input reason from the field it names).
- :class:`ThrottledLog`: at most one line per key and period, one rclpy call site per severity.

The node that wires these (lifecycle, publishers, diagnostics) is :mod:`kd_depth_ros.node_base`.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any


# --------------------------------------------------------------------------- the inference thread
class LatestFrameWorker:
    """One background thread processing the most recently submitted item.

    An exception from ``process`` goes to ``on_error`` and the thread carries on; should the thread end
    anyway (a ``BaseException``, a failing ``on_error``), :meth:`supervise` restarts it.
    """

    def __init__(self, process: Callable[[Any], None], on_error: Callable[[BaseException], None] | None = None,
                 name: str = "depth-inference"):
        self._process = process
        self._on_error = on_error
        self._name = name
        self._cond = threading.Condition()
        self._pending: Any = None
        self._has_pending = False
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

    def submit(self, item: Any) -> bool:
        """Queue ``item``, replacing an unprocessed one (counted in ``dropped``). Returns True if one was replaced."""
        with self._cond:
            replaced = self._has_pending
            if replaced:
                self.dropped += 1
            self._pending, self._has_pending = item, True
            self._cond.notify_all()
        return replaced

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the item in progress; a pending item is discarded (not counted as dropped)."""
        with self._cond:
            self._stop = True
            self._pending, self._has_pending = None, False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is pending or running. Returns False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._has_pending and not self._busy, timeout)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # recorded for supervise(); the thread ends
            self.exit_error = exc

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._has_pending or self._stop)
                if self._stop:
                    return
                item, self._pending, self._has_pending = self._pending, None, False
                self._busy = True
            try:
                self._process(item)
            except Exception as exc:  # a bad frame must never kill the thread
                if self._on_error is not None:
                    self._on_error(exc)
            finally:
                with self._cond:
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

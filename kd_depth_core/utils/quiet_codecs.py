"""Image codecs without stray lines on the terminal: what libpng, libjpeg and OpenCV's readers print straight
to the process's stderr (``libpng error: bad adaptive filter value``, ``[ WARN:0] ... PNG input buffer is
incomplete``, ``Corrupt JPEG data: ...``) is captured and handed to the caller, who puts it into its own one-line
error naming the file or the message, instead of it leaking above that error.

    image, said = call_quietly(cv2.imread, str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: not a readable image" + (f" ({said})" if said else ""))

The capture redirects file descriptor 2 for the length of the call (under a lock, so concurrent calls never
swap each other's descriptors). Text that other threads write meanwhile and that is not a codec's is written
to stderr afterwards, so nothing else is lost.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")

_LOCK = threading.Lock()
_SAVED_STDERR: list[int] = []  # the real stderr's copy while a call captures fd 2


def _after_fork_in_child() -> None:
    """A process forked while another thread captured fd 2 (a DataLoader worker, say) gets its stderr back
    and a free lock."""
    global _LOCK
    _LOCK = threading.Lock()
    if _SAVED_STDERR:
        with contextlib.suppress(OSError):
            os.dup2(_SAVED_STDERR[0], 2)
        _SAVED_STDERR.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)

# What the codec libraries and OpenCV's image readers print (anything else is passed on to stderr)
_CODEC_LINE = re.compile(r"^(?:libpng |libjpeg|libtiff|libwebp|Corrupt JPEG data|Premature end of JPEG|Invalid SOS|"
                         r"TIFF\w*:|\[\s*(?:WARN|ERROR|INFO)[^\]]*\].*(?:grfmt_|imgcodecs|loadsave))")
_OPENCV_PREFIX = re.compile(r"^\[\s*(?:WARN|ERROR|INFO)[^\]]*\]\s*(?:global\s+)?(?:\S+:\d+\s+\S+\s+)?")


def _tidy(line: str) -> str:
    """'[ WARN:0@0.3] global grfmt_png.cpp:793 readFromStreamOrBuffer PNG input buffer is incomplete'
    -> 'PNG input buffer is incomplete'; 'libpng error: x' stays as it is."""
    return _OPENCV_PREFIX.sub("", line).strip()


def call_quietly(function: Callable[..., R], *args: Any, **kwargs: Any) -> tuple[R, str]:
    """``(function(*args, **kwargs), what the codecs printed meanwhile as one line, '' when nothing)``."""
    with _LOCK:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to redirect: nothing can leak either
            return function(*args, **kwargs), ""
        read_end, write_end = os.pipe()
        failed = True
        try:
            try:
                os.set_blocking(write_end, False)  # a codec never blocks on a full pipe (it holds far more than a line)
                _SAVED_STDERR.append(saved)
                os.dup2(write_end, 2)
                try:
                    result = function(*args, **kwargs)
                    failed = False
                finally:
                    os.dup2(saved, 2)
                    _SAVED_STDERR.clear()
            finally:
                os.close(write_end)
                captured = _drain(read_end)
                if failed and captured:  # the call raised: its own error goes up; pass on what was printed
                    with contextlib.suppress(OSError):
                        os.write(2, captured.encode())
        finally:
            os.close(saved)
            os.close(read_end)
    codec, other = [], []
    for line in captured.splitlines():
        if line.strip():
            (codec if _CODEC_LINE.search(line) else other).append(line)
    if other:  # another thread's output, written while fd 2 was ours
        with contextlib.suppress(OSError):
            os.write(2, ("\n".join(other) + "\n").encode())
    return result, "; ".join(dict.fromkeys(_tidy(line) for line in codec))


def _drain(fd: int) -> str:
    """Everything in the pipe now (non-blocking: a child process started meanwhile may still hold its write end)."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")

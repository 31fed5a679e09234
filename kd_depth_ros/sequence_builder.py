"""The per-frame pipeline shared by the bag converter and the live recorder (no ROS needed).

A matched frame (left image message, its calibration, optionally the right pair and a depth source)
goes: segment split (stamp gap or calibration change) -> keyframe by motion -> decode
(:mod:`kd_depth_ros.image_decode`) or keep the camera's own jpeg/png bytes -> rectify/resize
(:func:`kd_depth_ros.rectify.prepare_frame`) -> ``SequenceWriter``. Both callers feed the same
class, so a stream recorded live gives the same frames as the same stream converted from a bag.
Stamps are header stamps in integer nanoseconds; motion in grey levels (0..255).
"""
from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from kd_depth_core.data.sequence import CameraModel, SequenceWriter, encoded_format
from kd_depth_core.utils.quiet_codecs import call_quietly
from kd_depth_ros.image_decode import BadImageDataError, decode_rgb8, is_compressed
from kd_depth_ros.keyframes import KeyframeSelector, SegmentSplitter
from kd_depth_ros.rectify import CameraCalibration, camera_model, needs_remap, output_size, prepare_frame

THUMB_DECODE = cv2.IMREAD_REDUCED_GRAYSCALE_4  # enough pixels for keyframe motion; a jpeg decodes at 1/4 size
IMAGE_FORMAT_CHOICES = ("auto", "png", "jpg")
OUT_OF_ORDER = "stamp not after the previous frame"
UNDECODABLE = "undecodable image data"


class FrameSizeError(ValueError):
    """A compressed frame whose size differs from its camera_info (found without a full decode)."""


@dataclass
class BuildSettings:
    """How frames become sequences. ``image_format`` auto: a compressed camera's own jpeg/png, png for raw."""

    rectify: str = "auto"
    width: int | None = None
    height: int | None = None
    min_motion: float = 1.0
    max_gap_s: float = 0.5
    min_frames: int = 3
    image_format: str = "auto"
    already_rectified: bool = False


@dataclass
class BuildFrame:
    """One matched frame. ``left``/``right``: Image or CompressedImage messages (rclpy or rosbags);
    ``depth(camera, left_calib)``: optional metric depth (H, W) of the output camera; ``where`` prefixes errors."""

    stamp_ns: int
    left: Any
    left_calib: CameraCalibration
    right: Any = None
    right_calib: CameraCalibration | None = None
    depth: Callable[[CameraModel, CameraCalibration], np.ndarray] | None = None
    where: str = ""


@dataclass
class SegmentResult:
    """A segment that had a writer: committed (``path``) or discarded (``reason``)."""

    index: int
    frames: int
    path: Any = None
    reason: str | None = None


@dataclass
class _Segment:
    index: int
    skip: bool
    writer: SequenceWriter | None = None


class SyncAdder:
    """Writes frames on the caller's thread (the recorder already runs on its own writer thread)."""

    def add(self, writer: SequenceWriter, *args, **kwargs) -> None:
        writer.add_frame(*args, **kwargs)

    def drain(self) -> None:
        pass

    def discard(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class BackgroundAdder(SyncAdder):
    """Runs ``SequenceWriter.add_frame`` on one background thread (in order), so encoding and writing overlap
    reading and decoding the next frames. At most ``backlog`` frames wait; an error surfaces at a later
    ``add`` or at ``drain``."""

    def __init__(self, backlog: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sequence-writer")
        self._pending: list[Future] = []
        self.backlog = backlog

    def add(self, writer: SequenceWriter, *args, **kwargs) -> None:
        self._pending.append(self._pool.submit(writer.add_frame, *args, **kwargs))
        while len(self._pending) > self.backlog:
            self._pending.pop(0).result()

    def drain(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def discard(self) -> None:
        while self._pending:
            with contextlib.suppress(Exception):
                self._pending.pop(0).result()

    def shutdown(self) -> None:
        self.discard()
        self._pool.shutdown(wait=True)


def calibration_change(old: CameraCalibration | None, new: CameraCalibration) -> tuple[str, str] | None:
    """('K differs', ' (cx 609.6 -> 601.6)') when `new` is a different camera than `old`, else None."""
    if old is None or old.key == new.key:
        return None
    if (old.width, old.height) != (new.width, new.height):
        return "size differs", f" ({old.width}x{old.height} -> {new.width}x{new.height})"
    for name, (r, c) in (("fx", (0, 0)), ("fy", (1, 1)), ("cx", (0, 2)), ("cy", (1, 2))):
        if old.K[r, c] != new.K[r, c]:
            return "K differs", f" ({name} {old.K[r, c]:g} -> {new.K[r, c]:g})"
    for name in ("K", "D", "R", "P"):
        a, b = getattr(old, name), getattr(new, name)
        if a.shape != b.shape or not np.array_equal(a, b):
            return f"{name} differs", ""
    return "calibration differs", ""


class SequenceBuilder:
    """Matched frames in, sequences out (see the module docstring).

    ``open_writer(index, camera, has_right, image_format)`` opens the writer of segment ``index`` at its first
    keyframe; ``skip_segment(index)`` says a segment is already complete (resuming: its frames are not decoded);
    ``on_end(result)`` hears of every segment that had a writer. ``dropped`` counts frames by reason,
    ``details`` holds the first detail of a reason, ``warnings`` the first undecodable frames.
    """

    def __init__(self, settings: BuildSettings, open_writer: Callable[..., SequenceWriter], *,
                 skip_segment: Callable[[int], bool] | None = None,
                 on_end: Callable[[SegmentResult], None] | None = None, adder: SyncAdder | None = None) -> None:
        if settings.image_format not in IMAGE_FORMAT_CHOICES:
            raise ValueError(f"image_format: expected one of {IMAGE_FORMAT_CHOICES}, got {settings.image_format!r}")
        self.settings, self.open_writer = settings, open_writer
        self.skip_segment = skip_segment or (lambda index: False)
        self.on_end = on_end or (lambda result: None)
        self.adder = adder or SyncAdder()
        self.dropped: Counter[str] = Counter()
        self.details: dict[str, str] = {}
        self.warnings: list[str] = []
        self.keyframes = KeyframeSelector(settings.min_motion)
        self.reset()

    def reset(self) -> None:
        """End the segment in progress and start afresh (a new recording): no stamp order or camera carried over."""
        if getattr(self, "segment", None) is not None:
            self.end_segment()
        self.splitter = SegmentSplitter(self.settings.max_gap_s)
        self.segment: _Segment | None = None
        self.last_stamp: int | None = None
        self.last_calib: CameraCalibration | None = None
        self.frame_number = -1
        self.segment_reason: str | None = None

    @property
    def writing(self) -> bool:
        return self.segment is not None and self.segment.writer is not None

    # ---- segments
    def end_segment(self) -> SegmentResult | None:
        """Commit the segment in progress (or discard it when shorter than ``min_frames``)."""
        seg, self.segment = self.segment, None
        if seg is None or seg.writer is None:
            return None
        self.adder.drain()
        n = len(seg.writer)
        if n < self.settings.min_frames:
            reason = self.segment_reason or f"sequence shorter than {self.settings.min_frames} keyframes"
            self.dropped[reason] += n
            seg.writer.abort()
            result = SegmentResult(seg.index, n, reason=reason)
        else:
            try:
                path = seg.writer.close()
            except BaseException:
                seg.writer.abort()
                raise
            result = SegmentResult(seg.index, n, path=path)
        self.on_end(result)
        return result

    def abort(self) -> None:
        """Discard the segment in progress (after an error); the next keyframe opens a new writer."""
        self.adder.discard()
        if self.segment is not None and self.segment.writer is not None:
            self.segment.writer.abort()
            self.segment.writer = None

    def _new_segment(self, index: int, change: tuple[str, str] | None) -> None:
        self.end_segment()
        self.segment = _Segment(index, skip=self.skip_segment(index))
        self.keyframes.reset()
        self.segment_reason = None
        if change:
            self.segment_reason = "camera_info changed"
            what, values = change
            self.details.setdefault("camera_info changed", f"{what} at frame {self.frame_number}{values}; a "
                                    "sequence needs one camera (check the camera driver's calibration)")

    # ---- frames
    def out_of_order(self, stamp_ns: int) -> bool:
        """True (and counted) when ``stamp_ns`` is not after the last frame's: such a frame is skipped."""
        if self.last_stamp is not None and stamp_ns <= self.last_stamp:
            self.dropped[OUT_OF_ORDER] += 1
            return True
        return False

    def add(self, f: BuildFrame) -> str:
        """Process one frame: 'kept', 'static', 'out_of_order', 'undecodable' or 'skipped' (complete segment).

        Raises image_decode.UnsupportedEncodingError, rectify.CalibrationError and FrameSizeError for bad input.
        """
        s = self.settings
        if self.out_of_order(f.stamp_ns):
            return "out_of_order"
        self.last_stamp = f.stamp_ns
        self.frame_number += 1
        change = calibration_change(self.last_calib, f.left_calib)
        self.last_calib = f.left_calib
        index, new = self.splitter.update(f.stamp_ns, (f.left_calib.key, f.right_calib and f.right_calib.key))
        if new:
            self._new_segment(index, change)
        seg = self.segment
        if seg.skip:
            return "skipped"
        image_format = seg.writer.image_format if seg.writer is not None else self._output_format(f.left)
        pixels_unchanged = not needs_remap(s.rectify, s.already_rectified, f.left_calib, f.right_calib) and (
            output_size(f.left_calib.width, f.left_calib.height, s.width, s.height)
            == (f.left_calib.width, f.left_calib.height))
        try:
            left, right, motion_image, as_is = self._images(f, image_format, pixels_unchanged)
        except BadImageDataError as exc:
            self.dropped[UNDECODABLE] += 1
            text = f"{f.where}: {exc}" if f.where else str(exc)
            self.details.setdefault(UNDECODABLE, f"first: {text}")
            if len(self.warnings) < 20:
                self.warnings.append(text)
            return "undecodable"
        keep, _ = self.keyframes.accept(motion_image)
        if not keep:
            self.dropped[f"static (motion < {s.min_motion:g} grey levels)"] += 1
            return "static"
        if as_is:
            camera = camera_model(f.left_calib, rectified=s.rectify != "raw", right=f.right_calib)
        else:
            left, right, camera = prepare_frame(left, f.left_calib, right, f.right_calib, mode=s.rectify,
                                                already_rectified=s.already_rectified, width=s.width, height=s.height)
        depth = None if f.depth is None else f.depth(camera, f.left_calib)
        if seg.writer is None:
            seg.writer = self.open_writer(seg.index, camera, right is not None, image_format)
        self.adder.add(seg.writer, f.stamp_ns, left, right=right, depth=depth)
        return "kept"

    def _output_format(self, msg) -> str:
        if self.settings.image_format != "auto":
            return self.settings.image_format
        return (encoded_format(msg.data) or "png") if is_compressed(msg) else "png"

    def _images(self, f: BuildFrame, image_format: str, pixels_unchanged: bool):
        """(left, right, image for keyframe motion, stored as recorded?): the camera's encoded bytes and a grey
        thumbnail when every view can be kept as recorded; otherwise decoded RGB frames (the left one for motion)."""
        if pixels_unchanged:
            left = _as_recorded(f.left, f.left_calib, image_format, f.where)
            right = None if f.right_calib is None else _as_recorded(f.right, f.right_calib, image_format, f.where)
            if left is not None and (f.right_calib is None or right is not None):
                return left[0], None if right is None else right[0], left[1], True
        left = decode_rgb8(f.left)
        right = None if f.right_calib is None else decode_rgb8(f.right)
        return left, right, left, False


def _as_recorded(msg, calib: CameraCalibration, image_format: str, where: str):
    """(encoded bytes, grey thumbnail) when a compressed frame is already in ``image_format``; None otherwise."""
    if not is_compressed(msg) or encoded_format(msg.data) != image_format:
        return None
    data = msg.data if isinstance(msg.data, np.ndarray) else np.frombuffer(msg.data, np.uint8)
    thumb, said = call_quietly(cv2.imdecode, data, THUMB_DECODE)
    if thumb is None:
        raise BadImageDataError(f"data: CompressedImage ({data.size} bytes, format {msg.format!r}) does not decode"
                                + (f" ({said})" if said else ""))
    rows, cols = thumb.shape[:2]  # a reduced jpeg rounds the size up, a reduced png down
    if rows not in (calib.height // 4, -(-calib.height // 4)) or cols not in (calib.width // 4, -(-calib.width // 4)):
        raise FrameSizeError(f"{where}: image is about {cols * 4}x{rows * 4} but its camera_info says "
                             f"{calib.width}x{calib.height}")
    return data.tobytes(), thumb

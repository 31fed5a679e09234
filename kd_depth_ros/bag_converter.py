"""Convert rosbag2 (sqlite3 / mcap, split) and ROS 1 bags into training sequences (docs/dataset_format.md).

``kd-depth convert-bag BAG... --out DIR`` and the ROS executable ``convert_bag`` run :func:`main`.
Per bag, in one streaming pass read with rosbags' ``AnyReader`` (header stamps, never log times):

1. left images (``sensor_msgs/Image`` or ``CompressedImage``) are matched by header stamp to their
   camera_info (nearest stamp, or the latest at or before the frame), to the right image of a
   stereo pair (within ``--stereo-tolerance``) and optionally to a lidar ``PointCloud2`` (within
   ``--lidar-tolerance``);
2. frames are split into segments at stamp gaps (``--max-gap``) and calibration changes;
3. keyframes are chosen by motion (mean abs difference of downscaled grayscale frames against the
   last kept frame, ``--min-motion`` grey levels), dropping static stretches;
4. kept frames are rectified from K/D/R/P (skipped when the topic is already rectified or the
   calibration is an identity), resized with the intrinsics scaled, lidar points are projected
   through the ``/tf_static`` lidar->camera transform into a metric depth image (nearest wins);
   a compressed frame that needs no remap or resize is stored as the camera encoded it (jpeg or
   png bytes, ``--image-format auto``): no decode/re-encode, no second compression loss;
5. each segment with at least ``--min-frames`` keyframes becomes one sequence
   ``<bag name>_<segment:03d>``, written atomically by ``SequenceWriter``.

Re-running resumes: a complete sequence written from the same bag with the same settings (its
``source.fingerprint``) is skipped. Any other existing output is an error unless ``--force``.
Several bags convert in parallel processes (``--jobs``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import re
import shutil
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kd_depth_core.data.sequence import CameraModel, Sequence, SequenceError, SequenceWriter, encoded_format
from kd_depth_ros.keyframes import NS_PER_S, KeyframeSelector, Matched, NearestStampMatcher, SegmentSplitter
from kd_depth_ros.lidar import (
    LidarError,
    StaticTransforms,
    TransformLookupError,
    cloud_to_xyz,
    project_to_depth,
    transform_points,
)
from kd_depth_ros.rectify import (
    RECTIFY_MODES,
    CalibrationError,
    CameraCalibration,
    camera_model,
    looks_rectified,
    needs_remap,
    output_size,
    prepare_frame,
)

CONVERTER_ID = "kd_depth_ros.bag_converter"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"
TF_TYPE = "tf2_msgs/msg/TFMessage"
CAMERA_INFO_POLICIES = ("nearest", "latest")
IMAGE_FORMAT_CHOICES = ("auto", "png", "jpg")
THUMB_DECODE = cv2.IMREAD_REDUCED_GRAYSCALE_4  # enough pixels for keyframe motion; a jpeg decodes at 1/4 size


# --------------------------------------------------------------------------- errors
class BagConversionError(Exception):
    """A bag cannot be converted; the message names the bag, the topic or the file and what was expected."""


class BagNotFoundError(BagConversionError, FileNotFoundError):
    """The bag path does not exist."""


class BagReadError(BagConversionError):
    """The bag is corrupt, truncated or not a bag rosbags can read."""


class TopicNotFoundError(BagConversionError):
    """A requested topic is missing or of the wrong type (the message lists the image topics present)."""


class CameraInfoError(BagConversionError):
    """A CameraInfo that cannot be used: uncalibrated, malformed, or not matching its images."""


class CameraInfoNotFoundError(CameraInfoError):
    """No ``sensor_msgs/CameraInfo`` topic (with messages) for the image topic."""


class FrameDecodeError(BagReadError):
    """One image message whose data does not decode (the frame is dropped and counted)."""


class UnsupportedEncodingError(BagConversionError):
    """An image encoding or compressed format that cannot become an RGB training image."""


class TransformNotFoundError(BagConversionError):
    """No lidar -> camera transform in ``/tf_static``."""


class OutputExistsError(BagConversionError, FileExistsError):
    """The output holds a sequence this conversion would replace (use ``--force``)."""


# --------------------------------------------------------------------------- options and summary
@dataclass
class ConvertOptions:
    """What to convert and how. Times in seconds, depths in metres, motion in grey levels (0..255)."""

    image_topic: str | None = None
    right_topic: str | None = None
    camera_info_topic: str | None = None
    right_camera_info_topic: str | None = None
    lidar_topic: str | None = None
    camera_info_policy: str = "nearest"
    stereo_tolerance: float = 0.01
    lidar_tolerance: float = 0.05
    max_wait: float = 1.0
    rectify: str = "auto"
    width: int | None = None
    height: int | None = None
    min_motion: float = 1.0
    max_gap: float = 0.5
    min_frames: int = 3
    min_depth: float = 0.1
    max_depth: float = 250.0
    image_format: str = "auto"
    force: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.camera_info_policy in CAMERA_INFO_POLICIES, "camera_info_policy",
             f"one of {CAMERA_INFO_POLICIES}", self.camera_info_policy),
            (self.rectify in RECTIFY_MODES, "rectify", f"one of {RECTIFY_MODES}", self.rectify),
            (self.stereo_tolerance >= 0, "stereo_tolerance", ">= 0 s", self.stereo_tolerance),
            (self.lidar_tolerance >= 0, "lidar_tolerance", ">= 0 s", self.lidar_tolerance),
            (self.max_wait > 0, "max_wait", "> 0 s", self.max_wait),
            (self.max_gap > 0, "max_gap", "> 0 s", self.max_gap),
            (self.min_motion >= 0, "min_motion", ">= 0 grey levels", self.min_motion),
            (self.min_frames >= 1, "min_frames", ">= 1", self.min_frames),
            (0 < self.min_depth < self.max_depth, "min_depth/max_depth", "0 < min_depth < max_depth",
             (self.min_depth, self.max_depth)),
            (self.width is None or self.width > 0, "width", "a positive number of pixels", self.width),
            (self.height is None or self.height > 0, "height", "a positive number of pixels", self.height),
            (self.image_format in IMAGE_FORMAT_CHOICES, "image_format", f"one of {IMAGE_FORMAT_CHOICES}",
             self.image_format),
        ]
        for ok, name, expected, value in checks:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, got {value!r}")

    def fingerprint_settings(self) -> dict[str, Any]:
        """Everything that changes the output (for resuming): all options but ``force`` and the topic flags
        (the fingerprint records the resolved topics, so a default that resolves to the same topic matches)."""
        settings = dataclasses.asdict(self)
        for name in ("force", "image_topic", "right_topic", "camera_info_topic", "right_camera_info_topic",
                     "lidar_topic"):
            settings.pop(name, None)
        return settings


@dataclass
class BagSummary:
    """What one bag's conversion did. ``dropped`` counts frames by reason."""

    bag: str
    sequences_written: list[str] = field(default_factory=list)
    sequences_skipped: list[str] = field(default_factory=list)
    frames_read: int = 0
    frames_written: int = 0
    frames_skipped_existing: int = 0
    frames_with_depth: int = 0
    frames_without_depth: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.bag}: FAILED: {self.error}"
        parts = [f"{self.bag}: {len(self.sequences_written)} sequence(s) written"]
        if self.sequences_skipped:
            parts.append(f"{len(self.sequences_skipped)} already complete (skipped, {self.frames_skipped_existing} frames)")
        parts.append(f"frames: {self.frames_read} read, {self.frames_written} kept")
        if self.dropped:
            parts.append("dropped: " + ", ".join(f"{reason} {n}" for reason, n in sorted(self.dropped.items())))
        if self.frames_with_depth or self.frames_without_depth:
            parts.append(f"lidar depth: {self.frames_with_depth} frames, {self.frames_without_depth} kept without "
                         "(no cloud within tolerance)")
        parts.append(f"{self.seconds:.1f} s")
        return "; ".join(parts)


# --------------------------------------------------------------------------- image decoding
def _raw_encodings() -> tuple[str, ...]:
    from rosbags.image.image import ENCODINGMAP

    return tuple(ENCODINGMAP)


def _bytes_per_pixel(encoding: str) -> int:
    from rosbags.image.image import to_cvtype

    _, _, typestr, channels = to_cvtype(encoding)
    return np.dtype(typestr).itemsize * channels


def decode_image(msg, msgtype: str, where: str) -> np.ndarray:
    """A rosbags Image / CompressedImage -> RGB uint8 (H, W, 3).

    Raw images go through rosbags-image (colour conversion, Bayer, YUV, 16 -> 8 bit); compressed
    ones through OpenCV. UnsupportedEncodingError for encodings that are not camera images (e.g.
    depth 32FC1 / 16UC1, compressedDepth); FrameDecodeError for data that does not decode.
    """
    from rosbags.image import ImageError, image_to_cvimage

    if msgtype == COMPRESSED_TYPE:
        fmt = str(msg.format)
        if "compresseddepth" in fmt.lower():
            raise UnsupportedEncodingError(f"{where}: CompressedImage format {fmt!r} (compressedDepth) holds depth, "
                                           "not a camera image; expected jpeg or png")
        rgb = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
        if rgb is None:
            raise FrameDecodeError(f"{where}: CompressedImage data ({len(msg.data)} bytes, format {fmt!r}) does not decode")
        return cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)
    encoding = str(msg.encoding)
    if encoding not in _raw_encodings():
        raise UnsupportedEncodingError(f"{where}: Image encoding {encoding!r} is not a camera image; expected one of "
                                       f"{', '.join(_raw_encodings())}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data)
    if height <= 0 or width <= 0 or data.size != step * height or step <= 0:
        raise FrameDecodeError(f"{where}: Image {width}x{height} step {step} has {data.size} data bytes; "
                           f"expected step*height = {step * height}")
    row_bytes = width * _bytes_per_pixel(encoding)
    try:
        if step > row_bytes:  # rosbags-image ignores row padding: drop it here
            data = np.ascontiguousarray(data.reshape(height, step)[:, :row_bytes]).reshape(-1)
            msg = dataclasses.replace(msg, step=row_bytes, data=data)
        image = image_to_cvimage(msg, "rgb8")
    except ImageError as exc:
        raise UnsupportedEncodingError(f"{where}: Image encoding {encoding!r}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise FrameDecodeError(f"{where}: Image data does not match {width}x{height} {encoding}: {exc}") from None
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(image)


def header_stamp_ns(msg) -> int:
    stamp = msg.header.stamp
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


# --------------------------------------------------------------------------- topics
@dataclass
class TopicPlan:
    left: str
    left_type: str
    left_info: str
    right: str | None = None
    right_type: str | None = None
    right_info: str | None = None
    lidar: str | None = None
    tf_static: list[str] = field(default_factory=list)
    already_rectified: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, [])}


def _base_topic(topic: str) -> str:
    """'/cam/image_raw/compressed' -> '/cam/image_raw' (image_transport's suffix removed)."""
    return topic[: -len("/compressed")] if topic.endswith("/compressed") else topic


def sibling_camera_info(topic: str) -> str:
    """'/cam/left/image_raw' (or '/cam/left/image_raw/compressed') -> '/cam/left/camera_info'."""
    head, _, _ = _base_topic(topic).rpartition("/")
    return f"{head}/camera_info" if head or topic.startswith("/") else "camera_info"


def _describe(topics: dict, types: tuple[str, ...]) -> str:
    found = [f"{name} ({info.msgtype}, {info.msgcount} msgs)" for name, info in sorted(topics.items())
             if info.msgtype in types]
    return ", ".join(found) if found else "none"


def plan_topics(topics: dict, bag: Path, options: ConvertOptions) -> TopicPlan:
    """Resolve and check the topics to read; errors list what the bag holds."""
    images = _describe(topics, IMAGE_TYPES)
    if images == "none":
        present = ", ".join(f"{n} ({i.msgtype})" for n, i in sorted(topics.items())) or "none"
        raise TopicNotFoundError(f"{bag}: no image topics (sensor_msgs/Image or CompressedImage); "
                                 f"topics present: {present}")

    def image_topic(name: str | None, flag: str) -> tuple[str, str]:
        if name is None:
            candidates = [n for n, i in topics.items() if i.msgtype in IMAGE_TYPES]
            if len(candidates) != 1:
                raise TopicNotFoundError(f"{bag}: several image topics; choose one with {flag}: {images}")
            name = candidates[0]
        if name not in topics:
            raise TopicNotFoundError(f"{bag}: topic {name!r} ({flag}) not found; image topics present: {images}")
        if topics[name].msgtype not in IMAGE_TYPES:
            raise TopicNotFoundError(f"{bag}: topic {name!r} ({flag}) is {topics[name].msgtype}, expected "
                                     f"sensor_msgs/Image or CompressedImage; image topics present: {images}")
        if topics[name].msgcount == 0:
            raise TopicNotFoundError(f"{bag}: topic {name!r} ({flag}) has no messages")
        return name, topics[name].msgtype

    def info_topic(name: str | None, image: str, flag: str) -> str:
        name = name or sibling_camera_info(image)
        info = topics.get(name)
        if info is None or info.msgtype != CAMERA_INFO_TYPE or info.msgcount == 0:
            what = "not found" if info is None else (f"is {info.msgtype}" if info.msgtype != CAMERA_INFO_TYPE
                                                     else "has no messages")
            raise CameraInfoNotFoundError(
                f"{bag}: no camera_info for {image}: {name!r} {what}; CameraInfo topics present: "
                f"{_describe(topics, (CAMERA_INFO_TYPE,))} (choose one with {flag})")
        return name

    left, left_type = image_topic(options.image_topic, "--image-topic")
    plan = TopicPlan(left=left, left_type=left_type,
                     left_info=info_topic(options.camera_info_topic, left, "--camera-info-topic"))
    if options.right_topic is not None:
        plan.right, plan.right_type = image_topic(options.right_topic, "--right-topic")
        plan.right_info = info_topic(options.right_camera_info_topic, plan.right, "--right-camera-info-topic")
    if options.lidar_topic is not None:
        lidar = topics.get(options.lidar_topic)
        if lidar is None or lidar.msgtype != CLOUD_TYPE:
            raise TopicNotFoundError(f"{bag}: lidar topic {options.lidar_topic!r} (--lidar-topic) "
                                     f"{'not found' if lidar is None else 'is ' + str(lidar.msgtype)}; "
                                     f"PointCloud2 topics present: {_describe(topics, (CLOUD_TYPE,))}")
        plan.lidar = options.lidar_topic
        plan.tf_static = sorted(n for n, i in topics.items() if i.msgtype == TF_TYPE and n.endswith("tf_static"))
        if not plan.tf_static:
            raise TransformNotFoundError(f"{bag}: a lidar topic needs the lidar->camera transform, but the bag has no "
                                         f"/tf_static (TFMessage topics: {_describe(topics, (TF_TYPE,))})")
    plan.already_rectified = looks_rectified(left)
    return plan


# --------------------------------------------------------------------------- bag reading
def bag_name(bag: Path) -> str:
    """Sequence-name prefix of a bag: its folder or file name without extension, safe characters only."""
    stem = bag.name if bag.is_dir() else bag.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "bag"


def open_reader(bag: Path):
    """An opened ``AnyReader`` over one bag (rosbag2 folder / .db3 / .mcap file, or ROS 1 .bag)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    if not bag.exists():
        raise BagNotFoundError(f"{bag}: bag not found")
    if bag.is_dir() and not (bag / "metadata.yaml").is_file():
        raise BagReadError(f"{bag}: not a rosbag2 folder (metadata.yaml missing)")
    reader = AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY))
    try:
        reader.open()
    except Exception as exc:  # rosbags, sqlite3, YAML, decompression... errors all mean an unreadable bag
        raise BagReadError(f"{bag}: cannot open the bag (corrupt, truncated or not a bag?): "
                           f"{type(exc).__name__}: {exc}") from None
    return reader


def read_messages(reader, connections: list, bag: Path) -> Iterator[tuple[str, str, Any]]:
    """(topic, msgtype, deserialised message) in log-time order; read or decode failures -> BagReadError."""
    iterator = reader.messages(connections=connections)
    count = 0
    while True:
        try:
            item = next(iterator, None)
            if item is None:
                return
            conn, _, raw = item
            msg = reader.deserialize(raw, conn.msgtype)
        except Exception as exc:  # the reader's own errors vary by storage plugin
            raise BagReadError(f"{bag}: reading failed after {count} messages (corrupt or truncated bag?): "
                               f"{type(exc).__name__}: {exc}") from None
        count += 1
        yield conn.topic, conn.msgtype, msg


# --------------------------------------------------------------------------- resuming
def fingerprint(bag: Path, plan: TopicPlan, options: ConvertOptions) -> str:
    text = json.dumps({"bag": bag_name(bag), "topics": plan.as_dict(), "settings": options.fingerprint_settings()},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def existing_outputs(out_root: Path, prefix: str, fp: str, force: bool) -> tuple[set[str], list[Path]]:
    """(names of complete sequences of this bag/settings to skip, earlier outputs of this bag to replace).

    Raises OutputExistsError for an existing sequence folder this conversion would overwrite, unless ``force``.
    """
    if not out_root.is_dir():
        return set(), []
    pattern = re.compile(re.escape(prefix) + r"_\d{3,}")
    complete, replace = set(), []
    for path in sorted(out_root.iterdir()):
        if not path.is_dir() or not pattern.fullmatch(path.name):
            continue
        try:
            source = Sequence(path).meta.get("source") or {}
        except SequenceError:
            source = {}
        ours = isinstance(source, dict) and source.get("converter") == CONVERTER_ID
        if not force and ours and source.get("fingerprint") == fp:
            complete.add(path.name)
        elif not force:
            why = ("was written from another bag or with other settings" if ours
                   else "is not a sequence this converter wrote")
            raise OutputExistsError(f"{path}: output exists and {why}; pass --force to overwrite it or choose "
                                    "another --out")
        elif ours:
            replace.append(path)
    return complete, replace


def _remove_stale_partials(out_root: Path, prefix: str) -> None:
    """Remove hidden temp folders left by an interrupted conversion of this bag."""
    if out_root.is_dir():
        pattern = re.compile(r"\." + re.escape(prefix) + r"_\d{3,}\..*\.partial")
        for path in out_root.iterdir():
            if path.is_dir() and pattern.fullmatch(path.name):
                shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- conversion
class BackgroundAdder:
    """Runs ``SequenceWriter.add_frame`` on one background thread (in order), so image encoding and file
    writing overlap reading and decoding the next frames. At most ``backlog`` frames wait; an error
    surfaces at a later ``add`` or at ``drain``."""

    def __init__(self, backlog: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sequence-writer")
        self._pending: deque[Future] = deque()
        self.backlog = backlog

    def add(self, writer: SequenceWriter, *args, **kwargs) -> None:
        self._pending.append(self._pool.submit(writer.add_frame, *args, **kwargs))
        while len(self._pending) > self.backlog:
            self._pending.popleft().result()

    def drain(self) -> None:
        """Wait for every queued frame; re-raise the first error."""
        while self._pending:
            self._pending.popleft().result()

    def discard(self) -> None:
        """Wait for every queued frame, ignoring errors (before aborting the writer)."""
        while self._pending:
            with contextlib.suppress(Exception):
                self._pending.popleft().result()

    def shutdown(self) -> None:
        self.discard()
        self._pool.shutdown(wait=True)


class _Segment:
    """The sequence being written: opened at its first keyframe, committed or discarded at its end."""

    def __init__(self, name: str, path: Path, skip: bool) -> None:
        self.name, self.path, self.skip = name, path, skip
        self.writer: SequenceWriter | None = None


class BagConverter:
    """Convert one bag; see the module docstring. Use :func:`convert_bag`."""

    def __init__(self, bag: Path, out_root: Path, options: ConvertOptions) -> None:
        self.bag, self.out_root, self.options = Path(bag), Path(out_root), options
        self.prefix = bag_name(self.bag)
        self.summary = BagSummary(bag=str(bag))
        self.dropped: Counter[str] = Counter()
        self.keyframes = KeyframeSelector(options.min_motion)
        self.splitter = SegmentSplitter(options.max_gap)
        self.segment: _Segment | None = None
        self.last_stamp: int | None = None
        self.transforms = StaticTransforms()
        self.details: dict[str, str] = {}
        self.frame_number = -1
        self.last_calib: CameraCalibration | None = None
        self.segment_reason: str | None = None

    # ---- set-up
    def _calibration(self, msg, topic: str) -> CameraCalibration:
        try:
            return CameraCalibration.from_msg(msg, where=f"{self.bag}: {topic}")
        except CalibrationError as exc:
            raise CameraInfoError(str(exc)) from None

    # ---- segments
    def _start_segment(self, index: int) -> None:
        self._end_segment()
        name = f"{self.prefix}_{index:03d}"
        self.segment = _Segment(name, self.out_root / name, skip=name in self.complete)
        self.keyframes.reset()

    def _end_segment(self) -> None:
        seg, self.segment = self.segment, None
        if seg is None or seg.writer is None:
            return
        self.adder.drain()
        if len(seg.writer) < self.options.min_frames:
            reason = self.segment_reason or f"sequence shorter than {self.options.min_frames} keyframes"
            self.dropped[reason] += len(seg.writer)
            seg.writer.abort()
            return
        seg.writer.close()
        self.summary.sequences_written.append(seg.name)
        self.summary.frames_written += len(seg.writer)

    def _output_format(self, msg, msgtype: str) -> str:
        """The segment's image format: as asked, or (auto) the camera's own jpeg/png, png for raw images."""
        if self.options.image_format != "auto":
            return self.options.image_format
        return (encoded_format(msg.data) or "png") if msgtype == COMPRESSED_TYPE else "png"

    def _stored_as_is(self, msg, msgtype: str, calib: CameraCalibration, image_format: str, where: str):
        """(encoded bytes, grayscale thumbnail) when a compressed frame can be stored without re-encoding
        (already in ``image_format``; the caller checked that no remap or resize is due); None otherwise."""
        if msgtype != COMPRESSED_TYPE or encoded_format(msg.data) != image_format:
            return None
        data = np.frombuffer(msg.data, np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data
        thumb = cv2.imdecode(data, THUMB_DECODE)
        if thumb is None:
            raise FrameDecodeError(f"{where}: CompressedImage data ({data.size} bytes, format {msg.format!r}) "
                                   "does not decode")
        rows, cols = thumb.shape[:2]  # a reduced jpeg rounds the size up, a reduced png down
        if rows not in (calib.height // 4, -(-calib.height // 4)) or cols not in (calib.width // 4, -(-calib.width // 4)):
            raise CameraInfoError(f"{where}: image is about {thumb.shape[1] * 4}x{thumb.shape[0] * 4} but its "
                                  f"camera_info says {calib.width}x{calib.height}")
        return data.tobytes(), thumb

    def _frame_images(self, left_msg, right_msg, left_calib: CameraCalibration, right_calib: CameraCalibration | None,
                      image_format: str, pixels_unchanged: bool, where: str, right_where: str):
        """(left, right, image for keyframe motion, stored as recorded?): the camera's encoded bytes and a gray
        thumbnail when every view can be kept as recorded; otherwise decoded RGB frames (the left one for motion)."""
        plan = self.plan
        if pixels_unchanged:
            left_kept = self._stored_as_is(left_msg, plan.left_type, left_calib, image_format, where)
            right_kept = None if right_calib is None else self._stored_as_is(
                right_msg, plan.right_type, right_calib, image_format, right_where)
            if left_kept is not None and (right_calib is None or right_kept is not None):
                return left_kept[0], None if right_kept is None else right_kept[0], left_kept[1], True
        left = decode_image(left_msg, plan.left_type, where)
        right = None if right_calib is None else decode_image(right_msg, plan.right_type, right_where)
        return left, right, left, False

    def _open_writer(self, seg: _Segment, camera: CameraModel, stereo: bool, image_format: str) -> SequenceWriter:
        source = {
            "converter": CONVERTER_ID, "bag": str(self.bag.resolve()), "bag_name": self.prefix,
            "topics": self.plan.as_dict(), "settings": self.options.fingerprint_settings(),
            "fingerprint": self.fingerprint, "segment": seg.name,
        }
        return SequenceWriter(seg.path, camera, has_right=stereo, has_depth=self.plan.lidar is not None,
                              source=source, image_format=image_format, overwrite=self.options.force)

    # ---- one frame
    def _frame(self, m: Matched) -> None:
        opts, plan = self.options, self.plan
        stamp = m.stamp_ns
        if self.last_stamp is not None and stamp <= self.last_stamp:
            self.dropped["stamp not after the previous frame"] += 1
            return
        info, right_msg, right_info = m.partners["info"], m.partners.get("right"), m.partners.get("right_info")
        if info is None:
            self.dropped["no camera_info yet (latest policy)"] += 1
            return
        if plan.right is not None and (right_msg is None or right_info is None):
            self.dropped["no stereo partner within tolerance" if right_msg is None
                         else "no right camera_info yet"] += 1
            return
        self.last_stamp = stamp
        left_calib = self._calibration(info, plan.left_info)
        right_calib = None if plan.right is None else self._calibration(right_info, plan.right_info)
        self.frame_number += 1
        change = calibration_change(self.last_calib, left_calib)
        self.last_calib = left_calib
        index, new = self.splitter.update(stamp, (left_calib.key, None if right_calib is None else right_calib.key))
        if new:
            self._start_segment(index)
            self.segment_reason = None
            if change:
                self.segment_reason = "camera_info changed"
                what, values = change
                self.details.setdefault("camera_info changed", f"{what} at frame {self.frame_number}{values}; a "
                                        "sequence needs one camera (check the camera driver's calibration)")
        seg = self.segment
        if seg.skip:
            self.summary.frames_skipped_existing += 1
            return
        where = f"{self.bag}: {plan.left} at stamp {stamp} ns"
        right_where = f"{self.bag}: {plan.right} at stamp {stamp} ns"
        image_format = seg.writer.image_format if seg.writer is not None else self._output_format(m.item, plan.left_type)
        pixels_unchanged = not needs_remap(opts.rectify, plan.already_rectified, left_calib, right_calib) and (
            output_size(left_calib.width, left_calib.height, opts.width, opts.height)
            == (left_calib.width, left_calib.height))
        try:
            left, right, motion_image, as_is = self._frame_images(m.item, right_msg, left_calib, right_calib,
                                                                  image_format, pixels_unchanged, where, right_where)
        except FrameDecodeError as exc:
            self.dropped["undecodable image data"] += 1
            if len(self.summary.warnings) < 20:  # the first few, for the summary JSON
                self.summary.warnings.append(str(exc))
            return
        keep, _ = self.keyframes.accept(motion_image)
        if not keep:
            self.dropped[f"static (motion < {opts.min_motion:g} grey levels)"] += 1
            return
        try:
            if as_is:
                camera = camera_model(left_calib, rectified=opts.rectify != "raw", right=right_calib)
            else:
                left, right, camera = prepare_frame(left, left_calib, right, right_calib, mode=opts.rectify,
                                                    already_rectified=plan.already_rectified,
                                                    width=opts.width, height=opts.height)
        except CalibrationError as exc:
            raise CameraInfoError(f"{where}: {exc} ({plan.left_info}, {plan.right_info or 'mono'})") from None
        depth = None
        if plan.lidar is not None:
            depth = self._lidar_depth(m.partners.get("cloud"), camera, left_calib)
        if seg.writer is None:
            seg.writer = self._open_writer(seg, camera, stereo=right is not None, image_format=image_format)
        self.adder.add(seg.writer, stamp, left, right=right, depth=depth)

    def _lidar_depth(self, cloud, camera: CameraModel, calib: CameraCalibration) -> np.ndarray:
        """Depth (H, W) metres of the output camera from the matched cloud; zeros when none matched."""
        if cloud is None:
            self.summary.frames_without_depth += 1
            return np.zeros((camera.height, camera.width), np.float32)
        try:
            points = cloud_to_xyz(cloud)
            T = self.transforms.lookup(calib.frame_id or camera.frame_id, cloud.header.frame_id)
        except LidarError as exc:
            error = TransformNotFoundError if isinstance(exc, TransformLookupError) else BagReadError
            raise error(f"{self.bag}: {self.plan.lidar} at stamp {header_stamp_ns(cloud)} ns: {exc}") from None
        points = transform_points(T, points)
        if self.options.rectify != "raw":
            points = points @ calib.R.T  # into the rectified camera frame
            distortion = None
        else:
            distortion = calib.D
        self.summary.frames_with_depth += 1
        return project_to_depth(points, camera.K, camera.width, camera.height, distortion,
                                self.options.min_depth, self.options.max_depth, calib.distortion_model)

    # ---- the pass
    def run(self, progress: bool = True, position: int = 0) -> BagSummary:
        from tqdm import tqdm

        start = time.perf_counter()
        reader = open_reader(self.bag)
        self.adder = BackgroundAdder()
        try:
            self.plan = plan = plan_topics(reader.topics, self.bag, self.options)
            self.fingerprint = fingerprint(self.bag, plan, self.options)
            self.complete, replace = existing_outputs(self.out_root, self.prefix, self.fingerprint, self.options.force)
            self.summary.sequences_skipped = sorted(self.complete)
            if plan.tf_static:
                conns = [c for c in reader.connections if c.topic in plan.tf_static]
                for _, _, msg in read_messages(reader, conns, self.bag):
                    self.transforms.add_message(msg)
            roles = {plan.left: "left", plan.left_info: "info"}
            tolerances = {"info": None}
            if plan.right is not None:
                roles.update({plan.right: "right", plan.right_info: "right_info"})
                tolerances.update({"right": self.options.stereo_tolerance, "right_info": None})
            if plan.lidar is not None:
                roles[plan.lidar] = "cloud"
                tolerances["cloud"] = self.options.lidar_tolerance
            before = self.options.camera_info_policy == "latest"
            matcher = NearestStampMatcher(
                {k: (v if v is not None else float("inf")) for k, v in tolerances.items()},
                max_wait_s=self.options.max_wait,
                before_only={k for k, v in tolerances.items() if v is None} if before else set())
            connections = [c for c in reader.connections if c.topic in roles]
            _remove_stale_partials(self.out_root, self.prefix)
            total = reader.topics[plan.left].msgcount
            with tqdm(total=total, desc=self.prefix[:24], unit="frame", position=position, leave=True,
                      disable=not progress, dynamic_ncols=True, mininterval=0.5) as bar:
                try:
                    for topic, _, msg in read_messages(reader, connections, self.bag):
                        role = roles[topic]
                        if role == "left":
                            matcher.add_primary(header_stamp_ns(msg), msg)
                            self.summary.frames_read += 1
                            bar.update()
                        else:
                            matcher.add(role, header_stamp_ns(msg), msg)
                        for matched in matcher.ready():
                            self._frame(matched)
                    for matched in matcher.finish():
                        self._frame(matched)
                    self._end_segment()
                except BaseException:
                    self.adder.discard()
                    if self.segment is not None and self.segment.writer is not None:
                        self.segment.writer.abort()
                    raise
            written = set(self.summary.sequences_written)
            for path in replace:  # --force: earlier outputs of this bag not produced again
                if path.name not in written:
                    shutil.rmtree(path, ignore_errors=True)
        finally:
            self.adder.shutdown()
            with contextlib.suppress(Exception):
                reader.close()
        self.summary.dropped = dict(self.dropped)
        self.summary.details = {k: v for k, v in self.details.items() if k in self.dropped}
        self.summary.seconds = time.perf_counter() - start
        return self.summary


def convert_bag(bag: str | Path, out_root: str | Path, options: ConvertOptions | None = None, *,
                progress: bool = False, position: int = 0) -> BagSummary:
    """Convert one bag into sequences under ``out_root``; raises a BagConversionError subclass on bad input."""
    return BagConverter(Path(bag), Path(out_root), options or ConvertOptions()).run(progress, position)


def _convert_one(bag: str, out_root: str, options: ConvertOptions, progress: bool, position: int) -> BagSummary:
    try:
        return convert_bag(bag, out_root, options, progress=progress, position=position)
    except BagConversionError as exc:
        return BagSummary(bag=bag, error=f"{type(exc).__name__}: {exc}")


def convert_bags(bags: list[str | Path], out_root: str | Path, options: ConvertOptions | None = None, *,
                 jobs: int = 1, progress: bool = False) -> list[BagSummary]:
    """Convert several bags (in ``jobs`` parallel processes); a failing bag is reported in its summary's ``error``.

    Raises before any work when a bag is missing or two bags would give the same sequence names.
    """
    options = options or ConvertOptions()
    paths = [Path(b) for b in bags]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise BagNotFoundError(f"bag not found: {', '.join(missing)}")
    names = Counter(bag_name(p) for p in paths)
    clashes = sorted(n for n, c in names.items() if c > 1)
    if clashes:
        raise BagConversionError(f"several bags share the name(s) {clashes}, so their sequences would collide; "
                                 "rename the bags or convert them into different --out folders")
    Path(out_root).mkdir(parents=True, exist_ok=True)
    if jobs <= 1 or len(paths) == 1:
        return [_convert_one(str(p), str(out_root), options, progress, 0) for p in paths]
    summaries: dict[int, BagSummary] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(paths)), mp_context=context) as pool:
        futures = {pool.submit(_convert_one, str(p), str(out_root), options, progress, i % jobs): i
                   for i, p in enumerate(paths)}
        for future in as_completed(futures):
            summaries[futures[future]] = future.result()
    return [summaries[i] for i in range(len(paths))]


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


def why_nothing_written(summaries: list[BagSummary]) -> list[str]:
    """One line per reason (summed over bags) with its first detail, most frames first."""
    counts: Counter[str] = Counter()
    details: dict[str, str] = {}
    for summary in summaries:
        counts.update(summary.dropped)
        for reason, text in summary.details.items():
            details.setdefault(reason, text)
    lines = [f"{reason}: {n} frame(s)" + (f" ({details[reason]})" if reason in details else "")
             for reason, n in counts.most_common()]
    lines += [f"{s.bag}: {s.error}" for s in summaries if s.error]
    if not any(s.frames_read for s in summaries if not s.error):
        lines.append("no image messages were read (check --image-topic and that the bag is not empty)")
    return lines


# --------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", metavar="BAG",
                        help="rosbag2 folder (sqlite3 or mcap, split files included), .db3/.mcap file or ROS 1 .bag")
    parser.add_argument("--out", required=True, type=Path, help="dataset root: one sequence folder per segment")
    topics = parser.add_argument_group("topics")
    topics.add_argument("--image-topic", help="left/mono image topic (Image or CompressedImage); "
                                              "default: the only image topic")
    topics.add_argument("--right-topic", help="right image topic of a stereo pair")
    topics.add_argument("--camera-info-topic", help="default: camera_info beside the image topic")
    topics.add_argument("--right-camera-info-topic", help="default: camera_info beside the right topic")
    topics.add_argument("--lidar-topic", help="PointCloud2 to project into ground-truth depth (needs /tf_static)")
    sync = parser.add_argument_group("matching by header stamp")
    sync.add_argument("--camera-info-policy", choices=CAMERA_INFO_POLICIES, default="nearest",
                      help="nearest stamp, or the latest at or before the frame (default: %(default)s)")
    sync.add_argument("--stereo-tolerance", type=float, default=0.01, metavar="S",
                      help="max left/right stamp difference, seconds (default: %(default)s)")
    sync.add_argument("--lidar-tolerance", type=float, default=0.05, metavar="S",
                      help="max image/cloud stamp difference, seconds (default: %(default)s)")
    sync.add_argument("--max-wait", type=float, default=1.0, metavar="S",
                      help="how far the image stream may run ahead of a silent partner topic (default: %(default)s)")
    image = parser.add_argument_group("images")
    image.add_argument("--rectify", choices=RECTIFY_MODES, default="auto",
                       help="auto: remap raw images from K/D/R/P unless the topic is *rect* or the calibration is an "
                            "identity; remap: always; rectified: images are already rectified (K from P); raw: keep "
                            "images unrectified (K and D recorded) (default: %(default)s)")
    image.add_argument("--width", type=int, help="output width, pixels (intrinsics scaled; height kept in aspect "
                                                 "when not given)")
    image.add_argument("--height", type=int, help="output height, pixels")
    image.add_argument("--image-format", choices=IMAGE_FORMAT_CHOICES, default="auto",
                       help="auto: keep a compressed camera's own jpeg/png bytes when no remap or resize is due (no "
                            "second compression, fastest), png for raw images; png: lossless; jpg: quality 95 "
                            "(default: %(default)s)")
    select = parser.add_argument_group("frame selection")
    select.add_argument("--min-motion", type=float, default=1.0, metavar="GREY",
                        help="keep a frame when its downscaled grayscale differs from the last kept one by at least "
                             "this mean absolute difference, grey levels 0..255; 0 keeps all (default: %(default)s)")
    select.add_argument("--max-gap", type=float, default=0.5, metavar="S",
                        help="start a new sequence after a stamp gap longer than this, seconds (default: %(default)s)")
    select.add_argument("--min-frames", type=int, default=3,
                        help="drop sequences with fewer keyframes (default: %(default)s)")
    depth = parser.add_argument_group("lidar depth")
    depth.add_argument("--min-depth", type=float, default=0.1, help="metres (default: %(default)s)")
    depth.add_argument("--max-depth", type=float, default=250.0, help="metres (default: %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--jobs", "-j", type=int, default=1, help="bags converted in parallel processes")
    run.add_argument("--force", action="store_true",
                     help="overwrite existing sequences of these bags (default: resume, skipping complete ones)")
    run.add_argument("--split", default="train",
                     help="when --out already has splits/, append the new sequences to this split "
                          "(default: %(default)s)")
    run.add_argument("--summary-json", type=Path, help="also write the per-bag summaries to this JSON file")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    fields = {f.name for f in dataclasses.fields(ConvertOptions)}
    return ConvertOptions(**{k: v for k, v in vars(args).items() if k in fields})


def run(args: argparse.Namespace) -> int:
    """Convert the bags; print one summary line per bag. 0 when every bag converted, 1 when some bag
    failed, 2 when no sequence is in ``--out`` afterwards (the reasons are printed, a new ``--out`` removed)."""
    from kd_depth_core.data.sequence import append_to_split, ensure_splits, list_sequences
    from kd_depth_core.utils.atomic import write_text_atomic

    out = Path(args.out)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"convert-bag: error: {exc}", file=sys.stderr)
        return 2
    if out.exists() and not out.is_dir():
        print(f"convert-bag: error: --out {out} is a file; name a folder (the dataset root)", file=sys.stderr)
        return 2
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".kd-depth-write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        print(f"convert-bag: error: cannot write --out {out} ({exc.strerror or exc}); choose a folder you can "
              "write", file=sys.stderr)
        return 2
    try:
        summaries = convert_bags(args.bags, out, options, jobs=args.jobs, progress=not args.quiet)
    except BagConversionError as exc:
        _remove_if_empty(out, created)
        print(f"convert-bag: error: {exc}", file=sys.stderr)
        return 1
    print(f"converted into {out}:")
    for summary in summaries:
        print(f"  {summary.line()}", file=sys.stderr if summary.error else sys.stdout)
    if args.summary_json is not None:
        write_text_atomic(args.summary_json, json.dumps([dataclasses.asdict(s) for s in summaries], indent=2))
    if not list_sequences(out):
        _remove_if_empty(out, created)
        print("convert-bag: error: no sequence was written. Why:\n" + "\n".join(
            f"  {line}" for line in why_nothing_written(summaries)), file=sys.stderr)
        return 2
    splits = ensure_splits(out)
    if splits:
        print("wrote default splits: " + ", ".join(f"{k} ({len(v)} sequences)" for k, v in splits.items())
              + f" in {out / 'splits'} (edit them to choose your held-out sequences)")
    else:
        added = append_to_split(out, args.split)
        if added:
            print(f"added {len(added)} new sequence(s) to {out / 'splits' / (args.split + '.txt')}")
    if any(s.error for s in summaries):
        return 1
    print(f"next: kd-depth validate {out}  then  kd-depth train --config config/train/teacher_ms_dpt.yaml "
          f"data.root={out}")
    return 0


def _remove_if_empty(out: Path, created: bool) -> None:
    """Remove an --out this run created when nothing (but hidden partial folders) is left in it."""
    if created and out.is_dir() and not any(not p.name.startswith(".") for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


def build_parser(prog: str = "convert_bag") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``convert_bag`` ROS executable (same options as ``kd-depth convert-bag``)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; complete sequences are kept, the one in progress was discarded", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

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

Steps 2-5 are :class:`kd_depth_ros.sequence_builder.SequenceBuilder`, shared with the live recorder;
images are decoded by :mod:`kd_depth_ros.image_decode` (the node's decoder too). A truncated rosbag2
file converts what is readable (:mod:`kd_depth_ros.bag_reading`), with a warning saying what was lost.
Re-running resumes: a complete sequence written from the same bag with the same settings (its
``source.fingerprint``) is skipped. Any other existing output is an error unless ``--force``.
Several bags convert in parallel processes (``--jobs``). The command line is :mod:`kd_depth_ros.bag_cli`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import re
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kd_depth_core.data.sequence import CameraModel, Sequence, SequenceError, SequenceWriter
from kd_depth_ros import image_decode
from kd_depth_ros.bag_reading import REPAIR_HINT, ReadFailure, SalvageReader, bag_name, open_reader, read_messages
from kd_depth_ros.bag_topics import (  # noqa: F401 - the errors are part of this module's interface
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    IMAGE_TYPES,
    BagConversionError,
    BagNotFoundError,
    BagReadError,
    CameraInfoError,
    CameraInfoNotFoundError,
    FrameDecodeError,
    OutputExistsError,
    TopicNotFoundError,
    TopicPlan,
    TransformNotFoundError,
    UnsupportedEncodingError,
    plan_topics,
    sibling_camera_info,
)
from kd_depth_ros.lidar import (
    LidarError,
    StaticTransforms,
    TransformLookupError,
    cloud_to_xyz,
    project_to_depth,
    transform_points,
)
from kd_depth_ros.rectify import RECTIFY_MODES, CalibrationError, CameraCalibration
from kd_depth_ros.sequence_builder import (  # noqa: F401 - calibration_change: part of this module's interface
    IMAGE_FORMAT_CHOICES,
    BackgroundAdder,
    BuildFrame,
    BuildSettings,
    FrameSizeError,
    SegmentResult,
    SequenceBuilder,
    calibration_change,
)
from kd_depth_ros.stamps import stamp_ns
from kd_depth_ros.sync import Matched, NearestStampMatcher

CONVERTER_ID = "kd_depth_ros.bag_converter"
CAMERA_INFO_POLICIES = ("nearest", "latest")


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

    def build_settings(self, already_rectified: bool) -> BuildSettings:
        return BuildSettings(rectify=self.rectify, width=self.width, height=self.height, min_motion=self.min_motion,
                             max_gap_s=self.max_gap, min_frames=self.min_frames, image_format=self.image_format,
                             already_rectified=already_rectified)

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
    truncated: str | None = None
    seconds: float = 0.0
    error: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.bag}: FAILED: {self.error}"
        parts = [f"{self.bag}: {len(self.sequences_written)} sequence(s) written"]
        if self.sequences_skipped:
            parts.append(f"{len(self.sequences_skipped)} already complete (skipped, {self.frames_skipped_existing} frames)")
        parts.append(f"frames: {self.frames_read} read, {self.frames_written} kept")
        if self.dropped:  # each reason with its first detail (the bag is named at the start of the line)
            parts.append("dropped: " + ", ".join(
                f"{reason} {n}" + (f" ({self.details[reason].replace(f'{self.bag}: ', '', 1)})"
                                   if reason in self.details else "") for reason, n in sorted(self.dropped.items())))
        if self.frames_with_depth or self.frames_without_depth:
            parts.append(f"lidar depth: {self.frames_with_depth} frames, {self.frames_without_depth} kept without "
                         "(no cloud within tolerance)")
        parts.append(f"{self.seconds:.1f} s")
        if self.truncated:
            parts.append(f"WARNING: {self.truncated}")
        return "; ".join(parts)




# --------------------------------------------------------------------------- image decoding
def decode_image(msg, msgtype: str, where: str) -> np.ndarray:
    """A rosbags Image / CompressedImage -> RGB uint8 (H, W, 3) through :mod:`kd_depth_ros.image_decode`.

    UnsupportedEncodingError for encodings that are not camera images (e.g. depth 32FC1, compressedDepth);
    FrameDecodeError for data that does not decode. ``msgtype`` is kept for callers; the decoder tells
    Image from CompressedImage by its fields.
    """
    try:
        return image_decode.decode_rgb8(msg)
    except image_decode.UnsupportedEncodingError as exc:
        raise UnsupportedEncodingError(f"{where}: {_kind(msgtype)} {exc}") from None
    except image_decode.ImageDecodeError as exc:
        raise FrameDecodeError(f"{where}: {_kind(msgtype)} {exc}") from None


def _kind(msgtype: str) -> str:
    return "CompressedImage" if msgtype == COMPRESSED_TYPE else "Image"


def header_stamp_ns(msg) -> int:
    """Header stamp of a message in integer nanoseconds (:func:`kd_depth_ros.stamps.stamp_ns`)."""
    return stamp_ns(msg)


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
class BagConverter:
    """Convert one bag; see the module docstring. Use :func:`convert_bag`."""

    def __init__(self, bag: Path, out_root: Path, options: ConvertOptions) -> None:
        self.bag, self.out_root, self.options = Path(bag), Path(out_root), options
        self.prefix = bag_name(self.bag)
        self.summary = BagSummary(bag=str(bag))
        self.dropped: Counter[str] = Counter()
        self.transforms = StaticTransforms()

    def _calibration(self, msg, topic: str) -> CameraCalibration:
        try:
            return CameraCalibration.from_msg(msg, where=f"{self.bag}: {topic}")
        except CalibrationError as exc:
            raise CameraInfoError(str(exc)) from None

    def _open_writer(self, index: int, camera: CameraModel, stereo: bool, image_format: str) -> SequenceWriter:
        name = f"{self.prefix}_{index:03d}"
        source = {
            "converter": CONVERTER_ID, "bag": str(self.bag.resolve()), "bag_name": self.prefix,
            "topics": self.plan.as_dict(), "settings": self.options.fingerprint_settings(),
            "fingerprint": self.fingerprint, "segment": name,
        }
        return SequenceWriter(self.out_root / name, camera, has_right=stereo, has_depth=self.plan.lidar is not None,
                              source=source, image_format=image_format, overwrite=self.options.force)

    def _segment_ended(self, result: SegmentResult) -> None:
        if result.path is not None:
            self.summary.sequences_written.append(f"{self.prefix}_{result.index:03d}")
            self.summary.frames_written += result.frames

    # ---- one frame
    def _frame(self, m: Matched) -> None:
        plan = self.plan
        info, right_msg, right_info = m.partners["info"], m.partners.get("right"), m.partners.get("right_info")
        if info is None:
            self.dropped["no camera_info yet (latest policy)"] += 1
            return
        if plan.right is not None and (right_msg is None or right_info is None):
            self.dropped["no stereo partner within tolerance" if right_msg is None
                         else "no right camera_info yet"] += 1
            return
        if self.builder.out_of_order(m.stamp_ns):  # counted, before parsing its camera_info
            return
        left_calib = self._calibration(info, plan.left_info)
        right_calib = None if plan.right is None else self._calibration(right_info, plan.right_info)
        where = f"{self.bag}: {plan.left} at stamp {m.stamp_ns} ns"
        depth = None if plan.lidar is None else (lambda camera, calib: self._lidar_depth(m.partners.get("cloud"),
                                                                                          camera, calib))
        frame = BuildFrame(m.stamp_ns, m.item, left_calib, right_msg, right_calib, depth, where)
        try:
            outcome = self.builder.add(frame)
        except image_decode.UnsupportedEncodingError as exc:
            raise UnsupportedEncodingError(f"{where}: {_kind(plan.left_type)} {exc}") from None
        except FrameSizeError as exc:
            raise CameraInfoError(str(exc)) from None
        except CalibrationError as exc:
            raise CameraInfoError(f"{where}: {exc} ({plan.left_info}, {plan.right_info or 'mono'})") from None
        if outcome == "skipped":
            self.summary.frames_skipped_existing += 1

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

    def _matcher(self) -> tuple[dict[str, str], NearestStampMatcher]:
        plan, opts = self.plan, self.options
        roles = {plan.left: "left", plan.left_info: "info"}
        tolerances = {"info": None}
        if plan.right is not None:
            roles.update({plan.right: "right", plan.right_info: "right_info"})
            tolerances.update({"right": opts.stereo_tolerance, "right_info": None})
        if plan.lidar is not None:
            roles[plan.lidar] = "cloud"
            tolerances["cloud"] = opts.lidar_tolerance
        before = opts.camera_info_policy == "latest"
        matcher = NearestStampMatcher(
            {k: (v if v is not None else float("inf")) for k, v in tolerances.items()}, max_wait_s=opts.max_wait,
            before_only={k for k, v in tolerances.items() if v is None} if before else set())
        return roles, matcher

    # ---- the pass
    def run(self, progress: bool = True, position: int = 0) -> BagSummary:
        from tqdm import tqdm

        start = time.perf_counter()
        reader = open_reader(self.bag)
        adder = BackgroundAdder()
        failure = ReadFailure()
        try:
            self.plan = plan = plan_topics(reader.topics, self.bag, self.options)
            self.fingerprint = fingerprint(self.bag, plan, self.options)
            self.complete, replace = existing_outputs(self.out_root, self.prefix, self.fingerprint, self.options.force)
            self.summary.sequences_skipped = sorted(self.complete)
            if plan.tf_static:
                conns = [c for c in reader.connections if c.topic in plan.tf_static]
                for _, _, msg in read_messages(reader, conns, self.bag):
                    self.transforms.add_message(msg)
            self.builder = SequenceBuilder(
                self.options.build_settings(plan.already_rectified), self._open_writer,
                skip_segment=lambda index: f"{self.prefix}_{index:03d}" in self.complete,
                on_end=self._segment_ended, adder=adder)
            roles, matcher = self._matcher()
            self.messages_expected = sum(reader.topics[topic].msgcount for topic in roles)
            connections = [c for c in reader.connections if c.topic in roles]
            _remove_stale_partials(self.out_root, self.prefix)
            total = reader.topics[plan.left].msgcount
            with tqdm(total=total, desc=self.prefix[:24], unit="frame", position=position, leave=True,
                      disable=not progress, dynamic_ncols=True, mininterval=0.5) as bar:
                try:
                    for topic, _, msg in read_messages(reader, connections, self.bag, failure):
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
                    self.builder.end_segment()
                except BaseException:
                    self.builder.abort()
                    raise
            written = set(self.summary.sequences_written)
            for path in replace:  # --force: earlier outputs of this bag not produced again
                if path.name not in written:
                    shutil.rmtree(path, ignore_errors=True)
        finally:
            adder.shutdown()
            with contextlib.suppress(Exception):
                reader.close()
        self._finish_summary(reader, failure, start)
        return self.summary

    def _finish_summary(self, reader, failure: ReadFailure, start: float) -> None:
        self.dropped.update(self.builder.dropped)
        self.summary.dropped = dict(self.dropped)
        self.summary.details = {k: v for k, v in self.builder.details.items() if k in self.dropped}
        self.summary.warnings = list(self.builder.warnings)
        if isinstance(reader, SalvageReader):
            self.summary.truncated = reader.recovery
        elif failure.error is not None:
            total = self.messages_expected
            self.summary.truncated = (f"reading stopped after {failure.count} of {total} messages ({failure.error}); "
                                      f"what was read is converted, {max(total - failure.count, 0)} messages after "
                                      f"it are lost; {REPAIR_HINT}")
        if self.summary.truncated:
            self.summary.warnings.insert(0, self.summary.truncated)
        self.summary.seconds = time.perf_counter() - start


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
    converted = [s for s in summaries if not s.error]  # a failed bag's error above is its reason
    if converted and not any(s.frames_read for s in converted):
        lines.append("no image messages were read (check --image-topic and that the bag is not empty)")
    return lines



def main(argv: list[str] | None = None) -> int:
    """The ``convert_bag`` ROS executable (same options as ``kd-depth convert-bag``; see :mod:`kd_depth_ros.bag_cli`)."""
    from kd_depth_ros.bag_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())

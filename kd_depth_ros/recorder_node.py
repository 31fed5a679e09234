"""``recorder_node``: record live camera topics straight into training sequences (docs/dataset_format.md).

Subscribes ``image`` + ``camera_info`` (mono) or ``left/image``, ``left/camera_info``,
``right/image``, ``right/camera_info`` (``stereo: true``; pairs matched by header stamp within
``stereo_slop_s``), as raw ``sensor_msgs/Image`` or, with ``image_transport: compressed``, the
``.../compressed`` topics. Frames go through the bag converter's own pipeline
(:class:`kd_depth_ros.sequence_builder.SequenceBuilder` and the shared image decoder): a new
sequence after a stamp gap or a calibration change, keyframes by motion, rectification from
K/D/R/P and optional resizing; they are written by ``SequenceWriter`` on a background thread, so
callbacks never block on disk. A jpeg/png camera whose frames need no remap or resize is stored
as it encoded them when ``image_format`` matches. Services ``~/start`` and ``~/stop`` (std_srvs/Trigger) begin and
end a recording; ``autostart`` records from launch. Recording stops cleanly, committing a complete
sequence, when free disk space falls below ``min_free_disk_mb`` and on shutdown (Ctrl-C).
``recorder_node --help`` lists topics and parameters without starting ROS.
"""
from __future__ import annotations

import argparse
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_depth_ros.params import ParameterError, ParamSpec, declare, help_text
from kd_depth_ros.rectify import RECTIFY_MODES, CalibrationError, CameraCalibration, looks_rectified
from kd_depth_ros.sequence_builder import BuildFrame, BuildSettings, SegmentResult, SequenceBuilder
from kd_depth_ros.stamps import stamp_ns

NODE_NAME = "recorder_node"
RECORDER_ID = "kd_depth_ros.recorder_node"

SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("output_dir", "", "dataset root the sequences are written into (created if missing); required",
              read_only=True),
    ParamSpec("sequence_prefix", "rec", "sequence names are <prefix>_<UTC start time>_<NNN>",
              pattern=r"[A-Za-z0-9_.-]+", pattern_help="letters, digits, '_', '.', '-'"),
    ParamSpec("stereo", False, "record a stereo pair (left/..., right/... topics) instead of one camera",
              read_only=True),
    ParamSpec("image_transport", "raw", "'raw' subscribes .../image, 'compressed' .../image/compressed",
              choices=("raw", "compressed"), read_only=True),
    ParamSpec("autostart", True, "start recording at launch (otherwise call ~/start)", read_only=True),
    ParamSpec("rectify", "auto", "auto: remap raw images from K/D/R/P unless the topic name says rect or the "
              "calibration is an identity; remap; rectified (K from P); raw (keep K and D)", choices=RECTIFY_MODES),
    ParamSpec("width", 0, "output width in pixels; 0 = the camera's (or kept in aspect with height)", min=0, max=16384),
    ParamSpec("height", 0, "output height in pixels; 0 = the camera's (or kept in aspect with width)", min=0,
              max=16384),
    ParamSpec("image_format", "png", "file format of the images", choices=("png", "jpg")),
    ParamSpec("min_motion", 1.0, "keep a frame when it differs from the last kept one by this mean absolute "
              "grey-level difference (downscaled grayscale, 0..255); 0 keeps every frame", min=0.0, max=255.0),
    ParamSpec("max_gap_s", 0.5, "start a new sequence after a stamp gap longer than this (seconds)", min=0.001,
              max=3600.0),
    ParamSpec("min_frames", 3, "sequences with fewer keyframes are discarded when they end", min=1, max=100000),
    ParamSpec("stereo_slop_s", 0.01, "max left/right stamp difference for a stereo pair (seconds)", min=0.0,
              max=1.0, read_only=True),
    ParamSpec("sync_queue_size", 10, "messages per stream waiting for a stereo partner", min=1, max=1000,
              read_only=True),
    ParamSpec("queue_size", 30, "frames waiting to be written; more are dropped (and counted)", min=1, max=10000,
              read_only=True),
    ParamSpec("min_free_disk_mb", 1024.0, "stop recording (keeping a complete sequence) when free space on "
              "output_dir falls below this many megabytes", min=0.0),
    ParamSpec("disk_check_period_s", 1.0, "how often free disk space is checked (seconds)", min=0.05, max=3600.0,
              read_only=True),
    ParamSpec("sub_reliability", "best_effort", "input QoS reliability (best_effort hears every camera)",
              choices=("best_effort", "reliable"), read_only=True),
    ParamSpec("sub_depth", 10, "input QoS queue depth", min=1, max=1000, read_only=True),
)

TOPICS_HELP = """subscribed topics (relative; remap with -r):
  image, camera_info                         mono (stereo: false)
  left/image, left/camera_info,
  right/image, right/camera_info             stereo (stereo: true)
  (with image_transport: compressed, <...>/image/compressed: jpeg or png sensor_msgs/CompressedImage)
services:
  ~/start  std_srvs/Trigger   start recording (a new sequence begins at the first frame)
  ~/stop   std_srvs/Trigger   stop; the sequence in progress is committed complete"""


@dataclass
class _Frame:
    stamp_ns: int
    left: Any
    left_info: Any
    right: Any = None
    right_info: Any = None


@dataclass
class _Close:
    """Ask the writer thread to end the recording; ``done`` is set once the sequence is committed."""

    reason: str
    done: threading.Event = field(default_factory=threading.Event)
    result: str = ""


@dataclass
class _Begin:
    label: str


def free_megabytes(path: Path) -> float:
    """Free space (MB, 10^6 bytes) on the file system holding ``path`` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / 1e6


class SequenceRecorder:
    """The writing side, run on one background thread: the shared :class:`SequenceBuilder` (segment split,
    keyframes, decoding with :mod:`kd_depth_ros.image_decode`, rectification, SequenceWriter).

    ``put(frame)`` enqueues (dropping and counting when the queue is full); ``close(reason)`` ends the
    current sequence; ``log(level, text)`` reports. Frames hold the ROS messages as received.
    """

    def __init__(self, values: dict[str, Any], log, already_rectified: bool) -> None:
        self.values, self.log = values, log
        self.out_root = Path(values["output_dir"])
        self.queue: queue.Queue = queue.Queue(maxsize=int(values["queue_size"]))
        settings = BuildSettings(rectify=values["rectify"], width=values["width"] or None,
                                 height=values["height"] or None, min_motion=float(values["min_motion"]),
                                 max_gap_s=float(values["max_gap_s"]), min_frames=int(values["min_frames"]),
                                 image_format=values["image_format"], already_rectified=already_rectified)
        self.builder = SequenceBuilder(settings, self._open_writer, on_end=self._ended)
        self.name = ""
        self.start_label = ""
        self.counter = 0
        self.written: list[str] = []
        self._last_text = "no sequence in progress"
        self.stats = {"received": 0, "kept": 0, "static": 0, "queue_full": 0, "bad_input": 0, "out_of_order": 0}
        self._thread = threading.Thread(target=self._run, name="sequence-writer", daemon=True)
        self._thread.start()

    # ---- called from ROS callbacks
    def begin(self) -> None:
        """A new recording: the next frame starts a new sequence (handled in order on the writer thread)."""
        self.queue.put(_Begin(time.strftime("%Y%m%d-%H%M%S", time.gmtime())))

    def put(self, frame: _Frame) -> None:
        self.stats["received"] += 1
        try:
            self.queue.put_nowait(frame)
        except queue.Full:
            self.stats["queue_full"] += 1

    def close(self, reason: str, wait_s: float | None = None) -> str:
        """End the sequence in progress (committed if long enough); with ``wait_s`` wait and return what happened."""
        request = _Close(reason)
        self.queue.put(request)
        if wait_s is not None and request.done.wait(wait_s):
            return request.result
        return "closing in the background"

    def shutdown(self, wait_s: float = 30.0) -> str:
        result = self.close("shutdown", wait_s)
        self.queue.put(None)
        self._thread.join(wait_s)
        return result

    # ---- the writer thread
    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, _Close):
                item.result = self._end_sequence(item.reason)
                item.done.set()
                continue
            if isinstance(item, _Begin):
                self._end_sequence("new recording")
                if item.label != self.start_label:
                    self.start_label, self.counter = item.label, 0
                self.builder.reset()
                continue
            try:
                self._frame(item)
            except (ValueError, CalibrationError) as exc:  # bad input: log and skip, never crash
                self.stats["bad_input"] += 1
                self.log("warning", f"skipped a frame: {exc}")
            except Exception as exc:  # the disk or anything else: end this sequence, keep running
                self.log("error", f"writing {self.name} failed ({type(exc).__name__}: {exc}); sequence discarded")
                self.builder.abort()

    def _open_writer(self, index: int, camera, has_right: bool, image_format: str):
        from kd_depth_core.data.sequence import SequenceWriter

        self.name = self._next_name()
        source = {"recorder": RECORDER_ID, "settings": {k: self.values[k] for k in (
            "rectify", "width", "height", "min_motion", "max_gap_s", "min_frames", "stereo_slop_s")}}
        writer = SequenceWriter(self.out_root / self.name, camera, has_right=has_right, source=source,
                                image_format=image_format)
        self.log("info", f"recording {self.name}")
        return writer

    def _ended(self, result: SegmentResult) -> None:
        if result.path is None:
            self._last_text = (f"{self.name}: {result.frames} keyframe(s) < min_frames {self.values['min_frames']}; "
                               "discarded")
        else:
            self.written.append(self.name)
            self._last_text = f"{result.path} ({result.frames} frames) committed"

    def _end_sequence(self, reason: str) -> str:
        if not self.builder.writing:
            return "no sequence in progress"
        try:
            self.builder.end_segment()
        except OSError as exc:
            self.builder.abort()
            return f"{self.name}: could not be committed ({exc})"
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.stats.items())
        self.log("info", f"{self._last_text} [{reason}; frames so far: {counts}]")
        return self._last_text

    def _next_name(self) -> str:
        """<prefix>_<recording start, UTC>_<NNN>, skipping names already taken."""
        while True:
            name = f"{self.values['sequence_prefix']}_{self.start_label}_{self.counter:03d}"
            self.counter += 1
            if not (self.out_root / name).exists():
                return name

    def _frame(self, frame: _Frame) -> None:
        if self.builder.out_of_order(frame.stamp_ns):
            self.stats["out_of_order"] += 1
            return
        left_calib = CameraCalibration.from_msg(frame.left_info, where="camera_info")
        right_calib = None if frame.right is None else CameraCalibration.from_msg(frame.right_info,
                                                                                   where="right/camera_info")
        had_writer = self.builder.writing
        segment = self.builder.segment
        outcome = self.builder.add(BuildFrame(frame.stamp_ns, frame.left, left_calib, frame.right, right_calib))
        if had_writer and self.builder.segment is not segment:  # a stamp gap or calibration change ended it
            counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.stats.items())
            self.log("info", f"{self._last_text} [stamp gap or calibration change; frames so far: {counts}]")
        if outcome == "kept":
            self.stats["kept"] += 1
        elif outcome == "static":
            self.stats["static"] += 1
        elif outcome == "undecodable":
            self.stats["bad_input"] += 1
            self.log("warning", f"skipped a frame: {self.builder.warnings[-1] if self.builder.warnings else ''}")


def _print_log(level: str, text: str) -> None:
    print(f"[{level.upper()}] [{NODE_NAME}]: {text}", file=sys.stderr, flush=True)


def make_node_class():
    """The rclpy node class (built lazily so ``--help`` never imports ROS)."""
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image
    from std_srvs.srv import Trigger

    from kd_depth_ros.qos import IncompatibleQosWarner, make_qos
    from kd_depth_ros.sync import StampSynchronizer

    class RecorderNode(Node):
        """Live recorder (see the module docstring)."""

        def __init__(self, **kwargs) -> None:
            super().__init__(NODE_NAME, **kwargs)
            self.values = declare(self, SPECS)
            if not self.values["output_dir"]:
                raise ParameterError("parameter 'output_dir' = '': expected the dataset folder to record into")
            self.out_root = Path(self.values["output_dir"]).expanduser()
            self._recording = threading.Event()
            self._infos: dict[str, Any] = {}
            qos = make_qos(self.values["sub_reliability"], self.values["sub_depth"])
            compressed = self.values["image_transport"] == "compressed"
            image_type = CompressedImage if compressed else Image
            suffix = "image/compressed" if compressed else "image"
            sides = ("left", "right") if self.values["stereo"] else ("",)
            self.qos_warner = IncompatibleQosWarner(self)
            self.subs = []
            fix = "Set parameter 'sub_reliability' to match the camera."
            for side in sides:
                prefix = f"{side}/" if side else ""
                # camera_info first: when both are pending, the executor serves it before the image
                info_sub = self.create_subscription(CameraInfo, prefix + "camera_info",
                                                    lambda msg, s=side: self._infos.__setitem__(s, msg), qos)
                image_sub = self.create_subscription(image_type, prefix + suffix,
                                                     lambda msg, s=side: self._on_image(s, msg), qos)
                self.subs += [image_sub, info_sub]
                self.qos_warner.watch(image_sub, qos, fix)
                self.qos_warner.watch(info_sub, qos, fix)
            self.sync = (StampSynchronizer(2, self.values["stereo_slop_s"], self.values["sync_queue_size"])
                         if self.values["stereo"] else None)
            self.recorder = SequenceRecorder(self.values, self._log, looks_rectified(self.subs[0].topic_name))
            self.create_service(Trigger, "~/start", self._on_start)
            self.create_service(Trigger, "~/stop", self._on_stop)
            self.create_timer(self.values["disk_check_period_s"], self._check_disk)
            self.get_logger().info(f"writing sequences into {self.out_root}; images from "
                                   f"{', '.join(s.topic_name for s in self.subs[::2])}")
            if self.values["autostart"]:
                ok, text = self.start()
                self._log("info" if ok else "error", text)

        def _log(self, level: str, text: str) -> None:
            logger = self.get_logger()  # one call site per severity (rclpy requires it)
            if level == "error":
                logger.error(text)
            elif level == "warning":
                logger.warning(text)
            else:
                logger.info(text)

        # ---- recording control
        def start(self) -> tuple[bool, str]:
            if self._recording.is_set():
                return False, f"already recording into {self.out_root}"
            free = free_megabytes(self.out_root)
            if free < self.values["min_free_disk_mb"]:
                return False, (f"not starting: {free:.0f} MB free on {self.out_root}, below min_free_disk_mb "
                               f"{self.values['min_free_disk_mb']:g}")
            self.out_root.mkdir(parents=True, exist_ok=True)
            self.recorder.begin()
            if self.sync is not None:
                self.sync.reset()
            self._recording.set()
            return True, f"recording into {self.out_root}"

        def stop(self, reason: str, wait_s: float | None = 30.0) -> str:
            if not self._recording.is_set():
                return "not recording"
            self._recording.clear()
            return self.recorder.close(reason, wait_s)

        def _on_start(self, request, response):
            response.success, response.message = self.start()
            return response

        def _on_stop(self, request, response):
            was = self._recording.is_set()
            response.message = self.stop("~/stop")
            response.success = was
            return response

        def _check_disk(self) -> None:
            self.qos_warner.check()
            if not self._recording.is_set():
                return
            free = free_megabytes(self.out_root)
            if free < self.values["min_free_disk_mb"]:
                self.get_logger().error(f"free disk space {free:.0f} MB on {self.out_root} is below min_free_disk_mb "
                                        f"{self.values['min_free_disk_mb']:g}: stopping the recording")
                self.stop("low disk space", wait_s=None)

        # ---- inputs
        def _on_image(self, side: str, msg) -> None:
            if not self._recording.is_set():
                return
            if self.sync is None:
                info = self._infos.get("")
                if info is None:
                    self._warn_no_info("camera_info")
                    return
                self.recorder.put(_Frame(stamp_ns(msg), msg, info))
                return
            pair = self.sync.add(0 if side == "left" else 1, stamp_ns(msg), msg)
            if pair is None:
                return
            left_info, right_info = self._infos.get("left"), self._infos.get("right")
            if left_info is None or right_info is None:
                self._warn_no_info("left/camera_info" if left_info is None else "right/camera_info")
                return
            self.recorder.put(_Frame(stamp_ns(pair[0]), pair[0], left_info, pair[1], right_info))

        def _warn_no_info(self, topic: str) -> None:
            self.get_logger().warning(f"no {topic} received yet: frames are skipped until it arrives",
                                      throttle_duration_sec=5.0)

        def shutdown(self) -> str:
            """Commit the sequence in progress (called once rclpy stopped spinning). Returns what happened."""
            self._recording.clear()
            self.recorder.log = _print_log  # the ROS context may already be shut down (Ctrl-C)
            text = self.recorder.shutdown()
            print(f"[{NODE_NAME}] shutting down: {text}", file=sys.stderr, flush=True)
            return text

    return RecorderNode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=Path(argv[0]).name, description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog=f"{TOPICS_HELP}\n\nparameters (--ros-args -p name:=value or --params-file):\n{help_text(SPECS)}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    if "-h" in argv[1:] or "--help" in argv[1:]:
        parser.parse_args(["--help"])
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.utilities import remove_ros_args

    parser.parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = None
    try:
        try:
            node = make_node_class()()
        except ParameterError as exc:
            print(f"[{NODE_NAME}] invalid parameter: {exc}", file=sys.stderr)
            return 2
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

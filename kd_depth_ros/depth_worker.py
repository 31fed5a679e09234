"""What both depth nodes share: the newest-frame-wins inference thread and the lifecycle node around it.

- :class:`LatestFrameWorker`: subscription callbacks only ``submit()`` (cheap: no decoding); the
  thread takes the newest pending item and runs ``process(item)`` (decode, predict, publish). A
  frame replaced before the thread reaches it counts as dropped, so a slow model never builds a
  queue of stale frames and latency stays bounded by about one inference time.
- :class:`DepthNodeBase` (``rclpy.lifecycle.LifecycleNode``): parameters (:data:`COMMON_SPECS`),
  configure = load the model + create publishers, activate = subscribe + start the thread,
  deactivate = unsubscribe + stop it, cleanup = free the model (and CUDA memory). Outputs
  (depth, scaled camera_info, uncertainty, points, colourised depth) are built by
  :meth:`DepthNodeBase.publish_depth`; diagnostics, the QoS-mismatch warning, the "nothing
  arrived" warning and the worker's supervision run on one timer.
- Failures: every per-frame failure ends in :meth:`DepthNodeBase.frame_failed` (counted by kind, see
  :data:`FAILURE_KINDS`, logged throttled, reflected in ``/diagnostics``); a bad frame never stops the
  thread, and a thread that ends anyway is restarted by the timer.
- :func:`run_node`: the executables' ``main`` (``--help`` without starting ROS, autostart).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

from kd_depth_core.inference.preprocess import resize_map
from kd_depth_core.inference.scale import SCALE_MODES
from kd_depth_core.utils.colorize import colorize_depth
from kd_depth_ros import conversions
from kd_depth_ros.diagnostics import DepthNodeStatus
from kd_depth_ros.params import ParameterError, ParamSpec, declare, help_text
from kd_depth_ros.qos import RELIABILITY_CHOICES, IncompatibleQosWarner, make_qos

PACKAGE = "kd_depth_ros"
DEFAULT_MODEL_FILE = "default_student.safetensors"
"""The bundled (mono) model, installed to ``share/kd_depth_ros/models/``; used when ``model_path`` is empty."""
DEFAULT_STEREO_MODEL_FILE = "default_stereo.safetensors"
"""Where the stereo node looks when ``model_path`` is empty (no stereo model is bundled yet)."""


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


def dds_profile_hint() -> str:
    """The Fast DDS large-data profile and the exact ``export`` line that gives it to the camera's process."""
    rmw = os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if "fastrtps" not in rmw:
        return ""
    profile = package_file("config", "fastdds_large_data.xml")
    mine = os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE", "")
    here = f"this node uses {mine}" if mine else "this node runs without it"
    return (f" Large images (640x480 and up) do not arrive over Fast DDS without the large-data profile on both "
            f"the camera's and this node's processes ({here}): export FASTRTPS_DEFAULT_PROFILES_FILE={profile}"
            " (the launch files set it for the node; see README, 'Large images and Fast DDS').")


# --------------------------------------------------------------------------- output masking
class RangeMask:
    """NaN outside [min_depth, max_depth], in place, with reused OpenCV masks (no per-frame allocation)."""

    def __init__(self):
        self._invalid: np.ndarray | None = None
        self._nan: np.ndarray | None = None

    def invalid(self, depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
        """uint8 (H, W) mask, nonzero where ``depth`` is outside [min_depth, max_depth] or NaN."""
        if self._invalid is None or self._invalid.shape != depth.shape:
            self._invalid = np.empty(depth.shape, np.uint8)
            self._nan = np.full(depth.shape, np.nan, np.float32)
        cv2.inRange(depth, min_depth, max_depth, dst=self._invalid)
        return cv2.bitwise_not(self._invalid, dst=self._invalid)

    def set_nan(self, values: np.ndarray, invalid: np.ndarray) -> None:
        """``values[invalid] = NaN`` for a float32 (H, W) map of the mask's size."""
        cv2.copyTo(self._nan, invalid, dst=values)


# --------------------------------------------------------------------------- parameters
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"

COMMON_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("model_path", "", "released model (.safetensors) or export (.onnx/.torchscript); empty = the bundled "
              f"share/{PACKAGE}/models/{DEFAULT_MODEL_FILE} ({DEFAULT_STEREO_MODEL_FILE} for the stereo node)",
              read_only=True),
    ParamSpec("device", "auto", "where the network runs: auto (CUDA when present), cpu, cuda or cuda:N",
              pattern=DEVICE_PATTERN, pattern_help="'auto', 'cpu', 'cuda' or 'cuda:N'", read_only=True),
    ParamSpec("precision", "fp32", "network precision (fp16 needs CUDA)", choices=("fp32", "fp16", "bf16"),
              read_only=True),
    ParamSpec("backend", "auto", "inference runtime; auto picks by file type",
              choices=("auto", "torch", "torchscript", "onnxruntime"), read_only=True),
    ParamSpec("warmup", True, "run the network once on configure so the first frame is not slow", read_only=True),
    ParamSpec("input_width", 0, "network input width in pixels; 0 = the model's (rounded to its size multiple; "
              "torch backends only, exports have a fixed size)", min=0, max=8192, read_only=True),
    ParamSpec("input_height", 0, "network input height in pixels; 0 = the model's", min=0, max=8192, read_only=True),
    ParamSpec("output_width", 0, "width of the published depth in pixels; 0 = the input image's", min=0, max=8192),
    ParamSpec("output_height", 0, "height of the published depth in pixels; 0 = the input image's", min=0, max=8192),
    ParamSpec("min_depth", 0.1, "depths below this (metres) are published as NaN", min=0.0, max=1000.0),
    ParamSpec("max_depth", 100.0, "depths above this (metres) are published as NaN", min=0.001, max=10000.0),
    ParamSpec("scale_mode", "auto", "how network depth becomes metres on this camera (see "
              "kd_depth_core/inference/scale.py): auto, none, focal, fixed (x scale_factor), ground_plane "
              "(camera_height above a flat floor)", choices=SCALE_MODES, read_only=True),
    ParamSpec("scale_factor", 1.0, "depth multiplier for scale_mode 'fixed'", min=1e-6, max=1e6, read_only=True),
    ParamSpec("camera_height", 0.0, "camera height above the ground in metres, for scale_mode 'ground_plane'",
              min=0.0, max=100.0, read_only=True),
    ParamSpec("depth_encoding", "32FC1", "depth image encoding: 32FC1 metres (NaN invalid) or 16UC1 millimetres "
              "(0 invalid)", choices=conversions.DEPTH_ENCODINGS),
    ParamSpec("publish_uncertainty", True, "publish 'uncertainty' (32FC1 std of depth, metres) when the model has it"),
    ParamSpec("publish_points", True, "publish the 'points' PointCloud2"),
    ParamSpec("publish_colorized", False, "publish 'depth/colorized' (rgb8, inverse depth over min..max_depth)"),
    ParamSpec("points_stride", 4, "use every N-th pixel in x and y for 'points' (large clouds stall RViz)",
              min=1, max=64),
    ParamSpec("points_organized", True, "organised cloud (h x w with NaN, is_dense=false); false = valid points "
              "only (1 x N)"),
    ParamSpec("points_colored", True, "add the image colour as the packed 'rgb' field"),
    ParamSpec("sub_reliability", "best_effort", "input QoS reliability (best_effort hears every camera)",
              choices=RELIABILITY_CHOICES, read_only=True),
    ParamSpec("sub_depth", 5, "input QoS queue depth", min=1, max=1000, read_only=True),
    ParamSpec("pub_reliability", "reliable", "output QoS reliability", choices=RELIABILITY_CHOICES, read_only=True),
    ParamSpec("pub_depth", 5, "output QoS queue depth", min=1, max=1000, read_only=True),
    ParamSpec("image_transport", "raw", "input images: 'raw' (sensor_msgs/Image) or 'compressed' (jpeg/png "
              "CompressedImage on '<image topic>/compressed')", choices=("raw", "compressed"), read_only=True),
    ParamSpec("no_input_warn_s", 5.0, "warn (throttled) when no input arrived for this many seconds",
              min=0.1, max=3600.0),
    ParamSpec("failure_window_s", 5.0, "/diagnostics is WARN while a frame failed within this many seconds",
              min=0.1, max=3600.0),
    ParamSpec("failure_error_s", 5.0, "/diagnostics is ERROR when frames arrive but none was published for this "
              "many seconds (every one failed)", min=0.1, max=3600.0),
    ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics and of the QoS and input checks (seconds)",
              min=0.05, max=60.0, read_only=True),
    ParamSpec("autostart", True, "configure and activate at start (set false under a lifecycle manager)",
              read_only=True),
)


def check_common(values: dict[str, Any]) -> None:
    """Combinations the single-parameter ranges cannot express."""
    if not values["min_depth"] < values["max_depth"]:
        raise ParameterError(f"parameter 'max_depth' = {values['max_depth']!r}: expected a number greater than "
                             f"min_depth ({values['min_depth']!r})")
    for prefix, zero_means in (("output", "the input image's size"), ("input", "the model's size")):
        width, height = values[f"{prefix}_width"], values[f"{prefix}_height"]
        if (width == 0) != (height == 0):
            raise ParameterError(f"parameters '{prefix}_width'/'{prefix}_height' = {width}/{height}: expected both 0 "
                                 f"({zero_means}) or both > 0")
    if values["scale_mode"] == "ground_plane" and not values["camera_height"] > 0:
        raise ParameterError(f"parameter 'camera_height' = {values['camera_height']!r}: scale_mode 'ground_plane' "
                             "needs the camera height above the ground, a number in (0, 100] metres")


def package_file(folder: str, name: str) -> Path:
    """``share/kd_depth_ros/<folder>/<name>`` when installed (ament index), else the source tree's ``<folder>/<name>``."""
    candidates = _package_candidates(folder, name)
    return next((c for c in candidates if c.is_file()), candidates[-1])


def _package_candidates(folder: str, name: str) -> list[Path]:
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / folder / name)
    except (ImportError, LookupError, OSError, ValueError):  # not installed, AMENT_PREFIX_PATH unset or empty
        pass
    candidates.append(Path(__file__).resolve().parents[1] / folder / name)
    return candidates


def resolve_model_path(model_path: str, default_file: str = DEFAULT_MODEL_FILE) -> Path:
    """``model_path``, or the bundled ``default_file`` when empty (ament index share dir, then the source tree's models/)."""
    if model_path:
        return Path(os.path.expanduser(model_path))
    candidates = _package_candidates("models", default_file)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"parameter 'model_path' is empty and the bundled model was not found (looked in "
                            f"{', '.join(str(c) for c in candidates)}); set model_path to a .safetensors model")


# --------------------------------------------------------------------------- the node base
@dataclass
class Frame:
    """What a subscription callback hands to the inference thread (nothing decoded yet)."""

    images: tuple[Image | CompressedImage, ...]
    infos: tuple[CameraInfo | None, ...]
    received: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Topic:
    """A topic for ``--help``: relative name, message type, what it carries."""

    name: str
    type: str
    text: str


class DepthNodeBase(LifecycleNode):
    """Lifecycle, parameters, publishers, diagnostics and checks shared by the mono and stereo nodes.

    Subclasses set ``SPECS``, ``STEREO`` and implement ``create_inputs()`` (subscriptions, which
    call ``self.worker.submit(Frame(...))``), ``input_summary()`` and ``process(frame)``.
    """

    NODE_NAME = "depth_node"
    SPECS: tuple[ParamSpec, ...] = COMMON_SPECS
    STEREO = False
    DEFAULT_MODEL = DEFAULT_MODEL_FILE

    def __init__(self, node_name: str, **kwargs):
        super().__init__(node_name, **kwargs)
        self.values = declare(self, self.SPECS, check=self.check_params)
        self.status = DepthNodeStatus(f"{self.get_fully_qualified_name()}: depth")
        self.log_throttled = ThrottledLog(self.get_logger())
        self.predictor = None
        self.worker: LatestFrameWorker | None = None
        self.pubs: dict[str, Any] = {}
        self.subs: list[Any] = []
        self._cloud = conversions.PointCloudBuilder(self.values["points_stride"], self.values["points_organized"],
                                                      reuse_buffer=True)
        self._depth_out = conversions.ImageBuffer("32FC1")
        self._uncertainty_out = conversions.ImageBuffer("32FC1")
        self._range_mask = RangeMask()
        self._active_since: float | None = None
        self._warned_frame_id = False
        self.qos_warner = IncompatibleQosWarner(self)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._timer = self.create_timer(self.values["diagnostics_period_s"], self._on_timer)

    # ------------------------------------------------------------------ hooks
    def check_params(self, values: dict[str, Any]) -> None:
        check_common(values)

    def create_inputs(self, qos: QoSProfile) -> None:
        raise NotImplementedError

    def input_summary(self) -> str:
        """Which inputs arrived how often, for the 'nothing arrived' warning."""
        raise NotImplementedError

    def process(self, frame: Frame) -> bool:
        """Decode, predict and publish one frame; raise :class:`FrameError` (or return False after
        :meth:`skip_input`) when it cannot be."""
        raise NotImplementedError

    def extra_publishers(self, qos: QoSProfile) -> None:
        """Create publishers beyond the common ones (stereo: disparity)."""

    # ------------------------------------------------------------------ failures
    def frame_failed(self, kind: str, topic: str, reason: str) -> None:
        """The one place a frame's failure ends: counted by kind, logged (throttled per kind and topic)."""
        self.status.frame_failed(kind)
        level = "warning" if kind in ("bad_encoding", "bad_image", "no_camera_info", "bad_camera_info") else "error"
        what = re.sub(r"\d+", "#", " ".join(reason.split()[:3]))  # throttled per field: "camera_info k: fx"
        self.log_throttled(f"{kind}:{topic}:{what}", f"skipping a frame on '{topic}' ({kind}): {reason}", level)

    def skip_input(self, topic: str, error: Exception | str, kind: str | None = None) -> None:
        """A bad message: counted, logged (throttled per kind) and skipped; the kind defaults to the field named."""
        reason = str(error)
        self.frame_failed(kind or failure_kind(reason), topic, reason)

    def _on_worker_error(self, exc: BaseException) -> None:
        """What ``process`` raised: a :class:`FrameError` by its kind, anything else as internal_error."""
        if isinstance(exc, FrameError):
            self.frame_failed(exc.kind, exc.topic, str(exc))
        else:
            self.frame_failed("internal_error", self.input_topic(), f"{type(exc).__name__}: {exc}")

    def input_topic(self) -> str:
        """The first input's resolved name (for log lines)."""
        return self.subs[0].topic_name if self.subs else "input"

    def transport_topic(self, base: str) -> str:
        """The topic an image subscription uses: ``base``, or with ``image_transport: compressed`` the remapped
        base name + ``/compressed`` (image_transport's convention: remapping the base moves it)."""
        if self.values["image_transport"] != "compressed":
            return base
        return self.resolve_topic_name(base) + "/compressed"

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        values = self.values
        try:
            from kd_depth_core.inference import DepthPredictor

            path = resolve_model_path(values["model_path"], self.DEFAULT_MODEL)
            predictor = DepthPredictor(
                path, device=values["device"], precision=values["precision"], backend=values["backend"],
                output="model", scale_mode=values["scale_mode"], scale_factor=values["scale_factor"],
                camera_height=values["camera_height"] or None,
                input_size=(values["input_height"], values["input_width"]) if values["input_width"] else None)
            if predictor.metadata.stereo != self.STEREO:
                kind, other = ("stereo", "mono_depth_node") if predictor.metadata.stereo else ("mono", "stereo_depth_node")
                raise ValueError(f"parameter 'model_path' = {str(path)!r} is a {kind} model; run it with {other}")
            if values["warmup"]:
                predictor.warmup(iterations=1)
        except Exception as exc:  # any load failure -> FAILURE with the reason, node stays unconfigured
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.predictor = predictor
        self.status.model_loaded = True
        self.status.device = predictor.device
        self.status.model = predictor.describe()
        if values["publish_uncertainty"] and not predictor.metadata.has_uncertainty:
            self.get_logger().info("the model has no uncertainty output: 'uncertainty' will not be published")
        qos = make_qos(values["pub_reliability"], values["pub_depth"])
        self.pubs = {
            "depth": self.create_lifecycle_publisher(Image, "depth", qos),
            "camera_info": self.create_lifecycle_publisher(CameraInfo, "depth/camera_info", qos),
            "uncertainty": self.create_lifecycle_publisher(Image, "uncertainty", qos),
            "points": self.create_lifecycle_publisher(PointCloud2, "points", qos),
            "colorized": self.create_lifecycle_publisher(Image, "depth/colorized", qos),
        }
        self.extra_publishers(qos)
        self.worker = LatestFrameWorker(self._process_timed, self._on_worker_error)
        self.status.worker_alive = True
        self.get_logger().info(f"configured: {predictor.describe()}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        qos = make_qos(self.values["sub_reliability"], self.values["sub_depth"])
        self.create_inputs(qos)
        self.worker.start()
        self._active_since = time.monotonic()
        result = super().on_activate(state)
        self.qos_warner.check()
        self.get_logger().info("active: " + ", ".join(f"'{s.topic_name}'" for s in self.subs)
                               + f" -> '{self.resolve_topic_name('depth')}'")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_inputs(self) -> None:
        for sub in self.subs:
            self.destroy_subscription(sub)
        self.subs = []
        self.qos_warner.clear()
        self._active_since = None
        if self.worker is not None:
            self.worker.stop()

    def _release(self) -> None:
        """Stop inputs, destroy publishers and free the model (and CUDA cache)."""
        self._stop_inputs()
        for pub in self.pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self.pubs = {}
        self.worker = None
        device = self.status.device
        self.predictor = None
        self.status.model_loaded = False
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ timer: diagnostics and checks
    def _on_timer(self) -> None:
        now = time.monotonic()
        if self.worker is not None:
            self._supervise(self.worker)
            self.status.dropped_frames = self.worker.dropped
        self.status.failure_window_s = self.values["failure_window_s"]
        self.status.failure_error_s = self.values["failure_error_s"]
        self._diagnostics_pub.publish(self.status.to_msg(self.get_clock().now().to_msg(), now))
        if self._active_since is None:
            return
        self.qos_warner.check()
        since = self.status.input_rate.seconds_since_last(now)
        quiet_for = now - self._active_since if since is None else since
        if quiet_for > self.values["no_input_warn_s"]:
            self.log_throttled("no-input", f"no input for {quiet_for:.1f} s: {self.input_summary()}"
                               + dds_profile_hint(), period_s=self.values["no_input_warn_s"],
                               count_suppressed=False)

    def _supervise(self, worker: LatestFrameWorker) -> None:
        """Restart the inference thread if it ended unexpectedly; counted and logged."""
        self.status.worker_alive = worker.alive
        error = worker.supervise()
        if error is None:
            return
        self.status.worker_restarts = worker.restarts
        self.status.worker_alive = worker.alive
        self.status.frame_failed("worker_restart")
        self.log_throttled("worker_restart", f"the inference thread ended ({type(error).__name__}: {error}); "
                           f"restarted ({worker.restarts} restart(s) so far)", "error")

    # ------------------------------------------------------------------ per frame
    def _process_timed(self, frame: Frame) -> None:
        self.status.queue_wait.add(time.monotonic() - frame.received)
        try:
            published = self.process(frame)
        except Exception as exc:  # the one place a frame's failure is caught (FrameError or anything else)
            self._on_worker_error(exc)
            return
        if published:
            self.status.frame_ok()
            self.status.output_rate.tick()
            self.status.latency.add(time.monotonic() - frame.received)

    def predict_timed(self, run: Callable[[], Any]) -> Any:
        """``run()`` timed; what it raises becomes a :class:`FrameError` (backend_error / out_of_memory)."""
        start = time.monotonic()
        try:
            result = run()
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            if "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower():
                if self.status.device.startswith("cuda"):
                    import torch

                    torch.cuda.empty_cache()
                raise FrameError("out_of_memory", self.input_topic(), text) from exc
            raise FrameError("backend_error", self.input_topic(), text) from exc
        self.status.inference.add(time.monotonic() - start)
        return result

    def camera_for(self, topic: str, info: CameraInfo | None, height: int, width: int
                   ) -> tuple[CameraInfo, np.ndarray] | None:
        """(camera_info at the image size, K), or None after :meth:`skip_input` (missing or invalid camera_info)."""
        try:
            return self.checked_camera(topic, info, height, width)
        except FrameError as exc:
            self.skip_input(exc.topic, exc, exc.kind)
            return None

    def checked_camera(self, topic: str, info: CameraInfo | None, height: int, width: int
                       ) -> tuple[CameraInfo, np.ndarray]:
        """(camera_info at the image size, K); :class:`FrameError` naming the field when missing or invalid."""
        if info is None:
            raise FrameError("no_camera_info", topic, "camera_info: none received yet for this camera; the frame "
                             "is skipped (publish a CameraInfo with each image)")
        try:
            return conversions.camera_info_for_image(info, width, height)
        except ValueError as exc:
            raise FrameError("bad_camera_info", topic, f"camera_info {exc}; the frame is skipped") from exc

    def _wanted(self, output: str) -> bool:
        """Whether an optional output has a subscriber: uncertainty, clouds and previews are built on demand."""
        return self.pubs[output].get_subscription_count() > 0

    def publish_depth(self, header: Header, info: CameraInfo, prediction, rgb: np.ndarray | None
                      ) -> tuple[np.ndarray, CameraInfo]:
        """Publish depth, depth/camera_info, uncertainty, points, colourised depth for one frame.

        ``info`` describes the input image; the outputs use ``output_width``x``output_height``
        (0 = the input size), with camera_info scaled to it. Returns (depth (h, w) metres with
        NaN outside [min_depth, max_depth], the scaled camera_info); the depth array is the reused
        output buffer, valid until the next frame.
        """
        values = self.values
        if header.frame_id == "" and not self._warned_frame_id:
            self._warned_frame_id = True
            self.get_logger().warning("input images have an empty header.frame_id: outputs copy it, so RViz and "
                                      "tf cannot place them; set the camera's optical frame id")
        width = values["output_width"] or info.width
        height = values["output_height"] or info.height
        # Depth goes out first and without a copy: resized into the reused message buffer, masked in place.
        depth = resize_map(prediction.depth, height, width, out=self._depth_out.view(height, width))
        invalid = self._range_mask.invalid(depth, values["min_depth"], values["max_depth"])
        self._range_mask.set_nan(depth, invalid)
        if values["depth_encoding"] == "32FC1":
            self.pubs["depth"].publish(self._depth_out.message(header))
        else:
            self.pubs["depth"].publish(conversions.depth_to_image(depth, header, values["depth_encoding"]))
        out_info = conversions.scale_camera_info(info, width, height)
        out_info.header = header
        self.pubs["camera_info"].publish(out_info)
        if values["publish_uncertainty"] and prediction.uncertainty is not None and self._wanted("uncertainty"):
            std = resize_map(prediction.uncertainty, height, width, out=self._uncertainty_out.view(height, width))
            self._range_mask.set_nan(std, invalid)
            self.pubs["uncertainty"].publish(self._uncertainty_out.message(header))
        if values["publish_points"] and self._wanted("points"):
            if (self._cloud.stride, self._cloud.organized) != (values["points_stride"], values["points_organized"]):
                self._cloud = conversions.PointCloudBuilder(values["points_stride"], values["points_organized"],
                                                          reuse_buffer=True)
            colors = rgb if values["points_colored"] else None
            self.pubs["points"].publish(self._cloud.build(depth, conversions.camera_matrix(out_info), header, colors))
        if values["publish_colorized"] and self._wanted("colorized"):
            colors = colorize_depth(depth, values["min_depth"], values["max_depth"])
            self.pubs["colorized"].publish(conversions.numpy_to_image(colors, "rgb8", header))
        return depth, out_info


# --------------------------------------------------------------------------- executables
def help_epilog(subscribes: Sequence[Topic], publishes: Sequence[Topic], specs: Sequence[ParamSpec]) -> str:
    def block(topics: Sequence[Topic]) -> str:
        return "\n".join(f"  {t.name:<22} {t.type:<32} {t.text}" for t in topics)

    return (f"subscribed topics (relative; remap with -r):\n{block(subscribes)}\n\n"
            f"published topics:\n{block(publishes)}\n\n"
            f"parameters (--ros-args -p name:=value or --params-file):\n{help_text(specs)}")


def run_node(node_class: type[DepthNodeBase], description: str, epilog: str, argv: Sequence[str] | None = None) -> int:
    """``main()`` of a depth node: ``--help`` answered before ROS starts; autostart configures and activates."""
    from rclpy.executors import ExternalShutdownException
    from rclpy.utilities import remove_ros_args

    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog=Path(argv[0]).name, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = None
    try:
        try:
            node = node_class()
        except ParameterError as exc:
            print(f"[{node_class.NODE_NAME}] invalid parameter: {exc}", file=sys.stderr)
            return 2
        if node.values["autostart"]:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal("could not configure (see the error above); exiting")
                return 1
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal("could not activate; exiting")
                return 1
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node._release()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0

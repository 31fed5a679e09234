"""What both depth nodes share: the newest-frame-wins inference thread and the lifecycle node around it.

- :class:`LatestFrameWorker`: subscription callbacks only ``submit()`` (cheap: no decoding); the
  thread takes the newest pending item and runs ``process(item)`` (decode, predict, publish). A
  frame replaced before the thread reaches it counts as dropped, so a slow model never builds a
  queue of stale frames and latency stays bounded by about one inference time.
- :class:`DepthNodeBase` (``rclpy.lifecycle.LifecycleNode``): parameters (:data:`COMMON_SPECS`),
  configure = load the model + create publishers, activate = subscribe + start the thread,
  deactivate = unsubscribe + stop it, cleanup = free the model (and CUDA memory). Outputs
  (depth, scaled camera_info, uncertainty, points, colourised depth) are built by
  :meth:`DepthNodeBase.publish_depth`; diagnostics, the QoS-mismatch warning and the "nothing
  arrived" warning run on one timer.
- :func:`run_node`: the executables' ``main`` (``--help`` without starting ROS, autostart).
"""
from __future__ import annotations

import argparse
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
    """One background thread processing the most recently submitted item."""

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

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._cond:
            self._stop = False
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

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


def resolve_model_path(model_path: str, default_file: str = DEFAULT_MODEL_FILE) -> Path:
    """``model_path``, or the bundled ``default_file`` when empty (ament index share dir, then the source tree's models/)."""
    if model_path:
        return Path(os.path.expanduser(model_path))
    candidates = []
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            candidates.append(Path(get_package_share_directory(PACKAGE)) / "models" / default_file)
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    candidates.append(Path(__file__).resolve().parents[1] / "models" / default_file)
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
        self.predictor = None
        self.worker: LatestFrameWorker | None = None
        self.pubs: dict[str, Any] = {}
        self.subs: list[Any] = []
        self._cloud = conversions.PointCloudBuilder(self.values["points_stride"], self.values["points_organized"],
                                                      reuse_buffer=True)
        self._depth_out = conversions.ImageBuffer("32FC1")
        self._uncertainty_out = conversions.ImageBuffer("32FC1")
        self._range_mask = RangeMask()
        self._last_log: dict[str, float] = {}
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
        """Decode, predict and publish one frame; False when it was skipped (already logged)."""
        raise NotImplementedError

    def extra_publishers(self, qos: QoSProfile) -> None:
        """Create publishers beyond the common ones (stereo: disparity)."""

    # ------------------------------------------------------------------ logging helpers
    def log_throttled(self, key: str, text: str, level: str = "warning", period_s: float = 5.0) -> bool:
        """Log ``text`` unless a message with the same ``key`` was logged less than ``period_s`` ago."""
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) < period_s:
            return False
        self._last_log[key] = now
        getattr(self.get_logger(), level)(text)
        return True

    def skip_input(self, topic: str, error: Exception | str) -> None:
        """A bad message: count it, log it (throttled per reason) and carry on."""
        self.status.invalid_messages += 1
        reason = str(error)
        kind = re.sub(r"\d+", "#", " ".join(reason.split()[:2]))  # e.g. 'camera_info: size', 'step: #'
        self.log_throttled(f"bad:{topic}:{kind}", f"skipping a message on '{topic}': {reason}")

    def _on_worker_error(self, exc: BaseException) -> None:
        self.status.invalid_messages += 1
        self.log_throttled(f"error:{type(exc).__name__}", f"frame failed: {type(exc).__name__}: {exc}", "error")

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
            self.status.dropped_frames = self.worker.dropped
        self._diagnostics_pub.publish(self.status.to_msg(self.get_clock().now().to_msg(), now))
        if self._active_since is None:
            return
        self.qos_warner.check()
        since = self.status.input_rate.seconds_since_last(now)
        quiet_for = now - self._active_since if since is None else since
        if quiet_for > self.values["no_input_warn_s"]:
            self.log_throttled("no-input", f"no input for {quiet_for:.1f} s: {self.input_summary()}",
                               period_s=self.values["no_input_warn_s"])

    # ------------------------------------------------------------------ per frame
    def _process_timed(self, frame: Frame) -> None:
        self.status.queue_wait.add(time.monotonic() - frame.received)
        published = self.process(frame)
        if published:
            self.status.output_rate.tick()
            self.status.latency.add(time.monotonic() - frame.received)

    def predict_timed(self, run: Callable[[], Any]) -> Any:
        start = time.monotonic()
        result = run()
        self.status.inference.add(time.monotonic() - start)
        return result

    def camera_for(self, topic: str, info: CameraInfo | None, height: int, width: int
                   ) -> tuple[CameraInfo, np.ndarray] | None:
        """(camera_info at the image size, K) or None after logging why the frame is skipped."""
        if info is None:
            self.skip_input(topic, "camera_info: none received yet for this camera; the frame is skipped "
                            "(publish a CameraInfo with each image)")
            return None
        if info.width == 0 and info.height == 0:  # some drivers leave the size empty
            info = _with_size(info, width, height)
        if (info.width, info.height) != (width, height):
            self.skip_input(topic, f"camera_info: size {info.width}x{info.height} differs from the image "
                            f"{width}x{height}; the frame is skipped")
            return None
        try:
            return info, conversions.camera_matrix(info)
        except ValueError as exc:
            self.skip_input(topic, exc)
            return None

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


def _with_size(info: CameraInfo, width: int, height: int) -> CameraInfo:
    out = CameraInfo()
    out.header, out.distortion_model, out.d, out.k, out.r, out.p = (info.header, info.distortion_model, info.d,
                                                                     info.k, info.r, info.p)
    out.width, out.height, out.roi = width, height, info.roi
    return out


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

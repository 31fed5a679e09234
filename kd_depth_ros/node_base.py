"""The lifecycle node both depth nodes are made of: it wires parameters, model, worker, outputs and diagnostics.

:class:`DepthNodeBase` (``rclpy.lifecycle.LifecycleNode``) declares :data:`~kd_depth_ros.node_params.COMMON_SPECS`
(plus the subclass's), and on

- configure: loads the model (``DepthPredictor``, ``model_path`` / ``model_card``; backend 'auto' serves a
  ``.safetensors`` model through ONNX Runtime on a CPU, see ``kd_depth_core/inference/predictor.py``) and creates
  the publishers (``uncertainty`` only for a model that has it);
- activate: subscribes (the subclass's ``create_inputs``) and starts the :class:`~kd_depth_ros.depth_worker.
  LatestFrameWorker`; deactivate: unsubscribes and stops it; cleanup: frees the model (and CUDA memory).

Per frame the subclass's ``process`` decodes and predicts; :meth:`DepthNodeBase.publish_depth` publishes what
:class:`~kd_depth_ros.depth_outputs.DepthOutputs` builds. Every per-frame failure ends in
:meth:`DepthNodeBase.frame_failed` (counted by kind, logged throttled, reflected in ``/diagnostics``).
Diagnostics, the QoS-mismatch warning, the "nothing arrived" warning and the worker's supervision run on one
timer. :func:`run_node` is the executables' ``main`` (``--help`` without starting ROS, autostart).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

from kd_depth_ros import conversions
from kd_depth_ros.depth_outputs import DepthOutputs, OutputSettings
from kd_depth_ros.depth_worker import FrameError, LatestFrameWorker, ThrottledLog, failure_kind
from kd_depth_ros.diagnostics import DepthNodeStatus
from kd_depth_ros.node_params import (
    COMMON_SPECS,
    DEFAULT_MODEL_FILE,
    check_common,
    configure_error,
    package_file,
    resolve_model_path,
)
from kd_depth_ros.params import ParameterError, ParamSpec, declare, help_text
from kd_depth_ros.qos import IncompatibleQosWarner, make_qos


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
    DEFAULT_MODEL: str | None = DEFAULT_MODEL_FILE
    """The bundled model used when ``model_path`` is empty; None: ``model_path`` is required."""

    def __init__(self, node_name: str, **kwargs):
        super().__init__(node_name, **kwargs)
        self.values = declare(self, self.SPECS, check=self.check_params)
        self.status = DepthNodeStatus(f"{self.get_fully_qualified_name()}: depth")
        self.log_throttled = ThrottledLog(self.get_logger())
        self.predictor = None
        self.worker: LatestFrameWorker | None = None
        self.pubs: dict[str, Any] = {}
        self.subs: list[Any] = []
        self.outputs = DepthOutputs()
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
            predictor = self.load_predictor()
        except Exception as exc:  # any load failure -> FAILURE with the reason, node stays unconfigured
            self.get_logger().error(f"configure failed: {configure_error(exc, values)}")
            return TransitionCallbackReturn.FAILURE
        self.predictor = predictor
        self.status.model_loaded = True
        self.status.device = predictor.device
        self.status.model = predictor.describe()
        qos = make_qos(values["pub_reliability"], values["pub_depth"])
        self.pubs = {
            "depth": self.create_lifecycle_publisher(Image, "depth", qos),
            "camera_info": self.create_lifecycle_publisher(CameraInfo, "depth/camera_info", qos),
            "points": self.create_lifecycle_publisher(PointCloud2, "points", qos),
            "colorized": self.create_lifecycle_publisher(Image, "depth/colorized", qos),
        }
        if predictor.metadata.has_uncertainty:
            self.pubs["uncertainty"] = self.create_lifecycle_publisher(Image, "uncertainty", qos)
        elif values["publish_uncertainty"]:
            self.get_logger().info("the model has no uncertainty output: 'uncertainty' is not advertised")
        self.extra_publishers(qos)
        self.worker = LatestFrameWorker(self._process_timed, self._on_worker_error,
                                        queue_size=values["frame_queue_size"])
        self.status.worker_alive = True
        self.status.extra["backend"] = predictor.backend_note or f"backend {predictor.backend}"
        if predictor.backend_fallback:
            self.get_logger().warning(predictor.backend_note)
        elif predictor.backend_note:
            self.get_logger().info(predictor.backend_note)
        self.get_logger().info(f"configured: {predictor.describe()}")
        return super().on_configure(state)

    def load_predictor(self):
        """The ``DepthPredictor`` the parameters describe (warmed up); raises what loading raised."""
        from kd_depth_core.inference import DepthPredictor

        values = self.values
        path = resolve_model_path(values["model_path"], self.DEFAULT_MODEL, self.NODE_NAME)
        options: dict[str, Any] = {}
        if values["model_card"]:  # a foreign ONNX model's card; kd-depth models carry their own metadata
            options["model_card"] = os.path.expanduser(values["model_card"])
        predictor = DepthPredictor(
            path, device=values["device"], precision=values["precision"], backend=values["backend"],
            cpu_backend="onnxruntime",  # backend 'auto' on a CPU: a checked in-memory ONNX export (issue 19)
            output="model", scale_mode=values["scale_mode"], scale_factor=values["scale_factor"],
            camera_height=values["camera_height"] or None,
            input_size=(values["input_height"], values["input_width"]) if values["input_width"] else None, **options)
        if predictor.metadata.stereo != self.STEREO:
            kind, other = ("stereo", "mono_depth_node") if predictor.metadata.stereo else ("mono", "stereo_depth_node")
            raise ValueError(f"parameter 'model_path' = {str(path)!r} is a {kind} model; run it with {other}")
        if values["warmup"]:
            predictor.warmup(iterations=1)
        return predictor

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
            self.status.extra["frame queue"] = (f"{self.worker.capacity} of {self.worker.queue_size}"
                                                + ("" if self.worker.keeping_up() else
                                                   " (inference slower than the input: newest frame only)"))
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
        """Whether an optional output is advertised and has a subscriber: uncertainty, clouds and previews are
        built on demand."""
        pub = self.pubs.get(output)
        return pub is not None and pub.get_subscription_count() > 0

    def publish_depth(self, header: Header, info: CameraInfo, prediction, rgb: np.ndarray | None):
        """Publish depth, depth/camera_info, then uncertainty, points, colourised depth for one frame.

        ``info`` describes the input image; the outputs use ``output_width``x``output_height``
        (0 = the input size), with camera_info scaled to it (see :mod:`kd_depth_ros.depth_outputs`).
        Returns the :class:`~kd_depth_ros.depth_outputs.DepthFrame` (depth (h, w) metres with NaN outside
        [min_depth, max_depth] in the reused output buffer, valid until the next frame; the scaled camera_info).
        """
        if header.frame_id == "" and not self._warned_frame_id:
            self._warned_frame_id = True
            self.get_logger().warning("input images have an empty header.frame_id: outputs copy it, so RViz and "
                                      "tf cannot place them; set the camera's optical frame id")
        settings = OutputSettings.from_params(self.values)
        # Depth goes out first and without a copy: resized into the reused message buffer, masked in place.
        frame = self.outputs.depth(settings, header, info, prediction.depth)
        self.pubs["depth"].publish(frame.message)
        self.pubs["camera_info"].publish(frame.info)
        for output, message in self.outputs.optional(settings, frame, prediction.uncertainty, rgb, self._wanted):
            self.pubs[output].publish(message)
        return frame


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
    try:
        own_args = remove_ros_args(argv)[1:]
    except Exception as exc:  # rclpy's RCLInvalidROSArgsError: a malformed remap or parameter on the command line
        print(f"[{node_class.NODE_NAME}] invalid ROS arguments: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    parser.parse_args(own_args)
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

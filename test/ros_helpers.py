"""Helpers for ROS tests: start a node executable as its own process, talk to it from this one, wait bounded.

Nodes are started as a launch file would start them: the installed executable (``lib/kd_depth_ros/<name>``
or on PATH) with ``--ros-args --params-file ... -r from:=to -p name:=value``; when the package is not
installed, ``python -m <module>`` with the repository on PYTHONPATH. ``RosHarness`` is an rclpy node in
the test process with its own context, publishers and recording subscribers. test/conftest.py gives
every run its own ``ROS_DOMAIN_ID`` on loopback. Models with a known output: :func:`write_pixel_model` (an
ONNX export whose depth is an affine function of each pixel's colour, see :class:`PixelModel`, so channel
order, left/right, resize and focal/baseline scaling all show in the published values) and
:func:`write_constant_model` (a released ``.safetensors`` model with all weights zero, for the torch path).
:func:`faulty_node_command` starts a node whose model backend fails on chosen frames (fault injection);
:func:`module_probe_command` starts the real node and reports at exit which heavy modules it imported.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config"
DDS_ENV = {"FASTRTPS_DEFAULT_PROFILES_FILE": str(CONFIG / "fastdds_large_data.xml")}
"""What the launch files add to a node's environment (argument dds_profile's default)."""
NODE_MODULES = {"mono_depth_node": "kd_depth_ros.mono_depth_node",
                "stereo_depth_node": "kd_depth_ros.stereo_depth_node"}


def constant_depth(min_depth: float, max_depth: float) -> float:
    """Depth (m) a network with all-zero weights predicts: sigmoid(0) = 0.5 mapped by disp_to_depth."""
    return 1.0 / (1.0 / max_depth + (1.0 / min_depth - 1.0 / max_depth) * 0.5)


def write_constant_model(path: Path, stereo: bool = False, min_depth: float = 1.0, max_depth: float = 3.0,
                         height: int = 64, width: int = 96) -> Path:
    """A tiny released model whose every weight is zero: depth = constant_depth(min, max) (the stereo one through
    its rig), std = exp(0) = 1 m (mono)."""
    import torch

    from kd_depth_core.models import create_model
    from kd_depth_core.models.io import ModelMetadata, save_model

    if stereo:  # decoder widths left at their defaults: they follow the backbone's feature strides
        model = create_model("stereo_teacher", backbone="mobilenetv3_small_050", cost_volume_reductions=(8,),
                             max_disparity=16, match_channels=8, uncertainty=True)
    else:
        model = create_model("student_lcnet", backbone="lcnet_050", uncertainty=True)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.zero_()
    if stereo:  # zero logits: uniform matching, the mean candidate disparity; the rig maps it to the same depth
        mean = float((torch.arange(len(model.candidates)) * model.match_reduction).float().mean())
        model.set_rig(fx=constant_depth(min_depth, max_depth) * mean, baseline=1.0, width=width,
                      min_depth=min_depth, max_depth=max_depth)
    meta = ModelMetadata.from_model(model, input_height=height, input_width=width, min_depth=min_depth,
                                    max_depth=max_depth, scale_kind="metric", focal_length_px=None,
                                    has_uncertainty=True, stereo=stereo)
    return save_model(path, model, meta)


@dataclass(frozen=True)
class PixelModel:
    """An ONNX "depth network" with a hand-checkable output, per pixel of its (input_height, input_width) input
    with channels R, G, B in [0, 1] (the image / 255 after the predictor's area resize):

    - mono:   depth = a + b*R - c*B,                 uncertainty = u0 + u1*G
    - stereo: depth = a + b*R_left - c*R_right - e*B_left,   uncertainty = u0 + u1*G_left

    (then the predictor's metric scale: x fx_runtime/fx_train, stereo x (fx*T)/(fx_train*T_train)). Swapping R
    and B, or left and right, changes every value.
    """

    a: float = 1.0
    b: float = 2.0
    c: float = 1.0
    e: float = 0.5
    u0: float = 0.1
    u1: float = 0.5

    def depth(self, rgb: np.ndarray, right: np.ndarray | None = None) -> np.ndarray:
        """The network's depth (before metric scaling) for RGB uint8 (H, W, 3) image(s) at the input size."""
        x = rgb.astype(np.float64) / 255.0
        if right is None:
            return self.a + self.b * x[..., 0] - self.c * x[..., 2]
        return self.a + self.b * x[..., 0] - self.c * right.astype(np.float64)[..., 0] / 255.0 - self.e * x[..., 2]

    def uncertainty(self, rgb: np.ndarray) -> np.ndarray:
        return self.u0 + self.u1 * rgb.astype(np.float64)[..., 1] / 255.0


PIXEL_MODEL = PixelModel()


def write_pixel_model(path: Path, stereo: bool = False, height: int = 24, width: int = 32,
                      focal_length_px: float | None = None, baseline_m: float | None = None,
                      scale_kind: str = "metric", has_uncertainty: bool = True,
                      model: PixelModel = PIXEL_MODEL) -> Path:
    """Write :class:`PixelModel` as a kd-depth ONNX export (the metadata in ``metadata_props['kd_depth']``, as
    ``kd-depth export`` writes it) with a fixed (height, width) input; runs with ONNX Runtime, no torch."""
    import onnx
    from onnx import TensorProto, helper

    from kd_depth_core.inference.export import ONNX_METADATA_KEY
    from kd_depth_core.models.io import ModelMetadata

    inputs = ["left", "right"] if stereo else ["image"]
    nodes, initializers = [], []

    def const(name: str, value) -> str:
        initializers.append(helper.make_tensor(name, TensorProto.FLOAT if not isinstance(value, list) else
                                               TensorProto.INT64, [len(value)] if isinstance(value, list) else [],
                                               value if isinstance(value, list) else [float(value)]))
        return name

    def channel(source: str, index: int) -> str:
        out = f"{source}_c{index}"
        nodes.append(helper.make_node("Gather", [source, const(f"idx_{out}", [index])], [out], axis=1))
        return out

    def op(kind: str, a: str, b: str, out: str) -> str:
        nodes.append(helper.make_node(kind, [a, b], [out]))
        return out

    first = inputs[0]
    red, blue = channel(first, 0), channel(first, 2)
    green = channel(first, 1) if has_uncertainty else ""
    depth = op("Add", const("a", model.a), op("Mul", red, const("b", model.b), "bR"), "a_bR")
    depth = op("Sub", depth, op("Mul", blue, const("c" if not stereo else "e", model.c if not stereo else model.e),
                                "cB"), "depth" if not stereo else "a_bR_eB")
    if stereo:
        depth = op("Sub", depth, op("Mul", channel("right", 0), const("c", model.c), "cRr"), "depth")
    outputs = ["depth"]
    if has_uncertainty:
        op("Add", const("u0", model.u0), op("Mul", green, const("u1", model.u1), "u1G"), "uncertainty")
        outputs.append("uncertainty")
    shape = ["batch", 3, height, width]
    graph = helper.make_graph(nodes, "pixel_model",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in inputs],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1, height, width])
                               for name in outputs], initializer=initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    meta = ModelMetadata.from_dict({
        "model_name": "pixel_model", "model_kwargs": {}, "input_height": height, "input_width": width,
        "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "size_multiple": 8, "min_depth": 0.05, "max_depth": 100.0,
        "scale_kind": scale_kind, "focal_length_px": focal_length_px, "stereo": stereo, "has_uncertainty": has_uncertainty,
        "training_config": {}, "created_by": "kd-depth tests (test/ros_helpers.py)", "baseline_m": baseline_m})
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, meta.to_json()
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())
    return path


def block_image(height: int, width: int, red_step: int = 8, blue_step: int = 10, green: int = 100,
                block: int = 2) -> np.ndarray:
    """RGB uint8 (height, width, 3) of ``block`` x ``block`` tiles: R = red_step * tile column, B = blue_step *
    tile row, G constant. Area-resized by 1/``block`` it is exactly the tile grid (no interpolation error)."""
    rows, cols = np.indices((height, width)) // block
    return np.stack([red_step * cols, np.full_like(cols, green), blue_step * rows], axis=-1).astype(np.uint8)


def node_command(executable: str) -> list[str]:
    """The installed executable (as ``ros2 run`` finds it) or ``python -m <module>``."""
    from kd_depth_ros.demo_replay import node_command as find_node

    return find_node(executable, NODE_MODULES[executable])


BACKEND_FAULT_RGB = (13, 0, 255)
"""An image whose first pixel has this colour makes the faulty node's backend raise RuntimeError."""
THREAD_DEATH_RGB = (13, 1, 255)
"""... raise a BaseException, which ends the inference thread (the node must restart it)."""


class InjectedThreadDeath(BaseException):
    """Not an Exception: nothing per-frame catches it, so the inference thread ends."""


def faulty_node_command(executable: str) -> list[str]:
    """``python -c`` running ``executable`` with its ``DepthPredictor.predict``/``predict_stereo`` failing on the
    colours above (see :func:`run_faulty_node`)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import ros_helpers; "
            f"sys.exit(ros_helpers.run_faulty_node({executable!r}))")
    return [sys.executable, "-c", code]


def run_faulty_node(executable: str) -> int:
    """``main()`` of ``executable`` with the backend patched to fail on :data:`BACKEND_FAULT_RGB` /
    :data:`THREAD_DEATH_RGB` images (the first pixel of the image, the left one for stereo)."""
    import importlib

    from kd_depth_core.inference.predictor import DepthPredictor

    def faulty(method):
        def run(self, image, *args, **kwargs):
            first = tuple(int(v) for v in image[0, 0]) if getattr(image, "ndim", 0) == 3 else ()
            if first == BACKEND_FAULT_RGB:
                raise RuntimeError("injected backend failure")
            if first == THREAD_DEATH_RGB:
                raise InjectedThreadDeath("injected thread death")
            return method(self, image, *args, **kwargs)

        return run

    DepthPredictor.predict = faulty(DepthPredictor.predict)
    if hasattr(DepthPredictor, "predict_stereo"):
        DepthPredictor.predict_stereo = faulty(DepthPredictor.predict_stereo)
    return importlib.import_module(NODE_MODULES[executable]).main(sys.argv)


MODULES_AT_EXIT = "modules loaded at exit:"
"""The line :func:`module_probe_command` prints when the node's ``main()`` has returned."""


def module_probe_command(executable: str, modules: tuple[str, ...] = ("torch",)) -> list[str]:
    """``python -c`` running ``executable``'s real ``main()`` (nothing patched); when it returns (SIGINT), prints
    ``modules loaded at exit: <those of modules in sys.modules>`` (empty after the colon: none was imported)."""
    code = (f"import importlib, sys; rc = importlib.import_module({NODE_MODULES[executable]!r}).main(sys.argv); "
            f"print({MODULES_AT_EXIT!r}, ','.join(m for m in {tuple(modules)!r} if m in sys.modules), flush=True); "
            "sys.exit(rc)")
    return [sys.executable, "-c", code]


def _ros_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    return repr(value)


class NodeProcess:
    """A node running in a child process; its combined stdout/stderr goes to a temporary file."""

    def __init__(self, executable: str, params_file: Path | None = None, params: dict[str, Any] | None = None,
                 remaps: dict[str, str] | None = None, name: str | None = None, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, command: list[str] | None = None,
                 ros_args: list[str] | None = None):
        """``ros_args``: given as they are right after ``--ros-args`` (e.g. what a launch file expands to)."""
        command = (command or node_command(executable)) + (extra_args or []) + ["--ros-args"] + (ros_args or [])
        if params_file is not None:
            command += ["--params-file", str(params_file)]
        for key, value in (params or {}).items():
            command += ["-p", f"{key}:={_ros_value(value)}"]
        for source, target in (remaps or {}).items():
            command += ["-r", f"{source}:={target}"]
        if name is not None:
            command += ["-r", f"__node:={name}"]
        env = {**os.environ, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PYTHONUNBUFFERED"] = "1"
        env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
        env["RCUTILS_COLORIZED_OUTPUT"] = "0"
        self.command = command
        self._log = tempfile.NamedTemporaryFile("w+", prefix=f"{executable}-", suffix=".log", delete=False)
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for_log(self, text: str, timeout: float) -> bool:
        return wait_until(lambda: text in self.log() or not self.running(), timeout) and text in self.log()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (as Ctrl-C / launch do), then SIGKILL after ``timeout``; returns the exit code."""
        if self.running():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)


def wait_until(predicate: Callable[[], bool], timeout: float, period: float = 0.05,
               spin: Callable[[float], None] | None = None) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds; ``spin(period)`` runs between polls (else sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if spin is not None:
            spin(period)
        else:
            time.sleep(period)
    return predicate()


class RosHarness:
    """An rclpy node in the test process (own context): publishers, recording subscribers, spinning waits."""

    def __init__(self, name: str = "kd_depth_test_harness"):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[str, list] = {}

    def publisher(self, msg_type, topic: str, reliability: str = "reliable", depth: int = 10):
        from kd_depth_ros.qos import make_qos

        return self.node.create_publisher(msg_type, topic, make_qos(reliability, depth))

    def subscribe(self, msg_type, topic: str, reliability: str = "reliable", depth: int = 50) -> list:
        """Record every message on ``topic`` into the returned list (also ``self.received[topic]``)."""
        from kd_depth_ros.qos import make_qos

        messages: list = []
        self.received[topic] = messages
        self.node.create_subscription(msg_type, topic, messages.append, make_qos(reliability, depth))
        return messages

    def spin(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.executor.spin_once(timeout_sec=min(remaining, 0.02))

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        return wait_until(predicate, timeout, period=0.05, spin=self.spin)

    def wait_for_subscribers(self, publisher, count: int = 1, timeout: float = 60.0) -> bool:
        return self.wait(lambda: publisher.get_subscription_count() >= count, timeout)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def header(stamp_ns: int, frame_id: str):
    from std_msgs.msg import Header

    msg = Header(frame_id=frame_id)
    msg.stamp.sec, msg.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return msg


def camera_info(stamp_ns: int, frame_id: str, width: int, height: int, fx: float, fy: float, cx: float,
                cy: float, baseline: float = 0.0):
    """A rectified CameraInfo; ``baseline`` > 0 makes it the right camera's (P[3] = -fx * baseline)."""
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(header=header(stamp_ns, frame_id), width=width, height=height, distortion_model="plumb_bob")
    info.d = [0.0] * 5
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, cx, -fx * baseline, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info

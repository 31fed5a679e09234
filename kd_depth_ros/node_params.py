"""The depth nodes' parameters: the table both nodes declare, the checks across parameters, the bundled model.

- :data:`COMMON_SPECS`: every parameter ``mono_depth_node`` and ``stereo_depth_node`` share (each node adds
  its own); declared with descriptors by :func:`kd_depth_ros.params.declare`.
- :func:`check_common`: combinations a single parameter's range cannot express (min < max, both sizes 0 or
  both set, ground-plane scale needs a camera height).
- :func:`resolve_model_path` / :func:`package_file`: files of the installed package
  (``share/kd_depth_ros/...`` through the ament index) with the source tree as fallback.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from kd_depth_core.inference.scale import SCALE_MODES
from kd_depth_ros.conversions import DEPTH_ENCODINGS
from kd_depth_ros.params import ParameterError, ParamSpec
from kd_depth_ros.qos import RELIABILITY_CHOICES

PACKAGE = "kd_depth_ros"
DEFAULT_MODEL_FILE = "default_student.safetensors"
"""The bundled (mono) model, installed to ``share/kd_depth_ros/models/``; used when ``model_path`` is empty."""

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"

COMMON_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("model_path", "", "released model (.safetensors) or export (.onnx/.torchscript); empty = the bundled "
              f"share/{PACKAGE}/models/{DEFAULT_MODEL_FILE} (mono only: the stereo node needs a model_path)",
              read_only=True),
    ParamSpec("model_card", "", "YAML card describing a foreign ONNX depth model (inputs, outputs, scale kind); "
              "empty = none (kd-depth models carry their metadata)", read_only=True),
    ParamSpec("device", "auto", "where the network runs: auto (CUDA when present), cpu, cuda or cuda:N",
              pattern=DEVICE_PATTERN, pattern_help="'auto', 'cpu', 'cuda' or 'cuda:N'", read_only=True),
    ParamSpec("precision", "fp32", "network precision (fp16 needs CUDA)", choices=("fp32", "fp16", "bf16"),
              read_only=True),
    ParamSpec("backend", "auto", "inference runtime. auto: a .safetensors model runs with ONNX Runtime on a CPU "
              "(exported in memory at configure and checked once against PyTorch; PyTorch, with the reason logged, "
              "when the export or the check fails) and with PyTorch on CUDA; an .onnx / .torchscript export with its "
              "own runtime. torch / onnxruntime / torchscript force one",
              choices=("auto", "torch", "torchscript", "onnxruntime"), read_only=True),
    ParamSpec("frame_queue_size", 2, "images that may wait for the inference thread while it keeps up with the "
              "camera (a short stall then costs no frame); a model slower than the camera gets the newest image "
              "only, so latency stays about one inference time. When full the oldest is dropped (counted as "
              "'frames dropped'); 1 = the newest image only, always", min=1, max=30, read_only=True),
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
              "(0 invalid)", choices=DEPTH_ENCODINGS),
    ParamSpec("publish_uncertainty", True, "publish 'uncertainty' (32FC1 std of depth, metres) when the model has it "
              "(a model without it does not advertise the topic)"),
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
              "CompressedImage on '<remapped image topic>/compressed')", choices=("raw", "compressed"),
              read_only=True),
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
    """Combinations the single-parameter ranges cannot express; :class:`ParameterError` naming the parameter."""
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


def resolve_model_path(model_path: str, default_file: str | None = DEFAULT_MODEL_FILE,
                       node_name: str = "mono_depth_node") -> Path:
    """``model_path``, or the bundled ``default_file`` when empty (ament index share dir, then the source tree's
    models/); ``default_file`` None: the node has no bundled model and ``model_path`` is required."""
    if model_path:
        return Path(os.path.expanduser(model_path))
    if default_file is None:
        raise FileNotFoundError(f"parameter 'model_path' is empty: {node_name} has no bundled model; set it to a "
                                "stereo model (.safetensors or an export), e.g. -p model_path:=/path/stereo.safetensors")
    candidates = _package_candidates("models", default_file)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"parameter 'model_path' is empty and the bundled model was not found (looked in "
                            f"{', '.join(str(c) for c in candidates)}); set model_path to a .safetensors model")


CONFIGURE_PARAMETERS = ("scale_mode", "scale_factor", "camera_height", "model_card", "input_width", "input_height",
                        "precision", "backend", "device", "model_path")
"""Parameters a model-load error may name (checked in this order; the first one named is reported)."""


def configure_error(exc: BaseException, values: dict[str, Any]) -> str:
    """One line for a failed configure: ``parameter 'x' = value: <reason>`` when the reason names a parameter.

    The predictor's errors name their argument (``scale_mode: ...``, ``scale_mode 'focal' needs ...``); the user
    set a node parameter of the same name, so the line says which one and its value.
    """
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if reason.startswith("parameter"):
        return reason
    for name in CONFIGURE_PARAMETERS:
        # names with '_' anywhere as a word; plain words ('device') only where the reason starts with them
        pattern = rf"(?<!\w){name}(?!\w)" if "_" in name else rf"^{name}(?!\w)"
        if name in values and re.search(pattern, reason):
            return f"parameter '{name}' = {values[name]!r}: {type(exc).__name__}: {reason}"
    return f"{type(exc).__name__}: {reason}"

"""``mono_depth_node``: metric depth, uncertainty and a point cloud from one camera.

Subscribes ``image`` (or, with ``image_transport: compressed``, ``<remapped image>/compressed``) and
``camera_info`` (each image is paired with the camera_info of its stamp, within
``camera_info_tolerance_s``, or else the latest one at most ``camera_info_max_age_s`` older; frames
without one are skipped and counted); publishes ``depth`` (32FC1 metres, NaN invalid, the input header),
``depth/camera_info`` (scaled to the depth size), ``uncertainty``, ``points``, optionally
``depth/colorized``, and ``/diagnostics``. A lifecycle node: configure loads the model, activate
subscribes, deactivate/cleanup stop and free; ``autostart`` (default true) does both at start so
``ros2 run`` works without a lifecycle manager. ``mono_depth_node --help`` lists topics and
parameters without starting ROS.
"""
from __future__ import annotations

import sys

from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from kd_depth_ros import conversions
from kd_depth_ros.depth_worker import FrameError, failure_kind
from kd_depth_ros.node_base import DepthNodeBase, Frame, Topic, help_epilog, run_node
from kd_depth_ros.node_params import COMMON_SPECS
from kd_depth_ros.params import ParamSpec
from kd_depth_ros.sync import CameraInfoMatcher

NODE_NAME = "mono_depth_node"

SPECS: tuple[ParamSpec, ...] = COMMON_SPECS + (
    ParamSpec("camera_info_tolerance_s", 0.01, "an image uses the camera_info whose header stamp is within this "
              "many seconds of its own", min=0.0, max=10.0),
    ParamSpec("camera_info_max_age_s", 1.0, "else the latest camera_info at most this many seconds older than the "
              "image (drivers that publish it rarely); 0 = stamps must match", min=0.0, max=1e6),
)

SUBSCRIBES = (
    Topic("image", "sensor_msgs/Image", "rgb/bgr(a) 8/16-bit, mono8/16, Bayer, YUV422, NV12/21 (image_transport "
          "raw)"),
    Topic("image/compressed", "sensor_msgs/CompressedImage", "jpeg or png (image_transport compressed; follows the "
          "remapped image topic)"),
    Topic("camera_info", "sensor_msgs/CameraInfo", "intrinsics of 'image' (needed for every frame)"),
)
PUBLISHES = (
    Topic("depth", "sensor_msgs/Image", "32FC1 metres (NaN invalid) or 16UC1 mm; input header"),
    Topic("depth/camera_info", "sensor_msgs/CameraInfo", "camera_info scaled to the depth size"),
    Topic("uncertainty", "sensor_msgs/Image", "32FC1 standard deviation of depth, metres"),
    Topic("points", "sensor_msgs/PointCloud2", "x, y, z (+ rgb) float32, organised or valid-only, strided"),
    Topic("depth/colorized", "sensor_msgs/Image", "rgb8 colourised inverse depth (publish_colorized)"),
    Topic("/diagnostics", "diagnostic_msgs/DiagnosticArray", "rates, latency, drops, device"),
)


class MonoDepthNode(DepthNodeBase):
    """Monocular depth node (see the module docstring)."""

    NODE_NAME = NODE_NAME
    SPECS = SPECS
    STEREO = False

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self._infos = CameraInfoMatcher()

    def create_inputs(self, qos: QoSProfile) -> None:
        self._infos.clear()  # never pair new images with a camera_info from before activation
        image_type = CompressedImage if self.values["image_transport"] == "compressed" else Image
        fix = "Set parameter 'sub_reliability' to match the camera."
        image_sub = self.create_subscription(image_type, self.transport_topic("image"), self._on_image, qos)
        info_sub = self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos)
        self.subs = [image_sub, info_sub]
        self.qos_warner.watch(image_sub, qos, fix)
        self.qos_warner.watch(info_sub, qos, fix)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._infos.add(conversions.header_stamp_ns(msg.header), msg)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.status.input_rate.tick()
        self.worker.submit(Frame((msg,), ()))  # the camera_info is matched on the inference thread

    def input_summary(self) -> str:
        parts = []
        for sub in self.subs:
            parts.append(f"'{sub.topic_name}' has {self.count_publishers(sub.topic_name)} publisher(s)")
        return (f"{'; '.join(parts)}; {self.status.input_rate.count} image(s) and {self._infos.received} "
                "camera_info(s) received. Check the topic remapping, the camera, and 'sub_reliability'.")

    def process(self, frame: Frame) -> bool:
        msg = frame.images[0]
        topic, info_topic = (self.subs[0].topic_name, self.subs[1].topic_name) if self.subs else ("image",
                                                                                               "camera_info")
        try:
            rgb = conversions.image_msg_to_rgb(msg)
        except ValueError as exc:
            raise FrameError(failure_kind(str(exc)), topic, str(exc)) from exc
        stamp = conversions.header_stamp_ns(msg.header)
        info, why = self._infos.match(stamp, self.values["camera_info_tolerance_s"],
                                      self.values["camera_info_max_age_s"])
        if info is None:
            raise FrameError("no_camera_info", info_topic, f"camera_info: {why}; the frame is skipped")
        info, K = self.checked_camera(info_topic, info, rgb.shape[0], rgb.shape[1])
        prediction = self.predict_timed(lambda: self.predictor.predict(rgb, K=K))
        self.publish_depth(msg.header, info, prediction, rgb)
        return True


def main(argv: list[str] | None = None) -> int:
    return run_node(MonoDepthNode, __doc__.split("\n\n")[0].replace("``", ""),
                    help_epilog(SUBSCRIBES, PUBLISHES, SPECS), argv)


if __name__ == "__main__":
    sys.exit(main())

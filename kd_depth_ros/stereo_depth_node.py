"""``stereo_depth_node``: metric depth, disparity, uncertainty and a point cloud from a rectified stereo pair.

Subscribes ``left/image_rect``, ``right/image_rect`` (with ``image_transport: compressed``, the remapped
image topic + ``/compressed``, as image_transport does), ``left/camera_info`` and ``right/camera_info``
(``model_path`` is required: no stereo model is bundled), paired by header stamp within
``sync_slop_s`` (bounded queues, dropped messages counted in /diagnostics). The baseline comes
from the right camera's projection matrix, T = -P[3] / P[0]; it scales the metric depth with the focal
length, (f·T) / (f_train·T_train), when the model records its training baseline. Publishes for the left view:
``depth`` (32FC1 metres), ``depth/camera_info``, ``disparity`` (stereo_msgs/DisparityImage,
Z = f*T/d), ``uncertainty``, ``points``, optional ``depth/colorized`` and ``/diagnostics``.
Lifecycle and ``autostart`` as in ``mono_depth_node``; ``--help`` works without ROS.
"""
from __future__ import annotations

import sys

from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from stereo_msgs.msg import DisparityImage

from kd_depth_ros import conversions
from kd_depth_ros.depth_outputs import disparity_message
from kd_depth_ros.node_base import DepthNodeBase, Frame, Topic, help_epilog, run_node
from kd_depth_ros.node_params import COMMON_SPECS
from kd_depth_ros.params import ParamSpec
from kd_depth_ros.sync import StampSynchronizer

NODE_NAME = "stereo_depth_node"

SPECS: tuple[ParamSpec, ...] = COMMON_SPECS + (
    ParamSpec("sync_slop_s", 0.01, "left/right images and camera_infos pair when their stamps differ by at most "
              "this many seconds", min=0.0, max=1.0, read_only=True),
    ParamSpec("sync_queue_size", 10, "messages kept per input while waiting for partners", min=1, max=1000,
              read_only=True),
    ParamSpec("publish_disparity", True, "publish 'disparity' (stereo_msgs/DisparityImage)"),
)

INPUTS = ("left/image_rect", "right/image_rect", "left/camera_info", "right/camera_info")

SUBSCRIBES = (
    Topic("left/image_rect", "sensor_msgs/Image", "rectified left image (or .../compressed)"),
    Topic("right/image_rect", "sensor_msgs/Image", "rectified right image (or .../compressed)"),
    Topic("left/camera_info", "sensor_msgs/CameraInfo", "left intrinsics"),
    Topic("right/camera_info", "sensor_msgs/CameraInfo", "right projection: baseline = -P[3]/P[0]"),
)
PUBLISHES = (
    Topic("depth", "sensor_msgs/Image", "left-view depth, 32FC1 metres (NaN invalid) or 16UC1 mm"),
    Topic("depth/camera_info", "sensor_msgs/CameraInfo", "left camera_info scaled to the depth size"),
    Topic("disparity", "stereo_msgs/DisparityImage", "d = f*T/Z pixels at the depth size (NaN invalid)"),
    Topic("uncertainty", "sensor_msgs/Image", "32FC1 standard deviation of depth, metres"),
    Topic("points", "sensor_msgs/PointCloud2", "x, y, z (+ rgb) float32, organised or valid-only, strided"),
    Topic("depth/colorized", "sensor_msgs/Image", "rgb8 colourised inverse depth (publish_colorized)"),
    Topic("/diagnostics", "diagnostic_msgs/DiagnosticArray", "rates, latency, drops (frames and pairs), device"),
)


class StereoDepthNode(DepthNodeBase):
    """Stereo depth node (see the module docstring)."""

    NODE_NAME = NODE_NAME
    SPECS = SPECS
    STEREO = True
    DEFAULT_MODEL = None  # no stereo model is bundled: model_path is required

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.sync = StampSynchronizer(len(INPUTS), self.values["sync_slop_s"], self.values["sync_queue_size"],
                                      callback=self._on_synced)
        self._counts = [0] * len(INPUTS)

    def extra_publishers(self, qos: QoSProfile) -> None:
        self.pubs["disparity"] = self.create_lifecycle_publisher(DisparityImage, "disparity", qos)

    def create_inputs(self, qos: QoSProfile) -> None:
        self.sync.reset()
        image_type = CompressedImage if self.values["image_transport"] == "compressed" else Image
        fix = "Set parameter 'sub_reliability' to match the camera."
        for index, topic in enumerate(INPUTS):
            is_image = index < 2  # images follow image_transport: '<remapped base>/compressed'
            sub = self.create_subscription(image_type if is_image else CameraInfo,
                                           self.transport_topic(topic) if is_image else topic,
                                           lambda msg, i=index: self._on_input(i, msg), qos)
            self.subs.append(sub)
            self.qos_warner.watch(sub, qos, fix)

    def _on_input(self, index: int, msg) -> None:
        self._counts[index] += 1
        self.sync.add(index, conversions.header_stamp_ns(msg.header), msg)
        self.status.dropped_pairs = max(self.sync.dropped[0], self.sync.dropped[1])
        self.status.extra = {f"unpaired {name}": str(n) for name, n in zip(INPUTS, self.sync.dropped)}

    def _on_synced(self, left, right, left_info, right_info) -> None:
        self.status.input_rate.tick()
        self.worker.submit(Frame((left, right), (left_info, right_info)))

    def input_summary(self) -> str:
        received = ", ".join(f"{sub.topic_name}: {n} received, {self.count_publishers(sub.topic_name)} publisher(s)"
                             for sub, n in zip(self.subs, self._counts))
        return (f"no synchronised stereo pairs ({received}; {self.sync.dropped_total} dropped unpaired). Check the "
                "remapping, that all four topics carry matching header stamps (sync_slop_s = "
                f"{self.values['sync_slop_s']:g} s), and 'sub_reliability'.")

    def process(self, frame: Frame) -> bool:
        topics = [sub.topic_name for sub in self.subs] if self.subs else list(INPUTS)
        images = []
        for msg, topic in zip(frame.images, topics):
            try:
                images.append(conversions.image_msg_to_rgb(msg))
            except ValueError as exc:
                self.skip_input(topic, exc)
                return False
        left, right = images
        if left.shape != right.shape:
            self.skip_input(topics[1], f"right image: shape {right.shape} differs from the left image's {left.shape}")
            return False
        camera = self.camera_for(topics[2], frame.infos[0], left.shape[0], left.shape[1])
        if camera is None:
            return False
        info, K = camera
        right_info = frame.infos[1]
        try:
            baseline = conversions.stereo_baseline(right_info)
        except ValueError as exc:
            self.skip_input(topics[3], exc)
            return False
        # The metric scale is (f·B) / (f_train·B_train) when the model records its training baseline.
        prediction = self.predict_timed(lambda: self.predictor.predict_stereo(left, right, K=K, baseline=baseline))
        header = frame.images[0].header
        frame = self.publish_depth(header, info, prediction, left)
        if self.values["publish_disparity"]:
            self.pubs["disparity"].publish(disparity_message(frame, baseline, self.values["min_depth"],
                                                             self.values["max_depth"]))
        return True


def main(argv: list[str] | None = None) -> int:
    return run_node(StereoDepthNode, __doc__.split("\n\n")[0].replace("``", ""),
                    help_epilog(SUBSCRIBES, PUBLISHES, SPECS), argv)


if __name__ == "__main__":
    sys.exit(main())

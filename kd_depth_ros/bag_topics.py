"""The bag converter's errors and topic plan: which image / camera_info / lidar topics a bag conversion reads.

Errors name the bag, the topic or the flag, and list what the bag holds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_depth_ros.rectify import looks_rectified

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"
TF_TYPE = "tf2_msgs/msg/TFMessage"


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


def plan_topics(topics: dict, bag: Path, options) -> TopicPlan:
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

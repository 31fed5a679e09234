"""Helpers that WRITE real bags with rosbags' writers (an implementation of the format independent of ours).

Messages are built from rosbags' typestores: ROS 2 Jazzy for rosbag2 (sqlite3 / mcap) and ROS 1
Noetic for ``.bag`` files. Images are RGB uint8 arrays; stamps are integer nanoseconds.
Import from a test with ``sys.path.insert(0, str(Path(__file__).parent))``.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

TS2 = get_typestore(Stores.ROS2_JAZZY)
TS1 = get_typestore(Stores.ROS1_NOETIC)
if "tf2_msgs/msg/TFMessage" not in TS1.types:  # Noetic's store lacks tf2_msgs; its definition is one line
    TS1.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms", "tf2_msgs/msg/TFMessage"))
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
CLOUD = "sensor_msgs/msg/PointCloud2"
TF = "tf2_msgs/msg/TFMessage"


@dataclass
class Message:
    """One message to write: topic, type, header stamp (ns), log time (ns; defaults to the stamp) and fields."""

    topic: str
    msgtype: str
    stamp_ns: int
    fields: dict
    log_ns: int | None = None


def _header(ts, stamp_ns: int, frame_id: str):
    time = ts.types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    header_type = ts.types["std_msgs/msg/Header"]
    if ts is TS1:
        return header_type(seq=0, stamp=time, frame_id=frame_id)
    return header_type(stamp=time, frame_id=frame_id)


def image(topic: str, rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera_optical_frame",
          encoding: str = "rgb8", log_ns: int | None = None) -> Message:
    """sensor_msgs/Image from RGB uint8 (H,W,3); encoding rgb8, bgr8 or mono8 (converted here), or any
    other encoding with ``rgb`` already holding that encoding's bytes."""
    data = {"rgb8": rgb, "bgr8": rgb[..., ::-1] if rgb.ndim == 3 else rgb,
            "mono8": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb}.get(encoding, rgb)
    data = np.ascontiguousarray(data)
    step = data.shape[1] * (data.shape[2] if data.ndim == 3 else 1) * data.dtype.itemsize
    return Message(topic, IMAGE, stamp_ns, dict(height=data.shape[0], width=data.shape[1], encoding=encoding,
                                                 is_bigendian=0, step=step, data=data.reshape(-1).view(np.uint8),
                                                 frame_id=frame_id), log_ns)


def compressed(topic: str, rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera_optical_frame",
               fmt: str = "png", log_ns: int | None = None) -> Message:
    """sensor_msgs/CompressedImage (png is lossless, so decoded frames can be compared exactly)."""
    ok, encoded = cv2.imencode(".png" if fmt == "png" else ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return Message(topic, COMPRESSED, stamp_ns, dict(format=fmt, data=encoded.reshape(-1), frame_id=frame_id), log_ns)


def camera_info(topic: str, stamp_ns: int, width: int, height: int, K: np.ndarray,
                D=(), R: np.ndarray | None = None, P: np.ndarray | None = None, frame_id: str = "camera_optical_frame",
                model: str = "plumb_bob", log_ns: int | None = None) -> Message:
    """sensor_msgs/CameraInfo; P defaults to [K | 0], R to the identity."""
    K = np.asarray(K, dtype=np.float64)
    R = np.eye(3) if R is None else np.asarray(R, dtype=np.float64)
    P = np.hstack([K, np.zeros((3, 1))]) if P is None else np.asarray(P, dtype=np.float64)
    return Message(topic, CAMERA_INFO, stamp_ns, dict(
        height=height, width=width, distortion_model=model, d=np.asarray(D, dtype=np.float64),
        k=K.reshape(-1), r=R.reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0, frame_id=frame_id), log_ns)


def pointcloud(topic: str, points: np.ndarray, stamp_ns: int, frame_id: str = "lidar",
               log_ns: int | None = None) -> Message:
    """Unorganised PointCloud2 with fields x, y, z (float32), intensity (float32), ring (uint16) and 2 bytes of
    padding per point (point_step 20), like common lidar drivers."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    dtype = np.dtype({"names": ["x", "y", "z", "intensity", "ring"], "formats": ["<f4"] * 4 + ["<u2"],
                      "offsets": [0, 4, 8, 12, 16], "itemsize": 20})
    data = np.zeros(len(points), dtype=dtype)
    data["x"], data["y"], data["z"] = points.T
    data["intensity"] = np.arange(len(points))
    data["ring"] = 7
    return Message(topic, CLOUD, stamp_ns, dict(points=data, frame_id=frame_id), log_ns)


def tf_static(stamp_ns: int, transforms: list[tuple[str, str, tuple, tuple]], topic: str = "/tf_static") -> Message:
    """tf2_msgs/TFMessage of (parent, child, translation (x, y, z), quaternion (x, y, z, w)) entries."""
    return Message(topic, TF, stamp_ns, dict(transforms=transforms))


def _build(ts, msg: Message):
    T = ts.types
    f = dict(msg.fields)
    if msg.msgtype == IMAGE:
        return T[IMAGE](header=_header(ts, msg.stamp_ns, f.pop("frame_id", "camera_optical_frame")), **f)
    if msg.msgtype == COMPRESSED:
        return T[COMPRESSED](header=_header(ts, msg.stamp_ns, f.pop("frame_id")), **f)
    if msg.msgtype == CAMERA_INFO:
        frame_id = f.pop("frame_id")
        roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        if ts is TS1:
            f = {k.upper() if k in ("d", "k", "r", "p") else k: v for k, v in f.items()}
        return T[CAMERA_INFO](header=_header(ts, msg.stamp_ns, frame_id), roi=roi, **f)
    if msg.msgtype == CLOUD:
        data = f["points"]
        PF = T["sensor_msgs/msg/PointField"]
        fields = [PF(name=n, offset=o, datatype=d, count=1)
                  for n, o, d in (("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7), ("ring", 16, 4))]
        return T[CLOUD](header=_header(ts, msg.stamp_ns, f["frame_id"]), height=1,
                        width=len(data), fields=fields, is_bigendian=False, point_step=20, row_step=20 * len(data),
                        data=data.view(np.uint8).reshape(-1), is_dense=False)
    if msg.msgtype == TF:
        stamped = []
        for parent, child, t, q in f["transforms"]:
            transform = T["geometry_msgs/msg/Transform"](
                translation=T["geometry_msgs/msg/Vector3"](x=float(t[0]), y=float(t[1]), z=float(t[2])),
                rotation=T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))
            stamped.append(T["geometry_msgs/msg/TransformStamped"](
                header=_header(ts, msg.stamp_ns, parent), child_frame_id=child, transform=transform))
        return T[TF](transforms=stamped)
    raise ValueError(msg.msgtype)


def write_bag(path: str | Path, messages: list[Message], storage: str = "sqlite3") -> Path:
    """Write ``messages`` (sorted here by log time) to a rosbag2 folder (storage sqlite3 / mcap) or a ROS 1
    ``.bag`` file (storage ``ros1``). Returns the bag path."""
    path = Path(path)
    messages = sorted(messages, key=lambda m: m.stamp_ns if m.log_ns is None else m.log_ns)
    if storage == "ros1":
        with Writer1(path) as writer:
            conns = {}
            for m in messages:
                msgtype = m.msgtype
                if m.topic not in conns:
                    conns[m.topic] = writer.add_connection(m.topic, msgtype, typestore=TS1)
                writer.write(conns[m.topic], m.stamp_ns if m.log_ns is None else m.log_ns,
                             TS1.serialize_ros1(_build(TS1, m), msgtype))
        return path
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for m in messages:
            if m.topic not in conns:
                conns[m.topic] = writer.add_connection(m.topic, m.msgtype, typestore=TS2)
            writer.write(conns[m.topic], m.stamp_ns if m.log_ns is None else m.log_ns,
                         TS2.serialize_cdr(_build(TS2, m), m.msgtype))
    return path


def write_split_bag(path: str | Path, parts: list[list[Message]], storage: str = "sqlite3") -> Path:
    """A split rosbag2 recording (one folder, several storage files, as ``ros2 bag record --max-bag-size``
    makes): each part is written by rosbags' Writer, then the files are gathered under one metadata.yaml."""
    path = Path(path)
    path.mkdir()
    merged = None
    for index, messages in enumerate(parts):
        part = write_bag(path.parent / f".{path.name}_part{index}", messages, storage)
        info = yaml.safe_load((part / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        [source] = [p for p in part.iterdir() if p.name != "metadata.yaml"]
        name = f"{path.name}_{index}{source.suffix}"
        shutil.move(source, path / name)
        shutil.rmtree(part)
        info["files"][0]["path"] = name
        if merged is None:
            merged = dict(info, relative_file_paths=[name], files=info["files"])
            continue
        merged["relative_file_paths"].append(name)
        merged["files"] += info["files"]
        merged["message_count"] += info["message_count"]
        counts = {t["topic_metadata"]["name"]: t for t in merged["topics_with_message_count"]}
        for topic in info["topics_with_message_count"]:
            if topic["topic_metadata"]["name"] in counts:
                counts[topic["topic_metadata"]["name"]]["message_count"] += topic["message_count"]
            else:
                merged["topics_with_message_count"].append(topic)
        start = min(f["starting_time"]["nanoseconds_since_epoch"] for f in merged["files"])
        end = max(f["starting_time"]["nanoseconds_since_epoch"] + f["duration"]["nanoseconds"] for f in merged["files"])
        merged["starting_time"]["nanoseconds_since_epoch"] = start
        merged["duration"]["nanoseconds"] = end - start
    (path / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": merged}, sort_keys=False))
    return path


# --------------------------------------------------------------------------- content
def textured_frames(count: int, width: int = 64, height: int = 48, shift_px: int = 3, seed: int = 0,
                    static: set[int] | frozenset = frozenset()) -> list[np.ndarray]:
    """Frames of a smooth random RGB texture panning ``shift_px`` pixels per frame; frames whose index is in
    ``static`` repeat the previous frame exactly (a camera standing still)."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, size=(height // 4 + 2, (width + shift_px * count) // 4 + 2, 3)).astype(np.uint8)
    big = cv2.resize(big, (big.shape[1] * 4, big.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    frames, offset = [], 0
    for i in range(count):
        if i not in static:
            offset += shift_px
        frames.append(np.ascontiguousarray(big[:height, offset:offset + width]))
    return frames


def intrinsics(width: int = 64, height: int = 48, f: float = 50.0) -> np.ndarray:
    """K with focal ``f`` pixels and the principal point at (width/2, height/2)."""
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])

"""Header stamps as integer nanoseconds: the one conversion every reader, matcher and node uses.

Works on rclpy messages and on rosbags' deserialised ones alike (both have ``sec`` / ``nanosec``).
"""
from __future__ import annotations

NS_PER_S = 1_000_000_000


def stamp_ns(obj) -> int:
    """Integer nanoseconds of a message with a ``header``, a ``Header`` or a ``builtin_interfaces/Time``."""
    obj = getattr(obj, "header", obj)
    obj = getattr(obj, "stamp", obj)
    return int(obj.sec) * NS_PER_S + int(obj.nanosec)


def set_stamp(header, ns: int) -> None:
    """Write integer nanoseconds into ``header.stamp`` (sec, nanosec)."""
    header.stamp.sec, header.stamp.nanosec = divmod(int(ns), NS_PER_S)

"""`kd-depth convert-bag BAG... --out DIR`: rosbag2 / ROS 1 bags -> training sequences (see bag_converter)."""
from __future__ import annotations

import argparse

from kd_depth_ros import bag_converter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    bag_converter.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return bag_converter.run(args)

"""The transport floor for bench_ros_node.py: a do-nothing rclpy node that republishes each image as it came.

    python bench/ros_relay.py   (started by bench_ros_node.py --relay; topics /bench/image -> /bench/depth)

Same QoS as mono_depth_node (best-effort input, reliable output) and the same executor (rclpy.spin),
so its end-to-end latency is what rclpy + the DDS cost for one image in and one image out, with no
model and no processing at all.
"""
import rclpy
from rclpy.executors import ExternalShutdownException
from sensor_msgs.msg import Image

from kd_depth_ros.qos import make_qos


def main() -> None:
    rclpy.init()
    node = rclpy.create_node("relay", namespace="/bench")
    publisher = node.create_publisher(Image, "/bench/depth", make_qos("reliable", 5))
    node.create_subscription(Image, "/bench/image", publisher.publish, make_qos("best_effort", 5))
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()

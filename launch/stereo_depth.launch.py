"""Stereo depth: `ros2 launch kd_depth_ros stereo_depth.launch.py model_path:=/path/stereo.safetensors ...`.

Defaults live in config/stereo_depth.yaml; arguments override the four input topics, namespace,
model and parameter file. model_path is required and must be a stereo model (no stereo model is bundled:
train one with `kd-depth train` on a stereo dataset, README "Train on your own robot"). The arguments and
the node shared with the mono launch file are in kd_depth_ros/launch_common.py.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration

from kd_depth_ros import launch_common


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument("left_image", default_value="/stereo/left/image_rect", description="rectified left image"),
        DeclareLaunchArgument("right_image", default_value="/stereo/right/image_rect",
                              description="rectified right image"),
        DeclareLaunchArgument("left_camera_info", default_value="/stereo/left/camera_info",
                              description="left camera_info"),
        DeclareLaunchArgument("right_camera_info", default_value="/stereo/right/camera_info",
                              description="right camera_info (its P gives the baseline)"),
        DeclareLaunchArgument("model_path",
                              description="stereo released model (.safetensors) or export (.onnx / .torchscript); "
                                          "required: no stereo model is bundled"),
        *launch_common.depth_node_arguments("stereo_depth_node", "stereo_depth.yaml"),
    ]
    node = launch_common.depth_node("stereo_depth_node", remappings=[
        # with image_transport:=compressed the node subscribes <left_image>/compressed and <right_image>/compressed
        ("left/image_rect", LaunchConfiguration("left_image")),
        ("right/image_rect", LaunchConfiguration("right_image")),
        ("left/camera_info", LaunchConfiguration("left_camera_info")),
        ("right/camera_info", LaunchConfiguration("right_camera_info")),
    ])
    return LaunchDescription([*arguments, node, launch_common.rviz_node()])

"""Monocular depth: `ros2 launch kd_depth_ros mono_depth.launch.py image:=/cam/image_raw camera_info:=/cam/camera_info`.

Defaults live in config/mono_depth.yaml; arguments override the topics, namespace, model and
parameter file. model_path defaults to the bundled share/kd_depth_ros/models/default_student.safetensors.
The arguments and the node shared with the stereo launch file are in kd_depth_ros/launch_common.py
(namespace, params_file, use_sim_time, dds_profile, log_level, rviz).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution

from kd_depth_ros import launch_common


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="input image topic (its /compressed sibling with image_transport:=compressed)"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="input camera_info topic"),
        DeclareLaunchArgument("model_path", default_value=PathJoinSubstitution(
                                  [launch_common.share(), "models", "default_student.safetensors"]),
                              description="released model (.safetensors) or export (.onnx / .torchscript)"),
        *launch_common.depth_node_arguments("mono_depth_node", "mono_depth.yaml"),
    ]
    node = launch_common.depth_node("mono_depth_node", remappings=[
        ("image", LaunchConfiguration("image")),  # with image_transport:=compressed: <image>/compressed
        ("camera_info", LaunchConfiguration("camera_info")),
    ])
    return LaunchDescription([*arguments, node, launch_common.rviz_node()])

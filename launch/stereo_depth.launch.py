"""Stereo depth: `ros2 launch kd_depth_ros stereo_depth.launch.py left_image:=/stereo/left/image_rect ...`.

Defaults live in config/stereo_depth.yaml; arguments override the four input topics, namespace,
model and parameter file. model_path must be a stereo model (default
share/kd_depth_ros/models/default_stereo.safetensors).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("kd_depth_ros")
    left_image = LaunchConfiguration("left_image")
    right_image = LaunchConfiguration("right_image")
    arguments = [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its outputs"),
        DeclareLaunchArgument("left_image", default_value="/stereo/left/image_rect", description="rectified left image"),
        DeclareLaunchArgument("right_image", default_value="/stereo/right/image_rect",
                              description="rectified right image"),
        DeclareLaunchArgument("left_camera_info", default_value="/stereo/left/camera_info",
                              description="left camera_info"),
        DeclareLaunchArgument("right_camera_info", default_value="/stereo/right/camera_info",
                              description="right camera_info (its P gives the baseline)"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([share, "config", "stereo_depth.yaml"]),
                              description="parameter file (keys under /**/stereo_depth_node: ros__parameters:)"),
        DeclareLaunchArgument("model_path",
                              default_value=PathJoinSubstitution([share, "models", "default_stereo.safetensors"]),
                              description="stereo released model (.safetensors) or export"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag playback)"),
        DeclareLaunchArgument(
            "dds_profile",
            default_value=EnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", default_value=PathJoinSubstitution(
                [share, "config", "fastdds_large_data.xml"])),
            description="Fast DDS profile of the node (FASTRTPS_DEFAULT_PROFILES_FILE); the default's large "
                        "shared-memory segment carries whole images (see the file)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
        DeclareLaunchArgument("rviz", default_value="false", description="also start RViz with config/kd_depth.rviz"),
    ]
    node = Node(
        package="kd_depth_ros",
        executable="stereo_depth_node",
        name="stereo_depth_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model_path": ParameterValue(LaunchConfiguration("model_path"), value_type=str),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        remappings=[
            ("left/image_rect", left_image),
            ("left/image_rect/compressed", [left_image, "/compressed"]),
            ("right/image_rect", right_image),
            ("right/image_rect/compressed", [right_image, "/compressed"]),
            ("left/camera_info", LaunchConfiguration("left_camera_info")),
            ("right/camera_info", LaunchConfiguration("right_camera_info")),
        ],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        additional_env={"FASTRTPS_DEFAULT_PROFILES_FILE": LaunchConfiguration("dds_profile")},
        output="screen",
        emulate_tty=True,
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", PathJoinSubstitution([share, "config", "kd_depth.rviz"])],
        parameters=[{"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([*arguments, node, rviz])

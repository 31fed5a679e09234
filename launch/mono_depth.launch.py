"""Monocular depth: `ros2 launch kd_depth_ros mono_depth.launch.py image:=/cam/image_raw camera_info:=/cam/camera_info`.

Defaults live in config/mono_depth.yaml; arguments override the topics, namespace, model and
parameter file. model_path defaults to the bundled share/kd_depth_ros/models/default_student.safetensors.
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
    image = LaunchConfiguration("image")
    arguments = [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its outputs"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="input image topic (its /compressed sibling with image_transport:=compressed)"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="input camera_info topic"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "mono_depth.yaml"]),
                              description="parameter file (keys under /**/mono_depth_node: ros__parameters:)"),
        DeclareLaunchArgument("model_path",
                              default_value=PathJoinSubstitution([share, "models", "default_student.safetensors"]),
                              description="released model (.safetensors) or export (.onnx / .torchscript)"),
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
        executable="mono_depth_node",
        name="mono_depth_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model_path": ParameterValue(LaunchConfiguration("model_path"), value_type=str),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        remappings=[
            ("image", image),
            ("image/compressed", [image, "/compressed"]),
            ("camera_info", LaunchConfiguration("camera_info")),
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

"""Record live camera topics into training sequences: `ros2 launch kd_depth_ros recorder.launch.py output_dir:=DIR`.

Defaults live in config/recorder.yaml; launch arguments set the output folder, the topics (remapped
onto the node's relative names), stereo mode and sim time. Start/stop with the node's ~/start and
~/stop services (std_srvs/Trigger) when autostart is false. Like the depth nodes' launch files it gives
the recorder the large-data Fast DDS profile (argument dds_profile): the recorder needs every frame.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from kd_depth_ros import launch_common


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([launch_common.share(), "config", "recorder.yaml"]),
                              description="recorder parameters (YAML)"),
        DeclareLaunchArgument("output_dir", description="dataset root the sequences are written into"),
        DeclareLaunchArgument("stereo", default_value="false", description="record a stereo pair"),
        DeclareLaunchArgument("autostart", default_value="true", description="record from launch"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="mono image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="mono camera_info"),
        DeclareLaunchArgument("left_image", default_value="/stereo/left/image_raw", description="stereo left image"),
        DeclareLaunchArgument("left_camera_info", default_value="/stereo/left/camera_info"),
        DeclareLaunchArgument("right_image", default_value="/stereo/right/image_raw", description="stereo right image"),
        DeclareLaunchArgument("right_camera_info", default_value="/stereo/right/camera_info"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag playback)"),
        launch_common.dds_profile_argument("recorder"),  # as the depth nodes' launch files: every frame counts
    ]
    env = launch_common.dds_env()
    overrides = {
        "output_dir": LaunchConfiguration("output_dir"),
        "stereo": ParameterValue(LaunchConfiguration("stereo"), value_type=bool),
        "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
        "use_sim_time": launch_common.sim_time(),
    }
    params = [LaunchConfiguration("params_file"), overrides]
    mono = Node(
        package="kd_depth_ros", executable="recorder_node", name="recorder_node", output="screen",
        parameters=params, condition=UnlessCondition(LaunchConfiguration("stereo")), additional_env=env,
        remappings=[("image", LaunchConfiguration("image")), ("camera_info", LaunchConfiguration("camera_info"))],
    )
    stereo = Node(
        package="kd_depth_ros", executable="recorder_node", name="recorder_node", output="screen",
        parameters=params, condition=IfCondition(LaunchConfiguration("stereo")), additional_env=env,
        remappings=[("left/image", LaunchConfiguration("left_image")),
                    ("left/camera_info", LaunchConfiguration("left_camera_info")),
                    ("right/image", LaunchConfiguration("right_image")),
                    ("right/camera_info", LaunchConfiguration("right_camera_info"))],
    )
    return LaunchDescription([*args, mono, stereo])

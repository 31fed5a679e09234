"""What the package's launch files share, written once: the common launch arguments, the Fast DDS profile given
to every node that carries images, sim time, the optional RViz.

Imported by ``launch/*.launch.py`` when ``ros2 launch`` runs them (``launch`` / ``launch_ros`` are imported here
lazily, so importing :mod:`kd_depth_ros` never needs them). Each function returns launch actions or
substitutions; the launch files keep their own topics and nodes.
"""
from __future__ import annotations

PACKAGE = "kd_depth_ros"
DDS_PROFILE_FILE = "fastdds_large_data.xml"


def share():
    """``FindPackageShare('kd_depth_ros')``: the installed ``share/kd_depth_ros``."""
    from launch_ros.substitutions import FindPackageShare

    return FindPackageShare(PACKAGE)


def dds_profile_argument(process: str = "node"):
    """Argument ``dds_profile``: the user's ``FASTRTPS_DEFAULT_PROFILES_FILE`` if set, else the package's large-data
    profile (Fast DDS's default 512 KB shared-memory segment is smaller than one 640x480 image)."""
    from launch.actions import DeclareLaunchArgument
    from launch.substitutions import EnvironmentVariable, PathJoinSubstitution

    return DeclareLaunchArgument(
        "dds_profile",
        default_value=EnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", default_value=PathJoinSubstitution(
            [share(), "config", DDS_PROFILE_FILE])),
        description=f"Fast DDS profile of the {process} (FASTRTPS_DEFAULT_PROFILES_FILE); the default's large "
                    "shared-memory segment carries whole images (see the file)")


def dds_env() -> dict:
    """``additional_env`` of a node: the profile chosen by ``dds_profile``."""
    from launch.substitutions import LaunchConfiguration

    return {"FASTRTPS_DEFAULT_PROFILES_FILE": LaunchConfiguration("dds_profile")}


def sim_time():
    """The ``use_sim_time`` parameter value from the launch argument of the same name (a bool)."""
    from launch.substitutions import LaunchConfiguration
    from launch_ros.parameter_descriptions import ParameterValue

    return ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)


def depth_node_arguments(node_name: str, config_file: str) -> list:
    """The arguments both depth nodes' launch files declare besides their topics and model_path: namespace,
    params_file (``config/<config_file>``), use_sim_time, dds_profile, log_level, rviz."""
    from launch.actions import DeclareLaunchArgument
    from launch.substitutions import PathJoinSubstitution

    return [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its outputs"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share(), "config", config_file]),
                              description=f"parameter file (keys under /**/{node_name}: ros__parameters:)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag playback)"),
        dds_profile_argument("node"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
        DeclareLaunchArgument("rviz", default_value="false", description="also start RViz with config/kd_depth.rviz"),
    ]


def depth_node(executable: str, remappings: list) -> object:
    """A depth node as both launch files start it: the parameter file, then model_path and use_sim_time from
    the launch arguments; the namespace, log level and DDS profile of the arguments; output on the screen."""
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue

    return Node(
        package=PACKAGE,
        executable=executable,
        name=executable,
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {"model_path": ParameterValue(LaunchConfiguration("model_path"), value_type=str),
             "use_sim_time": sim_time()},
        ],
        remappings=remappings,
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        additional_env=dds_env(),
        output="screen",
        emulate_tty=True,
    )


def rviz_node():
    """RViz with ``config/kd_depth.rviz`` when the ``rviz`` argument is true."""
    from launch.conditions import IfCondition
    from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
    from launch_ros.actions import Node

    return Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", PathJoinSubstitution([share(), "config", "kd_depth.rviz"])],
        parameters=[{"use_sim_time": sim_time()}],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )

"""The ROS package's `kd-depth` commands, registered through the `kd_depth.commands` entry point group.

`kd_depth_core.cli` reads this table (setup.py: ``ros = kd_depth_ros.cli_plugin:COMMANDS``) and
imports the module only when its command runs; the core never names the ROS package itself.
"""

# command -> (module with add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert-bag": ("kd_depth_ros.bag_cli", "convert rosbag2 / ROS 1 bags into training sequences"),
}

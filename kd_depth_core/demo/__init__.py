"""The main job's core stages (synth, train, distil, evaluate, export, report); `kd_depth_ros.demo` composes them
with the ROS 2 node replay into `kd-depth demo` / `make demo`."""

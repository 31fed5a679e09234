"""The main job, `kd-depth demo` / `make demo`: the whole pipeline on the built-in synthetic world.

It spans both packages: the core stages (`kd_depth_core.demo.pipeline`: synth, train, distil,
evaluate, export, report) and the ROS 2 node replay (`kd_depth_ros.demo_replay`, in a child
process), so it lives here, where it may depend on both. The command reaches `kd-depth` through
the `kd_depth.commands` entry point group (setup.py), like the ROS package's `convert-bag`.
"""

# command -> (module with add_arguments/run, one-line help): read by kd_depth_core.cli through the entry point.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("kd_depth_ros.demo.demo_cli", "the whole pipeline on the built-in synthetic world (make demo)"),
}

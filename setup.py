"""One ament_python package, `kd_depth_ros`, installing both Python packages.

`kd_depth_core` (pure PyTorch) and `kd_depth_ros` (ROS glue, and `kd_depth_ros.demo`: the main job, which
uses both; `kd-depth demo`). Console scripts land in
`lib/kd_depth_ros/` through setup.cfg, which is where `ros2 run` and `ros2 launch` look.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "kd_depth_ros"

# ROS executables: (script name, module). Each module has a `main()` that answers `--help`.
NODES = [
    ("mono_depth_node", "kd_depth_ros.mono_depth_node"),
    ("stereo_depth_node", "kd_depth_ros.stereo_depth_node"),
    ("recorder_node", "kd_depth_ros.recorder_node"),
    ("convert_bag", "kd_depth_ros.bag_converter"),
]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["kd_depth_core", "kd_depth_core.*", "kd_depth_ros", "kd_depth_ros.*"]),
    package_data={"kd_depth_core": ["resources/*", "resources/**/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/train", glob("config/train/*.yaml")),
        (f"share/{PACKAGE}/models", glob("models/*.safetensors")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="kd-depth maintainers",
    maintainer_email="maintainers@kd-depth.dev",
    description="Self-supervised, distilled depth estimation for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": ["kd-depth = kd_depth_core.cli:main"]
        + [f"{name} = {module}:main" for name, module in NODES],
        # `kd-depth` commands of the packages that depend on kd_depth_core (kd_depth_core.cli.PLUGIN_GROUP):
        # each names a {command: (module, help)} table, so the core never imports ROS to dispatch.
        "kd_depth.commands": ["ros = kd_depth_ros.cli_plugin:COMMANDS", "demo = kd_depth_ros.demo:COMMANDS"],
    },
)

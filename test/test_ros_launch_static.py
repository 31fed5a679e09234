"""Static checks of the depth nodes' launch files: what they name exists and is declared (launch/launch_ros are not
installable here, so the files are read with ast; the executables themselves are started by the node tests
with the same parameter files). Where launch_pytest is importable, the mono launch file is also run.
"""
from __future__ import annotations

import ast
import fnmatch
import importlib
import importlib.util
from pathlib import Path

import pytest
import yaml

from kd_depth_ros.depth_worker import DEFAULT_MODEL_FILE, DEFAULT_STEREO_MODEL_FILE, DepthNodeBase
from kd_depth_ros.params import coerce

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = [REPO / "launch" / "mono_depth.launch.py", REPO / "launch" / "stereo_depth.launch.py"]
BUILTIN_PARAMETERS = {"use_sim_time"}
# names that exist in Jazzy's launch / launch_ros (a wrong import only fails on a real ROS install)
KNOWN_IMPORTS = {
    "launch": {"LaunchDescription"},
    "launch.actions": {"DeclareLaunchArgument", "GroupAction", "IncludeLaunchDescription", "LogInfo"},
    "launch.conditions": {"IfCondition", "UnlessCondition"},
    "launch.substitutions": {"EnvironmentVariable", "LaunchConfiguration", "PathJoinSubstitution", "TextSubstitution"},
    "launch_ros.actions": {"Node", "LifecycleNode", "PushRosNamespace"},
    "launch_ros.parameter_descriptions": {"ParameterValue", "ParameterFile"},
    "launch_ros.substitutions": {"FindPackageShare"},
}


def console_scripts() -> dict[str, str]:
    """executable -> module, from setup.py's NODES table (read with ast, setup.py is not run)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "NODES" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no NODES table")


def call_name(call: ast.Call) -> str:
    return call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")


def keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def strings_in(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def launch_configurations(tree: ast.AST) -> set[str]:
    return {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call) and call_name(n) == "LaunchConfiguration"}


def declared_arguments(tree: ast.AST) -> dict[str, ast.Call]:
    return {n.args[0].value: n for n in ast.walk(tree)
            if isinstance(n, ast.Call) and call_name(n) == "DeclareLaunchArgument"}


def share_path(node: ast.AST) -> str | None:
    """The path of a PathJoinSubstitution([share, 'config', 'x.yaml']) as 'config/x.yaml'."""
    if isinstance(node, ast.Call) and call_name(node) == "PathJoinSubstitution":
        parts = [p.value for p in node.args[0].elts if isinstance(p, ast.Constant)]
        return "/".join(parts)
    return None


def data_file_patterns() -> list[str]:
    return [s for s in strings_in(ast.parse((REPO / "setup.py").read_text())) if "*" in s]


def test_the_depth_launch_files_exist():
    assert all(path.is_file() for path in LAUNCH_FILES)


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_only_what_exists(launch_file):
    tree = ast.parse(launch_file.read_text(), str(launch_file))
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            names = {alias.name for alias in node.names}
            assert names <= KNOWN_IMPORTS.get(node.module, set()), f"from {node.module} import {names}"
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert "generate_launch_description" in functions
    for node in ast.walk(tree):  # no eval of arguments
        assert not (isinstance(node, ast.Call) and call_name(node) in ("eval", "exec")), launch_file
    declared = declared_arguments(tree)
    used = launch_configurations(tree)
    assert used <= set(declared), f"undeclared launch arguments: {used - set(declared)}"
    assert {"namespace", "params_file", "model_path", "use_sim_time"} <= set(declared)

    scripts = console_scripts()
    ours = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and call_name(n) == "Node"
            and isinstance(keyword(n, "package"), ast.Constant) and keyword(n, "package").value == "kd_depth_ros"]
    assert ours, "no kd_depth_ros Node in the launch file"
    patterns = data_file_patterns()
    for node_call in ours:
        executable = keyword(node_call, "executable").value
        assert executable in scripts, f"{executable} is not a console script in setup.py"
        module = importlib.import_module(scripts[executable])
        assert callable(module.main)
        specs = {spec.name: spec for spec in module.SPECS}
        name = keyword(node_call, "name").value
        assert name == module.NODE_NAME

        # parameter file named by the params_file default: exists, installed, every key declared and valid
        params_default = share_path(keyword(declared["params_file"], "default_value"))
        params_file = REPO / params_default
        assert params_file.is_file(), params_default
        assert "config/*.yaml" in patterns  # installed to share/kd_depth_ros/config
        content = yaml.safe_load(params_file.read_text())
        assert set(content) == {f"/**/{name}"}, "the key must match the node in any namespace"
        values = content[f"/**/{name}"]["ros__parameters"]
        assert set(values) <= set(specs) | BUILTIN_PARAMETERS, f"undeclared: {set(values) - set(specs)}"
        assert set(specs) <= set(values), f"defaults missing from {params_default}: {set(specs) - set(values)}"
        node_class = next(v for v in vars(module).values()
                          if isinstance(v, type) and issubclass(v, DepthNodeBase) and v is not DepthNodeBase)
        node_class.check_params(None, {key: coerce(specs[key], value) for key, value in values.items()
                                       if key in specs})

        # inline parameters: declared by the node
        parameter_dicts = [d for d in ast.walk(keyword(node_call, "parameters")) if isinstance(d, ast.Dict)]
        inline = {k.value for d in parameter_dicts for k in d.keys}
        assert inline <= set(specs) | BUILTIN_PARAMETERS, inline

        # remapped names are the node's own relative topics
        topics = {t.name for t in module.SUBSCRIBES}
        sources = {el.elts[0].value for el in keyword(node_call, "remappings").elts}
        assert sources <= topics | {t + "/compressed" for t in topics}, sources - topics
        assert {t for t in topics if not t.endswith("/compressed")} <= sources, "an input topic cannot be remapped"

        # the default model is the bundled file the node itself falls back to
        model_default = share_path(keyword(declared["model_path"], "default_value"))
        assert model_default == f"models/{node_class.DEFAULT_MODEL}"
        assert node_class.DEFAULT_MODEL in (DEFAULT_MODEL_FILE, DEFAULT_STEREO_MODEL_FILE)
        assert "models/*.safetensors" in patterns

    # every other file it points into the share directory exists (e.g. the RViz config)
    for node in ast.walk(tree):
        path = share_path(node)
        if path and path.startswith("config/"):
            assert (REPO / path).is_file(), path
            assert any(fnmatch.fnmatch(path, pattern) for pattern in patterns), f"{path} is not installed by setup.py"


def test_rviz_config_shows_the_node_outputs():
    config = yaml.safe_load((REPO / "config" / "kd_depth.rviz").read_text())
    displays = {d["Name"]: d for d in config["Visualization Manager"]["Displays"]}
    topics = {d["Topic"]["Value"] for d in displays.values() if "Topic" in d}
    assert {"/depth", "/uncertainty", "/points"} <= topics
    classes = {d["Class"] for d in displays.values()}
    assert {"rviz_default_plugins/Image", "rviz_default_plugins/PointCloud2"} <= classes
    # RViz must hear a best-effort camera and the reliable node outputs: best effort everywhere
    assert all(d["Topic"]["Reliability Policy"] == "Best Effort" for d in displays.values() if "Topic" in d)


@pytest.mark.skipif(importlib.util.find_spec("launch_pytest") is None,
                    reason="launch_pytest (and launch/launch_ros) are not installable here (no wheel); the node "
                           "tests start the same executables with the same parameter files instead")
@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_loads_with_the_launch_library(launch_file):  # pragma: no cover - real ROS installs only
    from launch.actions import DeclareLaunchArgument
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    from launch_ros.actions import Node

    description = get_launch_description_from_python_launch_file(str(launch_file))
    arguments = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert {"namespace", "params_file", "model_path", "use_sim_time"} <= arguments
    assert any(isinstance(e, Node) for e in description.entities)

"""Every launch file, generated: run ``generate_launch_description()``, expand each node action into the process
launch would start (executable, ``--ros-args``, parameter files, remappings, environment) and check what it names.

launch / launch_ros have no wheel here (test_launch_file_loads_with_the_launch_library runs them where they are
installed). Here the launch files run against :class:`JazzyLaunch`, a stand-in of the parts of Jazzy's API they
use: the same constructors with Jazzy's keyword names (an unknown keyword or name fails as it would there),
substitutions performed as launch performs them (LaunchConfiguration, PathJoinSubstitution, EnvironmentVariable,
FindPackageShare through the real ament index, ParameterValue, If/UnlessCondition), and a required argument
without a value refused. The package share is the layout setup.py's data_files install (a temporary ament prefix,
as colcon would make it), so a default that names a file which does not ship fails. Finally the mono launch
file's process, with its defaults (bundled model, parameter file, DDS profile), is started and must activate.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from kd_depth_ros.node_base import DepthNodeBase
from kd_depth_ros.params import coerce

sys.path.insert(0, str(Path(__file__).parent))
from ros_helpers import NodeProcess, write_pixel_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "kd_depth_ros"
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
BUILTIN_PARAMETERS = {"use_sim_time"}
FILE_SUFFIXES = {".yaml", ".xml", ".rviz", ".safetensors", ".onnx", ".torchscript", ".py"}
REQUIRED = {"stereo_depth.launch.py": {"model_path"}, "recorder.launch.py": {"output_dir"}}
"""Arguments a launch file declares without a default (the user must give them)."""


# --------------------------------------------------------------------------- the installed share, from setup.py
def console_scripts() -> dict[str, str]:
    """executable -> module, from setup.py's NODES table (read with ast, setup.py is not run)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "NODES" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no NODES table")


def data_files() -> list[tuple[str, list[str]]]:
    """setup.py's ``data_files`` (paths relative to the repository), captured by running our own setup.py
    with ``setuptools.setup`` replaced by a recorder: nothing is installed and nothing is evaluated."""
    import runpy

    import setuptools

    captured: dict[str, Any] = {}
    original, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        os.chdir(REPO)
        runpy.run_path(str(REPO / "setup.py"), run_name="kd_depth_setup")
    finally:
        setuptools.setup = original
        os.chdir(cwd)
    return [(folder, sorted(files)) for folder, files in captured["data_files"]]


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> Path:
    """An install prefix laid out as setup.py installs the package (files linked to the repository's)."""
    root = tmp_path_factory.mktemp("install")
    for folder, files in data_files():
        for name in files:
            target = root / folder / Path(name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(REPO / name)
    return root


# --------------------------------------------------------------------------- the launch API stand-in
class LaunchError(Exception):
    """What launch raises for a bad description (missing argument, bad condition value)."""


class Context:
    """Launch arguments (declared defaults, then the given ones) and the performing of substitutions."""

    def __init__(self, given: dict[str, str]):
        self.arguments = dict(given)

    def perform(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list | tuple):
            return "".join(self.perform(v) for v in value)
        if isinstance(value, Substitution):
            return value.perform(self)
        raise LaunchError(f"not a substitution: {value!r}")


class Substitution:
    def perform(self, context: Context) -> str:
        raise NotImplementedError


class JazzyLaunch:
    """The launch / launch_ros names the launch files import, with Jazzy's constructor keywords."""

    EXECUTE_PROCESS_KEYWORDS = {"prefix", "cwd", "env", "additional_env", "shell", "sigterm_timeout",
                                "sigkill_timeout", "emulate_tty", "output", "output_format", "cached_output",
                                "log_cmd", "on_exit", "respawn", "respawn_delay", "respawn_max_retries", "condition"}

    class LaunchDescription:
        def __init__(self, initial_entities=None, *, deprecated_reason=None):
            self.entities = list(initial_entities or [])

    class DeclareLaunchArgument:
        def __init__(self, name, *, default_value=None, description=None, choices=None, condition=None):
            self.name, self.default_value, self.description, self.choices = name, default_value, description, choices

    class LaunchConfiguration(Substitution):
        def __init__(self, variable_name, *, default=None):
            self.variable_name, self.default = variable_name, default

        def perform(self, context: Context) -> str:
            if self.variable_name in context.arguments:
                return context.arguments[self.variable_name]
            if self.default is not None:
                return context.perform(self.default)
            raise LaunchError(f"launch configuration '{self.variable_name}' does not exist")

    class PathJoinSubstitution(Substitution):
        created: list = []

        def __init__(self, substitutions):
            self.substitutions = list(substitutions)
            JazzyLaunch.PathJoinSubstitution.created.append(self)

        def perform(self, context: Context) -> str:
            return os.path.join(*[context.perform(s) for s in self.substitutions])

    class EnvironmentVariable(Substitution):
        def __init__(self, name, *, default_value=""):
            self.name, self.default_value = name, default_value

        def perform(self, context: Context) -> str:
            name = context.perform(self.name)
            return os.environ[name] if name in os.environ else context.perform(self.default_value)

    class TextSubstitution(Substitution):
        def __init__(self, *, text):
            self.text = text

        def perform(self, context: Context) -> str:
            return self.text

    class FindPackageShare(Substitution):
        def __init__(self, package):
            self.package = package

        def perform(self, context: Context) -> str:
            from ament_index_python.packages import get_package_share_directory

            return get_package_share_directory(context.perform(self.package))

    class ParameterValue:
        def __init__(self, value, *, value_type=None):
            self.value, self.value_type = value, value_type

        def perform(self, context: Context) -> Any:
            text = context.perform(self.value)
            if self.value_type is str:
                return text
            value = yaml.safe_load(text) if text else ""
            if self.value_type is not None and not isinstance(value, self.value_type):
                raise LaunchError(f"parameter value {text!r} is not a {self.value_type.__name__}")
            return value

    class IfCondition:
        def __init__(self, predicate_expression):
            self.predicate_expression = predicate_expression

        def evaluate(self, context: Context) -> bool:
            text = context.perform(self.predicate_expression).strip().lower()
            if text not in ("true", "1", "false", "0"):
                raise LaunchError(f"IfCondition: expected 'true'/'1'/'false'/'0', got {text!r}")
            return text in ("true", "1")

    class UnlessCondition(IfCondition):
        def evaluate(self, context: Context) -> bool:
            return not super().evaluate(context)

    class Node:
        def __init__(self, *, executable, package=None, name=None, namespace=None, exec_name=None, parameters=None,
                     remappings=None, ros_arguments=None, arguments=None, **kwargs):
            unknown = set(kwargs) - JazzyLaunch.EXECUTE_PROCESS_KEYWORDS
            if unknown:
                raise TypeError(f"Node() got unexpected keyword argument(s) {sorted(unknown)}")
            self.executable, self.package, self.name, self.namespace = executable, package, name, namespace
            self.parameters, self.remappings = list(parameters or []), list(remappings or [])
            self.ros_arguments, self.arguments, self.kwargs = list(ros_arguments or []), list(arguments or []), kwargs

    MODULES = {
        "launch": ["LaunchDescription"],
        "launch.actions": ["DeclareLaunchArgument"],
        "launch.conditions": ["IfCondition", "UnlessCondition"],
        "launch.substitutions": ["EnvironmentVariable", "LaunchConfiguration", "PathJoinSubstitution",
                                 "TextSubstitution"],
        "launch_ros.actions": ["Node"],
        "launch_ros.parameter_descriptions": ["ParameterValue"],
        "launch_ros.substitutions": ["FindPackageShare"],
    }

    @classmethod
    def install(cls, monkeypatch) -> None:
        for module_name, names in cls.MODULES.items():
            module = types.ModuleType(module_name)
            module.__path__ = []  # a package, so 'launch.actions' imports
            for name in names:
                setattr(module, name, getattr(cls, name))
            monkeypatch.setitem(sys.modules, module_name, module)


class Process:
    """A node action expanded: what launch would run and with which environment."""

    def __init__(self, action: JazzyLaunch.Node, context: Context, params_dir: Path):
        self.action = action
        self.executable = context.perform(action.executable)
        self.name = context.perform(action.name) if action.name is not None else None
        self.namespace = None
        if action.namespace is not None:  # launch_ros makes it absolute: '' -> '/', 'front' -> '/front'
            namespace = context.perform(action.namespace)
            self.namespace = namespace if namespace.startswith("/") else "/" + namespace
        self.param_files: list[Path] = []
        self.inline: dict[str, Any] = {}
        for index, entry in enumerate(action.parameters):
            if isinstance(entry, dict):  # launch writes dicts to a temporary YAML under '/**'
                values = {context.perform(k): v.perform(context) if isinstance(v, JazzyLaunch.ParameterValue)
                          else context.perform(v) for k, v in entry.items()}
                self.inline.update(values)
                path = params_dir / f"launch_params_{index}.yaml"
                path.write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}))
            else:
                path = Path(context.perform(entry))
            self.param_files.append(path)
        self.remaps = [(context.perform(a), context.perform(b)) for a, b in action.remappings]
        self.env = {context.perform(k): context.perform(v) for k, v in action.kwargs.get("additional_env", {}).items()}
        self.ros_args = [context.perform(a) for a in action.ros_arguments]
        for key, value in (("__node", self.name), ("__ns", self.namespace)):
            if value:
                self.ros_args += ["-r", f"{key}:={value}"]
        for path in self.param_files:
            self.ros_args += ["--params-file", str(path)]
        for source, target in self.remaps:
            self.ros_args += ["-r", f"{source}:={target}"]


def generate(launch_file: Path, given: dict[str, str], monkeypatch, params_dir: Path):
    """(declared arguments, performed defaults, processes of the enabled nodes, PathJoinSubstitutions made)."""
    JazzyLaunch.install(monkeypatch)
    JazzyLaunch.PathJoinSubstitution.created = []
    spec = importlib.util.spec_from_file_location(f"launch_file_{launch_file.stem.replace('.', '_')}", launch_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, JazzyLaunch.LaunchDescription)
    context = Context(given)
    declared = {e.name: e for e in description.entities if isinstance(e, JazzyLaunch.DeclareLaunchArgument)}
    defaults = {}
    for name, argument in declared.items():  # in order, as launch does: a default may use earlier arguments
        if name not in given:
            if argument.default_value is None:
                raise LaunchError(f"Included launch description missing required argument '{name}' "
                                  f"(description: '{argument.description}')")
            context.arguments[name] = defaults[name] = context.perform(argument.default_value)
    processes = [Process(e, context, params_dir) for e in description.entities
                 if isinstance(e, JazzyLaunch.Node)
                 and (e.kwargs.get("condition") is None or e.kwargs["condition"].evaluate(context))]
    return declared, defaults, processes, list(JazzyLaunch.PathJoinSubstitution.created), context


def default_arguments(launch_file: Path, tmp_path: Path) -> dict[str, str]:
    """Values for the arguments the user must give (everything else stays at its default)."""
    given = {}
    if "model_path" in REQUIRED.get(launch_file.name, ()):
        given["model_path"] = str(write_pixel_model(tmp_path / "stereo.onnx", stereo=True))
    if "output_dir" in REQUIRED.get(launch_file.name, ()):
        given["output_dir"] = str(tmp_path / "recordings")
    return given


@pytest.fixture
def installed(prefix, monkeypatch) -> Path:
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    monkeypatch.delenv("FASTRTPS_DEFAULT_PROFILES_FILE", raising=False)
    return prefix / "share" / PACKAGE


# --------------------------------------------------------------------------- tests
def test_every_launch_file_is_tested_and_installed():
    assert {p.name for p in LAUNCH_FILES} == {"mono_depth.launch.py", "stereo_depth.launch.py", "recorder.launch.py"}
    installed = {Path(name).name for folder, files in data_files() if folder == f"share/{PACKAGE}/launch"
                 for name in files}
    assert installed == {p.name for p in LAUNCH_FILES}


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_generates_processes_that_name_only_what_ships(launch_file, installed, monkeypatch, tmp_path):
    tree = ast.parse(launch_file.read_text(), str(launch_file))
    for node in ast.walk(tree):  # no eval of arguments
        assert not (isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("eval", "exec")), launch_file
    given = default_arguments(launch_file, tmp_path)
    declared, defaults, processes, joins, context = generate(launch_file, given, monkeypatch, tmp_path)
    assert {name for name, a in declared.items() if a.default_value is None} == REQUIRED.get(launch_file.name, set())
    assert {"params_file", "use_sim_time", "dds_profile"} <= set(declared)

    # every default that names a file, and every path the file joins (e.g. the RViz config), exists installed
    named = [value for value in defaults.values() if Path(value).suffix in FILE_SUFFIXES]
    named += [join.perform(context) for join in joins]
    assert named, "no file named: nothing checked"
    for value in named:
        assert Path(value).is_file(), f"{launch_file.name}: {value} does not ship (not installed by setup.py)"
        assert Path(value).resolve().is_relative_to(REPO), value

    scripts = console_scripts()
    assert processes, "no node starts with the default arguments"
    for process in processes:
        assert process.action.package == PACKAGE and process.executable in scripts, process.executable
        module = importlib.import_module(scripts[process.executable])
        assert process.name == module.NODE_NAME
        specs = {spec.name: spec for spec in module.SPECS}

        # the parameter file: installed, keyed for any namespace, every key declared, valid, complete
        params_file = process.param_files[0]
        assert params_file.is_file() and params_file.resolve().parent == REPO / "config", params_file
        content = yaml.safe_load(params_file.read_text())
        assert set(content) == {f"/**/{process.name}"}, "the key must match the node in any namespace"
        values = content[f"/**/{process.name}"]["ros__parameters"]
        assert set(values) <= set(specs) | BUILTIN_PARAMETERS, f"undeclared: {set(values) - set(specs)}"
        assert set(specs) <= set(values), f"defaults missing from {params_file.name}: {set(specs) - set(values)}"
        merged = {key: coerce(specs[key], value) for key, value in {**values, **process.inline}.items()
                  if key in specs}
        assert set(process.inline) <= set(specs) | BUILTIN_PARAMETERS, process.inline
        node_class = next((v for v in vars(module).values() if isinstance(v, type) and issubclass(v, DepthNodeBase)
                           and v is not DepthNodeBase), None)
        if node_class is not None:
            node_class.check_params(None, merged)
            if merged["model_path"]:
                assert Path(merged["model_path"]).is_file(), merged["model_path"]

        # remapped names are the node's own relative inputs, and every input can be remapped
        topics = {t.name for t in getattr(module, "SUBSCRIBES", ())} or {"image", "camera_info", "left/image",
                                                                          "left/camera_info", "right/image",
                                                                          "right/camera_info"}
        sources = {source for source, _ in process.remaps}
        assert sources <= topics, sources - topics
        assert {t for t in topics if not t.endswith("/compressed")} <= sources or node_class is None

        # the large-data Fast DDS profile, as for every node that carries images
        profile = Path(process.env["FASTRTPS_DEFAULT_PROFILES_FILE"])
        assert profile.is_file() and profile.resolve() == REPO / "config" / "fastdds_large_data.xml"


def test_stereo_launch_needs_a_model_path_and_recorder_an_output_dir(installed, monkeypatch, tmp_path):
    with pytest.raises(LaunchError, match="missing required argument 'model_path'.*no stereo model is bundled"):
        generate(REPO / "launch" / "stereo_depth.launch.py", {}, monkeypatch, tmp_path)
    with pytest.raises(LaunchError, match="missing required argument 'output_dir'"):
        generate(REPO / "launch" / "recorder.launch.py", {}, monkeypatch, tmp_path)
    _, _, processes, _, _ = generate(REPO / "launch" / "recorder.launch.py",
                                     {"output_dir": str(tmp_path), "stereo": "true"}, monkeypatch, tmp_path)
    assert [sorted(s for s, _ in p.remaps) for p in processes] == [["left/camera_info", "left/image",
                                                                    "right/camera_info", "right/image"]]


def test_a_given_profile_and_namespace_reach_the_process(installed, monkeypatch, tmp_path):
    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", "/etc/my_profile.xml")
    _, _, (process, ), _, _ = generate(REPO / "launch" / "mono_depth.launch.py",
                                       {"namespace": "front", "image": "/cam/image_raw"}, monkeypatch, tmp_path)
    assert process.env["FASTRTPS_DEFAULT_PROFILES_FILE"] == "/etc/my_profile.xml"  # the user's own wins
    assert ("image", "/cam/image_raw") in process.remaps and "__ns:=/front" in process.ros_args


def test_mono_launch_defaults_start_an_active_node(installed, monkeypatch, tmp_path):
    """The process the mono launch file starts with no arguments (bundled model, config, profile) activates."""
    _, _, (process, ), _, _ = generate(REPO / "launch" / "mono_depth.launch.py", {"namespace": "launch_test"},
                                       monkeypatch, tmp_path)
    node = NodeProcess(process.executable, ros_args=process.ros_args, env={**process.env, "AMENT_PREFIX_PATH":
                                                                           os.environ["AMENT_PREFIX_PATH"]})
    try:
        assert node.wait_for_log("active:", 180.0), node.log()
        assert "-> '/launch_test/depth'" in node.log() and "XMLPARSER" not in node.log()
        assert "default_student.safetensors" in node.log()
    finally:
        node.stop()


def test_rviz_config_shows_the_node_outputs():
    config = yaml.safe_load((REPO / "config" / "kd_depth.rviz").read_text())
    displays = {d["Name"]: d for d in config["Visualization Manager"]["Displays"]}
    topics = {d["Topic"]["Value"] for d in displays.values() if "Topic" in d}
    assert {"/depth", "/uncertainty", "/points"} <= topics
    classes = {d["Class"] for d in displays.values()}
    assert {"rviz_default_plugins/Image", "rviz_default_plugins/PointCloud2"} <= classes
    # RViz must hear a best-effort camera and the reliable node outputs: best effort everywhere
    assert all(d["Topic"]["Reliability Policy"] == "Best Effort" for d in displays.values() if "Topic" in d)


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None,
                    reason="launch/launch_ros are not installable here (no wheel); the files are generated against "
                           "the stand-in above and the mono one is started")
@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_loads_with_the_launch_library(launch_file, tmp_path):  # pragma: no cover - real ROS only
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    from launch_ros.actions import Node

    description = get_launch_description_from_python_launch_file(str(launch_file))
    arguments = {e.name: e for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert {"params_file", "use_sim_time", "dds_profile"} <= set(arguments)
    context = LaunchContext()
    for name, value in default_arguments(launch_file, tmp_path).items():
        context.launch_configurations[name] = value
    for argument in arguments.values():
        if argument.default_value is not None and argument.name not in context.launch_configurations:
            from launch.utilities import perform_substitutions

            context.launch_configurations[argument.name] = perform_substitutions(context, argument.default_value)
    assert any(isinstance(e, Node) for e in description.entities)

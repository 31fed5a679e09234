"""The import layout of docs/architecture.md: kd_depth_core never reaches ROS, and no import circle.

Read from the source with `ast` (every import, also those inside functions, so lazy imports count),
not by importing, so a forbidden import hidden behind a branch is found too.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "kd_depth_core"
FORBIDDEN = ("kd_depth_ros", "rclpy", "ament_index_python", "rosidl", "launch_ros")
MODULE_NAME = re.compile(rf"({'|'.join(FORBIDDEN)})(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?")
"""A string that is a forbidden module name (what importlib, entry points or `python -m` would be given)."""


def _modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `package`."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported dotted name, line) of every import statement in the file; relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def code_strings(path: Path) -> list[tuple[str, int]]:
    """String constants that are not docstrings (module names handed to importlib, subprocess, ...)."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(node.value, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The kd_depth_core module an imported name lives in (`a.b.c` -> `a.b` when c is an attribute)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def module_graph() -> dict[str, set[str]]:
    """kd_depth_core module -> modules it imports (an import of a package's own parent is left out)."""
    modules = _modules(CORE)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imported, _ in imports_of(path, name):
            target = resolve(imported, modules) if imported.startswith("kd_depth_core") else None
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def unit(module: str) -> str:
    """The layer a module belongs to: its subpackage (`kd_depth_core.train`) or top-level module."""
    return ".".join(module.split(".")[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_kd_depth_core_never_imports_or_names_ros():
    offences = []
    for name, path in _modules(CORE).items():
        for imported, line in imports_of(path, name):
            if imported.split(".")[0] in FORBIDDEN:
                offences.append(f"{path.relative_to(ROOT)}:{line}: imports {imported}")
        for text, line in code_strings(path):
            if MODULE_NAME.fullmatch(text.strip()):
                offences.append(f"{path.relative_to(ROOT)}:{line}: names {text!r} (dispatch by string)")
    assert not offences, "\n".join(offences)


def test_no_import_circle_between_kd_depth_core_modules_or_subpackages():
    graph = module_graph()
    assert not cycles(graph), cycles(graph)
    layers: dict[str, set[str]] = {}
    for source, targets in graph.items():
        layers.setdefault(unit(source), set()).update(unit(t) for t in targets if unit(t) != unit(source))
    assert not cycles(layers), cycles(layers)


def test_the_checks_can_fail():
    """The detectors themselves: a circle and a ROS import are found when present."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("source, offence", [("import rclpy\n", "rclpy"),
                                              ("def f():\n    from kd_depth_ros import bag_cli\n", "kd_depth_ros"),
                                              ("CMD = ['-m', 'kd_depth_ros.demo_replay']\n", "kd_depth_ros")])
def test_the_ros_detector_finds_lazy_and_string_references(tmp_path, source, offence):
    path = tmp_path / "probe.py"
    path.write_text(source)
    imported = [n for n, _ in imports_of(path, "probe")]
    named = [t for t, _ in code_strings(path) if MODULE_NAME.fullmatch(t)]
    assert any(n.split(".")[0] == offence for n in imported + named)


def test_docs_architecture_lists_every_subpackage_import():
    """docs/architecture.md's arrow table ("Import directions") covers every actual layer-to-layer import."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Import directions", 1)[1].split("```", 2)[1]
    documented: dict[str, set[str]] = {}
    for line in block.splitlines():
        if "->" not in line:
            continue
        sources, targets = line.split("->", 1)
        names = {t.strip() for t in re.sub(r"\([^)]*\)", "", targets).split(",") if t.strip()}
        for source in sources.split(","):
            documented.setdefault(source.strip(), set()).update(names)
    actual: dict[str, set[str]] = {}
    for source, targets in module_graph().items():
        layer = unit(source).removeprefix("kd_depth_core.").removeprefix("kd_depth_core") or "__init__"
        for target in targets:
            other = unit(target).removeprefix("kd_depth_core.")
            if other != layer and other != "kd_depth_core" and layer != "__init__":
                actual.setdefault(layer, set()).add(other)
    missing = {layer: sorted(targets - documented.get(layer, set())) for layer, targets in actual.items()
               if targets - documented.get(layer, set())}
    assert not missing, f"imports not shown in docs/architecture.md: {missing}"

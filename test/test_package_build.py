"""`colcon build` of the package gives the layout `ros2 run` / `ros2 launch` rely on."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _executables() -> list[str]:
    """Console-script names declared in setup.py (parsed, not imported)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    nodes = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "NODES")
    return ["kd-depth"] + [elt.elts[0].value for elt in nodes.value.elts]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    colcon = shutil.which("colcon", path=str(BIN)) or shutil.which("colcon")
    if colcon is None:
        pytest.fail("colcon not found: run `make setup` (colcon-common-extensions is in requirements.txt)")
    ws = tmp_path_factory.mktemp("ws")
    (ws / "src").mkdir()
    # A source copy without the virtual environment or build outputs, as a user's workspace would hold.
    shutil.copytree(ROOT, ws / "src" / "kd_depth_ros", ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "install", "log", "__pycache__", "*.egg-info", "demo_output", "runs", ".*cache"))
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    result = subprocess.run([colcon, "build", "--base-paths", "src", "--event-handlers", "console_direct-"],
                            cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return ws / "install" / "kd_depth_ros"


def test_installed_layout(installed):
    share = installed / "share" / "kd_depth_ros"
    assert (share / "package.xml").is_file()
    assert (installed / "share" / "ament_index" / "resource_index" / "packages" / "kd_depth_ros").is_file()
    for folder in ("launch", "config"):
        sources = sorted(p.name for p in (ROOT / folder).iterdir() if p.is_file())
        assert sources, f"{folder}/ is empty in the source tree"
        assert sorted(p.name for p in (share / folder).iterdir() if p.is_file()) == sources
    for name in _executables():
        assert (installed / "lib" / "kd_depth_ros" / name).is_file(), f"lib/kd_depth_ros/{name} missing"


@pytest.mark.parametrize("name", _executables())
def test_every_executable_answers_help(installed, name):
    exe = installed / "lib" / "kd_depth_ros" / name
    site = next((installed / "lib").glob("python3*/site-packages"))
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    result = subprocess.run([sys.executable, str(exe), "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()


def test_bundled_model_loads_from_the_launch_default_path(installed):
    """The launch file's default model_path (share/kd_depth_ros/models/default_student.safetensors) works."""
    import numpy as np

    launch_text = (installed / "share" / "kd_depth_ros" / "launch" / "mono_depth.launch.py").read_text()
    assert '"models", "default_student.safetensors"' in launch_text
    model = installed / "share" / "kd_depth_ros" / "models" / "default_student.safetensors"
    assert model.is_file() and model.stat().st_size <= 10 * 2**20
    from kd_depth_core.inference.predictor import DepthPredictor

    predictor = DepthPredictor(model, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    depth = predictor.predict(image).depth
    assert depth.shape == (48, 80) and np.isfinite(depth).all()
    assert predictor.metadata.min_depth <= depth.min() and depth.max() <= predictor.metadata.max_depth

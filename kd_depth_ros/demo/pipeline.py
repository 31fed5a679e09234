"""The demo's composition: the core stages, then the ROS 2 node replay, then the report.

    synth → teacher → baseline → student → evaluate → export → ros → report

The ROS stage runs in a child process (``kd_depth_ros.demo_replay``): real rclpy, separate
processes, and this process never imports ROS either.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kd_depth_core.demo.context import DemoContext
from kd_depth_core.demo.pipeline import run_demo as run_core_demo

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the source checkout (kd_depth_ros/demo/ -> root)
STAGES = ("synth", "teacher", "baseline", "student", "evaluate", "export", "ros", "report")


def find_config_dir() -> Path:
    """config/ of a source checkout, or share/kd_depth_ros/config of an installed package."""
    candidates = [PACKAGE_ROOT / "config"]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("kd_depth_ros")) / "config")
    except Exception:  # noqa: BLE001 — not a ROS install: the source tree is the only place
        pass
    candidates.append(Path(sys.prefix) / "share" / "kd_depth_ros" / "config")
    for path in candidates:
        if (path / "demo.yaml").is_file():
            return path
    raise FileNotFoundError("config/demo.yaml not found next to the package; run the demo from the repository "
                            f"(looked in: {', '.join(str(c) for c in candidates)})")


def stage_ros(ctx: DemoContext, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The student in the real ROS 2 node, fed the test frames by a replay process (`kd_depth_ros.demo_replay`)."""
    command = [sys.executable, "-m", "kd_depth_ros.demo_replay", "--model", ctx.results["student"]["model"],
               "--data", str(ctx.data_root), "--out", str(folder / "ros.json"),
               "--frames", str(settings.get("frames", 50)), "--rate", str(settings.get("rate_hz", 10.0)),
               "--device", ctx.device, "--params-file", str(ctx.config_dir / "mono_depth.yaml")]
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    completed = subprocess.run(command, env=env, timeout=float(settings.get("timeout_s", 300)))
    if completed.returncode != 0:
        raise RuntimeError(f"the ROS replay failed (exit {completed.returncode}); rerun `{' '.join(command)}` "
                           "to see why")
    return json.loads((folder / "ros.json").read_text())


def run_demo(out: str | os.PathLike, preset: str = "full", device: str = "auto", progress: bool = True,
             skip_ros: bool = False, config_dir: Path | None = None) -> Path:
    """Run (or continue) the demo; returns the report's path. ``config_dir``: default :func:`find_config_dir`."""
    if config_dir is not None and not (Path(config_dir) / "demo.yaml").is_file():
        raise FileNotFoundError(f"--config-dir {config_dir}: no demo.yaml there (expected <dir>/demo.yaml and "
                                "<dir>/train/*.yaml)")
    extra = () if skip_ros else (("ros", stage_ros, ("student",)),)
    return run_core_demo(out, Path(config_dir) if config_dir else find_config_dir(), preset=preset, device=device, progress=progress,
                         extra_stages=extra, report_settings={"skip_ros": skip_ros})
